"""Tests of `TerminateOnNaN`: it saves a checkpoint, prints why, stops."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_llm.callbacks import CheckpointManager
from keras_llm.callbacks import StepCheckpoint
from keras_llm.callbacks import TerminateOnNaN


def _model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    return model


def _data(nan_batch):
    """Batches of 4; batch `nan_batch` holds a NaN input."""
    x = np.ones((40, 2), "float32")
    x[nan_batch * 4] = np.nan
    return tf.data.Dataset.from_tensor_slices((x, np.ones((40, 1)))).batch(4)


def test_saves_a_checkpoint_prints_and_stops(tmp_path):
    model = _model()
    checkpoint = StepCheckpoint(tmp_path, every_n_steps=2, verbose=0)
    printed = []
    stopper = TerminateOnNaN(checkpoint, print_fn=printed.append)
    model.fit(
        _data(nan_batch=4),
        epochs=2,
        callbacks=[checkpoint, stopper],
        verbose=0,
    )
    assert stopper.stopped_step == 5
    assert len(printed) == 1
    assert printed[0].startswith("TerminateOnNaN: stopped at step 5")
    assert "epoch 1, batch 5" in printed[0] and "NaN" in printed[0]
    assert stopper.saved == str(tmp_path / "nan-step-000000005")
    assert str(stopper.saved) in printed[0]
    manager = CheckpointManager(tmp_path)
    assert manager.verify(stopper.saved)["state"]["batches"] == 5
    # Training stopped after the NaN step (5 of 20), the NaN state is not
    # a regular checkpoint, and resuming picks the last healthy one.
    assert int(model.optimizer.iterations.numpy()) == 5
    assert [s for s, _ in manager.checkpoints()] == [2, 4]
    assert manager.latest()[1]["step"] == 4
    assert sorted(os.listdir(tmp_path)) == [
        "nan-step-000000005",
        "step-000000002",
        "step-000000004",
    ]


def test_raise_error_and_no_checkpoint(tmp_path):
    printed = []
    with pytest.raises(RuntimeError, match="the loss is NaN"):
        _model().fit(
            _data(nan_batch=1),
            callbacks=[
                TerminateOnNaN(raise_error=True, print_fn=printed.append)
            ],
            verbose=0,
        )
    assert "stopped at batch 2: the loss is NaN" in printed[0]
    assert "no checkpoint saved" in printed[0]


def test_finite_losses_do_not_stop():
    stopper = TerminateOnNaN(print_fn=pytest.fail)
    x = np.ones((8, 2), "float32")
    history = _model().fit(
        x, np.ones((8, 1)), batch_size=4, callbacks=[stopper], verbose=0
    )
    assert stopper.stopped_step is None and len(history.history["loss"]) == 1
