"""Token shards on disk and the `tf.data` pipeline that reads them.

`keras-llm data prepare` writes the token ids of its documents, one
separator id after each document, as one stream cut into numbered NumPy
`.npy` files of `tokens_per_shard` ids each (the last one shorter), with an
`index.json` naming them. NumPy's `.npy` format is the storage (readable
memory-mapped by `np.load(mmap_mode="r")`, so a reader never loads a whole
corpus); `tf.data` does the shuffling and batching. What is written here by
hand is only what neither library has: atomic shard writes (temporary file
then `os.replace`) and the record, per shard, of where in the document
stream it ends, so an interrupted run continues from the next shard
without rewriting the ones already on disk.

Layout of a shard folder:

```
index.json        {"tokens_per_shard", "dtype", "separator_id", "shards":
                   [{"file", "tokens", "end": {"document", "offset"}}],
                   "documents", "tokens", "complete"}
shard_00000.npy   tokens 0 .. tokens_per_shard - 1 of the stream
shard_00001.npy   ...
```
"""

import json
import os

import numpy as np
import tensorflow as tf

from keras_llm.data.pipelines import check_positive_sizes

INDEX_FILE = "index.json"
SHARD_PATTERN = "shard_{:05d}.npy"
DTYPES = ("uint16", "int32")


def _write_json(path, payload):
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, ensure_ascii=False)
    os.replace(tmp, path)


def choose_dtype(vocabulary_size):
    """`"uint16"` when every id fits in 16 bits, else `"int32"`."""
    return (
        "uint16" if vocabulary_size <= np.iinfo(np.uint16).max + 1 else "int32"
    )


