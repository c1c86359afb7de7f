import keras
import numpy as np
import pytest

from keras_llm.layers.heads import SpanQAHead
from keras_llm.layers.heads import best_spans
from tests.layer_test_case import run_layer_test

B, T, D = 2, 8, 16

CONTEXT = np.array([[0, 0, 0, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1, 1, 1]])


def _x(seed=0):
    return np.random.default_rng(seed).normal(size=(B, T, D)).astype("float32")


@keras.saving.register_keras_serializable(package="keras_llm_tests")
class StackedSpanQAHead(SpanQAHead):
    """The head with its two outputs stacked into one `(B, T, 2)` tensor, so
    the shared layer test (one output tensor) can run on it."""

    def call(self, sequence_output, context_mask=None, training=None):
        out = super().call(sequence_output, context_mask, training)
        return keras.ops.stack(
            [out["start_logits"], out["end_logits"]], axis=-1
        )


def test_layer_contract():
    run_layer_test(
        StackedSpanQAHead,
        dict(max_answer_length=4),
        {None: _x(), "context_mask": CONTEXT.astype("int32")},
        expected_output_shape=(B, T, 2),
        expected_num_trainable_weights=2,
        float32_output=True,
    )


def _brute_force(start, end, mask, max_answer_length):
    results = []
    for b in range(start.shape[0]):
        best = (0, 0, -np.inf)
        for i in range(start.shape[1]):
            for j in range(start.shape[1]):
                if j < i or j >= i + max_answer_length:
                    continue
                if mask is not None and not (mask[b, i] and mask[b, j]):
                    continue
                score = float(start[b, i]) + float(end[b, j])
                if score > best[2]:
                    best = (i, j, score)
        results.append(best)
    return [np.array(r) for r in zip(*results)]


def test_best_spans_matches_brute_force():
    for seed in range(6):
        for max_answer_length in (1, 3, 30):
            for masked in (False, True):
                _check_against_brute_force(seed, max_answer_length, masked)


def _check_against_brute_force(seed, max_answer_length, masked):
    rng = np.random.default_rng(seed)
    batch, length = 4, int(rng.integers(1, 13))
    start = rng.normal(size=(batch, length)).astype("float32")
    end = rng.normal(size=(batch, length)).astype("float32")
    mask = None
    if masked:
        mask = rng.random((batch, length)) < 0.6
        mask[0] = False  # a row with no allowed span
    got = best_spans(start, end, mask, max_answer_length=max_answer_length)
    want = _brute_force(start, end, mask, max_answer_length)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[2], want[2], rtol=1e-12)
    assert np.all(got[1] >= got[0])
    assert np.all(got[1] - got[0] < max_answer_length)
    if masked:
        assert (got[0][0], got[1][0], got[2][0]) == (0, 0, -np.inf)


def test_max_answer_length_limits_the_span():
    start = np.array([[0.0, 5.0, 1.0, 0.0, 0.0]])
    end = np.array([[0.0, 0.0, 1.0, 0.0, 9.0]])
    assert [int(a[0]) for a in best_spans(start, end)[:2]] == [1, 4]
    assert [int(a[0]) for a in best_spans(start, end, None, 3)[:2]] == [2, 4]
    assert [int(a[0]) for a in best_spans(start, end, None, 1)[:2]] == [4, 4]
    head = SpanQAHead(max_answer_length=1)
    assert int(head.decode(start, end)[0][0]) == 4
    assert int(head.decode(start, end, max_answer_length=30)[0][0]) == 1


def test_masked_positions_get_large_negative_logits_and_are_never_chosen():
    head = SpanQAHead()
    # Large activations so the unmasked logits would favour any position.
    x = 10.0 * _x()
    out = head(x, context_mask=CONTEXT)
    start = keras.ops.convert_to_numpy(out["start_logits"])
    end = keras.ops.convert_to_numpy(out["end_logits"])
    assert start.shape == end.shape == (B, T)
    np.testing.assert_array_equal(start[CONTEXT == 0], -1e9)
    np.testing.assert_array_equal(end[CONTEXT == 0], -1e9)
    assert np.all(start[CONTEXT == 1] > -1e3)
    # decode on the masked logits alone (no mask passed) stays in context.
    s, e, score = head.decode(start, end)
    assert np.all(CONTEXT[np.arange(B), s] == 1)
    assert np.all(CONTEXT[np.arange(B), e] == 1)
    assert np.all(score > -1e3)
    # The same as decoding the raw logits with the mask.
    raw = head(x)
    s2, e2, _ = best_spans(raw["start_logits"], raw["end_logits"], CONTEXT)
    np.testing.assert_array_equal(s, s2)
    np.testing.assert_array_equal(e, e2)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_float32_logits_under_mixed_precision(policy):
    head = SpanQAHead(dtype=policy)
    out = head(_x(), context_mask=CONTEXT)
    for name in ("start_logits", "end_logits"):
        assert keras.backend.standardize_dtype(out[name].dtype) == "float32"
        values = keras.ops.convert_to_numpy(out[name])
        assert np.all(np.isfinite(values))
        np.testing.assert_array_equal(values[CONTEXT == 0], -1e9)


def test_predict_and_decode_in_a_model():
    seq = keras.Input((T, D))
    mask = keras.Input((T,), dtype="int32")
    head = SpanQAHead(max_answer_length=2)
    model = keras.Model([seq, mask], head(seq, context_mask=mask))
    out = model.predict([_x(), CONTEXT.astype("int32")], verbose=0)
    assert set(out) == {"start_logits", "end_logits"}
    s, e, _ = head.decode(out["start_logits"], out["end_logits"], CONTEXT)
    assert s.shape == e.shape == (B,)
    assert np.all((e >= s) & (e - s < 2))


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_answer_length"):
        SpanQAHead(max_answer_length=0)
    with pytest.raises(ValueError, match="same shape"):
        best_spans(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="context_mask"):
        best_spans(np.zeros((2, 3)), np.zeros((2, 3)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="max_answer_length"):
        best_spans(np.zeros((2, 3)), np.zeros((2, 3)), max_answer_length=0)
    with pytest.raises(ValueError, match="context_mask"):
        SpanQAHead()(_x(), context_mask=np.ones((B,)))
