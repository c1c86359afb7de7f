import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_llm.data import CharacterTokenizer


def test_learns_sorted_vocabulary_with_oov_first():
    tok = CharacterTokenizer.from_texts(["hello", "world"])
    assert tok.get_vocabulary() == ["[UNK]", "d", "e", "h", "l", "o", "r", "w"]
    assert tok.vocabulary_size() == 8
    assert tok.id_to_token(3) == "h" and tok.token_to_id("h") == 3


def test_round_trip_and_oov():
    tok = CharacterTokenizer.from_texts(["hello world\n"])
    ids = tok.tokenize("hello\nworld")
    assert ids.shape == (11,)
    assert tok.detokenize(ids) == "hello\nworld"
    oov = tok.tokenize("hez")
    assert int(oov[-1]) == 0
    assert tok.detokenize(oov) == "he[UNK]"


def test_unicode_characters():
    tok = CharacterTokenizer.from_texts(["naïve café — ok"])
    text = "café — naïve"
    assert tok.detokenize(tok.tokenize(text)) == text


def test_batches_are_ragged_and_work_in_tf_data():
    tok = CharacterTokenizer.from_texts(["abc"])
    # Outside tf.data ragged batches come back as lists, like keras-hub's.
    assert tok.tokenize(["ab", "abc"]) == [[1, 2], [1, 2, 3]]
    ds = tf.data.Dataset.from_tensor_slices(["ab", "cab"]).map(tok.tokenize)
    assert [x.numpy().tolist() for x in ds] == [[1, 2], [3, 1, 2]]
    assert tok.detokenize([[1, 2], [3]]) == ["ab", "c"]


def test_serialization_keeps_vocabulary():
    tok = CharacterTokenizer.from_texts(["xyz"])
    revived = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(tok)
    )
    assert revived.get_vocabulary() == tok.get_vocabulary()
    np.testing.assert_array_equal(revived.tokenize("zyx"), tok.tokenize("zyx"))


def test_errors():
    with pytest.raises(ValueError, match="single characters"):
        CharacterTokenizer(vocabulary=["ab"])
    with pytest.raises(ValueError, match="repeated"):
        CharacterTokenizer(vocabulary=["a", "a"])
    with pytest.raises(ValueError, match="no vocabulary"):
        CharacterTokenizer().tokenize("a")
    with pytest.raises(ValueError, match="no text"):
        CharacterTokenizer.from_texts([""])
