import keras
import numpy as np
import pytest

from keras_llm.layers import TransformerBlock
from keras_llm.layers.attention import MultiHeadAttention
from tests.layer_test_case import run_layer_test

B, T, D = 2, 6, 16


def _x(seed=0, shape=(B, T, D)):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


@pytest.mark.parametrize("normalization", ["pre", "post"])
@pytest.mark.parametrize("causal", [False, True])
def test_layer_contract(normalization, causal):
    run_layer_test(
        TransformerBlock,
        dict(
            num_heads=2,
            intermediate_dim=32,
            normalization=normalization,
            causal=causal,
            dropout=0.1,
        ),
        _x(),
        expected_output_shape=(B, T, D),
    )


def test_layer_contract_cross_attention_and_masks():
    padding = np.ones((B, T), "int32")
    padding[1, 4:] = 0
    enc_padding = np.ones((B, 5), "int32")
    enc_padding[0, 3:] = 0
    run_layer_test(
        TransformerBlock,
        dict(
            num_heads=2,
            intermediate_dim=32,
            causal=True,
            cross_attention=True,
            activation="swiglu",
            rotary_max_wavelength=1000,
        ),
        {
            None: _x(),
            "encoder_outputs": _x(1, (B, 5, D)),
            "padding_mask": padding,
            "encoder_padding_mask": enc_padding,
        },
        expected_output_shape=(B, T, D),
    )


def test_layer_contract_attention_instance():
    run_layer_test(
        TransformerBlock,
        dict(
            num_heads=2,
            intermediate_dim=32,
            attention=MultiHeadAttention(
                num_heads=4, key_dim=4, name="custom_attention"
            ),
        ),
        _x(),
        expected_output_shape=(B, T, D),
        run_mixed_precision=False,  # an instance keeps its own dtype policy
    )


def test_pre_ln_formula():
    block = TransformerBlock(num_heads=2, intermediate_dim=32)
    x = _x()
    out = block(x)
    h = x + block.self_attention(block.self_attention_norm(x))
    expected = h + block.feed_forward(block.feed_forward_norm(h))
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_post_ln_formula():
    block = TransformerBlock(
        num_heads=2, intermediate_dim=32, normalization="post"
    )
    x = _x()
    out = block(x)
    h = block.self_attention_norm(x + block.self_attention(x))
    expected = block.feed_forward_norm(h + block.feed_forward(h))
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_causal_block_ignores_future_and_bidirectional_does_not():
    x = _x()
    changed = x.copy()
    changed[:, 3:] = _x(7)[:, 3:]  # not a constant shift, which LN removes
    causal = TransformerBlock(num_heads=2, intermediate_dim=32, causal=True)
    np.testing.assert_allclose(
        causal(x)[:, :3], causal(changed)[:, :3], atol=1e-5
    )
    both = TransformerBlock(num_heads=2, intermediate_dim=32)
    assert not np.allclose(both(x)[:, :3], both(changed)[:, :3], atol=1e-3)


def test_padding_mask_hides_padded_keys():
    x = _x()
    padding = np.ones((B, T), bool)
    padding[:, 4:] = False
    block = TransformerBlock(num_heads=2, intermediate_dim=32)
    changed = x.copy()
    changed[:, 4:] = 100.0
    np.testing.assert_allclose(
        block(x, padding_mask=padding)[:, :4],
        block(changed, padding_mask=padding)[:, :4],
        atol=1e-4,
    )


def test_cache_matches_full_pass():
    x = _x()
    block = TransformerBlock(num_heads=2, intermediate_dim=32, causal=True)
    full = block(x)
    cache = np.zeros((B, 2, T, 2, 8), "float32")
    outs = []
    for i in range(T):
        out, cache = block(x[:, i : i + 1], cache=cache, cache_update_index=i)
        outs.append(out)
    np.testing.assert_allclose(np.concatenate(outs, 1), full, atol=1e-5)


