import keras
import numpy as np
import pytest

from keras_llm.layers.heads import SequenceClassificationHead
from tests.layer_test_case import run_layer_test

B, T, D = 2, 6, 8


def _x(seed=0, batch=B):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(batch, T, D)).astype("float32")


PADDING = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], "int32")


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_layer_contract(pooling):
    run_layer_test(
        SequenceClassificationHead,
        dict(num_classes=3, pooling=pooling, intermediate_dim=4, dropout=0.1),
        {None: _x(), "padding_mask": PADDING},
        expected_output_shape=(B, 3),
        expected_num_trainable_weights=4,
        float32_output=True,
    )


def test_mean_pooling_ignores_padding():
    head = SequenceClassificationHead(3, pooling="mean")
    x = _x()
    base = keras.ops.convert_to_numpy(head(x, padding_mask=PADDING))
    changed = x.copy()
    changed[0, 4:] = 100.0 * _x(1)[0, 4:]
    np.testing.assert_allclose(
        head(changed, padding_mask=PADDING), base, atol=1e-5
    )
    # The padded row equals the same row cut to its 4 valid tokens.
    short = head(x[:1, :4])
    np.testing.assert_allclose(short, base[:1], atol=1e-5)
    # A valid token does count.
    changed = x.copy()
    changed[0, 2] += 1.0
    assert not np.allclose(head(changed, padding_mask=PADDING), base)


def test_cls_pooling_uses_position_zero_only():
    head = SequenceClassificationHead(3, pooling="cls")
    x = _x()
    base = keras.ops.convert_to_numpy(head(x))
    changed = x.copy()
    changed[:, 1:] = _x(1)[:, 1:]
    np.testing.assert_allclose(head(changed), base, atol=1e-6)


def test_float32_logits_under_mixed_bfloat16():
    head = SequenceClassificationHead(3, pooling="mean", dtype="mixed_bfloat16")
    out = head(_x(), padding_mask=PADDING)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_learns_a_separable_task(pooling):
    rng = np.random.default_rng(0)
    n, classes = 192, 3
    labels = rng.integers(0, classes, size=n)
    centers = 2.0 * rng.normal(size=(classes, D))
    x = rng.normal(size=(n, T, D)) + centers[labels][:, None, :]
    lengths = rng.integers(2, T + 1, size=n)
    padding = (np.arange(T)[None, :] < lengths[:, None]).astype("int32")
    # Padding carries a misleading signal that mean pooling must ignore.
    x[padding == 0] = 5.0 * centers[(labels + 1) % classes].repeat(
        T - lengths, axis=0
    )
    x = x.astype("float32")
    seq = keras.Input((T, D))
    mask = keras.Input((T,), dtype="int32")
    logits = SequenceClassificationHead(classes, pooling=pooling)(
        seq, padding_mask=mask
    )
    model = keras.Model([seq, mask], logits)
    model.compile(
        optimizer=keras.optimizers.Adam(0.02),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit([x, padding], labels, batch_size=32, epochs=8, verbose=0)
    _, accuracy = model.evaluate([x, padding], labels, verbose=0)
    assert accuracy > 0.95


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        SequenceClassificationHead(0)
    with pytest.raises(ValueError, match="pooling"):
        SequenceClassificationHead(2, pooling="max")
    with pytest.raises(ValueError, match="dropout"):
        SequenceClassificationHead(2, dropout=-0.1)
    with pytest.raises(ValueError, match="padding_mask"):
        SequenceClassificationHead(2, pooling="mean")(
            _x(), padding_mask=np.ones((B, T, 1))
        )
    with pytest.raises(ValueError, match="sequence output"):
        SequenceClassificationHead(2)(np.zeros((B, D), "float32"))
