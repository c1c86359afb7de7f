"""`tf.data` pipelines for sequence and sentence-pair classification.

Texts are tokenized with a keras-hub WordPiece tokenizer and packed with
keras-hub's `MultiSegmentPacker` as `[CLS] A [SEP]` or `[CLS] A [SEP] B
[SEP]`, giving the feature dict a BERT-style encoder takes:
`{"token_ids", "segment_ids", "padding_mask"}` (int32, int32, bool; all
`(batch, sequence_length)`). Tokenizing and packing run inside the
pipeline, batch by batch.
"""

import keras_hub
import numpy as np
import tensorflow as tf

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def special_token_ids(tokenizer):
    """The `[CLS]`, `[SEP]` and `[PAD]` ids of a keras-hub tokenizer.

    Uses the tokenizer's `cls_token`/`sep_token`/`pad_token` where it has
    them (keras-hub `BertTokenizer`), else the tokens `"[CLS]"`, `"[SEP]"`
    and `"[PAD]"`.

    Args:
        tokenizer: a keras-hub tokenizer.

    Returns:
        A dict with `"cls"`, `"sep"` and `"pad"` ids.

    Raises:
        ValueError: if the vocabulary lacks one of them.
    """
    ids = {}
    for key, default in (("cls", "[CLS]"), ("sep", "[SEP]"), ("pad", "[PAD]")):
        token = getattr(tokenizer, f"{key}_token", None) or default
        try:
            ids[key] = int(tokenizer.token_to_id(token))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f"The tokenizer's vocabulary has no {token} token, which "
                "BERT-style packing needs. Learn the vocabulary with the "
                f"reserved tokens {list(SPECIAL_TOKENS)}, e.g. with "
                "keras_llm.data.learn_mlm_tokenizer."
            ) from e
    return ids


def make_packer(tokenizer, sequence_length, truncate="round_robin"):
    """A keras-hub `MultiSegmentPacker` with the tokenizer's special ids.

    Args:
        tokenizer: a keras-hub tokenizer with `[CLS]`, `[SEP]`, `[PAD]`.
        sequence_length: int, the packed length.
        truncate: `"round_robin"` or `"waterfall"`. Defaults to
            `"round_robin"`.

    Returns:
        `(packer, pad_id)`.
    """
    if not isinstance(sequence_length, (int, np.integer)) or (
        sequence_length < 3
    ):
        raise ValueError(
            "`sequence_length` must be an integer of at least 3 ([CLS], one "
            f"token, [SEP]). Received: {sequence_length!r}."
        )
    ids = special_token_ids(tokenizer)
    packer = keras_hub.layers.MultiSegmentPacker(
        sequence_length=int(sequence_length),
        start_value=ids["cls"],
        end_value=ids["sep"],
        pad_value=ids["pad"],
        truncate=truncate,
    )
    return packer, ids["pad"]


def _check_batch_size(batch_size):
    if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise ValueError(
            f"`batch_size` must be a positive integer. Received: {batch_size!r}."
        )


