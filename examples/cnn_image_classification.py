"""Classify handwritten digits with the tutorial's small convolutional network.

The model is the tutorial's: Conv2D(32, 3x3) / MaxPooling / Conv2D(64, 3x3) /
MaxPooling / Conv2D(64, 3x3) / Dense(64, relu) / Dense(10, softmax), trained
with a validation split and scored on held-out test digits. The script writes
the trained model (`model.keras`) and a grid of test predictions
(`predictions.png`, each image with its predicted and true label, the wrong
ones in red) to `--out`.

The printed snippet does not run as a classifier, so it was corrected:

* It has no `Flatten` between the last convolution and the `Dense` layers, so
  the Dense layers act on every pixel of the 3x3x64 feature map and the model
  outputs `(batch, 3, 3, 10)` instead of one distribution over 10 classes.
  A `Flatten` now sits before `Dense(64)`.
* `input_shape=` on the first layer is deprecated in Keras 3; the model starts
  with `keras.Input(shape=(28, 28, 1))`.
* It stops at `# Compile the model`. The model is compiled with Adam, sparse
  categorical cross-entropy (the labels are integers, not one-hot vectors) and
  accuracy, then trained, evaluated and saved.

Digits come from `keras_llm.data.digits.load_digits`: scikit-learn's 1,797
handwritten digits resized to 28x28 (offline), or MNIST with `--data`.

    python examples/cnn_image_classification.py                # ~98% test
    python examples/cnn_image_classification.py --data mnist.npz --epochs 5
    python examples/cnn_image_classification.py --quick        # seconds
"""

import argparse
import os

import keras
import numpy as np
from rich.console import Console

from keras_llm.data.digits import load_digits


def build_model(input_shape=(28, 28, 1), num_classes=10):
    """The tutorial's CNN with a `Flatten` before the Dense layers."""
    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            keras.layers.Conv2D(32, (3, 3), activation="relu"),
            keras.layers.MaxPooling2D((2, 2)),
            keras.layers.Conv2D(64, (3, 3), activation="relu"),
            keras.layers.MaxPooling2D((2, 2)),
            keras.layers.Conv2D(64, (3, 3), activation="relu"),
            keras.layers.Flatten(),  # missing in the tutorial
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(num_classes, activation="softmax"),
        ],
        name="tutorial_cnn",
    )


def plot_predictions(images, labels, predicted, path, count=24, columns=8):
    """Save a grid of test digits titled `predicted / true`.

    The wrong predictions (up to a third of the grid) come first, in red, so
    the picture shows what the model gets wrong as well as what it gets right.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wrong = np.flatnonzero(predicted != labels)[: count // 3]
    right = np.flatnonzero(predicted == labels)[: count - len(wrong)]
    shown = np.concatenate([wrong, right])
    rows = max(1, -(-len(shown) // columns))
    figure, axes = plt.subplots(
        rows, columns, figsize=(columns * 1.3, rows * 1.5), squeeze=False
    )
    for axis in axes.flat:
        axis.axis("off")
    for axis, i in zip(axes.flat, shown):
        ok = predicted[i] == labels[i]
        axis.imshow(images[i, ..., 0], cmap="gray_r", vmin=0.0, vmax=1.0)
        axis.set_title(
            f"{predicted[i]} / {labels[i]}" + ("" if ok else " \u2717"),
            color="black" if ok else "red",
            fontsize=10,
        )
    total_wrong = int(np.sum(predicted != labels))
    figure.suptitle(
        f"Test predictions (predicted / true): {total_wrong} of {len(labels)}"
        f" wrong, {len(wrong)} of them shown first, in red"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", default=None, help="an MNIST .npz (default: sklearn digits)"
    )
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--validation-split", type=float, default=0.1)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--out", default=os.path.join("runs", "example_cnn"))
    parser.add_argument("--quick", action="store_true", help="tiny, seconds")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)
    console = Console()

    (x_train, y_train), (x_test, y_test) = load_digits(args.data)
    if args.quick:
        args.epochs = 3
        x_train, y_train = x_train[:600], y_train[:600]
        x_test, y_test = x_test[:200], y_test[:200]
    console.print(
        f"{len(x_train):,} training and {len(x_test):,} test digits of shape "
        f"{x_train.shape[1:]} ({'MNIST ' + args.data if args.data else 'scikit-learn digits'})"
    )

    model = build_model(x_train.shape[1:], num_classes=10)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=args.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
    )
    model.summary(print_fn=lambda line, **_: console.print(line))
    console.print(
        f"[bold]Training[/bold] for {args.epochs} epochs, "
        f"{args.validation_split:.0%} of the training digits held out for "
        "validation"
    )
    history = model.fit(
        x_train,
        y_train,
        epochs=args.epochs,
        batch_size=args.batch_size,
        validation_split=args.validation_split,
        verbose=0 if args.quiet else 1,
    )
    test_loss, test_accuracy = model.evaluate(x_test, y_test, verbose=0)
    predicted = np.argmax(model.predict(x_test, verbose=0), axis=-1)
    errors = int(np.sum(predicted != y_test))
    console.print(
        f"test accuracy {test_accuracy:.2%} ({errors} of {len(y_test)} "
        f"wrong), test loss {test_loss:.4f}, final validation accuracy "
        f"{history.history['val_accuracy'][-1]:.2%}"
    )

    os.makedirs(args.out, exist_ok=True)
    model_path = os.path.join(args.out, "model.keras")
    model.save(model_path)
    grid_path = os.path.join(args.out, "predictions.png")
    plot_predictions(x_test, y_test, predicted, grid_path)
    console.print(f"model and prediction grid written to {args.out}")
    return dict(
        test_accuracy=float(test_accuracy),
        test_loss=float(test_loss),
        val_accuracy=float(history.history["val_accuracy"][-1]),
        train_loss=[float(v) for v in history.history["loss"]],
        errors=errors,
        model_path=model_path,
        predictions_path=grid_path,
    )


if __name__ == "__main__":
    main()
