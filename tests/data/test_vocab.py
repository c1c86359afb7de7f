import json
import os
import random

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from keras_llm.data import default_corpus
from keras_llm.data import learn_tokenizer
from keras_llm.data import load_tokenizer
from keras_llm.data import save_tokenizer
from keras_llm.data import vocab
from keras_llm.data.vocab import VOCABULARY_KINDS
from keras_llm.data.vocab import ByteLevelBytePairTokenizer
from keras_llm.data.vocab import bpe_tokenizer_from
from keras_llm.data.vocab import train_byte_level_bpe
from keras_llm.data.vocab import vocabulary_coverage
from keras_llm.errors import UserError

SIZES = {"character": 40, "wordpiece": 400, "sentencepiece": 300, "bpe": 500}
# Held-out text the corpus never shows: accents, CJK, emoji (4-byte UTF-8),
# a math letter, digits, runs of spaces and newlines, a tab.
UNSEEN = [
    "Héllo wörld, naïve café 😀🎉 and 中文 text",
    "numbers 1234567 and 3.14159, 𝔘𝔫𝔦",
    "  leading,   runs  of spaces\n\n\nand\ttabs  ",
]


def _words(seed=0, count=300):
    rng = random.Random(seed)
    syllables = ["ka", "ro", "mi", "ten", "su", "lo", "va", "ne", "pi", "dor"]
    return [
        "".join(rng.choice(syllables) for _ in range(rng.randint(1, 4)))
        for _ in range(count)
    ]


def _corpus(documents, seed, words=None):
    """Zipf-distributed words from a fixed lexicon, with some punctuation."""
    rng = random.Random(seed)
    words = words or _words()
    weights = [1 / (i + 1) for i in range(len(words))]
    docs = []
    for _ in range(documents):
        sentences = [
            " ".join(rng.choices(words, weights, k=rng.randint(4, 15)))
            + rng.choice([".", "!", "?", ","])
            for _ in range(rng.randint(2, 6))
        ]
        docs.append(" ".join(sentences))
    return docs


@pytest.fixture(scope="module")
def corpus():
    return _corpus(300, seed=1)


@pytest.fixture(scope="module")
def held_out():
    return _corpus(30, seed=2)


@pytest.fixture(scope="module")
def learned(corpus):
    """One tokenizer per kind, learned from a generator (a stream)."""
    return {
        kind: learn_tokenizer((t for t in corpus), kind, SIZES[kind])
        for kind in VOCABULARY_KINDS
    }


def _ids(tokenizer, texts):
    out = tokenizer.tokenize(list(texts))
    if isinstance(out, tf.RaggedTensor):
        return out.to_list()
    return [np.asarray(row).tolist() for row in out]


def _ids_in_tf_data(tokenizer, texts):
    data = tf.data.Dataset.from_tensor_slices(list(texts)).batch(len(texts))
    return data.map(tokenizer.tokenize).get_single_element().to_list()


def test_character_vocabulary_of_the_embedded_corpus():
    tok = learn_tokenizer(default_corpus())
    assert 90 <= tok.vocabulary_size() <= 120


def test_wordpiece_learns_and_round_trips(tmp_path):
    docs = default_corpus()[:10]
    tok = learn_tokenizer(docs, kind="wordpiece", vocabulary_size=300)
    assert isinstance(tok, keras_hub.tokenizers.WordPieceTokenizer)
    assert 200 <= tok.vocabulary_size() <= 300
    ids = tok.tokenize("the statement is executed")
    ids = np.asarray(ids).tolist()
    assert len(ids) >= 4 and tok.token_to_id("[UNK]") not in ids
    path = save_tokenizer(tok, str(tmp_path))
    loaded = load_tokenizer(path)
    assert loaded.get_vocabulary() == tok.get_vocabulary()
    np.testing.assert_array_equal(
        loaded.tokenize("the statement"), tok.tokenize("the statement")
    )


def test_character_save_load(tmp_path):
    tok = learn_tokenizer(["abc"])
    loaded = load_tokenizer(save_tokenizer(tok, str(tmp_path / "t.json")))
    assert loaded.get_vocabulary() == tok.get_vocabulary()


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="Unknown tokenizer kind"):
        learn_tokenizer(["a"], kind="bpe-magic")
    with pytest.raises(UserError, match="does not exist"):
        load_tokenizer(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="not a keras_llm tokenizer"):
        load_tokenizer(str(bad))


