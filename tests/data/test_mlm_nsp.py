import math

import keras_hub
import numpy as np
import pytest

from keras_llm.data import learn_mlm_tokenizer
from keras_llm.data import mlm_nsp_dataset
from keras_llm.data import split_sentences
from keras_llm.data.mlm_nsp import SPECIAL_TOKENS

NUM_DOCS, NUM_SENTENCES = 6, 8


def _documents():
    """Documents as lists of sentences; sentence `s` of document `d` repeats
    the word `d{d}s{s}` 1 to 4 times, so every token names its sentence."""
    rng = np.random.default_rng(0)
    return [
        [
            " ".join([f"d{d}s{s}"] * int(rng.integers(1, 5)))
            for s in range(NUM_SENTENCES)
        ]
        for d in range(NUM_DOCS)
    ]


@pytest.fixture(scope="module")
def tokenizer():
    words = [f"d{d}s{s}" for d in range(NUM_DOCS) for s in range(NUM_SENTENCES)]
    return keras_hub.tokenizers.WordPieceTokenizer(
        vocabulary=list(SPECIAL_TOKENS) + words,
        oov_token="[UNK]",
        dtype="int32",
    )


@pytest.fixture(scope="module")
def examples(tokenizer):
    """About 1000 examples as numpy arrays, with the original (unmasked)
    token ids recovered from the MLM labels."""
    ds = mlm_nsp_dataset(
        _documents(),
        tokenizer,
        sequence_length=32,
        batch_size=50,
        max_predictions=32,
        seed=7,
        repeat=True,
    )
    out = {}
    for features, labels, weights in ds.take(20):
        batch = {k: v.numpy() for k, v in features.items()}
        batch["mlm"] = labels["mlm"].numpy()
        batch["nsp"] = labels["nsp"].numpy()
        batch["mask_weights"] = weights["mlm"].numpy()
        batch["nsp_weights"] = weights["nsp"].numpy()
        for k, v in batch.items():
            out.setdefault(k, []).append(v)
    out = {k: np.concatenate(v) for k, v in out.items()}
    original = out["token_ids"].copy()
    for i in range(len(original)):
        real = out["mask_weights"][i] > 0
        original[i, out["mask_positions"][i][real]] = out["mlm"][i][real]
    out["original"] = original
    return out


def _ids(tokenizer):
    return {t: tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}


def _sentence_of(tokenizer, token_id):
    word = tokenizer.id_to_token(int(token_id))
    d, s = word[1:].split("s")
    return int(d), int(s)


def _runs(tokenizer, ids):
    """The (document, sentence) of each run of equal tokens."""
    runs = []
    for token_id in ids:
        key = _sentence_of(tokenizer, token_id)
        if not runs or runs[-1] != key:
            runs.append(key)
    return runs


def test_shapes_and_dtypes(examples):
    assert examples["token_ids"].shape == (1000, 32)
    for name in ("segment_ids", "padding_mask", "original"):
        assert examples[name].shape == (1000, 32)
    for name in ("mask_positions", "mlm", "mask_weights"):
        assert examples[name].shape == (1000, 32)
    assert examples["token_ids"].dtype == np.int32
    assert examples["mask_weights"].dtype == np.float32
    np.testing.assert_array_equal(examples["nsp_weights"], 1.0)


def test_packing_segments_and_padding(examples, tokenizer):
    ids = _ids(tokenizer)
    for i in range(len(examples["original"])):
        row = examples["original"][i]
        seps = np.where(row == ids["[SEP]"])[0]
        assert row[0] == ids["[CLS]"] and len(seps) == 2
        a_end, b_end = seps
        assert a_end > 1 and b_end > a_end + 1  # both segments non-empty
        expected_segments = np.zeros(32, np.int32)
        expected_segments[a_end + 1 : b_end + 1] = 1
        np.testing.assert_array_equal(
            examples["segment_ids"][i], expected_segments
        )
        np.testing.assert_array_equal(
            examples["padding_mask"][i], np.arange(32) <= b_end
        )
        np.testing.assert_array_equal(row[b_end + 1 :], ids["[PAD]"])
        # Padding is never replaced by the masker.
        np.testing.assert_array_equal(
            examples["token_ids"][i][b_end + 1 :], ids["[PAD]"]
        )


def test_next_sentence_labels_are_right(examples, tokenizer):
    ids = _ids(tokenizer)
    labels = examples["nsp"]
    for i in range(len(labels)):
        row = examples["original"][i]
        a_end, b_end = np.where(row == ids["[SEP]"])[0]
        a = _runs(tokenizer, row[1:a_end])
        b = _runs(tokenizer, row[a_end + 1 : b_end])
        # Each segment is consecutive sentences of one document.
        for segment in (a, b):
            assert len({d for d, _ in segment}) == 1
            assert [s for _, s in segment] == list(
                range(segment[0][1], segment[0][1] + len(segment))
            )
        if labels[i] == 1:
            assert b[0] == (a[-1][0], a[-1][1] + 1)  # B follows A
        else:
            assert b[0][0] != a[0][0]  # B from another document
    assert 0.43 < labels.mean() < 0.57


