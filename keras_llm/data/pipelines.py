"""`tf.data` pipelines for causal language modelling.

Documents are tokenized once into one stream of ids (with an optional
separator between documents), split into train and validation by position,
and cut into fixed-length windows with next-token targets. Windows are
shuffled, batched with static shapes (`drop_remainder`) and prefetched, so
XLA and `tf.distribute` see fixed shapes.
"""

import numpy as np
import tensorflow as tf


def tokenize_documents(tokenizer, documents, separator_id=None, batch_size=256):
    """Tokenizes documents into one flat int32 array of ids.

    Args:
        tokenizer: a keras-hub tokenizer.
        documents: list of strings.
        separator_id: int or `None`. An id placed after each document.
            Defaults to `None`.
        batch_size: documents tokenized per call. Defaults to `256`.

    Returns:
        A 1-D `np.int32` array.
    """
    if not len(documents):
        return np.zeros((0,), np.int32)

    def to_ids(batch):
        # Inside tf.data, keras-hub tokenizers return TF (ragged) tensors.
        ids = tokenizer.tokenize(batch)
        if not isinstance(ids, tf.RaggedTensor):
            ids = tf.RaggedTensor.from_tensor(ids)
        if separator_id is not None:
            sep = tf.fill([ids.nrows(), 1], tf.cast(separator_id, ids.dtype))
            ids = tf.concat([ids, sep], axis=1)
        return tf.cast(ids.flat_values, tf.int32)

    ds = (
        tf.data.Dataset.from_tensor_slices(list(documents))
        .batch(batch_size)
        .map(to_ids, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    )
    return np.concatenate([ids.numpy() for ids in ds])


def split_tokens(token_ids, validation_fraction=0.1):
    """Splits a token stream by position: the first part trains.

    Args:
        token_ids: 1-D array of ids.
        validation_fraction: float in [0, 1). The last fraction becomes the
            validation stream. Defaults to `0.1` (nanoGPT's 90/10 split).

    Returns:
        `(train_ids, validation_ids)`.
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(
            "`validation_fraction` must be in [0, 1). "
            f"Received: {validation_fraction}."
        )
    token_ids = np.asarray(token_ids)
    n_train = int(round(len(token_ids) * (1.0 - validation_fraction)))
    return token_ids[:n_train], token_ids[n_train:]


def num_windows(num_tokens, sequence_length, stride=None):
    """How many `(sequence_length + 1)`-token windows a stream holds."""
    stride = stride or sequence_length
    if num_tokens < sequence_length + 1:
        return 0
    return (num_tokens - sequence_length - 1) // stride + 1


def check_positive_sizes(**sizes):
    """Raises `ValueError` naming the first size that is not a positive
    integer."""
    for name, value in sizes.items():
        if not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(
                f"`{name}` must be a positive integer. Received: {value!r}."
            )


def clm_dataset(
    token_ids,
    sequence_length,
    batch_size,
    shuffle=True,
    seed=None,
    stride=None,
    repeat=False,
    drop_remainder=True,
):
    """A `tf.data.Dataset` of `(inputs, next_token_targets)` batches.

    Window `i` covers ids `[i * stride, i * stride + sequence_length + 1)`:
    its first `sequence_length` ids are the inputs and the last
    `sequence_length` the targets. `stride=1` samples every offset (like
    nanoGPT's random batches, but without replacement within an epoch).

    Args:
        token_ids: 1-D array of ids.
        sequence_length: int. Tokens per example.
        batch_size: int. Examples per batch.
        shuffle: bool. Shuffle windows each epoch. Defaults to `True`.
        seed: int or `None`. Shuffle seed. Defaults to `None`.
        stride: int or `None`. Distance between window starts; `None` means
            `sequence_length` (no overlap). Defaults to `None`.
        repeat: bool. Repeat forever (for step-based training). Defaults to
            `False`.
        drop_remainder: bool. Drop a last partial batch, keeping shapes
            static. Defaults to `True`.

    Returns:
        A dataset of `(int32 (B, T), int32 (B, T))` pairs.

    Raises:
        ValueError: if the stream is shorter than one window, or a size is
            not positive.
    """
    check_positive_sizes(sequence_length=sequence_length, batch_size=batch_size)
    stride = stride or sequence_length
    token_ids = np.asarray(token_ids, dtype=np.int32).reshape(-1)
    count = num_windows(len(token_ids), sequence_length, stride)
    if count == 0:
        raise ValueError(
            f"the token stream has {len(token_ids)} tokens, fewer than one "
            f"block of sequence_length + 1 = {sequence_length + 1}; use more "
            "text or a shorter --sequence-length"
        )
    if drop_remainder and count < batch_size and not repeat:
        raise ValueError(
            f"the token stream holds {count} blocks of {sequence_length} "
            f"tokens, fewer than one batch of {batch_size}; use more text or "
            "a smaller --batch-size"
        )
    tokens = tf.constant(token_ids)
    window = sequence_length + 1

    def to_example(i):
        start = tf.cast(i, tf.int32) * stride
        chunk = tf.reshape(tokens[start : start + window], [window])
        return chunk[:-1], chunk[1:]

    ds = tf.data.Dataset.range(count)
    if shuffle:
        ds = ds.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.map(to_example, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)