def read_index(folder):
    """The `index.json` of a shard folder, or `None` if there is none.

    Raises:
        ValueError: if the file exists but is not a shard index.
    """
    path = os.path.join(folder, INDEX_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
        index["shards"], index["tokens_per_shard"]  # noqa: B018
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a shard index ({e})") from e
    return index


class ShardWriter:
    """Writes documents' token ids as fixed-size `.npy` shards.

    Each `add(ids)` appends one document (its ids, then `separator_id` if
    given). Every `tokens_per_shard` ids become one shard file, written to
    a temporary name and moved into place, after which `index.json` is
    rewritten (also atomically) with the shard and the position in the
    document stream where it ends (`{"document": d, "offset": k}`: the
    next shard starts at id `k` of document `d`'s ids). `close()` writes
    the last, shorter shard and marks the index complete.

    A writer created on a folder whose index is incomplete resumes: it
    keeps the shards listed there and `resume_position` says which document
    (and id offset within it) to feed next; shards are never rewritten.

    Args:
        folder: the shard folder (created if missing).
        tokens_per_shard: ids per shard file. Defaults to `2**24`.
        dtype: `"uint16"` or `"int32"`. Defaults to `"int32"`.
        separator_id: int or `None`: an id appended to every document.
            Defaults to `None`.

    Raises:
        ValueError: for a non-positive `tokens_per_shard`, an unknown
            `dtype`, or a folder whose index was written with other
            options.

    Example:

    ```python
    import tempfile

    from keras_llm.data.shards import ShardWriter
    from keras_llm.data.shards import read_shards

    folder = tempfile.mkdtemp()
    with ShardWriter(folder, tokens_per_shard=4, separator_id=0) as writer:
        writer.add([5, 6, 7])
        writer.add([8, 9])
    print(read_shards(folder))  # [5 6 7 0 8 9 0]
    ```
    """

    def __init__(
        self, folder, tokens_per_shard=2**24, dtype="int32", separator_id=None
    ):
        if (
            not isinstance(tokens_per_shard, (int, np.integer))
            or tokens_per_shard <= 0
        ):
            raise ValueError(
                "`tokens_per_shard` must be a positive integer. Received: "
                f"{tokens_per_shard!r}."
            )
        if dtype not in DTYPES:
            raise ValueError(
                f"`dtype` must be one of {list(DTYPES)}. Received: {dtype!r}."
            )
        self.folder = os.fspath(folder)
        self.tokens_per_shard = int(tokens_per_shard)
        self.dtype = dtype
        self.separator_id = separator_id
        os.makedirs(self.folder, exist_ok=True)
        self._buffer = []
        self._buffered = 0
        self._documents = 0  # documents added (or skipped on resume)
        self.shards = []
        self.complete = False
        index = read_index(self.folder)
        if index is not None:
            options = (index["tokens_per_shard"], index["dtype"])
            options += (index.get("separator_id"),)
            if options != (self.tokens_per_shard, dtype, separator_id):
                raise ValueError(
                    f"{self.folder} holds shards written with "
                    f"tokens_per_shard={options[0]}, dtype={options[1]}, "
                    f"separator_id={options[2]}; use an empty folder"
                )
            self.shards = list(index["shards"])
            self.complete = bool(index.get("complete"))
            self._documents = int(index.get("documents", 0))
        self._offset = 0
        if self.shards and not self.complete:
            end = self.shards[-1]["end"]
            self._documents, self._offset = end["document"], end["offset"]

    @property
    def resume_position(self):
        """`(document, offset)`: the next document to `add` and how many of
        its ids (separator included) are already in the shards."""
        return self._documents, self._offset

    @property
    def tokens(self):
        """Ids written to shard files so far."""
        return sum(s["tokens"] for s in self.shards)

    def add(self, ids):
        """Appends one document's ids (and the separator).

        When resuming, feed documents from `resume_position[0]` on; the
        first one's leading `resume_position[1]` ids are skipped here.
        """
        if self.complete:
            raise ValueError(f"the shards in {self.folder} are complete")
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if self.separator_id is not None:
            ids = np.append(ids, self.separator_id)
        skipped, self._offset = self._offset, 0
        ids = ids[skipped:]
        length = len(ids)
        if length:
            self._buffer.append(ids)
            self._buffered += length
        self._documents += 1
        while self._buffered >= self.tokens_per_shard:
            stream = np.concatenate(self._buffer)
            head = stream[: self.tokens_per_shard]
            rest = stream[self.tokens_per_shard :]
            # The shard ends inside (or at the end of) this document.
            end = {
                "document": self._documents - 1,
                "offset": skipped + length - len(rest),
            }
            if len(rest) == 0:
                end = {"document": self._documents, "offset": 0}
            self._write_shard(head, end)
            self._buffer = [rest] if len(rest) else []
            self._buffered = len(rest)

    def _write_shard(self, ids, end):
        name = SHARD_PATTERN.format(len(self.shards))
        path = os.path.join(self.folder, name)
        tmp = f"{path}.tmp"
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(ids).astype(self.dtype))
        os.replace(tmp, path)
        self.shards.append({"file": name, "tokens": int(len(ids)), "end": end})
        self._write_index()

    def _write_index(self):
        _write_json(
            os.path.join(self.folder, INDEX_FILE),
            {
                "tokens_per_shard": self.tokens_per_shard,
                "dtype": self.dtype,
                "separator_id": self.separator_id,
                "shards": self.shards,
                "documents": self._documents,
                "tokens": self.tokens,
                "complete": self.complete,
            },
        )

    def close(self):
        """Writes the last (shorter) shard and marks the index complete."""
        if self.complete:
            return self
        if self._buffered:
            end = {"document": self._documents, "offset": 0}
            self._write_shard(np.concatenate(self._buffer), end)
            self._buffer, self._buffered = [], 0
        self.complete = True
        self._write_index()
        return self

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()


def _index_or_split(folder, split):
    folder = os.fspath(folder)
    index = read_index(folder)
    if index is None and split is not None:
        folder = os.path.join(folder, split)
        index = read_index(folder)
    if index is None:
        raise ValueError(
            f"{folder} has no {INDEX_FILE}: not a shard folder written by "
            "`keras-llm data prepare`"
        )
    return folder, index


def shard_arrays(folder, split="train"):
    """The shards of a folder as a list of read-only memory-mapped arrays.

    Args:
        folder: a shard folder, or a `prepare` output folder holding the
            shard folder `split`.
        split: the sub-folder used when `folder` holds no index itself.
            Defaults to `"train"`.

    Raises:
        ValueError: if there is no index or a shard is missing.
    """
    folder, index = _index_or_split(folder, split)
    arrays = []
    for shard in index["shards"]:
        path = os.path.join(folder, shard["file"])
        if not os.path.isfile(path):
            raise ValueError(f"shard {path} listed in the index is missing")
        arrays.append(np.load(path, mmap_mode="r"))
    return arrays


