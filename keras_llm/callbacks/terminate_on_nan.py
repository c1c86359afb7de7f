"""Keras' `TerminateOnNaN`, saving a checkpoint before it stops.

Keras' callback stops (or raises) on a NaN or infinite loss but keeps
nothing to look at; this subclass first saves the training state through a
`StepCheckpoint` (as a `nan-step-N` checkpoint that resumes never pick, so
a resume starts from the last healthy one), then prints one line with the
step, the reason and the checkpoint, and stops.
"""

import math

import keras

from keras_llm.callbacks.step_checkpoint import _finite_logs


@keras.saving.register_keras_serializable(package="keras_llm")
class TerminateOnNaN(keras.callbacks.TerminateOnNaN):
    """Stops training on a NaN or infinite loss, saving a checkpoint first.

    The checkpoint (`<directory>/nan-step-NNNNNNNNN`, written by the
    `StepCheckpoint` passed as `checkpoint`) holds the state right after
    the step whose loss was not finite, for inspection; resuming ignores
    it and picks the newest regular checkpoint. The printed line names
    the step (batches consumed), the epoch, the loss and the checkpoint.

    Args:
        checkpoint: a `keras_llm.callbacks.StepCheckpoint` (also in the
            callbacks of `fit`), or `None` to stop without saving.
            Defaults to `None`.
        raise_error: bool. Raise a `RuntimeError` after saving instead of
            stopping. Defaults to `False`.
        print_fn: function that prints the message. Defaults to `print`.

    Example:

    ```python
    import tempfile
    import numpy as np
    import keras
    from keras_llm.callbacks import StepCheckpoint, TerminateOnNaN

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(1e30), loss="mse")
    checkpoint = StepCheckpoint(tempfile.mkdtemp(), every_n_steps=100)
    x = np.full((64, 1), 1e10, "float32")
    model.fit(
        x, x, batch_size=8, verbose=0,
        callbacks=[checkpoint, TerminateOnNaN(checkpoint)],
    )  # prints "TerminateOnNaN: stopped at step ..."
    ```
    """

    def __init__(self, checkpoint=None, raise_error=False, print_fn=print):
        super().__init__(raise_error=raise_error)
        self.checkpoint = checkpoint
        self.print_fn = print_fn
        self.stopped_step = None
        self.saved = None

    def on_batch_end(self, batch, logs=None):
        if _finite_logs(logs):
            return
        loss = logs["loss"]
        path = None
        if self.checkpoint is not None:
            if self.checkpoint.model is not self.model:
                self.checkpoint.set_model(self.model)
            path = self.checkpoint.save_now(batch, prefix="nan-step")
            step = self.checkpoint._position(batch)["batches"]
        else:
            step = None
        epoch = getattr(self.checkpoint, "_epoch", None)
        self.stopped_step = step
        self.saved = path
        where = f"step {step}" if step is not None else f"batch {batch + 1}"
        if epoch is not None:
            where += f" (epoch {epoch + 1}, batch {batch + 1})"
        reason = "NaN" if math.isnan(float(loss)) else "infinite"
        saved = f"; saved {path}" if path else "; no checkpoint saved"
        message = (
            f"TerminateOnNaN: stopped at {where}: the loss is {reason} "
            f"({float(loss)}){saved}"
        )
        self.print_fn(message)
        if self.raise_error:
            raise RuntimeError(message)
        self.model.stop_training = True

    def get_config(self):
        return {"raise_error": self.raise_error}
