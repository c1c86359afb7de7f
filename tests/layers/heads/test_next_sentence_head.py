import keras
import numpy as np
import pytest

from keras_llm.layers.heads import NextSentenceHead
from tests.layer_test_case import run_layer_test

B, T, D = 2, 5, 16


def _x(seed=0):
    return np.random.default_rng(seed).normal(size=(B, T, D)).astype("float32")


def test_layer_contract():
    run_layer_test(
        NextSentenceHead,
        dict(intermediate_dim=8, dropout=0.1, activation="tanh"),
        _x(),
        expected_output_shape=(B, 2),
        expected_num_trainable_weights=4,
        float32_output=True,
    )


def test_formula_uses_cls_pooler_then_classifier():
    head = NextSentenceHead()
    x = _x()
    out = keras.ops.convert_to_numpy(head(x))
    pooler, logits = head.pooler_dense, head.logits_dense
    pooled = np.tanh(x[:, 0] @ pooler.kernel.numpy() + pooler.bias.numpy())
    expected = pooled @ logits.kernel.numpy() + logits.bias.numpy()
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert pooler.kernel.shape == (D, D)  # intermediate_dim=None: hidden


def test_uses_only_position_zero():
    head = NextSentenceHead()
    x = _x()
    base = keras.ops.convert_to_numpy(head(x))
    other = x.copy()
    other[:, 1:] = _x(1)[:, 1:]
    np.testing.assert_allclose(head(other), base, atol=1e-6)
    other = x.copy()
    other[:, 0] = _x(1)[:, 0]
    assert not np.allclose(head(other), base, atol=1e-3)


def test_float32_logits_under_mixed_bfloat16():
    keras.config.set_dtype_policy("mixed_bfloat16")
    head = NextSentenceHead()
    out = head(_x())
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    assert head.pooler_dense.compute_dtype == "bfloat16"


def test_bad_arguments():
    with pytest.raises(ValueError, match="intermediate_dim"):
        NextSentenceHead(intermediate_dim=0)
    with pytest.raises(ValueError, match="dropout"):
        NextSentenceHead(dropout=1.5)
    with pytest.raises(ValueError, match="activation"):
        NextSentenceHead(activation="no-such-activation")
    with pytest.raises(ValueError, match="NextSentenceHead.*sequence output"):
        NextSentenceHead()(np.zeros((2, 16), "float32"))
