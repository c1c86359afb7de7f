import numpy as np
import pytest

from keras_llm.data.digits import load_digits
from keras_llm.errors import UserError


def test_scikit_learn_digits_resized_and_split():
    (x_train, y_train), (x_test, y_test) = load_digits()
    assert x_train.shape[1:] == (28, 28, 1) and x_train.dtype == np.float32
    assert len(x_train) + len(x_test) == 1797
    assert abs(len(x_test) / 1797 - 0.2) < 0.01
    assert 0.0 <= x_train.min() and x_train.max() <= 1.0
    assert x_train.max() > 0.9  # ink survived the resize
    assert set(y_train) == set(range(10)) == set(y_test)
    (again, _), _ = load_digits()
    np.testing.assert_array_equal(again, x_train)  # the split is seeded
    (other, _), _ = load_digits(seed=1)
    assert not np.array_equal(other, x_train)


def test_mnist_npz(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "mnist.npz"
    np.savez(
        path,
        x_train=rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        y_train=np.arange(5),
        x_test=rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        y_test=np.arange(3),
    )
    (x_train, y_train), (x_test, y_test) = load_digits(str(path))
    assert x_train.shape == (5, 28, 28, 1) and x_test.shape == (3, 28, 28, 1)
    assert x_train.max() <= 1.0 and list(y_test) == [0, 1, 2]


def test_bad_path_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="MNIST"):
        load_digits(str(tmp_path / "missing.npz"))
