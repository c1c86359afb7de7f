"""Tests of `StepCheckpoint` and `CheckpointManager`: step-exact resume
after SIGKILL, corrupt and partial checkpoints, keep-K, strategies, and
`pretrain` resuming from its --out folder."""

import json
import logging
import os
import random
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_llm.callbacks import CheckpointManager
from keras_llm.callbacks import StepCheckpoint
from keras_llm.callbacks.step_checkpoint import _END_OF_RESUMED_EPOCH
from keras_llm.errors import UserError
from keras_llm.optimizers import GradientAccumulation

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "resume_train.py")
ROOT = os.path.dirname(os.path.dirname(HERE))


def _env():
    env = dict(os.environ)
    env.update(KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _start(*args):
    return subprocess.Popen(
        [sys.executable, SCRIPT, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=ROOT,
    )


def _finish(process, what):
    try:
        out, err = process.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    return process.returncode, out, f"{what}: stderr tail:\n{err[-3000:]}"


@pytest.mark.slow
def test_sigkill_at_random_steps_then_resume_matches_uninterrupted(tmp_path):
    # resume_train.py: 15 fit steps (3 epochs of 5, validation at each
    # end), GradientAccumulation(steps=2), dropout 0.2, op determinism,
    # a checkpoint every 3 steps (some in the middle of an accumulation).
    kill_points = sorted(random.Random(6).sample(range(1, 15), 5))
    reference = _start(tmp_path / "ref", tmp_path / "ref.npz")
    killed = [
        _start(tmp_path / f"run{k}", tmp_path / f"run{k}.npz", k)
        for k in kill_points
    ]
    rc, out, err = _finish(reference, "reference run")
    assert rc == 0 and "DONE" in out, err
    for k, process in zip(kill_points, killed):
        rc, out, err = _finish(process, f"run killed at {k}")
        assert rc == -signal.SIGKILL, err
        steps = [line for line in out.splitlines() if line.startswith("STEP")]
        assert steps[-1] == f"STEP {k}", (steps, err)
    resumed = [
        _start(tmp_path / f"run{k}", tmp_path / f"run{k}.npz")
        for k in kill_points
    ]
    expected = np.load(tmp_path / "ref.npz")
    for k, process in zip(kill_points, resumed):
        rc, out, err = _finish(process, f"resume after kill at {k}")
        assert rc == 0 and "DONE" in out, err
        last_saved = k // 3 * 3
        if last_saved:
            assert f"after step {last_saved} " in out, out
        got = np.load(tmp_path / f"run{k}.npz")
        assert list(got["resumed_from"]) == ([last_saved] if last_saved else [])
        weights = [f for f in expected.files if f != "resumed_from"]
        different = [
            f for f in weights if not np.array_equal(got[f], expected[f])
        ]
        assert not different, (
            f"killed at step {k}, resumed from {last_saved}: arrays "
            f"{different} differ from the uninterrupted run"
        )


def _dense_model(accumulate=1, dropout=0.0, jit_compile="auto"):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dropout(dropout),
            keras.layers.Dense(1),
        ]
    )
    optimizer = keras.optimizers.Adam(1e-2)
    if accumulate > 1:
        optimizer = GradientAccumulation(optimizer, steps=accumulate)
    model.compile(
        optimizer=optimizer,
        loss="mse",
        metrics=["mae"],
        jit_compile=jit_compile,
    )
    return model


