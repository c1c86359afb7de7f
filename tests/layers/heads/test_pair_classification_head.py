import keras
import numpy as np
import pytest

from keras_llm.layers.heads import PairClassificationHead
from tests.layer_test_case import run_layer_test

B, T, D = 2, 7, 8

# [CLS] p p [SEP] h [SEP] pad  /  [CLS] p [SEP] h h h [SEP]
SEGMENTS = np.array([[0, 0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 1, 1]], "int32")
PADDING = np.array([[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1]], "int32")


def _x(seed=0):
    return np.random.default_rng(seed).normal(size=(B, T, D)).astype("float32")


@pytest.mark.parametrize("pooling", ["cls", "segments"])
def test_layer_contract(pooling):
    run_layer_test(
        PairClassificationHead,
        dict(num_classes=3, pooling=pooling, intermediate_dim=4, dropout=0.1),
        {None: _x(), "segment_ids": SEGMENTS, "padding_mask": PADDING},
        expected_output_shape=(B, 3),
        expected_num_trainable_weights=4,
        float32_output=True,
    )


def test_segment_features_formula():
    head = PairClassificationHead(pooling="segments")
    x = _x()
    features = keras.ops.convert_to_numpy(
        head.segment_features(x, SEGMENTS, PADDING)
    )
    for b in range(B):
        valid = PADDING[b] == 1
        u = x[b, valid & (SEGMENTS[b] == 0)].mean(0)
        v = x[b, valid & (SEGMENTS[b] == 1)].mean(0)
        expected = np.concatenate([u, v, np.abs(u - v), u * v])
        np.testing.assert_allclose(features[b], expected, atol=1e-5)
    out = head(x, segment_ids=SEGMENTS, padding_mask=PADDING)
    assert head.pooler_dense.kernel.shape == (4 * D, D)
    assert out.shape == (B, 3)


def test_swapping_segments_changes_the_prediction():
    head = PairClassificationHead(pooling="segments")
    x = _x()
    base = head.segment_features(x, SEGMENTS, PADDING)
    swapped_ids = np.where(PADDING == 1, 1 - SEGMENTS, 0)
    swapped = keras.ops.convert_to_numpy(
        head.segment_features(x, swapped_ids, PADDING)
    )
    base = keras.ops.convert_to_numpy(base)
    u, v, rest = base[:, :D], base[:, D : 2 * D], base[:, 2 * D :]
    # u and v trade places, the symmetric features stay.
    np.testing.assert_allclose(swapped[:, :D], v, atol=1e-6)
    np.testing.assert_allclose(swapped[:, D : 2 * D], u, atol=1e-6)
    np.testing.assert_allclose(swapped[:, 2 * D :], rest, atol=1e-6)
    assert not np.allclose(swapped, base, atol=1e-3)
    logits = head(x, segment_ids=SEGMENTS, padding_mask=PADDING)
    logits_swapped = head(x, segment_ids=swapped_ids, padding_mask=PADDING)
    assert not np.allclose(logits, logits_swapped, atol=1e-4)


def test_segments_pooling_ignores_padding():
    head = PairClassificationHead(pooling="segments")
    x = _x()
    base = keras.ops.convert_to_numpy(
        head(x, segment_ids=SEGMENTS, padding_mask=PADDING)
    )
    changed = x.copy()
    changed[0, 6] = 50.0
    np.testing.assert_allclose(
        head(changed, segment_ids=SEGMENTS, padding_mask=PADDING),
        base,
        atol=1e-5,
    )
    # Without the padding mask the padded token counts as premise.
    unmasked = keras.ops.convert_to_numpy(head(changed, segment_ids=SEGMENTS))
    assert not np.allclose(unmasked[0], base[0], atol=1e-3)


def test_float32_logits_under_mixed_bfloat16():
    keras.config.set_dtype_policy("mixed_bfloat16")
    head = PairClassificationHead(pooling="segments")
    out = head(_x(), segment_ids=SEGMENTS, padding_mask=PADDING)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"


def test_bad_arguments():
    with pytest.raises(ValueError, match="segment_ids"):
        PairClassificationHead(pooling="segments")(_x())
    with pytest.raises(ValueError, match="pooling"):
        PairClassificationHead(pooling="mean")
    with pytest.raises(ValueError, match="num_classes"):
        PairClassificationHead(num_classes=-1)
    with pytest.raises(ValueError, match="segment_ids"):
        PairClassificationHead(pooling="segments")(
            _x(), segment_ids=SEGMENTS[:, :, None]
        )