def test_attention_config_survives_serialization():
    block = TransformerBlock(
        num_heads=2,
        intermediate_dim=8,
        attention="dense",
        attention_kwargs={"num_key_value_heads": 1},
    )
    block(_x())
    assert block.self_attention.num_key_value_heads == 1
    revived = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(block)
    )
    revived(_x())
    assert revived.self_attention.num_key_value_heads == 1


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(num_heads=0, intermediate_dim=8), ValueError, "num_heads"),
        (
            dict(num_heads=2, intermediate_dim=-1),
            ValueError,
            "intermediate_dim",
        ),
        (
            dict(num_heads=2, intermediate_dim=8, normalization="mid"),
            ValueError,
            "normalization",
        ),
        (
            dict(num_heads=2, intermediate_dim=8, dropout=1.0),
            ValueError,
            "dropout",
        ),
        (
            dict(num_heads=2, intermediate_dim=8, attention=5),
            TypeError,
            "attention",
        ),
    ],
)
def test_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        TransformerBlock(**kwargs)


def test_bad_inputs():
    with pytest.raises(ValueError, match="divisible"):
        TransformerBlock(num_heads=3, intermediate_dim=8)(_x())
    with pytest.raises(ValueError, match="Unknown attention"):
        TransformerBlock(num_heads=2, intermediate_dim=8, attention="nope")(
            _x()
        )
    block = TransformerBlock(
        num_heads=2, intermediate_dim=8, cross_attention=True
    )
    with pytest.raises(ValueError, match="encoder_outputs"):
        block(_x())
    block = TransformerBlock(num_heads=2, intermediate_dim=8)
    with pytest.raises(ValueError, match="cross_attention=False"):
        block(_x(), encoder_outputs=_x())


def test_layer_contract_with_remat():
    run_layer_test(
        TransformerBlock,
        dict(
            num_heads=2,
            intermediate_dim=32,
            causal=True,
            dropout=0.1,
            remat=True,
        ),
        _x(),
        expected_output_shape=(B, T, D),
    )


@pytest.mark.parametrize(
    "jit_compile", [None, False, True], ids=["eager", "graph", "xla"]
)
@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_remat_gradients_equal_plain_gradients(jit_compile, dropout):
    """Same weights, same dropout seeds: remat changes memory, not values."""
    blocks = [
        TransformerBlock(
            num_heads=2,
            intermediate_dim=32,
            causal=True,
            cross_attention=(i == 1),
            dropout=dropout,
            attention_dropout=dropout,
        )
        for i in range(2)
    ]
    x = _x()
    padding = np.ones((B, T), "int32")
    padding[1, 4:] = 0
    kwargs = [dict(padding_mask=padding)]
    kwargs.append(dict(padding_mask=padding, encoder_outputs=_x(1, (B, 5, D))))
    blocks[0](x)
    blocks[1](x, encoder_outputs=_x(1, (B, 5, D)))

    class Chain:
        trainable_variables = [v for b in blocks for v in b.trainable_variables]

    def run(remat):
        import tensorflow as tf

        def step():
            for block in blocks:
                block.remat = remat
            with tf.GradientTape() as tape:
                h = blocks[0](x, training=True, **kwargs[0])
                h = blocks[1](h, training=True, **kwargs[1])
                loss = keras.ops.mean(h**2)
            return tape.gradient(loss, Chain.trainable_variables)

        if jit_compile is not None:
            step = tf.function(step, jit_compile=jit_compile)
        return [keras.ops.convert_to_numpy(g) for g in step()]

    generators = [
        g
        for b in blocks
        for layer in b._flatten_layers(include_self=False)
        for g in layer._seed_generators
    ]
    seeds = [g.state.numpy() for g in generators]
    plain = run(False)
    after_plain = [g.state.numpy() for g in generators]
    for generator, seed in zip(generators, seeds):
        generator.state.assign(seed)
    remat = run(True)
    for generator, state in zip(generators, after_plain):
        np.testing.assert_array_equal(generator.state.numpy(), state)
    assert len(plain) == len(remat) == len(Chain.trainable_variables)
    for p, r in zip(plain, remat):
        np.testing.assert_allclose(r, p, atol=1e-6, rtol=1e-6)
    if dropout:
        # The dropout masks matter: a different seed gives other gradients.
        other = run(True)
        assert max(np.max(np.abs(o - p)) for o, p in zip(other, plain)) > 1e-3


def test_remat_leaves_inference_unchanged():
    block = TransformerBlock(num_heads=2, intermediate_dim=32, remat=True)
    x = _x()
    np.testing.assert_allclose(
        block(x, training=False), block(x, training=True), atol=1e-6
    )
    assert block.get_config()["remat"] is True
