"""Tensor parallelism of keras_llm models with keras.distribution on JAX.

Runs on 8 host CPU devices (see conftest.py): a (batch=4, model=2) mesh.
"""

import inspect
import os
import re
import subprocess
import sys
import textwrap

import jax
import keras
import numpy as np
import pytest

from keras_llm.layers import TransformerBlock
from keras_llm.layers.attention import registered_attention_names
from keras_llm.models import BERT
from keras_llm.models import GPT
from keras_llm.models import BertPretrainer
from keras_llm.models import EncoderDecoder
from keras_llm.models import layout

# Variables the rules must split: every kernel of an attention or a
# feed-forward network, and the token embedding tables.
SPLIT = re.compile(
    r".*(token_embedding/(reverse_)?embeddings"
    r"|(attention|feed_forward)/[^/]+/kernel)"
)
TINY = dict(vocabulary_size=64, num_heads=4, hidden_dim=32)


def _gpt(**kwargs):
    config = dict(TINY, num_layers=2, max_sequence_length=16)
    config.update(kwargs)
    return GPT(**config)


def _bert(**kwargs):
    return BERT(
        **TINY, num_layers=1, max_sequence_length=16, dropout=0.0, **kwargs
    )


def _encoder_decoder(**kwargs):
    return EncoderDecoder(
        **TINY,
        num_encoder_layers=1,
        num_decoder_layers=1,
        max_sequence_length=16,
        **kwargs,
    )


def _variants():
    """Every model family and every attention, GQA, SwiGLU, untied."""
    models = {
        "gpt": _gpt(),
        "gpt_swiglu_gqa_untied_rotary": _gpt(
            activation="swiglu",
            num_key_value_heads=2,
            tie_embeddings=False,
            position_embedding="rotary",
            use_bias=False,
        ),
        "bert_pretrainer": BertPretrainer(_bert(), dropout=0.0),
        "encoder_decoder": _encoder_decoder(),
        "encoder_decoder_untied": _encoder_decoder(
            target_vocabulary_size=48, tie_embeddings=False
        ),
    }
    # Every registered attention, in a block named as in GPT (a bare block
    # builds in a fraction of the time of a whole model).
    extra = {"axial": {"axial_shape": (4, 4)}}
    for name in registered_attention_names():
        block = TransformerBlock(
            num_heads=4,
            intermediate_dim=64,
            attention=name,
            attention_kwargs=extra.get(name),
            causal=True,
            name="block_0",
        )
        block.build((2, 16, 32))
        models[f"block_{name}"] = block
    return models


def _sharded_axes(variable):
    """The mesh axis of each dimension of a variable's actual sharding."""
    spec = tuple(variable.value.sharding.spec)
    return spec + (None,) * (len(variable.shape) - len(spec))


def test_rules_split_every_kernel_and_each_rule_matches_something():
    layout_map = GPT.get_layout_map()
    used = set()
    for name, model in _variants().items():
        for v in model.weights:
            axes = layout_map[v.path]  # raises if two rules match
            for pattern, _ in layout.LAYOUT_RULES:
                if re.fullmatch(pattern, v.path):
                    used.add(pattern)
            if not SPLIT.fullmatch(v.path):
                assert axes is None, f"{name}: {v.path} should be replicated"
                continue
            assert axes is not None, f"{name}: no rule for {v.path}"
            axes = tuple(axes.axes)
            assert len(axes) == len(v.shape), f"{name}: {v.path} {axes}"
            assert axes.count("model") == 1, f"{name}: {v.path} {axes}"
            assert v.shape[axes.index("model")] % 2 == 0, v.path
    unused = [p for p, _ in layout.LAYOUT_RULES if p not in used]
    assert not unused, f"rules matching no variable: {unused}"


def test_default_mesh_custom_axis_names_and_errors():
    mesh = layout.default_device_mesh()
    assert tuple(mesh.shape) == (4, 2)
    assert list(mesh.axis_names) == ["batch", "model"]
    odd = layout.default_device_mesh(
        devices=keras.distribution.list_devices()[:3]
    )
    assert tuple(odd.shape) == (3, 1)

    mesh = keras.distribution.DeviceMesh(
        (2, 4), ["data", "tp"], keras.distribution.list_devices()
    )
    layout_map = BERT.get_layout_map(mesh, "tp", "data")
    axes = layout_map["block_0/feed_forward/down/kernel"].axes
    assert tuple(axes) == ("tp", None)

    with pytest.raises(ValueError, match="model_parallel_dim_name='model'"):
        GPT.get_layout_map(mesh)
    with pytest.raises(ValueError, match="data_parallel_dim_name='batch'"):
        GPT.get_layout_map(mesh, "tp")
    with pytest.raises(TypeError, match="GPT.get_layout_map.*DeviceMesh"):
        GPT.get_layout_map("model")


