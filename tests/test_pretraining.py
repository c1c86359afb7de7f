"""`pretrain` with the training-technique options: --accumulate,
--precision, --remat, --strategy (and --schedule)."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_llm.cli import main
from keras_llm.optimizers import GradientAccumulation
from keras_llm.pretraining import PretrainConfig
from keras_llm.pretraining import make_optimizer

TINY = """
steps: 4
eval_interval: 2
eval_steps: 1
warmup_steps: 1
sequence_length: 16
batch_size: 4
sample_length: 20
model_overrides:
  num_layers: 1
  num_heads: 2
  hidden_dim: 16
  intermediate_dim: 32
"""


def test_all_technique_flags_in_one_run(tmp_path):
    """In a fresh process: `cpu:2` must create its devices before TF starts
    (and the test process already runs its own MirroredStrategy)."""
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    out = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "keras_llm.cli",
            "pretrain",
            "--config",
            str(config),
            "--accumulate",
            "2",
            "--precision",
            "mixed_bfloat16",
            "--remat",
            "--strategy",
            "cpu:2",
            "--schedule",
            "linear",
            "--out",
            str(out),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "XLA off" in result.stdout  # jit_compile needs one device
    assert "update batch 8 (2 micro-batches of 4), 2 replica(s)" in (
        " ".join(result.stdout.split())
    )
    manifest = json.loads((out / "manifest.json").read_text())
    options = manifest["options"]
    assert options["accumulate"] == 2
    assert options["precision"] == "mixed_bfloat16"
    assert options["remat"] is True and options["strategy"] == "cpu:2"
    assert manifest["model"]["remat"] is True
    assert manifest["results"]["steps"] == 4  # updates
    assert manifest["results"]["micro_batches"] == 8
    assert manifest["results"]["replicas"] == 2
    model = keras.saving.load_model(out / "model.keras")
    assert isinstance(model.optimizer, GradientAccumulation)
    assert model.optimizer.steps == 2
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 4


def test_make_optimizer_follows_the_config():
    optimizer = make_optimizer(
        PretrainConfig(steps=50, warmup_steps=5, accumulate=4, clipnorm=0.5)
    )
    assert isinstance(optimizer, GradientAccumulation)
    assert optimizer.steps == 4
    assert optimizer.inner_optimizer.global_clipnorm == 0.5
    schedule = optimizer.inner_optimizer._learning_rate
    np.testing.assert_allclose(float(schedule(5)), 1e-3, rtol=1e-5)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--accumulate", "0"], "--accumulate must be a positive integer"),
        (["--precision", "float64"], "--precision must be one of float32"),
        (["--schedule", "step"], "--schedule must be one of cosine"),
        (["--strategy", "gpus"], "unknown strategy 'gpus'"),
    ],
)
def test_bad_technique_options(tmp_path, capsys, args, message):
    code = main(["pretrain", "--out", str(tmp_path / "o"), *args])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


@pytest.mark.parametrize("kind", ["bpe", "wordpiece"])
def test_pretrain_on_a_prepared_folder(tmp_path, kind):
    """`keras-llm data prepare` then `keras-llm pretrain --data`: the shards
    and the tokenizer of the folder are used as they are."""
    from keras_llm.data.corpus import default_corpus
    from keras_llm.data.prepare import prepare
    from keras_llm.data.shards import read_shards

    pages = tmp_path / "pages"
    pages.mkdir()
    for i, text in enumerate(default_corpus()[:12]):
        (pages / f"{i}.txt").write_text(text)
    prepared = tmp_path / "prepared"
    manifest = prepare(
        inputs=[str(pages)],
        out=str(prepared),
        tokenizer=kind,
        vocabulary_size=300,
        validation_fraction=0.2,
    )
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    out = tmp_path / "run"
    code = main(
        ["pretrain", "--config", str(config), "--data", str(prepared)]
        + ["--out", str(out), "--quiet", "--no-jit-compile"]
    )
    assert code == 0
    with open(out / "manifest.json") as f:
        run = json.load(f)
    counts = run["counts"]
    assert counts["train_tokens"] == len(read_shards(str(prepared), "train"))
    assert counts["validation_tokens"] == len(
        read_shards(str(prepared), "validation")
    )
    assert (
        counts["vocabulary_size"] == manifest["vocabulary"]["vocabulary_size"]
    )
    assert run["inputs"]["documents"] == manifest["overall"]["kept"]
    model = keras.saving.load_model(out / "model.keras")
    assert model.vocabulary_size == counts["vocabulary_size"]


def test_pretrain_data_folder_errors(tmp_path, capsys):
    code = main(["pretrain", "--data", str(tmp_path), "--out", str(tmp_path)])
    assert code == 2
    assert "manifest.json" in capsys.readouterr().err