@pytest.mark.parametrize("kind", VOCABULARY_KINDS)
def test_each_kind_respects_the_size_and_round_trips(kind, learned, corpus):
    tok = learned[kind]
    assert vocab.tokenizer_kind(tok) == kind
    assert 0 < tok.vocabulary_size() <= SIZES[kind]
    # Text in the corpus's alphabet, single-spaced, no punctuation: every
    # kind gives it back exactly (WordPiece and SentencePiece normalise
    # spacing and split punctuation, so only such text is exact for them).
    plain = " ".join(_corpus(3, seed=7)).replace(",", "").replace(".", "")
    plain = " ".join(plain.replace("!", "").replace("?", "").split())
    assert tok.detokenize(tok.tokenize(plain)) == plain
    if kind == "bpe":
        for text in UNSEEN + corpus[:5]:
            assert tok.detokenize(tok.tokenize(text)) == text


def test_character_vocabulary_size_keeps_the_most_frequent():
    tok = learn_tokenizer(["aaaa bbb cc d"], "character", vocabulary_size=4)
    assert tok.get_vocabulary() == ["[UNK]", " ", "a", "b"]
    ids = np.asarray(tok.tokenize("abcd")).tolist()
    assert ids == [2, 3, 0, 0]


def test_vocabulary_grows_with_the_requested_size(corpus):
    small = learn_tokenizer(corpus, "bpe", 300)
    large = learn_tokenizer(corpus, "bpe", 700)
    assert small.vocabulary_size() == 300
    assert 300 < large.vocabulary_size() <= 700


def test_sentencepiece_on_a_small_corpus_learns_what_it_can():
    # SentencePiece refuses more pieces than the text allows; the request
    # is an upper bound, as for the other kinds.
    tok = learn_tokenizer(["the cat sat on the mat"] * 5, "sentencepiece", 500)
    assert 5 <= tok.vocabulary_size() < 500
    assert tok.detokenize(tok.tokenize("the cat")) == "the cat"


def test_sentencepiece_lines_are_cut_below_its_sentence_limit():
    words = [f"wörd{i}" for i in range(2000)]  # ~14 kB, one line
    text = "first line\n\n" + " ".join(words)
    lines = list(vocab._sentencepiece_lines(text))
    assert lines[0] == "first line"
    limit = vocab.SENTENCEPIECE_MAX_LINE_BYTES
    assert all(len(line.encode("utf-8")) <= limit for line in lines)
    assert " ".join(lines[1:]).split() == words


@pytest.mark.parametrize("kind", VOCABULARY_KINDS)
def test_save_load_gives_identical_ids(kind, learned, held_out, tmp_path):
    tok = learned[kind]
    texts = held_out[:10] + UNSEEN
    expected = _ids(tok, texts)
    folder = tmp_path / "tok"
    folder.mkdir()
    path = save_tokenizer(tok, str(folder))
    assert path == os.path.join(str(folder), "tokenizer.json")
    with open(path, encoding="utf-8") as f:
        payload = json.load(f)
    assert payload["kind"] == kind
    for loaded in (
        load_tokenizer(str(folder)),
        load_tokenizer(save_tokenizer(tok, str(tmp_path / "single.json"))),
    ):
        assert type(loaded) is type(tok)
        assert list(loaded.get_vocabulary()) == list(tok.get_vocabulary())
        assert _ids(loaded, texts) == expected
    # The folder also holds keras-hub's asset files, which keras-hub's own
    # classes load to the same ids (inside tf.data for BPE).
    for name in payload.get("files", []):
        assert (folder / name).is_file()
    if kind == "wordpiece":
        plain = keras_hub.tokenizers.WordPieceTokenizer(
            vocabulary=str(folder / "vocabulary.txt"), oov_token="[UNK]"
        )
        assert _ids(plain, texts) == expected
    elif kind == "sentencepiece":
        plain = keras_hub.tokenizers.SentencePieceTokenizer(
            proto=str(folder / "vocabulary.spm")
        )
        assert _ids(plain, texts) == expected
    # (BPE's files: see test_bpe_keras_hub_ids_equal_tokenizers_ids.)


def test_bpe_keras_hub_ids_equal_tokenizers_ids(corpus, held_out, tmp_path):
    # Runs of spaces and newlines, so that merges like "ĠĠ" are learned.
    spaced = [d.replace(". ", ".\n\n").replace(", ", ",   ") for d in corpus]
    model = train_byte_level_bpe(iter(spaced), 500)
    assert "ĠĠ" in model.get_vocab()
    tok = bpe_tokenizer_from(model)
    assert isinstance(tok, keras_hub.tokenizers.BytePairTokenizer)
    assert tok.token_to_id("<|endoftext|>") == 0
    texts = held_out + UNSEEN + ["a  b", "x   y", "end <|endoftext|> next"]
    expected = [e.ids for e in model.encode_batch(texts)]
    assert _ids(tok, texts) == expected  # eager: the `tokenizers` path
    # A plain keras-hub BytePairTokenizer from the saved vocabulary.json and
    # merges.txt, inside tf.data (keras-hub's own TF ops).
    save_tokenizer(tok, str(tmp_path))
    plain = keras_hub.tokenizers.BytePairTokenizer(
        vocabulary=str(tmp_path / "vocabulary.json"),
        merges=str(tmp_path / "merges.txt"),
        unsplittable_tokens=["<|endoftext|>"],
    )
    # keras-hub's TF ops split a run of spaces that ends the text ("x  ")
    # in two, unlike GPT-2's regex; everywhere else they agree.
    stripped = [t.rstrip() for t in texts]
    expected = [e.ids for e in model.encode_batch(stripped)]
    assert _ids_in_tf_data(plain, stripped) == expected
    # `learn_tokenizer` trains the same model.
    learned = learn_tokenizer(spaced, "bpe", 500)
    assert isinstance(learned, ByteLevelBytePairTokenizer)
    assert dict(learned.vocabulary) == dict(tok.vocabulary)