def test_masking_rate_split_and_special_tokens(examples, tokenizer):
    ids = _ids(tokenizer)
    special = list(ids.values())
    selected = examples["mask_weights"] > 0
    eligible = ~np.isin(examples["original"], special)
    # Exactly ceil(15%) of each example's non-special tokens are selected.
    counts = selected.sum(axis=1)
    expected = np.ceil(0.15 * eligible.sum(axis=1)).astype(int)
    np.testing.assert_array_equal(counts, expected)
    assert 0.15 <= counts.sum() / eligible.sum() < 0.2
    rows, slots = np.nonzero(selected)
    positions = examples["mask_positions"][rows, slots]
    original = examples["original"][rows, positions]
    assert not np.isin(original, special).any()  # never a special token
    np.testing.assert_array_equal(original, examples["mlm"][rows, slots])
    assert len(np.unique(positions + 100 * rows)) == len(rows)
    replaced = examples["token_ids"][rows, positions]
    as_mask = np.mean(replaced == ids["[MASK]"])
    kept = np.mean(replaced == original)
    other = 1 - as_mask - kept
    assert len(rows) > 2500
    assert abs(as_mask - 0.8) < 0.03
    assert abs(kept - 0.1) < 0.03  # plus the rare random draw of itself
    assert abs(other - 0.1) < 0.03
    # Tokens outside the selection are untouched.
    changed = examples["token_ids"] != examples["original"]
    changed[rows, positions] = False
    assert not changed.any()


def _unmasked(features, labels, weights):
    original = features["token_ids"].copy()
    for i in range(len(original)):
        real = weights["mlm"][i] > 0
        original[i, features["mask_positions"][i][real]] = labels["mlm"][i][
            real
        ]
    return original


def test_deterministic_with_a_seed_and_fresh_each_pass(tokenizer):
    def batches(seed, count=3, repeat=False, shuffle=True):
        """Per batch: token ids, segment ids, labels and unmasked ids."""
        ds = mlm_nsp_dataset(
            _documents(),
            tokenizer,
            24,
            6,
            seed=seed,
            repeat=repeat,
            shuffle=shuffle,
        )
        return np.stack(
            [
                np.concatenate(
                    [
                        f["token_ids"],
                        f["segment_ids"],
                        labels["nsp"][:, None],
                        _unmasked(f, labels, w),
                    ],
                    axis=1,
                )
                for f, labels, w in ds.take(count).as_numpy_iterator()
            ]
        )

    # Another build with the seed gives the same batches (its endless
    # stream starts like the finite one); another seed others.
    first = batches(3)
    np.testing.assert_array_equal(batches(3, repeat=True), first)
    assert not np.array_equal(first, batches(4))
    # 42 sentences have a successor: 7 batches of 6 per pass. Without
    # shuffling both passes start from the same sentences in the same order
    # (the unmasked token after [CLS]); their pairs and masks are drawn
    # afresh.
    passes = batches(3, count=14, repeat=True, shuffle=False)
    first_pass, second_pass = passes[:7], passes[7:]
    label, first_token = 48, 50
    np.testing.assert_array_equal(
        first_pass[:, :, first_token], second_pass[:, :, first_token]
    )
    assert not np.array_equal(first_pass[:, :, :24], second_pass[:, :, :24])
    assert not np.array_equal(first_pass[:, :, label], second_pass[:, :, label])


def test_text_documents_and_sentence_splitting():
    assert split_sentences("One. Two\nstill two?\n\nThree") == [
        "One.",
        "Two still two?",
        "Three",
    ]
    assert split_sentences("Wow! Really?  Yes.") == ["Wow!", "Really?", "Yes."]
    assert split_sentences(" \n\n ") == []
    documents = [
        "The cat sat. It purred. Then it slept on the mat.",
        "Rain fell all day. The river rose. Boats stayed home.",
    ]
    tokenizer = learn_mlm_tokenizer(documents, vocabulary_size=100)
    assert tokenizer.get_vocabulary()[:5] == list(SPECIAL_TOKENS)
    ds = mlm_nsp_dataset(
        documents, tokenizer, sequence_length=16, batch_size=4, seed=0
    )
    assert ds.cardinality() == 1  # 4 sentences with a successor
    features, labels, weights = next(iter(ds))
    assert features["token_ids"].shape == (4, 16)
    assert features["mask_positions"].shape == (4, math.ceil(0.15 * 16))
    assert labels["nsp"].shape == (4,) and weights["mlm"].shape == (4, 3)


def test_clear_errors(tokenizer):
    documents = _documents()
    with pytest.raises(ValueError, match="at least 2 documents"):
        mlm_nsp_dataset(documents[:1], tokenizer, 16, 2)
    with pytest.raises(ValueError, match="at least 2 documents"):
        mlm_nsp_dataset([documents[0], ["", " "]], tokenizer, 16, 2)
    with pytest.raises(ValueError, match="2 sentences"):
        mlm_nsp_dataset([["d0s0"], ["d1s0"]], tokenizer, 16, 2)
    plain = keras_hub.tokenizers.WordPieceTokenizer(
        vocabulary=["[PAD]", "[UNK]", "[BOS]", "[EOS]", "d0s0"]
    )
    with pytest.raises(ValueError, match=r"\[CLS\].*learn_mlm_tokenizer"):
        mlm_nsp_dataset(documents, plain, 16, 2)
    with pytest.raises(ValueError, match="fewer than one batch"):
        mlm_nsp_dataset(documents, tokenizer, 16, 1000)
    with pytest.raises(ValueError, match="mask_rate"):
        mlm_nsp_dataset(documents, tokenizer, 16, 2, mask_rate=0.0)
    with pytest.raises(ValueError, match="sequence_length"):
        mlm_nsp_dataset(documents, tokenizer, 4, 2)
    with pytest.raises(TypeError, match="documents"):
        mlm_nsp_dataset("one text", tokenizer, 16, 2)
    with pytest.raises(TypeError, match="document 1"):
        mlm_nsp_dataset([documents[0], 3], tokenizer, 16, 2)
    with pytest.raises(ValueError, match="vocabulary_size"):
        learn_mlm_tokenizer(["a b c"], vocabulary_size=5)
