import keras_hub
import numpy as np
import pytest

from keras_llm.data import default_corpus
from keras_llm.data import learn_tokenizer
from keras_llm.data import load_tokenizer
from keras_llm.data import save_tokenizer
from keras_llm.errors import UserError


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
