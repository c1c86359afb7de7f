import gc

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_llm.layers.reversible import ReversibleBlock
from keras_llm.layers.reversible import ReversibleStack
from tests.layer_test_case import run_layer_test
from tests.layer_test_case import shared_strategy

B, T, D = 2, 8, 16


def _x(seed=0, shape=(B, T, D)):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _padding_mask():
    mask = np.ones((B, T), bool)
    mask[1, 5:] = False
    return mask


def test_layer_contract_reversible():
    run_layer_test(
        ReversibleStack,
        dict(num_layers=2, num_heads=2, intermediate_dim=32),
        _x(),
        expected_output_shape=(B, T, D),
        # 2 blocks x (fused-QKV attention 4, 2 norms x 2, feed-forward 4).
        expected_num_trainable_weights=2 * (4 + 4 + 4),
    )


def test_layer_contract_reversible_causal_with_padding_mask():
    run_layer_test(
        ReversibleStack,
        dict(
            num_layers=2,
            num_heads=2,
            intermediate_dim=32,
            causal=True,
            rotary_max_wavelength=10000,
            activation="swiglu",
        ),
        # int32: Keras' fit under MirroredStrategy cannot batch bool inputs.
        {None: _x(), "padding_mask": _padding_mask().astype("int32")},
        expected_output_shape=(B, T, D),
    )


# Only the first output (y1) reaches the loss, so G gets no gradient there.
@pytest.mark.filterwarnings("ignore:Gradients do not exist")
def test_layer_contract_block():
    run_layer_test(
        ReversibleBlock,
        dict(num_heads=2, intermediate_dim=32, causal=True),
        # The pair as two arguments; the checks compare the first output.
        {None: _x(), "x2": _x(1)},
        expected_output_shape=(B, T, D),
    )


def _pair(attention="dense", num_layers=3, **kwargs):
    kw = dict(
        num_layers=num_layers,
        num_heads=2,
        intermediate_dim=32,
        causal=True,
        attention=attention,
        **kwargs,
    )
    rev = ReversibleStack(reversible=True, **kw)
    ref = ReversibleStack(reversible=False, **kw)
    x, mask = _x(), _padding_mask()
    rev(x, padding_mask=mask)
    ref(x, padding_mask=mask)
    ref.set_weights(rev.get_weights())
    return rev, ref


def _step(layer, mask):
    """`x -> [output, d loss / d x, d loss / d each variable]`."""
    weights = np.sin(np.arange(D, dtype="float32"))

    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, padding_mask=mask, training=True)
            loss = tf.reduce_sum(tf.cast(y, "float32") * weights)
        grads = tape.gradient(loss, [x] + layer.trainable_variables)
        return [y] + grads

    return step


def _outputs_and_grads(layer, x, mask, wrap):
    return wrap(_step(layer, mask))(tf.constant(x))


