"""Learning, saving and loading tokenizer vocabularies for the CLM path.

Vocabulary learning is keras-hub's (`compute_word_piece_vocabulary`) or, for
characters, `CharacterTokenizer.from_texts`; this module only picks one by
name and stores the result as one JSON file next to a model, so
`keras-llm generate` can find it.
"""

import json
import os

import keras
import keras_hub
import tensorflow as tf

from keras_llm.data.character_tokenizer import CharacterTokenizer
from keras_llm.errors import UserError

TOKENIZER_KINDS = ("character", "wordpiece")
TOKENIZER_FILE = "tokenizer.json"


def learn_tokenizer(texts, kind="character", vocabulary_size=None):
    """Learns a tokenizer's vocabulary from documents.

    Args:
        texts: list of strings.
        kind: `"character"` (every character seen) or `"wordpiece"`
            (keras-hub `compute_word_piece_vocabulary` and
            `WordPieceTokenizer`). Defaults to `"character"`.
        vocabulary_size: int, the WordPiece vocabulary size. Ignored for
            characters. Defaults to `None` (8192 for WordPiece).

    Returns:
        A keras-hub tokenizer.
    """
    if kind not in TOKENIZER_KINDS:
        raise ValueError(
            f"Unknown tokenizer kind {kind!r}. Expected one of "
            f"{list(TOKENIZER_KINDS)}."
        )
    if kind == "character":
        return CharacterTokenizer.from_texts(texts)
    vocabulary_size = vocabulary_size or 8192
    if vocabulary_size <= 0:
        raise ValueError(
            f"`vocabulary_size` must be positive. Received: {vocabulary_size}."
        )
    # keras-hub treats a Python list as file paths, so pass a tf.data.Dataset.
    data = tf.data.Dataset.from_tensor_slices(list(texts)).batch(256)
    vocabulary = keras_hub.tokenizers.compute_word_piece_vocabulary(
        data,
        vocabulary_size=vocabulary_size,
        reserved_tokens=["[PAD]", "[UNK]", "[BOS]", "[EOS]"],
    )
    return keras_hub.tokenizers.WordPieceTokenizer(
        vocabulary=vocabulary, oov_token="[UNK]", dtype="int32"
    )


def save_tokenizer(tokenizer, path):
    """Writes a tokenizer (its config and vocabulary) as one JSON file.

    Args:
        tokenizer: a keras-hub tokenizer.
        path: a file path, or a folder (then `tokenizer.json` in it).

    Returns:
        The path written.
    """
    if os.path.isdir(path):
        path = os.path.join(path, TOKENIZER_FILE)
    payload = {
        "tokenizer": keras.saving.serialize_keras_object(tokenizer),
        "vocabulary": list(tokenizer.get_vocabulary()),
    }
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, ensure_ascii=False)
    os.replace(tmp, path)
    return path


def load_tokenizer(path):
    """Reads a tokenizer written by `save_tokenizer`.

    Args:
        path: the JSON file, or the folder holding `tokenizer.json`.

    Raises:
        ValueError: if the file is missing or is not a saved tokenizer.
    """
    if os.path.isdir(path):
        path = os.path.join(path, TOKENIZER_FILE)
    if not os.path.isfile(path):
        raise UserError(f"tokenizer file {path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            payload = json.load(f)
        config, vocabulary = payload["tokenizer"], payload["vocabulary"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not a keras_llm tokenizer file") from e
    tokenizer = keras.saving.deserialize_keras_object(config)
    tokenizer.set_vocabulary(vocabulary)
    return tokenizer
