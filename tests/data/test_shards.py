import json
import os

import numpy as np
import pytest

from keras_llm.data.pipelines import clm_dataset
from keras_llm.data.shards import ShardWriter
from keras_llm.data.shards import read_index
from keras_llm.data.shards import read_shards
from keras_llm.data.shards import shard_arrays
from keras_llm.data.shards import shard_dataset


def _documents(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, 500, rng.integers(0, 30)) for _ in range(n)]


def _expected(documents, sep):
    return np.concatenate([np.append(d, sep) for d in documents])


def test_writer_cuts_fixed_size_shards(tmp_path):
    documents = _documents()
    with ShardWriter(tmp_path, tokens_per_shard=37, separator_id=0) as w:
        for d in documents:
            w.add(d)
    expected = _expected(documents, 0)
    index = read_index(tmp_path)
    assert index["complete"] and index["tokens"] == len(expected)
    sizes = [s["tokens"] for s in index["shards"]]
    assert sizes[:-1] == [37] * (len(sizes) - 1) and 0 < sizes[-1] <= 37
    np.testing.assert_array_equal(read_shards(tmp_path), expected)
    assert read_shards(tmp_path).dtype == np.int32
    assert all(isinstance(a, np.memmap) for a in shard_arrays(tmp_path))
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    # Each shard's recorded end is where the next shard's ids start.
    lengths = [len(d) + 1 for d in documents]
    starts = np.concatenate([[0], np.cumsum(lengths)])
    position = 0
    for shard in index["shards"]:
        position += shard["tokens"]
        end = shard["end"]
        assert starts[end["document"]] + end["offset"] == position


@pytest.mark.parametrize("stop", [5, 17, 33])
def test_resume_continues_without_rewriting(tmp_path, stop):
    documents = _documents(seed=stop)
    whole = tmp_path / "whole"
    with ShardWriter(whole, 23, dtype="uint16", separator_id=9) as w:
        for d in documents:
            w.add(d)
    part = tmp_path / "part"
    w = ShardWriter(part, 23, dtype="uint16", separator_id=9)
    for d in documents[:stop]:
        w.add(d)  # interrupted: no close(), the buffer is lost
    written = {
        n: os.stat(part / n).st_mtime_ns
        for n in os.listdir(part)
        if n.endswith(".npy")
    }
    assert written
    w = ShardWriter(part, 23, dtype="uint16", separator_id=9)
    first, offset = w.resume_position
    assert first <= stop and (first < stop or offset == 0)
    for d in documents[first:]:
        w.add(d)
    w.close()
    for name, mtime in written.items():
        assert os.stat(part / name).st_mtime_ns == mtime, name
    np.testing.assert_array_equal(read_shards(part), read_shards(whole))
    assert sorted(os.listdir(part)) == sorted(os.listdir(whole))
    assert read_shards(part).dtype == np.uint16


def test_writer_rejects_other_options(tmp_path):
    ShardWriter(tmp_path, 10, separator_id=0).add(np.arange(25))
    with pytest.raises(ValueError, match="tokens_per_shard=10"):
        ShardWriter(tmp_path, 11, separator_id=0)
    with pytest.raises(ValueError, match="tokens_per_shard"):
        ShardWriter(tmp_path / "x", 0)


def test_shard_dataset_matches_clm_dataset(tmp_path):
    documents = _documents(80)
    with ShardWriter(tmp_path, tokens_per_shard=50, separator_id=0) as w:
        for d in documents:
            w.add(d)
    stream = read_shards(tmp_path)
    ds = shard_dataset(tmp_path, 8, 4, shuffle=False)
    assert ds.element_spec[0].shape == (4, 8)
    ours = [(x.numpy(), y.numpy()) for x, y in ds]
    theirs = [
        (x.numpy(), y.numpy())
        for x, y in clm_dataset(stream, 8, 4, shuffle=False)
    ]
    assert len(ours) == len(theirs) == ((len(stream) - 9) // 8 + 1) // 4
    for (x1, y1), (x2, y2) in zip(ours, theirs):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    shuffled = shard_dataset(tmp_path, 8, 4, shuffle=True, seed=3)
    rows = sorted(map(tuple, np.concatenate([x.numpy() for x, _ in shuffled])))
    assert rows == sorted(map(tuple, np.concatenate([x for x, _ in ours])))
    repeated = shard_dataset(tmp_path, 8, 4, repeat=True)
    assert len(list(repeated.take(len(ours) * 2 + 1))) == len(ours) * 2 + 1


def test_shard_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match="no index.json"):
        shard_dataset(tmp_path, 8, 4)
    with ShardWriter(tmp_path, 10) as w:
        w.add(np.arange(20))
    with pytest.raises(ValueError, match="fewer than one batch"):
        shard_dataset(tmp_path, 8, 4)
    (tmp_path / "index.json").write_text(json.dumps({"x": 1}))
    with pytest.raises(ValueError, match="not a shard index"):
        read_shards(tmp_path)
