import os
import runpy
import sys

import keras
import numpy as np
import pytest

from keras_llm.data.digits import load_digits
from keras_llm.errors import UserError

EXAMPLE = os.path.join(
    os.path.dirname(__file__),
    "..",
    "..",
    "examples",
    "cnn_image_classification.py",
)


def test_quick_run_trains_saves_model_and_prediction_grid(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(
        sys, "argv", [EXAMPLE, "--quick", "--quiet", "--out", str(tmp_path)]
    )
    results = runpy.run_path(EXAMPLE, run_name="__main__")["main"]()
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and str(tmp_path) in printed
    # 3 epochs on 540 digits: far above the 10% of chance.
    assert results["test_accuracy"] > 0.5
    assert np.all(np.isfinite(results["train_loss"]))
    assert results["train_loss"][-1] < results["train_loss"][0]

    model = keras.saving.load_model(os.path.join(tmp_path, "model.keras"))
    layer_types = [type(layer).__name__ for layer in model.layers]
    assert layer_types.index("Flatten") < layer_types.index("Dense")
    (_, _), (x_test, y_test) = load_digits()
    probabilities = model.predict(x_test[:200], verbose=0)
    assert probabilities.shape == (200, 10)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=1e-5)
    accuracy = np.mean(np.argmax(probabilities, -1) == y_test[:200])
    assert accuracy == pytest.approx(results["test_accuracy"], abs=1e-6)

    with open(os.path.join(tmp_path, "predictions.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_data_option_reads_an_mnist_npz(tmp_path, capsys):
    (x_train, y_train), (x_test, y_test) = load_digits()
    path = os.path.join(tmp_path, "mnist.npz")
    as_mnist = lambda x: np.round(x[..., 0] * 255).astype("uint8")  # noqa: E731
    np.savez(
        path,
        x_train=as_mnist(x_train[:160]),
        y_train=y_train[:160].astype("uint8"),
        x_test=as_mnist(x_test[:40]),
        y_test=y_test[:40].astype("uint8"),
    )
    main = runpy.run_path(EXAMPLE)["main"]
    out = str(tmp_path / "run")
    results = main(["--quick", "--quiet", "--data", path, "--out", out])
    printed = capsys.readouterr().out
    assert "160 training and 40 test digits" in printed and "MNIST" in printed
    assert np.isfinite(results["test_loss"])
    assert os.path.isfile(results["predictions_path"])

    with pytest.raises(UserError, match="Cannot read MNIST"):
        main(["--quick", "--data", str(tmp_path / "missing.npz")])
