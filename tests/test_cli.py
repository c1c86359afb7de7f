import argparse
import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_llm.cli import main

TINY_CONFIG = """
preset: nano
steps: 6
eval_interval: 3
eval_steps: 2
warmup_steps: 2
sequence_length: 16
batch_size: 4
sample_length: 24
sample_every: 3
model_overrides:
  num_layers: 1
  num_heads: 2
  hidden_dim: 16
  intermediate_dim: 32
"""


@pytest.fixture
def corpus(tmp_path):
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran"]
    text = " ".join(rng.choice(words, 3000)) + "\n"
    path = tmp_path / "corpus.txt"
    path.write_text(text)
    return str(path)


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_CONFIG)
    return str(path)


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_pretrain_then_generate(tmp_path, corpus, config_file, capsys):
    out = str(tmp_path / "run")
    code = main(
        [
            "pretrain",
            "--config",
            config_file,
            "--corpus",
            corpus,
            "--out",
            out,
            "--seed",
            "7",
            "--no-jit-compile",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "[step 3]" in printed and "validation loss" in printed
    for name in (
        "model.keras",
        "tokenizer.json",
        "loss_curve.png",
        "manifest.json",
    ):
        assert os.path.isfile(os.path.join(out, name)), name
    assert os.listdir(os.path.join(out, "logs"))
    with open(os.path.join(out, "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["options"]["seed"] == 7
    assert manifest["options"]["steps"] == 6
    assert manifest["options"]["jit_compile"] is False
    assert manifest["inputs"]["corpus"] == [corpus]
    assert manifest["counts"]["vocabulary_size"] == 15  # 14 chars + [UNK]
    assert manifest["results"]["final_val_loss"] > 0
    assert manifest["versions"]["keras"] == keras.__version__

    code = main(
        [
            "generate",
            "--model",
            os.path.join(out, "model.keras"),
            "--prompt",
            "the cat",
            "--max-length",
            "20",
            "--seed",
            "1",
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    # 20 tokens; an untrained model may emit [UNK], which prints as 5 chars.
    assert text.startswith("the cat") and len(text.rstrip("\n")) >= 20


def test_library_call_matches_cli(tmp_path, corpus):
    import keras_llm

    result = keras_llm.pretrain(
        corpus=[corpus],
        out=str(tmp_path / "lib"),
        steps=4,
        eval_interval=2,
        warmup_steps=1,
        sequence_length=16,
        batch_size=4,
        sample_length=20,
        jit_compile=True,
        model_overrides=dict(num_layers=1, hidden_dim=16, num_heads=2),
        verbose=0,
    )
    assert len(result["history"]["loss"]) == 2
    assert isinstance(result["sample"], str) and len(result["sample"]) >= 20
    text = keras_llm.generate_text(
        result["paths"]["model"], "the", max_length=12, sampler="greedy"
    )
    assert text.startswith("the") and len(text) >= 12


@pytest.mark.parametrize(
    "args, message",
    [
        (["--corpus", "/nonexistent/file.txt"], "does not exist"),
        (["--preset", "enormous"], "Unknown preset 'enormous'"),
        (["--steps", "0"], "--steps must be a positive integer"),
        (["--batch-size", "-2"], "--batch-size must be a positive integer"),
        (["--sequence-length", "0"], "--sequence-length must be a positive"),
        (["--tokenizer", "morse"], "--tokenizer must be one of"),
        (["--dropout", "1.5"], "--dropout must be in [0, 1)"),
        (["--min-learning-rate", "0.1"], "must not exceed --learning-rate"),
        (["--warmup-steps", "5000"], "must be fewer than --steps"),
    ],
)
def test_pretrain_bad_options(tmp_path, capsys, args, message):
    code = main(["pretrain", "--out", str(tmp_path / "o"), *args])
    assert code == 2
    line = _error_line(capsys)
    assert line.startswith("keras-llm pretrain: error:") and message in line


def test_pretrain_empty_and_short_corpus(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main(["pretrain", "--corpus", str(empty)]) == 2
    assert "is empty" in _error_line(capsys)
    short = tmp_path / "short.txt"
    short.write_text("far too short for one block")
    assert (
        main(["pretrain", "--corpus", str(short), "--out", str(tmp_path)]) == 2
    )
    assert "fewer than one block" in _error_line(capsys)


def test_pretrain_bad_config_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stepz: 3\n")
    assert main(["pretrain", "--config", str(bad)]) == 2
    assert "unknown option(s) stepz" in _error_line(capsys)
    assert main(["pretrain", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "does not exist" in _error_line(capsys)


def test_generate_bad_model_files(tmp_path, capsys):
    assert (
        main(
            ["generate", "--model", str(tmp_path / "x.keras"), "--prompt", "a"]
        )
        == 2
    )
    assert "does not exist" in _error_line(capsys)
    not_keras = tmp_path / "notes.keras"
    not_keras.write_text("hello")
    assert main(["generate", "--model", str(not_keras), "--prompt", "a"]) == 2
    assert "not a .keras model file" in _error_line(capsys)
    other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    other_path = str(tmp_path / "dense.keras")
    other.save(other_path)
    assert main(["generate", "--model", other_path, "--prompt", "a"]) == 2
    assert "not a keras_llm GPT" in _error_line(capsys)


def test_console_script_is_installed_and_reports_errors(tmp_path):
    script = shutil.which("keras-llm") or shutil.which(
        "keras-llm", path=os.path.dirname(sys.executable)
    )
    assert script, "the keras-llm console script is not installed"
    result = subprocess.run(
        [
            script,
            "generate",
            "--model",
            str(tmp_path / "m.keras"),
            "--prompt",
            "x",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("keras-llm generate: error: model file")
    )


TUNE_CONFIG = """
trials: 3
sequence_length: 16
tokens_per_trial: 256
eval_steps: 2
seed: 5
model_overrides:
  num_layers: 1
  num_heads: 2
  hidden_dim: 16
  intermediate_dim: 32
"""


def test_tune_writes_the_search_folder(tmp_path, corpus, capsys):
    config = tmp_path / "tune.yaml"
    config.write_text(TUNE_CONFIG)
    out = str(tmp_path / "tune")
    code = main(
        [
            "tune",
            "--config",
            str(config),
            "--corpus",
            corpus,
            "--out",
            out,
            "--trials",  # the flag wins over the file's 3
            "1",
            "--batch-sizes",
            "4",
            "8",
            "--weight-decays",
            "0",
            "0.05",
            "--learning-rate-min",
            "2e-3",
            "--learning-rate-max",
            "2e-3",
            "--no-jit-compile",
            "--quiet",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "search finished" in printed and "val loss" in printed
    with open(os.path.join(out, "manifest.json")) as f:
        manifest = json.load(f)
    options = manifest["options"]
    assert options["trials"] == 1 and options["seed"] == 5
    assert options["batch_sizes"] == [4, 8]
    assert options["weight_decays"] == [0.0, 0.05]
    assert options["model_overrides"]["hidden_dim"] == 16
    assert options["jit_compile"] is False and options["verbose"] == 2
    assert manifest["stage"] == "tune"
    assert manifest["inputs"]["corpus"] == [corpus]
    with open(os.path.join(out, "trials.json")) as f:
        (trial,) = json.load(f)
    # --learning-rate-min == --learning-rate-max pins the learning rate.
    assert trial["hyperparameters"]["learning_rate"] == 2e-3
    assert trial["steps"] == 256 // (
        trial["hyperparameters"]["batch_size"] * 16
    )
    with open(os.path.join(out, "best_hyperparameters.json")) as f:
        assert json.load(f) == trial["hyperparameters"]
    for name in ("val_loss_vs_learning_rate.png", "logs", "tuner"):
        assert os.path.exists(os.path.join(out, name)), name


@pytest.mark.parametrize(
    "args, message",
    [
        (["--trials", "0"], "--trials must be a positive integer"),
        (["--algorithm", "grid"], "--algorithm must be one of random"),
        (["--batch-sizes", "8", "0"], "--batch-sizes must be one or more"),
        (["--weight-decays", "-1"], "--weight-decays must be one or more"),
        (
            ["--learning-rate-min", "0.1", "--learning-rate-max", "0.01"],
            "must not exceed --learning-rate-max",
        ),
        (["--preset", "enormous"], "Unknown preset 'enormous'"),
    ],
)
def test_tune_bad_options(tmp_path, capsys, args, message):
    code = main(["tune", "--out", str(tmp_path / "o"), *args])
    assert code == 2
    line = _error_line(capsys)
    assert line.startswith("keras-llm tune: error:") and message in line


def test_tune_bad_flag_and_config_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["tune", "--batch-sizes", "eight"])
    assert exit_info.value.code == 2
    assert (
        "--batch-sizes: invalid int value: 'eight'" in capsys.readouterr().err
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("trails: 3\n")
    assert main(["tune", "--config", str(bad)]) == 2
    assert "unknown option(s) trails" in _error_line(capsys)


def test_pretrain_and_tune_flags_come_from_their_configs():
    import dataclasses

    from keras_llm.cli import build_parser
    from keras_llm.pretraining import PretrainConfig
    from keras_llm.tuning import TuneConfig

    parser = build_parser()
    sub = next(
        a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
    )
    for name, config in (("pretrain", PretrainConfig), ("tune", TuneConfig)):
        flags = {
            o
            for a in sub.choices[name]._actions
            for o in a.option_strings
            if not o.startswith("--no-")
        }
        expected = {
            "--" + f.name.replace("_", "-")
            for f in dataclasses.fields(config)
            if f.name not in ("model_overrides", "verbose")
        }
        assert expected <= flags, expected - flags
        assert flags - expected == {"-h", "--help", "--config", "--quiet"}
    args = parser.parse_args(["tune", "--batch-sizes", "4", "16"])
    assert args.batch_sizes == [4, 16]
    args = parser.parse_args(["pretrain", "--corpus", "a.txt", "b.txt"])
    assert args.corpus == ["a.txt", "b.txt"]
    assert not hasattr(parser.parse_args(["tune"]), "trials")


def test_finetune_pair_end_to_end_in_a_subprocess(tmp_path):
    from tests.test_finetuning import write_backbone
    from tests.test_finetuning import write_pairs

    backbone = write_backbone(tmp_path / "bert", hidden_dim=16)
    train = write_pairs(
        tmp_path / "train.jsonl",
        12,
        0,
        ['{"premise": "a", "hypothesis": "b", "label": "-"}'],
    )
    validation = write_pairs(tmp_path / "dev.jsonl", 6, 1)
    out = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "keras_llm.cli",
            "finetune",
            "--backbone",
            backbone,
            "--task",
            "pair",
            "--train",
            train,
            "--validation",
            validation,
            "--sequence-length",
            "16",
            "--batch-size",
            "8",
            "--epochs",
            "1",
            "--seed",
            "3",
            "--no-jit-compile",
            "--quiet",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "fine-tuning finished (pair)" in result.stdout
    assert "unknown label: 1" in result.stdout  # the train file's report
    for name in ("model.keras", "tokenizer.json", "metrics.json"):
        assert (out / name).is_file(), name
    assert os.listdir(out / "logs")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "finetune"
    assert manifest["options"]["seed"] == 3
    assert manifest["options"]["task"] == "pair"
    assert manifest["counts"]["skipped_train_rows"] == 1
    assert manifest["reports"]["train"]["skipped_rows"][0][0] == 13
    assert manifest["labels"] == ["entailment", "neutral", "contradiction"]
    assert manifest["versions"]["keras"] == keras.__version__
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["final"]["accuracy"] <= 1
    assert metrics["final"]["examples"] == 6


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "ner"], "--task must be one of classification, pair, qa"),
        (["--epochs", "-1"], "--epochs must be a non-negative integer"),
        (["--batch-size", "0"], "--batch-size must be a positive integer"),
        (["--pooling", "max"], "--pooling must be one of cls, mean"),
        (["--backbone", "/nonexistent/b.keras"], "does not exist"),
    ],
)
def test_finetune_bad_options(tmp_path, capsys, args, message):
    base = ["--backbone", str(tmp_path), "--train", "t", "--validation", "v"]
    code = main(["finetune", *base, *args])
    assert code == 2
    line = _error_line(capsys)
    assert line.startswith("keras-llm finetune: error:") and message in line


def test_finetune_bad_flag_values_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["finetune", "--epochs", "two"])
    assert info.value.code == 2
    assert "invalid int value: 'two'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["finetune", "--unfreez-top", "1"])
    assert info.value.code == 2


def test_finetune_flags_come_from_its_config():
    import dataclasses

    from keras_llm.cli import build_parser
    from keras_llm.finetuning import FinetuneConfig

    parser = build_parser()
    sub = next(
        a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
    )
    flags = {
        o
        for a in sub.choices["finetune"]._actions
        for o in a.option_strings
        if not o.startswith("--no-")
    }
    expected = {
        "--" + f.name.replace("_", "-")
        for f in dataclasses.fields(FinetuneConfig)
        if f.name != "verbose"
    }
    assert flags - expected == {"-h", "--help", "--config", "--quiet"}
    assert expected <= flags, expected - flags
    args = parser.parse_args(
        ["finetune", "--labels", "neg", "pos", "--unfreeze-top", "2"]
    )
    assert args.labels == ["neg", "pos"] and args.unfreeze_top == 2
    assert not hasattr(args, "epochs")