def _stream(seed=1):
    x = np.random.default_rng(0).normal(size=(48, 4)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    return ds.shuffle(48, seed=seed).repeat().batch(4)


class _Interrupt(Exception):
    pass


class _InterruptAfter(keras.callbacks.Callback):
    def __init__(self, steps):
        super().__init__()
        self.steps = steps
        self.seen = 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.steps:
            raise _Interrupt()


def _fit(model, folder, epochs=3, interrupt=None, every=2, **kwargs):
    checkpoint = StepCheckpoint(folder, every_n_steps=every, verbose=0)
    callbacks = [checkpoint]
    if interrupt:
        callbacks.append(_InterruptAfter(interrupt))
    history = model.fit(
        checkpoint.resume_dataset(_stream()),
        epochs=epochs,
        steps_per_epoch=5,
        callbacks=callbacks,
        verbose=0,
        **kwargs,
    )
    return checkpoint, history


def test_resume_mid_epoch_is_step_exact_with_epoch_bookkeeping(tmp_path):
    reference = _dense_model(accumulate=2, dropout=0.3)
    _, full = _fit(reference, tmp_path / "ref", every=100)
    model = _dense_model(accumulate=2, dropout=0.3)
    with pytest.raises(_Interrupt):
        _fit(model, tmp_path / "run", interrupt=8)
    assert [
        s for s, _ in CheckpointManager(tmp_path / "run").checkpoints()
    ] == [
        4,
        6,
        8,
    ]
    model = _dense_model(accumulate=2, dropout=0.3)
    # Train it away from the checkpoint: restoring must overwrite this.
    model.fit(_stream(2), steps_per_epoch=3, verbose=0)
    checkpoint, resumed = _fit(model, tmp_path / "run")
    assert checkpoint.restored["step"] == 8
    assert checkpoint.resumes[-1]["epoch"] == 1
    assert checkpoint.resumes[-1]["step_in_epoch"] == 3
    assert model.stop_training is False
    assert model._initial_epoch is None
    # Epochs 2 and 3 ran, the first shortened to its last 2 steps; the
    # restored metric totals make its logged means the uninterrupted ones.
    assert len(resumed.history["loss"]) == 2
    np.testing.assert_allclose(
        resumed.history["loss"], full.history["loss"][1:], rtol=1e-5
    )
    for got, want in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(got, want)
    assert int(model.optimizer.iterations.numpy()) == 7  # 15 // 2 updates
    assert int(model.optimizer.micro_steps.numpy()) == 15


def test_truncated_newest_checkpoint_is_skipped_with_a_warning(
    tmp_path, caplog
):
    model = _dense_model()
    with pytest.raises(_Interrupt):
        _fit(model, tmp_path, interrupt=6)
    state = tmp_path / "step-000000006" / "state.npz"
    with open(state, "r+b") as f:
        f.truncate(os.path.getsize(state) // 2)
    with caplog.at_level(logging.WARNING, logger="keras_llm.checkpoint"):
        path, manifest = CheckpointManager(tmp_path).latest()
        assert manifest["step"] == 4 and path.endswith("step-000000004")
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 1 and str(state) in warnings[0]
        assert "truncated" in warnings[0]
        model = _dense_model()
        checkpoint, _ = _fit(model, tmp_path, epochs=1)
    assert checkpoint.restored["step"] == 4
    # Same size, one byte changed: the checksum catches it.
    newest = tmp_path / "step-000000005" / "state.npz"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="keras_llm.checkpoint"):
        assert CheckpointManager(tmp_path).latest()[1]["step"] == 4
    warnings = [r.getMessage() for r in caplog.records]
    assert any(str(newest) in w and "SHA-256" in w for w in warnings)


def test_keep_last_k_and_unfinished_saves_are_invisible(tmp_path, caplog):
    model = _dense_model()
    model.fit(_stream(), steps_per_epoch=1, verbose=0)
    manager = CheckpointManager(tmp_path, keep=2)
    for step in (1, 2, 3, 4):
        manager.save(model, step)
    assert [s for s, _ in manager.checkpoints()] == [3, 4]
    # A save killed before its rename leaves only a hidden temporary
    # folder; one killed before its manifest leaves no checkpoint.json.
    os.rename(tmp_path / "step-000000004", tmp_path / ".tmp-step-000000009-1")
    partial = tmp_path / "step-000000007"
    partial.mkdir()
    (partial / "state.npz").write_bytes(b"PK\x03\x04")
    with caplog.at_level(logging.WARNING, logger="keras_llm.checkpoint"):
        path, manifest = manager.latest()
    assert manifest["step"] == 3
    assert "checkpoint.json" in caplog.records[0].getMessage()
    manager.save(model, 5)
    names = sorted(os.listdir(tmp_path))
    assert not [n for n in names if n.startswith(".tmp-")], names
    assert "step-000000005" in names and "step-000000003" not in names
    with pytest.raises(ValueError, match="keep"):
        CheckpointManager(tmp_path, keep=0)


def test_restore_refuses_another_model(tmp_path):
    model = _dense_model()
    model.fit(_stream(), steps_per_epoch=1, verbose=0)
    manager = CheckpointManager(tmp_path)
    manager.save(model, 1)
    other = _dense_model(accumulate=2)
    other.fit(_stream(), steps_per_epoch=1, verbose=0)
    with pytest.raises(ValueError, match="optimizer variables"):
        manager.restore(other)


def test_saves_loss_scale_and_rng_states(tmp_path):
    keras.config.set_dtype_policy("mixed_float16")
    model = _dense_model(accumulate=2, dropout=0.5)
    model.fit(_stream(), steps_per_epoch=3, verbose=0)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    manager = CheckpointManager(tmp_path)
    np.random.seed(3)
    random.seed(4)
    keras.random.uniform((1,))  # creates Keras' global seed generator
    path = manager.save(model, 3)
    expected = (
        np.random.rand(),
        random.random(),
        keras.random.uniform((3,)).numpy(),
    )
    saved = [v.numpy() for v in model.optimizer.variables]
    model.optimizer.dynamic_scale.assign(1.0)
    model.fit(_stream(), steps_per_epoch=3, verbose=0)
    changed = [
        v.path
        for v, value in zip(model.optimizer.variables, saved)
        if not np.array_equal(v.numpy(), value)
    ]
    assert "loss_scale_optimizer/dynamic_scale" in changed
    assert any("micro_steps" in path for path in changed), changed
    manager.restore(model, path)
    assert np.random.rand() == expected[0] and random.random() == expected[1]
    np.testing.assert_array_equal(keras.random.uniform((3,)), expected[2])
    assert len(saved) == len(model.optimizer.variables)
    for v, value in zip(model.optimizer.variables, saved):
        np.testing.assert_array_equal(v.numpy(), value, err_msg=v.path)
    seeds = [v for v in model.variables if "seed_generator" in v.path]
    assert seeds, "the dropout seed generator state is a model variable"


def test_resume_under_mirrored_strategy(tmp_path):
    from tests.layer_test_case import shared_strategy

    strategy = shared_strategy()

    def build():
        with strategy.scope():
            return _dense_model(accumulate=2, jit_compile=False)

    reference = build()
    _fit(reference, tmp_path / "ref", every=100)
    model = build()
    with pytest.raises(_Interrupt):
        # The checkpoint at step 3 is in the middle of an accumulation:
        # each replica's own sums must come back.
        _fit(model, tmp_path / "run", interrupt=5, every=3)
    model = build()
    checkpoint, _ = _fit(model, tmp_path / "run", every=3)
    assert checkpoint.restored["step"] == 3
    for got, want in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(got, want)


def test_other_stop_requests_survive_the_shortened_epoch(tmp_path):
    model = _dense_model()
    with pytest.raises(_Interrupt):
        _fit(model, tmp_path, interrupt=3)

    class StopAtEpochEnd(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = True

    model = _dense_model()
    checkpoint = StepCheckpoint(tmp_path, every_n_steps=100, verbose=0)
    history = model.fit(
        checkpoint.resume_dataset(_stream()),
        epochs=3,
        steps_per_epoch=5,
        callbacks=[StopAtEpochEnd(), checkpoint],
        verbose=0,
    )
    assert len(history.history["loss"]) == 1
    assert model.stop_training is True
    assert bool(_END_OF_RESUMED_EPOCH)


def test_mismatched_steps_per_epoch_is_refused(tmp_path):
    model = _dense_model()
    with pytest.raises(_Interrupt):
        _fit(model, tmp_path, interrupt=3)
    checkpoint = StepCheckpoint(tmp_path, every_n_steps=2, verbose=0)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        model.fit(
            checkpoint.resume_dataset(_stream()),
            epochs=2,
            steps_per_epoch=4,
            callbacks=[checkpoint],
            verbose=0,
        )
    with pytest.raises(ValueError, match="every_n_steps"):
        StepCheckpoint(tmp_path, every_n_steps=0)
    config = StepCheckpoint(tmp_path, every_n_steps=7).get_config()
    assert StepCheckpoint(**config).every_n_steps == 7


@pytest.mark.slow
def test_pretrain_resumes_from_out_and_matches_uninterrupted(
    tmp_path, monkeypatch
):
    import keras_llm.pretraining as pretraining

    options = dict(
        steps=6,
        warmup_steps=1,
        eval_interval=3,
        eval_steps=1,
        sequence_length=16,
        batch_size=4,
        accumulate=2,
        dropout=0.1,
        jit_compile=False,
        strategy="default",
        checkpoint_every=1,
        keep_checkpoints=2,
        model_overrides=dict(
            num_layers=1, num_heads=2, hidden_dim=16, intermediate_dim=32
        ),
        sample_length=20,
        verbose=0,
    )
    full = pretraining.pretrain(out=str(tmp_path / "full"), **options)

    original = pretraining.ThroughputMeter

    class Crash(original):
        def on_train_batch_end(self, batch, logs=None):
            super().on_train_batch_end(batch, logs)
            if self._step == 9:  # micro-batch 9: update 4, half accumulated
                raise _Interrupt()

    monkeypatch.setattr(pretraining, "ThroughputMeter", Crash)
    with pytest.raises(_Interrupt):
        pretraining.pretrain(out=str(tmp_path / "run"), **options)
    monkeypatch.setattr(pretraining, "ThroughputMeter", original)
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == [
        "options.json",
        "step-000000006",
        "step-000000008",
    ]
    resumed = pretraining.pretrain(out=str(tmp_path / "run"), **options)
    for got, want in zip(
        resumed["model"].get_weights(), full["model"].get_weights()
    ):
        np.testing.assert_array_equal(got, want)
    with open(tmp_path / "run" / "manifest.json", encoding="utf-8") as f:
        manifest = json.load(f)
    assert manifest["resumes"] == [
        {"checkpoint": "step-000000008", "update": 4, "micro_batches": 8}
    ]
    assert manifest["results"]["steps"] == 6
    # Run again on a finished run: it resumes at the end, trains nothing.
    again = pretraining.pretrain(out=str(tmp_path / "full"), **options)
    for got, want in zip(
        again["model"].get_weights(), full["model"].get_weights()
    ):
        np.testing.assert_array_equal(got, want)
    assert again["manifest"]["resumes"][0]["update"] == 6
    assert again["manifest"]["results"]["final_loss"] is not None
    with pytest.raises(UserError, match="batch_size=4"):
        pretraining.pretrain(
            out=str(tmp_path / "run"), **{**options, "batch_size": 2}
        )
    # --checkpoint-dir: another --out resumes from the folder named (how
    # the workers of a multi-worker run share one).
    shared = pretraining.pretrain(
        out=str(tmp_path / "worker1"),
        checkpoint_dir=str(tmp_path / "run" / "checkpoints"),
        **options,
    )
    assert shared["manifest"]["resumes"][-1]["update"] == 6
    assert not os.path.exists(tmp_path / "worker1" / "checkpoints")
    for got, want in zip(
        shared["model"].get_weights(), full["model"].get_weights()
    ):
        np.testing.assert_array_equal(got, want)


def test_cli_has_checkpoint_flags():
    from keras_llm.cli import build_parser

    args = build_parser().parse_args(
        ["pretrain", "--checkpoint-every", "5", "--keep-checkpoints", "2"]
    )
    assert args.checkpoint_every == 5 and args.keep_checkpoints == 2
