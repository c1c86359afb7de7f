"""Loss scaling under mixed_float16: an overflowing step is skipped.

Keras wraps the optimizer in `LossScaleOptimizer` when the policy is
mixed_float16; these tests inject one batch whose float16 activations
overflow and check the step is skipped, the scale halves, and training goes
on to converge, with the plain optimizer and with `GradientAccumulation`
inside the loss-scale optimizer.
"""

import keras
import numpy as np
import pytest

from keras_llm.optimizers import GradientAccumulation

BATCH, OVERFLOW_STEP = 16, 5


class _Recorder(keras.callbacks.Callback):
    """Records the first epoch's overflow step."""

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self.before = [w.copy() for w in self.model.get_weights()]
        if batch == OVERFLOW_STEP and self.epoch == 0:
            self.scale_before = float(self.model.optimizer.dynamic_scale)
            self.micro_before = self._micro_steps()

    def on_train_batch_end(self, batch, logs=None):
        if batch == OVERFLOW_STEP and self.epoch == 0:
            self.skipped = all(
                np.array_equal(a, b)
                for a, b in zip(self.before, self.model.get_weights())
            )
            self.scale_after = float(self.model.optimizer.dynamic_scale)
            self.scale_at_overflow = self.scale_before
            self.micro_after = self._micro_steps()

    def _micro_steps(self):
        inner = self.model.optimizer.inner_optimizer
        if isinstance(inner, GradientAccumulation):
            return int(inner.micro_steps)
        return None


@pytest.mark.parametrize("accumulate", [1, 2])
def test_overflow_step_is_skipped_scale_drops_and_training_converges(
    accumulate,
):
    keras.config.set_dtype_policy("mixed_float16")
    rng = np.random.default_rng(0)
    n = BATCH * 60
    x = rng.normal(size=(n, 4)).astype("float32")
    w = rng.normal(size=(4, 1)).astype("float32")
    y = x @ w
    # One batch with values beyond float16's range (65504): its forward
    # pass and gradients are inf/nan in float16.
    x[OVERFLOW_STEP * BATCH : (OVERFLOW_STEP + 1) * BATCH] = 1e6
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    optimizer = keras.optimizers.Adam(0.05)
    if accumulate > 1:
        optimizer = GradientAccumulation(optimizer, accumulate)
    model.compile(optimizer=optimizer, loss="mse")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    recorder = _Recorder()
    model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=3,
        shuffle=False,
        callbacks=[recorder],
        verbose=0,
    )
    assert recorder.skipped, "the overflowing step changed the weights"
    assert recorder.scale_after == recorder.scale_at_overflow / 2
    if accumulate > 1:
        # The skipped micro-batch is neither accumulated nor counted.
        assert recorder.micro_after == recorder.micro_before > 0
    clean = np.ones(n, bool)
    clean[OVERFLOW_STEP * BATCH : (OVERFLOW_STEP + 1) * BATCH] = False
    loss = model.evaluate(x[clean], y[clean], verbose=0)
    assert loss < 1e-3 * float(np.mean(y**2))
    np.testing.assert_allclose(model.layers[0].kernel.numpy(), w, atol=0.05)