def read_shards(folder, split="train"):
    """All ids of a shard folder as one 1-D array (shards concatenated).

    For a corpus too large for memory iterate `shard_arrays(folder)`
    instead: each is memory-mapped.

    Args:
        folder: a shard folder or a `prepare` output folder.
        split: the sub-folder used when `folder` holds no index itself.
            Defaults to `"train"`.

    Returns:
        A 1-D array of the shards' dtype.
    """
    arrays = shard_arrays(folder, split)
    if not arrays:
        _, index = _index_or_split(folder, split)
        return np.zeros((0,), index["dtype"])
    return np.concatenate(arrays)


def shard_dataset(
    folder,
    sequence_length,
    batch_size,
    shuffle=True,
    seed=0,
    repeat=False,
    drop_remainder=True,
    split="train",
    input_context=None,
):
    """A `tf.data.Dataset` of `(inputs, next_token_targets)` from shards.

    The shards are one stream; window `i` covers ids
    `[i * sequence_length, (i + 1) * sequence_length + 1)` of it (windows
    may cross shard boundaries), exactly as `clm_dataset` cuts an in-memory
    stream. Window indices are shuffled and batched in `tf.data`, then each
    batch is read from the memory-mapped shards, so memory holds the
    indices and one batch, not the corpus.

    Under a strategy with several workers (`input_context` from
    `tf.distribute.Strategy.distribute_datasets_from_function`, see
    `distributed_shard_dataset`), each input pipeline reads its own part:
    by FILE when there are at least as many shard files as pipelines
    (pipeline `k` takes the windows that start in files `k, k + n, ...`;
    the last window of a file may read the first ids of the next), else
    by DATA (pipeline `k` takes windows `k, k + n, ...`). Either way the
    pipelines' windows are disjoint and together are the windows of the
    unsharded stream. Without `input_context` the dataset carries
    `AutoShardPolicy.DATA`, the sharding tf.data applies when a strategy
    distributes it (`model.fit` does): every worker reads the whole stream
    and keeps its slice of each batch. With `drop_remainder=True` the
    shapes are fully static, as XLA and TPUs need. By file, pipelines may
    get different numbers of windows: under a multi-worker strategy use
    `repeat=True` with `fit(..., steps_per_epoch=...)` so that every worker
    runs the same number of steps.

    Args:
        folder: a shard folder, or a `prepare` output folder (then its
            `split` sub-folder is read).
        sequence_length: int. Tokens per example.
        batch_size: int. Examples per batch.
        shuffle: bool. Shuffle windows each epoch. Defaults to `True`.
        seed: int or `None`. Shuffle seed. Defaults to `0`.
        repeat: bool. Repeat forever. Defaults to `False`.
        drop_remainder: bool. Drop a last partial batch so that shapes are
            static. Defaults to `True`.
        split: `"train"` or `"validation"` for a `prepare` output folder.
            Defaults to `"train"`.
        input_context: a `tf.distribute.InputContext` or `None`. When
            given, `batch_size` is the global batch size, the dataset holds
            this pipeline's share of the windows and is batched per
            replica (`input_context.get_per_replica_batch_size`).
            Defaults to `None`.

    Returns:
        A dataset of `(int32 (B, T), int32 (B, T))` pairs.

    Example:

    ```python
    import tempfile

    import numpy as np

    from keras_llm.data.shards import ShardWriter
    from keras_llm.data.shards import shard_dataset

    folder = tempfile.mkdtemp()
    with ShardWriter(folder, tokens_per_shard=100, separator_id=0) as w:
        for n in range(20):
            w.add(np.arange(1, 30) + n)
    ds = shard_dataset(folder, sequence_length=16, batch_size=4)
    inputs, targets = next(iter(ds))  # int32 (4, 16) each
    ```

    Raises:
        ValueError: if the folder holds no shards, the stream is shorter
            than one batch of windows, or a size is not positive.
    """
    check_positive_sizes(sequence_length=sequence_length, batch_size=batch_size)
    arrays = shard_arrays(folder, split)
    sizes = np.array([len(a) for a in arrays], np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    total = int(starts[-1])
    window = sequence_length + 1
    count = 0 if total < window else (total - window) // sequence_length + 1
    if count == 0 or (drop_remainder and count < batch_size and not repeat):
        raise ValueError(
            f"{folder} holds {total} tokens, {count} windows of "
            f"sequence_length + 1 = {window}: fewer than one batch of "
            f"{batch_size}; use more text, a shorter sequence_length or a "
            "smaller batch_size"
        )

    def read(begin):
        out = np.empty(window, np.int32)
        end = begin + window
        filled = 0
        shard = int(np.searchsorted(starts, begin, side="right")) - 1
        while filled < window:
            lo = begin + filled - starts[shard]
            hi = min(end - starts[shard], sizes[shard])
            piece = arrays[shard][lo:hi]
            out[filled : filled + len(piece)] = piece
            filled += len(piece)
            shard += 1
        return out

    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(batch_size)
        pipelines = input_context.num_input_pipelines
        pipeline = input_context.input_pipeline_id
    else:
        pipelines, pipeline = 1, 0
    windows = _pipeline_windows(starts, count, sequence_length, pipelines,
                                pipeline)  # fmt: skip

    def fetch(indices):
        chunks = np.stack([read(int(i) * sequence_length) for i in indices])
        return chunks[:, :-1], chunks[:, 1:]

    def to_batch(indices):
        inputs, targets = tf.numpy_function(
            fetch, [indices], (tf.int32, tf.int32), stateful=False
        )
        rows = batch_size if drop_remainder else None
        inputs.set_shape((rows, sequence_length))
        targets.set_shape((rows, sequence_length))
        return inputs, targets

    if windows is None:
        ds = tf.data.Dataset.range(count)
    else:
        ds = tf.data.Dataset.from_tensor_slices(windows)
    if shuffle:
        ds = ds.shuffle(
            min(count, 1 << 22), seed=seed, reshuffle_each_iteration=True
        )
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.map(to_batch, num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
        if input_context is None
        else tf.data.experimental.AutoShardPolicy.OFF  # sharded above
    )
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def _pipeline_windows(starts, count, sequence_length, pipelines, pipeline):
    """The window indices of one input pipeline (`None`: all of them).

    By file when there are at least as many files as pipelines, else by
    data (every `pipelines`-th window).
    """
    if pipelines <= 1:
        return None
    windows = np.arange(count, dtype=np.int64)
    files = len(starts) - 1
    if files < pipelines:
        return windows[pipeline::pipelines]
    first_file = np.searchsorted(starts, windows * sequence_length, "right")
    return windows[(first_file - 1) % pipelines == pipeline]


def distributed_shard_dataset(strategy, folder, sequence_length, batch_size,
                              **kwargs):  # fmt: skip
    """`shard_dataset` split between the workers of a strategy.

    Each worker builds only its own input pipeline
    (`strategy.distribute_datasets_from_function`): by shard file when
    there are at least as many files as workers, else by data (see
    `shard_dataset`). Pass the result to `model.fit` as it is.

    Args:
        strategy: a `tf.distribute.Strategy`.
        folder: a shard folder or a `prepare` output folder.
        sequence_length: int. Tokens per example.
        batch_size: int. The global batch size (all replicas together);
            divisible by `strategy.num_replicas_in_sync`.
        **kwargs: other `shard_dataset` arguments (`shuffle`, `seed`,
            `repeat`, `drop_remainder`, `split`).

    Returns:
        A `tf.distribute.DistributedDataset` of per-replica
        `(int32 (B / replicas, T), int32 (B / replicas, T))` pairs.

    Raises:
        ValueError: if `batch_size` is not divisible by the replica count,
            or as `shard_dataset` does.

    Example:

    ```python
    import tempfile

    import numpy as np
    import tensorflow as tf

    from keras_llm.data.shards import ShardWriter
    from keras_llm.data.shards import distributed_shard_dataset

    folder = tempfile.mkdtemp()
    with ShardWriter(folder, tokens_per_shard=100, separator_id=0) as w:
        for n in range(20):
            w.add(np.arange(1, 30) + n)
    strategy = tf.distribute.get_strategy()
    ds = distributed_shard_dataset(strategy, folder, 16, batch_size=4)
    inputs, targets = next(iter(ds))  # int32 (4, 16) each
    ```
    """
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise ValueError(
            f"batch_size {batch_size} is not divisible by the "
            f"{replicas} replicas of the strategy"
        )

    def dataset_fn(input_context):
        return shard_dataset(
            folder,
            sequence_length,
            batch_size,
            input_context=input_context,
            **kwargs,
        )

    return strategy.distribute_datasets_from_function(dataset_fn)
