"""`keras-llm prune | quantize | distill` end to end on a tiny pretrained GPT."""

import json
import os

import keras
import numpy as np
import pytest

from keras_llm.cli import main

TINY = [
    "--steps", "6", "--eval-interval", "3", "--eval-steps", "1",
    "--warmup-steps", "1", "--sequence-length", "32", "--batch-size", "8",
    "--sample-length", "40", "--no-jit-compile", "--quiet",
]  # fmt: skip
SHARED = [
    "--sequence-length", "32", "--batch-size", "8", "--eval-steps", "2",
    "--no-jit-compile", "--quiet",
]  # fmt: skip


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    config = out / "tiny.yaml"
    config.write_text(
        "model_overrides:\n  num_layers: 2\n  num_heads: 2\n"
        "  hidden_dim: 32\n  intermediate_dim: 64\n"
    )
    code = main(["pretrain", "--config", str(config), "--out", str(out)] + TINY)
    assert code == 0
    return str(out / "model.keras")


def _result(out):
    with open(os.path.join(out, "compression.json")) as f:
        return json.load(f)


def test_prune_writes_a_plain_sparse_model(teacher, tmp_path, capsys):
    out = str(tmp_path / "pruned")
    code = main(
        ["prune", "--model", teacher, "--out", out, "--steps", "8"]
        + ["--sparsity", "0.5", "--frequency", "2"]
        + SHARED
    )
    assert code == 0
    assert "keras-llm prune" in capsys.readouterr().out
    result = _result(out)
    before, after = result["rows"]
    assert after["parameters"] == before["parameters"]
    model = keras.saving.load_model(os.path.join(out, "model.keras"))
    kernels = [v.numpy() for v in model.weights if v.path.endswith("kernel")]
    assert kernels
    for kernel in kernels:
        assert np.mean(kernel == 0) == pytest.approx(0.5, abs=0.02)
    assert os.path.exists(os.path.join(out, "tokenizer.json"))
    assert os.path.exists(os.path.join(out, "manifest.json"))


@pytest.mark.parametrize("mode", ["int8", "qat"])
def test_quantize_shrinks_weights_and_reloads(teacher, tmp_path, mode):
    out = str(tmp_path / mode)
    code = main(
        ["quantize", "--model", teacher, "--out", out, "--mode", mode]
        + ["--steps", "3"]
        + SHARED
    )
    assert code == 0
    result = _result(out)
    before, after = result["rows"]
    assert after["bytes"] < before["bytes"]
    model = keras.saving.load_model(os.path.join(out, "model.keras"))
    modes = {
        layer.quantization_mode
        for layer in model._flatten_layers()
        if layer.quantization_mode
    }
    assert modes == {"int8"}
    assert abs(after["validation_loss"] / before["validation_loss"] - 1) < 0.1


def test_distill_trains_a_smaller_student(teacher, tmp_path):
    out = str(tmp_path / "student")
    code = main(
        ["distill", "--model", teacher, "--out", out, "--steps", "4"]
        + ["--student-layers", "1", "--student-hidden-dim", "16"]
        + SHARED
    )
    assert code == 0
    result = _result(out)
    assert result["parameter_ratio"] < 0.5
    student = keras.saving.load_model(os.path.join(out, "model.keras"))
    assert student.num_layers == 1 and student.hidden_dim == 16


def test_bad_options_are_one_line_errors(teacher, tmp_path, capsys):
    out = str(tmp_path / "bad")
    assert main(["prune", "--model", teacher, "--out", out,
                 "--sparsity", "1.5"]) == 2  # fmt: skip
    assert "--sparsity" in capsys.readouterr().err
    assert main(["quantize", "--model", "nope.keras", "--out", out]) == 2
    assert "does not exist" in capsys.readouterr().err
