"""Character-level tokenizer with a vocabulary learned from text.

keras-hub's `UnicodeCodepointTokenizer` maps characters to code points, which
gives a vocabulary as large as the highest code point; character-level LM
benchmarks (nanoGPT's shakespeare-char: 65 symbols) want the compact
vocabulary of the characters that occur. This is that, as a keras-hub
`Tokenizer` built on TF string and lookup ops, so it runs inside `tf.data`.
"""

import collections

import keras
import keras_hub
import numpy as np
import tensorflow as tf

# The wrapper every keras-hub tokenizer uses: TF inside tf.data, numpy and
# Python lists outside it (pinned with keras-hub 0.32).
from keras_hub.src.utils.tensor_utils import preprocessing_function


@keras.saving.register_keras_serializable(package="keras_llm")
class CharacterTokenizer(keras_hub.tokenizers.Tokenizer):
    """Maps each Unicode character to an id from a fixed vocabulary.

    Id 0 is the out-of-vocabulary token `oov_token`; characters of the
    vocabulary follow in the order given.

    Args:
        vocabulary: list of single characters, or `None` to set later with
            `set_vocabulary`. Defaults to `None`.
        oov_token: the string for id 0, returned when detokenizing it.
            Defaults to `"[UNK]"`.
        **kwargs: keras-hub `Tokenizer` arguments.

    Example:

    ```python
    import keras_llm

    tokenizer = keras_llm.data.CharacterTokenizer.from_texts(["hello world"])
    ids = tokenizer.tokenize("hello")
    text = tokenizer.detokenize(ids)  # "hello"
    ```
    """

    def __init__(self, vocabulary=None, oov_token="[UNK]", **kwargs):
        kwargs.setdefault("dtype", "int32")
        super().__init__(**kwargs)
        self.oov_token = oov_token
        self._vocabulary = None
        if vocabulary is not None:
            self.set_vocabulary(vocabulary)

    @classmethod
    def from_texts(cls, texts, min_count=1, **kwargs):
        """Learns the vocabulary: every character seen `min_count` times.

        Characters are ordered by their code point, so the same text always
        gives the same ids.
        """
        if isinstance(texts, str):
            texts = [texts]
        counts = collections.Counter()
        for t in texts:
            counts.update(t)
        chars = sorted(c for c, n in counts.items() if n >= min_count)
        if not chars:
            raise ValueError("`CharacterTokenizer.from_texts` got no text.")
        return cls(vocabulary=chars, **kwargs)

    def set_vocabulary(self, vocabulary):
        vocabulary = list(vocabulary)
        if vocabulary and vocabulary[0] == self.oov_token:
            vocabulary = vocabulary[1:]
        bad = [c for c in vocabulary if not isinstance(c, str) or len(c) != 1]
        if bad:
            raise ValueError(
                "`CharacterTokenizer` expects a vocabulary of single "
                f"characters. Received entries {bad[:5]!r}."
            )
        if len(set(vocabulary)) != len(vocabulary):
            raise ValueError(
                "`CharacterTokenizer` got repeated characters in its "
                "vocabulary."
            )
        self._vocabulary = vocabulary
        keys = tf.constant(vocabulary, dtype=tf.string)
        values = tf.range(1, len(vocabulary) + 1, dtype=tf.int32)
        self._table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(keys, values), default_value=0
        )
        self._id_to_char = tf.constant(
            [self.oov_token] + vocabulary, dtype=tf.string
        )

    def _check_vocabulary(self):
        if self._vocabulary is None:
            raise ValueError(
                "`CharacterTokenizer` has no vocabulary: pass `vocabulary` "
                "or use `CharacterTokenizer.from_texts`."
            )

    def get_vocabulary(self):
        self._check_vocabulary()
        return [self.oov_token] + list(self._vocabulary)

    def vocabulary_size(self):
        self._check_vocabulary()
        return len(self._vocabulary) + 1

    def id_to_token(self, id):
        vocab = self.get_vocabulary()
        if not 0 <= id < len(vocab):
            raise ValueError(
                f"`id` must be in [0, {len(vocab) - 1}]. Received: {id}."
            )
        return vocab[id]

    def token_to_id(self, token):
        vocab = self.get_vocabulary()
        return vocab.index(token) if token in vocab else 0

    @preprocessing_function
    def tokenize(self, inputs):
        """Strings to ids: a scalar gives a 1-D tensor, a batch a ragged one."""
        self._check_vocabulary()
        inputs = tf.convert_to_tensor(inputs, dtype=tf.string)
        chars = tf.strings.unicode_split(inputs, "UTF-8")
        if isinstance(chars, tf.RaggedTensor):
            return chars.with_flat_values(self._table.lookup(chars.flat_values))
        return self._table.lookup(chars)

    @preprocessing_function
    def detokenize(self, inputs):
        """Ids to strings, joining characters along the last axis."""
        self._check_vocabulary()
        if (
            isinstance(inputs, (list, tuple))
            and inputs
            and isinstance(inputs[0], (list, tuple))
        ):
            inputs = tf.ragged.constant(inputs, dtype=tf.int32)
        elif isinstance(inputs, np.ndarray) or not isinstance(
            inputs, (tf.Tensor, tf.RaggedTensor)
        ):
            inputs = tf.convert_to_tensor(np.asarray(inputs), dtype=tf.int32)
        ids = tf.cast(inputs, tf.int32)
        ids = tf.clip_by_value(ids, 0, len(self._vocabulary))
        if isinstance(ids, tf.RaggedTensor):
            chars = ids.with_flat_values(
                tf.gather(self._id_to_char, ids.flat_values)
            )
        else:
            chars = tf.gather(self._id_to_char, ids)
        return tf.strings.reduce_join(chars, axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary": list(self._vocabulary)
                if self._vocabulary is not None
                else None,
                "oov_token": self.oov_token,
            }
        )
        return config
