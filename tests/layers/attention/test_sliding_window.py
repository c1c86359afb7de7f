import keras
import numpy as np
import pytest

from keras_llm.layers.attention import BaseAttention
from keras_llm.layers.attention import SlidingWindowAttention
from tests.layer_test_case import run_layer_test
from tests.layers.attention.comparison import assert_same_function

B, D = 2, 16


def _x(t, seed=0):
    return np.random.default_rng(seed).normal(size=(B, t, D)).astype("float32")


def test_layer_contract_causal_global_rotary_padding():
    # int32: Keras' fit under MirroredStrategy fails on any bool model
    # input (an AddN over bools), whatever the layer.
    mask = np.ones((B, 10), "int32")
    mask[1, 7:] = 0
    run_layer_test(
        SlidingWindowAttention,
        dict(
            num_heads=2,
            key_dim=8,
            window=4,
            num_global_tokens=1,
            rotary_max_wavelength=10000,
            dropout=0.1,
        ),
        {None: _x(10), "padding_mask": mask},
        call_kwargs=dict(use_causal_mask=True),
        expected_output_shape=(B, 10, D),
        expected_num_trainable_weights=8,
    )


def test_layer_contract_two_sided():
    run_layer_test(
        SlidingWindowAttention,
        dict(num_heads=2, key_dim=4, window=3),
        _x(7),
        expected_output_shape=(B, 7, D),
    )


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("t,window", [(10, 4), (13, 3), (16, 16), (9, 2)])
def test_equals_keras_band_mask(t, window, causal):
    """Forward and gradients equal Keras MHA(sliding_window=w) to 1e-5."""
    reference = keras.layers.MultiHeadAttention(
        num_heads=2, key_dim=8, sliding_window=window
    )
    reference(_x(t), _x(t))  # build
    layer = SlidingWindowAttention(num_heads=2, key_dim=8, window=window)
    assert_same_function(
        layer,
        _KerasSelfAttention(reference),
        _x(t),
        use_causal_mask=causal,
    )


@pytest.mark.parametrize("causal", [False, True])
def test_window_at_least_length_equals_dense(causal):
    reference = keras.layers.MultiHeadAttention(num_heads=2, key_dim=8)
    reference(_x(9), _x(9))
    layer = SlidingWindowAttention(num_heads=2, key_dim=8, window=12)
    assert_same_function(
        layer, _KerasSelfAttention(reference), _x(9), use_causal_mask=causal
    )


@pytest.mark.parametrize("causal", [False, True])
def test_global_tokens_equal_dense_under_the_longformer_mask(causal):
    t, window, g = 12, 3, 2
    pos = np.arange(t)
    allowed = np.abs(pos[:, None] - pos[None]) < window
    allowed |= (pos[None] < g) | (pos[:, None] < g)
    padding = np.ones((B, t), bool)
    padding[1, 9:] = False
    reference = BaseAttention(num_heads=2, key_dim=8)
    layer = SlidingWindowAttention(
        num_heads=2, key_dim=8, window=window, num_global_tokens=g
    )
    assert_same_function(
        layer,
        reference,
        _x(t),
        ref_kwargs=dict(
            attention_mask=np.broadcast_to(allowed, (B, t, t)),
            padding_mask=padding,
            use_causal_mask=causal,
        ),
        padding_mask=padding,
        use_causal_mask=causal,
    )


def test_unknown_length_and_jit_compiled_fit():
    inputs = keras.Input((None, D))
    outputs = SlidingWindowAttention(num_heads=2, key_dim=8, window=3)(
        inputs, use_causal_mask=True
    )
    model = keras.Model(inputs, outputs)
    model.compile("sgd", "mse", jit_compile=True)
    for t in (5, 11):
        history = model.fit(_x(t), _x(t, 1), verbose=0)
        assert np.isfinite(history.history["loss"][0])


def test_bad_arguments():
    with pytest.raises(ValueError, match="window"):
        SlidingWindowAttention(num_heads=2, key_dim=8, window=0)
    with pytest.raises(ValueError, match="num_global_tokens"):
        SlidingWindowAttention(num_heads=2, key_dim=8, num_global_tokens=-1)
    with pytest.raises(ValueError, match="sliding_window"):
        SlidingWindowAttention(num_heads=2, key_dim=8, sliding_window=4)
    layer = SlidingWindowAttention(num_heads=2, key_dim=8, window=2)
    with pytest.raises(ValueError, match="attention_mask"):
        layer(_x(4), attention_mask=np.ones((B, 4, 4), bool))
    with pytest.raises(ValueError, match="cross-attention"):
        layer(_x(4), _x(4))


class _KerasSelfAttention(keras.layers.Layer):
    """Keras MultiHeadAttention called as self-attention, for comparisons."""

    def __init__(self, mha):
        super().__init__()
        self.mha = mha

    def call(self, x, use_causal_mask=False):
        return self.mha(x, x, use_causal_mask=use_causal_mask)