def _labeled_dataset(
    segments,
    label_ids,
    tokenizer,
    sequence_length,
    batch_size,
    shuffle,
    seed,
    drop_remainder,
    repeat,
):
    _check_batch_size(batch_size)
    packer, pad_id = make_packer(tokenizer, sequence_length)
    label_ids = np.asarray(label_ids, np.int32).reshape(-1)
    for segment in segments:
        if len(segment) != len(label_ids):
            raise ValueError(
                f"Got {len(segment)} texts but {len(label_ids)} labels; "
                "they must match one to one."
            )
    if not len(label_ids):
        raise ValueError("Got no examples; pass at least one text.")
    count = len(label_ids)
    ds = tf.data.Dataset.from_tensor_slices(
        (tuple(tf.constant(list(s), tf.string) for s in segments), label_ids)
    )
    if shuffle:
        ds = ds.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)

    def featurize(texts, labels):
        token_ids, segment_ids = packer(tuple(tokenizer(t) for t in texts))
        # Keep the static batch size that `drop_remainder` gives.
        shape = [labels.shape[0], int(sequence_length)]
        token_ids = tf.ensure_shape(tf.cast(token_ids, tf.int32), shape)
        segment_ids = tf.ensure_shape(tf.cast(segment_ids, tf.int32), shape)
        features = {
            "token_ids": token_ids,
            "segment_ids": segment_ids,
            "padding_mask": token_ids != pad_id,
        }
        return features, labels

    ds = ds.map(featurize, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def classification_dataset(
    texts,
    label_ids,
    tokenizer,
    sequence_length,
    batch_size,
    shuffle=True,
    seed=None,
    drop_remainder=False,
    repeat=False,
):
    """A `tf.data.Dataset` of `(features, label_id)` for text classification.

    Each text becomes `[CLS] text [SEP]` padded to `sequence_length`
    (longer texts are truncated).

    Args:
        texts: list of strings.
        label_ids: ints, one per text (e.g. `read_sentiment`'s `label_ids`).
        tokenizer: a keras-hub tokenizer whose vocabulary has `[CLS]`,
            `[SEP]` and `[PAD]`.
        sequence_length: int. Tokens per example.
        batch_size: int. Examples per batch.
        shuffle: bool. Shuffle examples each epoch. Defaults to `True`.
        seed: int or `None`. Shuffle seed. Defaults to `None`.
        drop_remainder: bool. Drop a last partial batch, for static batch
            shapes. Defaults to `False` (every example is seen).
        repeat: bool. Repeat forever. Defaults to `False`.

    Returns:
        A dataset of `({"token_ids", "segment_ids", "padding_mask"},
        label_ids)`: int32, int32 and bool `(batch, sequence_length)`
        tensors and int32 `(batch,)` labels.

    Example:

    ```python
    import keras_hub
    import tensorflow as tf

    from keras_llm.data.tasks import classification_dataset

    texts = ["a fine film", "a dull film"]
    vocab = keras_hub.tokenizers.compute_word_piece_vocabulary(
        tf.data.Dataset.from_tensor_slices(texts), vocabulary_size=50,
        reserved_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
    )
    tokenizer = keras_hub.tokenizers.WordPieceTokenizer(vocabulary=vocab)
    ds = classification_dataset(texts, [1, 0], tokenizer, 8, batch_size=2)
    features, labels = next(iter(ds))
    print(features["token_ids"].shape)  # (2, 8)
    ```
    """
    return _labeled_dataset(
        (texts,),
        label_ids,
        tokenizer,
        sequence_length,
        batch_size,
        shuffle,
        seed,
        drop_remainder,
        repeat,
    )


def pair_dataset(
    premises,
    hypotheses,
    label_ids,
    tokenizer,
    sequence_length,
    batch_size,
    shuffle=True,
    seed=None,
    drop_remainder=False,
    repeat=False,
):
    """A `tf.data.Dataset` of `(features, label_id)` for sentence pairs.

    Each pair becomes `[CLS] premise [SEP] hypothesis [SEP]`, with segment
    id 0 up to the first `[SEP]` and 1 after it; long pairs are truncated
    round robin (one token at a time from the longer side).

    Args:
        premises: list of strings (segment A).
        hypotheses: list of strings (segment B).
        label_ids: ints, one per pair (e.g. `read_entailment`'s).
        tokenizer: a keras-hub tokenizer whose vocabulary has `[CLS]`,
            `[SEP]` and `[PAD]`.
        sequence_length: int. Tokens per example.
        batch_size: int. Examples per batch.
        shuffle: bool. Shuffle examples each epoch. Defaults to `True`.
        seed: int or `None`. Shuffle seed. Defaults to `None`.
        drop_remainder: bool. Drop a last partial batch. Defaults to
            `False`.
        repeat: bool. Repeat forever. Defaults to `False`.

    Returns:
        A dataset of `({"token_ids", "segment_ids", "padding_mask"},
        label_ids)`, shaped as in `classification_dataset`.

    Example:

    ```python
    import keras_hub
    import tensorflow as tf

    from keras_llm.data.tasks import pair_dataset

    texts = ["a man sleeps", "a man rests", "a dog runs"]
    vocab = keras_hub.tokenizers.compute_word_piece_vocabulary(
        tf.data.Dataset.from_tensor_slices(texts), vocabulary_size=50,
        reserved_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
    )
    tokenizer = keras_hub.tokenizers.WordPieceTokenizer(vocabulary=vocab)
    ds = pair_dataset(
        ["a man sleeps"], ["a man rests"], [0], tokenizer, 12, batch_size=1
    )
    features, labels = next(iter(ds))
    print(features["segment_ids"].numpy())  # 0 up to the first [SEP], then 1
    ```
    """
    return _labeled_dataset(
        (premises, hypotheses),
        label_ids,
        tokenizer,
        sequence_length,
        batch_size,
        shuffle,
        seed,
        drop_remainder,
        repeat,
    )
