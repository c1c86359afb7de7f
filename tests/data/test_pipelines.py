import numpy as np
import pytest
import tensorflow as tf

from keras_llm.data import CharacterTokenizer
from keras_llm.data import clm_dataset
from keras_llm.data import split_tokens
from keras_llm.data import tokenize_documents


def test_tokenize_documents_with_separator():
    tok = CharacterTokenizer.from_texts(["ab"])
    ids = tokenize_documents(tok, ["ab", "ba", "a"], separator_id=0)
    assert ids.tolist() == [1, 2, 0, 2, 1, 0, 1, 0]
    assert ids.dtype == np.int32
    many = tokenize_documents(tok, ["ab"] * 600, batch_size=256)
    assert len(many) == 1200


def test_split_is_positional():
    train, val = split_tokens(np.arange(100), 0.1)
    assert train.tolist() == list(range(90)) and val.tolist() == list(
        range(90, 100)
    )
    with pytest.raises(ValueError, match="validation_fraction"):
        split_tokens(np.arange(10), 1.5)


def test_windows_have_shifted_targets_and_static_shapes():
    ids = np.arange(1000, dtype=np.int32)
    ds = clm_dataset(ids, 16, 4, shuffle=True, seed=1)
    assert ds.element_spec[0].shape == (4, 16)
    assert ds.element_spec[1].shape == (4, 16)
    starts = []
    for x, y in ds:
        x, y = x.numpy(), y.numpy()
        np.testing.assert_array_equal(y, x + 1)
        np.testing.assert_array_equal(x[:, 1:], x[:, :-1] + 1)
        starts.extend(x[:, 0].tolist())
    # Non-overlapping windows, each once per epoch, in shuffled order.
    assert sorted(starts)[:3] == [0, 16, 32]
    assert len(set(starts)) == len(starts) == (999 // 16) // 4 * 4
    assert starts != sorted(starts)


def test_stride_one_covers_every_offset_and_repeat():
    ds = clm_dataset(np.arange(20), 4, 5, stride=1, shuffle=False)
    x, _ = next(iter(ds))
    assert x[:, 0].numpy().tolist() == [0, 1, 2, 3, 4]
    repeated = clm_dataset(np.arange(20), 4, 5, stride=4, repeat=True)
    assert len(list(repeated.take(10))) == 10


def test_seeded_shuffle_is_reproducible():
    a = [x.numpy() for x, _ in clm_dataset(np.arange(500), 8, 4, seed=3)]
    b = [x.numpy() for x, _ in clm_dataset(np.arange(500), 8, 4, seed=3)]
    np.testing.assert_array_equal(np.stack(a), np.stack(b))


def test_distributes_with_static_shapes(mirrored_strategy):
    ds = clm_dataset(np.arange(500), 8, 4, seed=3)
    dist = mirrored_strategy.experimental_distribute_dataset(ds)
    x, _ = next(iter(dist))
    shapes = [t.shape for t in mirrored_strategy.experimental_local_results(x)]
    assert shapes == [tf.TensorShape([2, 8])] * 2


def test_errors():
    with pytest.raises(ValueError, match="fewer than one block"):
        clm_dataset(np.arange(10), 16, 2)
    with pytest.raises(ValueError, match="fewer than one batch"):
        clm_dataset(np.arange(40), 8, 8)
    with pytest.raises(ValueError, match="sequence_length"):
        clm_dataset(np.arange(40), 0, 8)
    with pytest.raises(ValueError, match="batch_size"):
        clm_dataset(np.arange(40), 4, -1)
