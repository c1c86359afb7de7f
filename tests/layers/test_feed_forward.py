import math

import numpy as np
import pytest

from keras_llm.layers import FeedForward
from tests.layer_test_case import run_layer_test

X = np.random.default_rng(0).normal(size=(2, 3, 8)).astype("float32")


@pytest.mark.parametrize("activation", ["gelu", "swiglu", "relu"])
def test_layer_contract(activation):
    run_layer_test(
        FeedForward,
        dict(intermediate_dim=16, activation=activation, dropout=0.1),
        X,
        expected_output_shape=(2, 3, 8),
        expected_num_trainable_weights=4,
    )


def test_output_dim():
    assert FeedForward(16, output_dim=5)(X).shape == (2, 3, 5)


def test_swiglu_formula():
    layer = FeedForward(intermediate_dim=4, activation="swiglu", use_bias=False)
    out = layer(X)
    up = X @ layer.up_dense.kernel.numpy()
    gate, value = up[..., :4], up[..., 4:]
    silu = gate / (1.0 + np.exp(-gate))
    expected = (silu * value) @ layer.down_dense.kernel.numpy()
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_gelu_formula():
    layer = FeedForward(intermediate_dim=4, activation="gelu")
    out = layer(X)
    erf = np.vectorize(math.erf)
    h = X @ layer.up_dense.kernel.numpy() + layer.up_dense.bias.numpy()
    h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
    expected = (
        h @ layer.down_dense.kernel.numpy() + layer.down_dense.bias.numpy()
    )
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="intermediate_dim"):
        FeedForward(0)
    with pytest.raises(ValueError, match="activation"):
        FeedForward(4, activation="not-an-activation")