def _max_abs_diff(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        assert u is not None and v is not None, "missing gradient"
    return max(
        float(np.max(np.abs(np.asarray(u) - np.asarray(v))))
        for u, v in zip(a, b)
    )


@pytest.mark.parametrize(
    "attention,wrap",
    [
        ("dense", lambda f: f),
        ("dense", tf.function),
        ("mha", lambda f: tf.function(f, jit_compile=True)),
    ],
    ids=["dense-eager", "dense-graph", "mha-xla"],
)
def test_reversible_matches_autodiff(attention, wrap):
    rev, ref = _pair(attention)
    x, mask = _x(2), _padding_mask()
    got = _outputs_and_grads(rev, x, mask, wrap)
    want = _outputs_and_grads(ref, x, mask, wrap)
    # The output, the input gradient and one per variable.
    per_block = {"dense": 12, "mha": 16}[attention]
    assert len(got) == 2 + 3 * per_block == 2 + len(rev.trainable_variables)
    assert _max_abs_diff(got, want) < 1e-5


def test_reversible_matches_autodiff_under_mirrored_strategy():
    strategy = shared_strategy()
    with strategy.scope():
        rev, ref = _pair(num_layers=2)
    x, mask = _x(3), _padding_mask()

    def per_replica(layer):
        step = _step(layer, mask)
        fn = tf.function(lambda x: strategy.run(step, args=(x,)))
        out = fn(tf.constant(x))
        return [strategy.experimental_local_results(t)[0] for t in out]

    assert _max_abs_diff(per_replica(rev), per_replica(ref)) < 1e-5


def test_inverse_reconstructs_inputs():
    block = ReversibleBlock(num_heads=2, intermediate_dim=32, causal=True)
    x1, x2 = _x(4), _x(5)
    mask = _padding_mask()
    y1, y2 = block.forward(x1, x2, padding_mask=mask)
    r1, r2 = block.inverse(y1, y2, padding_mask=mask)
    np.testing.assert_allclose(r1, x1, atol=1e-5)
    np.testing.assert_allclose(r2, x2, atol=1e-5)
    # `call` is `forward` on the pair.
    c1, c2 = block((x1, x2), padding_mask=mask)
    np.testing.assert_allclose(c1, y1, atol=1e-6)
    np.testing.assert_allclose(c2, y2, atol=1e-6)


def test_inverse_in_bfloat16_is_approximate():
    """Documents the low-precision reconstruction error."""
    block = ReversibleBlock(
        num_heads=2, intermediate_dim=32, dtype="mixed_bfloat16"
    )
    x1 = keras.ops.cast(_x(4), "bfloat16")
    x2 = keras.ops.cast(_x(5), "bfloat16")
    r1, r2 = block.inverse(*block.forward(x1, x2))
    err = max(
        float(np.max(np.abs(np.asarray(keras.ops.cast(r - x, "float32")))))
        for r, x in ((r1, x1), (r2, x2))
    )
    # Inexact (bfloat16 keeps 8 bits of mantissa) but bounded.
    assert err < 0.1


@pytest.mark.parametrize("jit_compile", [True, False])
def test_trains_with_fit(jit_compile):
    inputs = keras.Input((T, D))
    hidden = ReversibleStack(
        num_layers=2, num_heads=2, intermediate_dim=32, causal=True
    )(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1)(hidden))
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss="mse",
        jit_compile=jit_compile,
    )
    x = _x(6, (8, T, D))
    y = np.cumsum(x[..., :1], axis=1) / 4.0
    history = model.fit(x, y, batch_size=8, epochs=8, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses


def test_dropout_is_rejected_when_reversible():
    with pytest.raises(ValueError, match="dropout"):
        ReversibleStack(
            num_layers=2, num_heads=2, intermediate_dim=32, dropout=0.1
        )
    with pytest.raises(ValueError, match="dropout"):
        ReversibleStack(
            num_layers=2,
            num_heads=2,
            intermediate_dim=32,
            attention_kwargs={"dropout": 0.1},
        )
    layer = ReversibleStack(
        num_layers=2,
        num_heads=2,
        intermediate_dim=32,
        dropout=0.1,
        reversible=False,
    )
    assert layer(_x(), training=True).shape == (B, T, D)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_layers"):
        ReversibleStack(num_layers=0, num_heads=2, intermediate_dim=32)
    with pytest.raises(TypeError, match="attention"):
        ReversibleStack(
            num_layers=1,
            num_heads=2,
            intermediate_dim=32,
            attention=keras.layers.Dense(4),
        )
    with pytest.raises(ValueError, match="divisible"):
        ReversibleStack(num_layers=1, num_heads=3, intermediate_dim=32)(_x())
    with pytest.raises(ValueError, match="Unknown attention"):
        ReversibleStack(
            num_layers=1, num_heads=2, intermediate_dim=32, attention="nope"
        )(_x())


def test_attention_config_dict():
    from keras_llm.layers.attention import BaseAttention

    attention = keras.saving.serialize_keras_object(
        BaseAttention(num_heads=2, key_dim=8)
    )
    stack = ReversibleStack(
        num_layers=2, num_heads=2, intermediate_dim=32, attention=attention
    )
    assert stack(_x()).shape == (B, T, D)
    names = {type(b.self_attention).__name__ for b in stack.blocks}
    assert names == {"BaseAttention"}


def _step_activation_bytes(layer, x):
    """Peak allocator bytes of one traced training step above those held."""
    step = tf.function(_step(layer, None))
    step(x)  # trace
    gc.collect()
    memory = tf.config.experimental
    held = memory.get_memory_info("CPU:0")["current"]
    memory.reset_memory_stats("CPU:0")
    out = step(x)
    float(tf.reduce_sum(out[0]))
    return memory.get_memory_info("CPU:0")["peak"] - held


def _activation_bytes(num_layers, reversible, x):
    keras.utils.set_random_seed(0)
    layer = ReversibleStack(
        num_layers=num_layers,
        num_heads=2,
        intermediate_dim=32,
        causal=True,
        reversible=reversible,
    )
    layer(x)
    return _step_activation_bytes(layer, x)


def test_reversible_backward_does_not_keep_every_block():
    """The memory the benchmark measures, at a tiny scale: with the custom
    gradient the step's activation memory must not grow with depth
    (attention scores dominate at this length)."""
    x = tf.constant(_x(7, (1, 256, D)))
    ordinary = [_activation_bytes(n, False, x) for n in (3, 12)]
    reversible = [_activation_bytes(n, True, x) for n in (3, 12)]
    ordinary_growth = ordinary[1] - ordinary[0]
    reversible_growth = reversible[1] - reversible[0]
    assert ordinary_growth > 0
    assert reversible_growth < 0.25 * ordinary_growth, (ordinary, reversible)
    assert reversible[1] < 0.4 * ordinary[1], (ordinary, reversible)