def _fit(model, x, y, epochs):
    model.compile(
        optimizer=keras.optimizers.SGD(0.5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = model.fit(
        x, y, batch_size=8, epochs=epochs, shuffle=False, verbose=0
    )
    return history.history["loss"]


@pytest.mark.slow
def test_sharded_gpt_trains_like_unsharded_gpt():
    reference = _gpt()
    initial = reference.get_weights()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 64, (16, 16)).astype("int32")
    y = np.roll(x, -1, axis=1)
    reference_losses = _fit(reference, x, y, epochs=3)

    distribution = keras.distribution.ModelParallel(
        layout_map=GPT.get_layout_map(), batch_dim_name="batch"
    )
    with distribution.scope():
        model = _gpt()
        model.set_weights(initial)
        losses = _fit(model, x, y, epochs=3)

    # Megatron-style: column-split first matmuls, row-split second ones.
    megatron = {
        "token_embedding/embeddings": (None, "model"),
        "block_1/self_attention/qkv/kernel": (None, "model"),
        "block_1/self_attention/output/kernel": ("model", None),
        "block_1/feed_forward/up/kernel": (None, "model"),
        "block_1/feed_forward/down/kernel": ("model", None),
        "block_1/feed_forward/up/bias": (None,),
        "block_1/feed_forward_norm/gamma": (None,),
    }
    variables = {v.path: v for v in model.weights}
    for path, axes in megatron.items():
        assert _sharded_axes(variables[path]) == axes, path
    # The variables really are split over the model axis: half of each
    # matched dimension on each device, every device holding one shard.
    layout_map = GPT.get_layout_map()
    split = 0
    for v in model.weights:
        expected = layout_map[v.path]
        expected = (
            (None,) * len(v.shape)
            if expected is None
            else (tuple(expected.axes))
        )
        assert _sharded_axes(v) == expected, v.path
        shards = v.value.addressable_shards
        assert len(shards) == 8
        for shard in shards:
            want = [
                n // 2 if a == "model" else n for n, a in zip(v.shape, expected)
            ]
            assert list(shard.data.shape) == want, v.path
        split += "model" in expected
    assert split == 9  # embedding + 2 blocks x (qkv, out, up, down)

    # Same arithmetic up to float32 summation order: a split matmul adds
    # two partial sums in an all-reduce instead of one running sum, which
    # changes results by a few ulps (float32 eps = 1.2e-7) per op. Measured
    # here: equal losses, weights apart by at most 1.2e-7 after 6 SGD steps
    # that moved them by up to 0.1, so rtol=1e-5/atol=2e-6 leaves a margin
    # of 15x; a missing all-reduce or a wrong slice would be off by O(1).
    np.testing.assert_allclose(losses, reference_losses, rtol=1e-5)
    assert losses[-1] < losses[0]
    moved = 0.0
    for v, want, start in zip(model.weights, reference.get_weights(), initial):
        got = np.asarray(v.value)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6,
                                   err_msg=v.path)  # fmt: skip
        moved = max(moved, float(np.abs(want - start).max()))
    assert moved > 1e-2, "training did not move the weights"


def _mlm_nsp_batch(batch=8, length=16, masks=4):
    rng = np.random.default_rng(1)
    x = {
        "token_ids": rng.integers(1, 64, (batch, length)).astype("int32"),
        "segment_ids": np.repeat([[0] * 8 + [1] * 8], batch, 0),
        "padding_mask": np.ones((batch, length), bool),
        "mask_positions": np.sort(
            rng.permutation(length)[:masks] * np.ones((batch, 1), int), 1
        ).astype("int32"),
    }
    y = {
        "mlm": rng.integers(1, 64, (batch, masks)).astype("int32"),
        "nsp": rng.integers(0, 2, (batch,)).astype("int32"),
    }
    weights = {"mlm": np.ones((batch, masks), "float32"),
               "nsp": np.ones((batch,), "float32")}  # fmt: skip
    return x, y, weights


