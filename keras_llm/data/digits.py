"""Handwritten digits for the tutorial's vision examples, offline.

The tutorial's CNN, GAN and transfer-learning snippets expect 28x28
grayscale digits (MNIST). MNIST needs a download; scikit-learn ships 1,797
real handwritten 8x8 digits (`sklearn.datasets.load_digits`, the UCI
optical-recognition set), so by default these are resized to 28x28 with
Keras' image resizing. A user who has MNIST's `mnist.npz` passes its path
instead. scikit-learn is an optional dependency (the `examples` extra).
"""

import numpy as np

from keras_llm.errors import UserError


def load_digits(path=None, test_fraction=0.2, seed=0, size=28):
    """Handwritten digits as `(x_train, y_train), (x_test, y_test)`.

    Args:
        path: `None` for scikit-learn's digits resized to `size x size`, or
            the path of an MNIST `.npz` file (keys `x_train`, `y_train`,
            `x_test`, `y_test`, as `keras.datasets.mnist` saves it).
        test_fraction: float. Share of scikit-learn's digits held out for
            testing (MNIST keeps its own split). Defaults to `0.2`.
        seed: int. Seed of the train/test split. Defaults to `0`.
        size: int. Side of the resized images. Defaults to `28`.

    Returns:
        float32 images in `[0, 1]` of shape `(n, size, size, 1)` and int
        labels `0..9`, for the training and the test split.

    Example:

    ```python
    from keras_llm.data.digits import load_digits

    (x_train, y_train), (x_test, y_test) = load_digits()
    print(x_train.shape, x_test.shape)  # (1438, 28, 28, 1) (359, 28, 28, 1)
    ```
    """
    if path is not None:
        try:
            with np.load(path) as data:
                arrays = [data[k] for k in ("x_train", "y_train", "x_test",
                                            "y_test")]  # fmt: skip
        except (OSError, KeyError, ValueError) as error:
            raise UserError(
                f"Cannot read MNIST digits from {path!r} (an .npz with "
                f"x_train, y_train, x_test, y_test): {error}"
            ) from None
        x_train, y_train, x_test, y_test = arrays
        return (
            (_as_images(x_train / 255.0), y_train.astype("int32")),
            (_as_images(x_test / 255.0), y_test.astype("int32")),
        )
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:  # pragma: no cover - depends on the environment
        raise UserError(
            "The default digits come from scikit-learn: "
            "pip install 'keras_llm[examples]', or pass an MNIST .npz path."
        ) from None
    import keras

    digits = sklearn_digits()
    images = digits.images.astype("float32")[..., None] / 16.0
    images = keras.ops.convert_to_numpy(
        keras.ops.image.resize(images, (size, size), interpolation="bilinear")
    )
    images = np.clip(images, 0.0, 1.0).astype("float32")
    labels = digits.target.astype("int32")
    order = np.random.default_rng(seed).permutation(len(labels))
    n_test = int(round(len(labels) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return (images[train], labels[train]), (images[test], labels[test])


def _as_images(x):
    x = np.asarray(x, dtype="float32")
    return x[..., None] if x.ndim == 3 else x
