import keras
import numpy as np
import pytest

from keras_llm.layers.attention import MultiHeadAttention
from keras_llm.layers.attention import get_attention
from keras_llm.layers.attention import registered_attention_names
from tests.layer_test_case import run_layer_test

B, T, D = 2, 6, 16


def _x(seed=0, shape=(B, T, D)):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def test_layer_contract_self_attention():
    run_layer_test(
        MultiHeadAttention,
        dict(num_heads=2, key_dim=8),
        _x(),
        call_kwargs=dict(use_causal_mask=True),
        expected_output_shape=(B, T, D),
        expected_num_trainable_weights=4,
    )


def test_layer_contract_cross_attention_with_padding_mask():
    mask = np.ones((B, 4), "int32")
    mask[0, 2:] = 0
    run_layer_test(
        MultiHeadAttention,
        dict(num_heads=2, key_dim=4, output_dim=10),
        {None: _x(), "value": _x(1, (B, 4, 12)), "padding_mask": mask},
        expected_output_shape=(B, T, 10),
    )


def test_layer_contract_rotary_grouped_query():
    run_layer_test(
        MultiHeadAttention,
        dict(
            num_heads=4,
            key_dim=4,
            num_key_value_heads=2,
            rotary_max_wavelength=10000,
            use_bias=False,
        ),
        _x(),
        call_kwargs=dict(use_causal_mask=True),
        expected_output_shape=(B, T, D),
    )


def _copy_into_keras_mha(ours, theirs, heads, key_dim):
    """Sets Keras MultiHeadAttention weights from our fused projections."""
    w_qkv, b_qkv = ours.qkv_dense.kernel.numpy(), ours.qkv_dense.bias.numpy()
    units = heads * key_dim
    for i, dense in enumerate(
        (theirs._query_dense, theirs._key_dense, theirs._value_dense)
    ):
        w = w_qkv[:, i * units : (i + 1) * units].reshape(D, heads, key_dim)
        b = b_qkv[i * units : (i + 1) * units].reshape(heads, key_dim)
        dense.kernel.assign(w)
        dense.bias.assign(b)
    w_o = ours.output_dense.kernel.numpy().reshape(heads, key_dim, D)
    theirs._output_dense.kernel.assign(w_o)
    theirs._output_dense.bias.assign(ours.output_dense.bias.numpy())


@pytest.mark.parametrize("causal", [False, True])
def test_matches_keras_multi_head_attention(causal):
    x = _x()
    padding = np.ones((B, T), bool)
    padding[1, 4:] = False
    ours = MultiHeadAttention(num_heads=2, key_dim=8)
    ours(x)
    theirs = keras.layers.MultiHeadAttention(num_heads=2, key_dim=8)
    theirs(x, x)
    _copy_into_keras_mha(ours, theirs, 2, 8)
    expected = theirs(
        x,
        x,
        attention_mask=np.broadcast_to(padding[:, None, :], (B, T, T)),
        use_causal_mask=causal,
    )
    got = ours(x, padding_mask=padding, use_causal_mask=causal)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_cached_decoding_matches_full_pass():
    x = _x()
    layer = MultiHeadAttention(
        num_heads=2, key_dim=8, rotary_max_wavelength=100
    )
    full = layer(x, use_causal_mask=True)
    cache = np.zeros((B, 2, T, 2, 8), "float32")
    # Seed with the first 3 positions, then one position at a time.
    out, cache = layer(
        x[:, :3], use_causal_mask=True, cache=cache, cache_update_index=0
    )
    steps = [out]
    for i in range(3, T):
        out, cache = layer(
            x[:, i : i + 1],
            use_causal_mask=True,
            cache=cache,
            cache_update_index=i,
        )
        steps.append(out)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)


def test_causal_outputs_ignore_the_future():
    x = _x()
    layer = MultiHeadAttention(num_heads=2, key_dim=8)
    changed = x.copy()
    changed[:, 4:] += 10.0
    a = layer(x, use_causal_mask=True)
    b = layer(changed, use_causal_mask=True)
    np.testing.assert_allclose(a[:, :4], b[:, :4], atol=1e-6)
    assert not np.allclose(a[:, 4:], b[:, 4:])


def test_attention_dropout_only_in_training():
    x = _x()
    layer = MultiHeadAttention(num_heads=2, key_dim=8, dropout=0.5)
    inference = layer(x, training=False)
    np.testing.assert_allclose(inference, layer(x, training=False))
    assert not np.allclose(layer(x, training=True), inference)


def test_attention_mask_and_padding_mask_combine():
    x = _x()
    layer = MultiHeadAttention(num_heads=2, key_dim=8)
    padding = np.ones((B, T), bool)
    padding[:, -1] = False
    attention = np.ones((B, T, T), bool)
    attention[:, :, 0] = False
    both = attention & padding[:, None, :]
    np.testing.assert_allclose(
        layer(x, padding_mask=padding, attention_mask=attention),
        layer(x, attention_mask=both),
        atol=1e-6,
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_heads=0, key_dim=8), "num_heads"),
        (dict(num_heads=2, key_dim=-1), "key_dim"),
        (dict(num_heads=3, key_dim=8, num_key_value_heads=2), "divisible"),
        (dict(num_heads=2, key_dim=8, dropout=1.5), "dropout"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MultiHeadAttention(**kwargs)


def test_bad_inputs():
    layer = MultiHeadAttention(num_heads=2, key_dim=8)
    with pytest.raises(ValueError, match="rank 3"):
        layer(np.zeros((2, 16), "float32"))
    layer = MultiHeadAttention(num_heads=2, key_dim=8)
    layer(_x())
    with pytest.raises(ValueError, match="self-attention"):
        layer(_x(), _x())


def test_registry():
    assert "dense" in registered_attention_names()
    layer = get_attention("dense", num_heads=2, key_dim=4)
    assert isinstance(layer, MultiHeadAttention)
    assert get_attention(layer) is layer
    config = keras.saving.serialize_keras_object(layer)
    assert isinstance(get_attention(config), MultiHeadAttention)
    with pytest.raises(ValueError, match="Unknown attention 'nope'"):
        get_attention("nope", num_heads=2, key_dim=4)
    with pytest.raises(TypeError, match="registered name"):
        get_attention(3)