@pytest.mark.slow
def test_sharded_bert_pretrainer_takes_a_step_like_unsharded():
    x, y, weights = _mlm_nsp_batch()
    reference = BertPretrainer(_bert(), dropout=0.0)
    initial = reference.get_weights()

    def step(model):
        model.compile(optimizer=keras.optimizers.SGD(0.1))
        return model.train_on_batch(x, y, sample_weight=weights)

    want = step(reference)
    distribution = keras.distribution.ModelParallel(
        layout_map=BERT.get_layout_map(), batch_dim_name="batch"
    )
    with distribution.scope():
        model = BertPretrainer(_bert(), dropout=0.0)
        model.set_weights(initial)
        got = step(model)
    kernel = model.backbone.get_layer("block_0").feed_forward
    assert _sharded_axes(kernel.up_dense.kernel) == (None, "model")
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for v, w in zip(model.weights, reference.get_weights()):
        np.testing.assert_allclose(np.asarray(v.value), w, rtol=1e-5,
                                   atol=2e-6, err_msg=v.path)  # fmt: skip


def test_sharded_encoder_decoder_matches_unsharded():
    rng = np.random.default_rng(2)
    inputs = {
        "encoder_token_ids": rng.integers(1, 64, (8, 12)).astype("int32"),
        "decoder_token_ids": rng.integers(1, 64, (8, 10)).astype("int32"),
    }
    reference = _encoder_decoder()
    want = np.asarray(jax.jit(lambda i: reference(i))(inputs))
    distribution = keras.distribution.ModelParallel(
        layout_map=EncoderDecoder.get_layout_map(), batch_dim_name="batch"
    )
    with distribution.scope():
        model = _encoder_decoder()
        model.set_weights(reference.get_weights())
        got = np.asarray(jax.jit(lambda i: model(i))(inputs))
    cross = model.get_layer("decoder_block_0").cross_attention_layer
    assert _sharded_axes(cross.key_value_dense.kernel) == (None, "model")
    assert _sharded_axes(cross.output_dense.kernel) == ("model", None)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _examples(obj):
    doc = inspect.getdoc(obj)
    return re.findall(r"```python\n(.*?)```", doc, re.S)


@pytest.mark.parametrize(
    "obj",
    [
        layout.get_layout_map,
        layout.default_device_mesh,
        GPT.get_layout_map,
        BERT.get_layout_map,
        EncoderDecoder.get_layout_map,
    ],
    ids=lambda o: o.__qualname__,
)
def test_docstring_examples_run_on_jax(obj):
    blocks = _examples(obj)
    assert blocks, f"{obj.__qualname__} has no example"
    for block in blocks:
        exec(compile(textwrap.dedent(block), obj.__qualname__, "exec"), {})


@pytest.mark.slow
def test_model_parallel_is_a_silent_noop_on_tensorflow():
    """Pins the claim of docs/scaling.md; fails once Keras implements it."""
    script = textwrap.dedent(
        """
        import warnings
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 4)
        import keras
        from keras_llm.models import GPT
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            layout_map = GPT.get_layout_map()
        assert any("silent no-op" in str(w.message) for w in caught)
        distribution = keras.distribution.ModelParallel(
            layout_map=layout_map, batch_dim_name="batch")
        with distribution.scope():
            model = GPT(vocabulary_size=64, num_layers=1, num_heads=4,
                        hidden_dim=32, max_sequence_length=16)
        kernel = model.get_layer("block_0").feed_forward.up_dense.kernel
        print(tuple(layout_map.device_mesh.shape), type(kernel.value).__name__,
              tuple(kernel.value.shape), kernel.value.device)
        """
    )
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = result.stdout.strip().splitlines()[-1]
    # A (2, 2) mesh was asked for, yet the kernel is one whole (32, 128)
    # ResourceVariable on the first CPU: nothing was split.
    assert line.startswith("(2, 2) ResourceVariable (32, 128)"), line
    assert line.endswith("device:CPU:0"), line


@pytest.mark.slow
def test_gradient_accumulators_are_sharded_like_their_weights():
    from keras_llm.optimizers import GradientAccumulation

    rng = np.random.default_rng(1)
    x = rng.integers(0, 64, (16, 16)).astype("int32")
    y = np.roll(x, -1, axis=1)

    def fit(model):
        model.compile(
            optimizer=GradientAccumulation(keras.optimizers.SGD(0.5), 2),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
        return model

    reference = _gpt()
    initial = reference.get_weights()
    fit(reference)
    distribution = keras.distribution.ModelParallel(
        layout_map=GPT.get_layout_map(), batch_dim_name="batch"
    )
    with distribution.scope():
        model = _gpt()
        model.set_weights(initial)
        fit(model)
    accumulators = model.optimizer.accumulators
    assert len(accumulators) == len(model.trainable_weights)
    split = 0
    for weight, accumulator in zip(model.trainable_weights, accumulators):
        assert _sharded_axes(accumulator) == _sharded_axes(weight), weight.path
        split += "model" in _sharded_axes(weight)
    assert split == 9
    # Two updates of two micro-batches each, same numbers as unsharded.
    for got, want in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6)