def test_coverage_counts_unknowns_and_tokens(learned, corpus):
    texts = UNSEEN + ["plain ascii only"]
    wordpiece = vocabulary_coverage(learned["wordpiece"], texts)
    assert wordpiece["unknown_rate"] > 0
    assert wordpiece["words"] == sum(len(t.split()) for t in texts)
    assert wordpiece["characters"] == sum(len(t) for t in texts)
    assert wordpiece["documents"] == len(texts)
    ids = _ids(learned["wordpiece"], texts)
    assert wordpiece["tokens"] == sum(len(row) for row in ids)
    unk = learned["wordpiece"].token_to_id("[UNK]")
    assert wordpiece["unknown_tokens"] == sum(row.count(unk) for row in ids)
    assert wordpiece["tokens_per_word"] == pytest.approx(
        wordpiece["tokens"] / wordpiece["words"]
    )
    assert (
        wordpiece["vocabulary_size"] == learned["wordpiece"].vocabulary_size()
    )
    sentencepiece = vocabulary_coverage(learned["sentencepiece"], texts)
    assert sentencepiece["unknown_rate"] > 0
    character = vocabulary_coverage(learned["character"], iter(texts))
    assert character["unknown_rate"] > 0
    assert character["tokens_per_character"] == 1.0
    bpe = vocabulary_coverage(learned["bpe"], texts)
    assert bpe["unknown_rate"] == 0.0 and bpe["unknown_tokens"] == 0
    assert bpe["tokens"] > bpe["words"]
    # On text like the corpus, WordPiece knows every character.
    assert vocabulary_coverage(learned["wordpiece"], corpus[:20])[
        "unknown_rate"
    ] == pytest.approx(0.0)


@pytest.mark.parametrize(
    "kind,sizes",
    [("wordpiece", (60, 150, 500)), ("bpe", (270, 400, 800))],
)
def test_tokens_per_word_falls_as_the_vocabulary_grows(
    kind, sizes, corpus, held_out
):
    rates = [
        vocabulary_coverage(learn_tokenizer(corpus, kind, n), held_out)[
            "tokens_per_word"
        ]
        for n in sizes
    ]
    assert rates[0] > rates[1] > rates[2] >= 1.0


def test_bad_input_is_a_clear_error(learned):
    for size in (0, -5, True, 3.5, "100"):
        with pytest.raises(ValueError, match="vocabulary_size"):
            learn_tokenizer(["abc"], "wordpiece", size)
    with pytest.raises(ValueError, match="must be an int >= 257"):
        learn_tokenizer(["abc"], "bpe", 256)
    with pytest.raises(ValueError, match="must be an int >= 2"):
        learn_tokenizer(["abc"], "character", 1)
    for kind in VOCABULARY_KINDS:
        with pytest.raises(ValueError, match="got no text"):
            learn_tokenizer(iter(["", ""]), kind, 300)
    with pytest.raises(ValueError, match="text 1 is a int"):
        learn_tokenizer(["abc", 5], "bpe", 300)
    with pytest.raises(ValueError, match="text 1 is a bytes"):
        learn_tokenizer(["abc", b"x"], "wordpiece", 300)
    with pytest.raises(ValueError, match="got no text"):
        vocabulary_coverage(learned["bpe"], [])
    with pytest.raises(ValueError, match="cannot save a ByteTokenizer"):
        save_tokenizer(keras_hub.tokenizers.ByteTokenizer(), "unused.json")


def test_files_written_before_kinds_still_load(learned, tmp_path):
    # Format 1 (before "kind"): the keras config and the vocabulary only.
    tok = learned["wordpiece"]
    old = tmp_path / "old.json"
    payload = {
        "tokenizer": keras.saving.serialize_keras_object(tok),
        "vocabulary": list(tok.get_vocabulary()),
    }
    old.write_text(json.dumps(payload), encoding="utf-8")
    loaded = load_tokenizer(str(old))
    assert _ids(loaded, ["mika rosu"]) == _ids(tok, ["mika rosu"])
