import json
import os
import runpy
import sys

import keras
import numpy as np
import pytest

from keras_llm.data.digits import load_digits
from keras_llm.errors import UserError

EXAMPLE = os.path.join(
    os.path.dirname(__file__), "..", "..", "examples", "transfer_learning.py"
)


def test_quick_self_transfer_pretrains_freezes_and_fine_tunes(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(
        sys, "argv", [EXAMPLE, "--quick", "--quiet", "--out", str(tmp_path)]
    )
    script = runpy.run_path(EXAMPLE, run_name="__main__")
    results = script["main"]()
    printed = capsys.readouterr().out
    for line in ("(a) from scratch", "(b) frozen base", "(c) after fine"):
        assert line in printed
    assert "digits 0-4" in printed and str(tmp_path) in printed
    assert results["weights"] == "self" and results["train_examples"] == 50
    # The base learns the source task (0-4), and its frozen features carry
    # over to 5-9: far above the 20% of chance with only a new head.
    assert results["source_test_accuracy"] > 0.8
    assert results["frozen_accuracy"] > 0.4
    assert results["fine_tuned_accuracy"] > 0.4
    assert 0.0 <= results["scratch_accuracy"] <= 1.0
    with open(os.path.join(tmp_path, "results.json")) as f:
        assert json.load(f) == results

    # The saved model holds the transferred base (the snippet's Sequential
    # left it out), unfrozen after fine-tuning, and classifies 5 digits.
    model = keras.saving.load_model(os.path.join(tmp_path, "model.keras"))
    base = model.get_layer("conv_base")
    assert base.trainable
    assert any(
        isinstance(layer, keras.layers.BatchNormalization)
        for layer in base.layers
    )
    assert model.output_shape == (None, 5)
    (_, _), (x_test, y_test) = load_digits()
    x_eval, y_eval = script["select"](x_test, y_test, np.arange(5, 10))
    _, accuracy = model.evaluate(x_eval[:100], y_eval[:100], verbose=0)
    assert accuracy == pytest.approx(results["fine_tuned_accuracy"], abs=1e-6)


def test_vgg16_weights_from_a_local_file(tmp_path):
    script = runpy.run_path(EXAMPLE)
    saved = keras.applications.VGG16(
        weights=None, include_top=False, input_shape=(32, 32, 3)
    )
    path = str(tmp_path / "vgg16_notop.weights.h5")
    saved.save_weights(path)

    base = script["vgg16_base"](path, 32)
    for expected, loaded in zip(saved.weights, base.weights):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(expected),
            keras.ops.convert_to_numpy(loaded),
        )
    digits = np.random.default_rng(0).random((2, 28, 28, 1), "float32")
    images = script["vgg16_inputs"](digits, 32)
    assert images.shape == (2, 32, 32, 3)
    # Grey digits become three equal channels (BGR), less the ImageNet means.
    np.testing.assert_allclose(
        images[..., 0] - images[..., 1], 116.779 - 103.939, atol=1e-3
    )


def test_bad_weights_give_clear_errors(tmp_path):
    main = runpy.run_path(EXAMPLE)["main"]
    out = ["--quick", "--out", str(tmp_path)]
    with pytest.raises(UserError, match="no such file"):
        main(["--weights", str(tmp_path / "missing.h5"), *out])
    not_h5 = tmp_path / "weights.bin"
    not_h5.write_bytes(b"\0")
    with pytest.raises(UserError, match=r"ends in \.h5"):
        main(["--weights", str(not_h5), *out])
    # A weights file of another model is refused with a clear message.
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    wrong = str(tmp_path / "other.weights.h5")
    other.save_weights(wrong)
    with pytest.raises(UserError, match="does not hold the weights of VGG16"):
        main(["--weights", wrong, *out])
