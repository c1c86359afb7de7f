"""Step-exact checkpoint and resume for `model.fit`.

Keras' `BackupAndRestore` resumes only at the start of an epoch, and it
repeats that epoch's data. This callback saves the whole training state
every N steps through `CheckpointManager` (atomic, verified, keep K) and
resumes mid-epoch on exactly the batch an uninterrupted run would have
trained on next. It works with Keras' own `fit` loop: the restored epoch
goes through `model._initial_epoch` (the hook `BackupAndRestore` uses) and
the first resumed epoch is shortened by stopping it at its usual end; the
data position is handed to the caller, who skips the batches already
consumed (`tf.data.Dataset.skip`), since a callback cannot move fit's
iterator.
"""

import math

import keras

from keras_llm.callbacks.checkpoint_manager import CheckpointManager


class _EndOfResumedEpoch:
    """Truthy `model.stop_training` value that ends only the shortened
    first epoch of a resumed run; `on_epoch_end` clears it. A real stop
    from another callback replaces it with `True` and is kept."""

    def __bool__(self):
        return True

    def __repr__(self):
        return "_EndOfResumedEpoch()"


_END_OF_RESUMED_EPOCH = _EndOfResumedEpoch()


def _multi_worker_strategy(model):
    """The model's strategy when it spans several workers, else `None`."""
    strategy = getattr(model, "distribute_strategy", None)
    extended = getattr(strategy, "extended", None)
    in_multi_worker = getattr(extended, "_in_multi_worker_mode", None)
    return strategy if in_multi_worker and in_multi_worker() else None


def _check_workers_agree(model, step):
    """Under a multi-worker strategy, raises `ValueError` on every worker
    when they did not all choose the checkpoint of step `step` (-1: none).

    A worker that resumed alone would train on other batches with other
    weights (the strategy never re-syncs mirrored variables) and then wait
    forever in a collective; one all-gather here makes that one clear
    error on all of them instead.
    """
    strategy = _multi_worker_strategy(model)
    if strategy is None:
        return
    import tensorflow as tf

    local = strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant([float(step)], tf.float64)
    )
    steps = sorted({int(s) for s in strategy.gather(local, axis=0).numpy()})
    if len(steps) > 1:
        found = ", ".join("none" if s < 0 else str(s) for s in steps)
        raise ValueError(
            "StepCheckpoint: the workers would resume from different "
            f"checkpoints (steps {found}); give every worker the same "
            "checkpoint directory, one folder they all see (only the chief "
            "writes to it)"
        )


def _finite_logs(logs):
    loss = (logs or {}).get("loss")
    try:
        return loss is None or math.isfinite(float(loss))
    except (TypeError, ValueError):
        return True


@keras.saving.register_keras_serializable(package="keras_llm")
class StepCheckpoint(keras.callbacks.Callback):
    """Saves the training state every N steps and resumes step-exactly.

    Every `every_n_steps` batches (fit steps) the model weights, the
    dropout seed-generator states, the whole optimizer state (moments,
    iterations, `GradientAccumulation` sums, a `LossScaleOptimizer`'s
    scale), the metric totals, the Python/NumPy/Keras RNG states and the
    position in the data stream are saved atomically under `directory`,
    keeping the newest `keep`. When `fit` starts and `directory` holds an
    intact checkpoint, the state is restored from the newest one (a
    corrupt or partial one is skipped with a warning), and training goes
    on from the step after it: the first epoch is shortened so that every
    later epoch (and its validation) ends at the same step as in an
    uninterrupted run. A checkpoint is also saved when training ends.

    The resume contract:

    - The training data is a deterministic, repeating stream (seeded
      shuffling, `.repeat()`) and `fit` gets `steps_per_epoch`, so that
      Keras keeps one iterator across epochs and batch `k` of the run is
      always the stream's batch `k`.
    - Before `fit`, the caller skips the batches the checkpoint has
      consumed: `dataset = checkpoint.resume_dataset(dataset)` (or
      `dataset.skip(checkpoint.initial_step())`). The count is global
      batches (before any distribution), one per fit step.
    - The model is built and compiled as before (same optimizer, same
      `steps_per_epoch`, same `epochs`); `fit` restores it, so weights
      loaded before `fit` are overwritten.
    - Checkpoints saved on a non-finite loss are skipped, so a resume
      never starts from a diverged state.

    With `tf.config.experimental.enable_op_determinism()` the resumed
    run ends with weights bit-identical to the uninterrupted one, also
    under `MirroredStrategy`, where a per-replica (on-read) variable such
    as the `GradientAccumulation` sums is saved and restored replica by
    replica. Under `MultiWorkerMirroredStrategy` every worker runs the
    callback (saving reads variables collectively) and only the chief
    writes; per-replica variables are saved as their cross-replica
    aggregate and restored to every replica, so a resume in the middle of
    an accumulation is exact up to float rounding there; `directory` must
    be one folder that all workers see (`fit` checks with one collective
    that all workers resume from the same checkpoint and raises
    `ValueError` on all of them if not). `initial_step()` and
    `resume_path` (set by it) say where the next `fit` resumes.

    Args:
        directory: folder of the checkpoints.
        every_n_steps: int >= 1. Fit steps (batches) between saves.
            Defaults to `100`.
        keep: int >= 1. Checkpoints kept. Defaults to `3`.
        save_on_train_end: bool. Save when `fit` ends (unless the loss is
            not finite). Defaults to `True`.
        verbose: int. 1 prints resumes; 2 also every save. Defaults to
            `1`.

    Example:

    ```python
    import tempfile
    import numpy as np
    import tensorflow as tf
    import keras
    from keras_llm.callbacks import StepCheckpoint

    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((x, x[:, :1]))
    data = data.shuffle(64, seed=1).repeat().batch(8)
    folder = tempfile.mkdtemp()

    def run(epochs):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        model.compile(optimizer="adam", loss="mse")
        checkpoint = StepCheckpoint(folder, every_n_steps=3, verbose=0)
        model.fit(
            checkpoint.resume_dataset(data), epochs=epochs,
            steps_per_epoch=4, callbacks=[checkpoint], verbose=0,
        )
        return checkpoint

    run(epochs=2)  # 8 steps, saved at steps 3, 6 and 8 (the end)
    checkpoint = run(epochs=3)  # resumes after step 8, trains 4 more
    print(checkpoint.resumes[-1]["batches"])  # 8
    ```
    """

    def __init__(
        self,
        directory,
        every_n_steps=100,
        keep=3,
        save_on_train_end=True,
        verbose=1,
    ):
        super().__init__()
        if (
            isinstance(every_n_steps, bool)
            or not isinstance(every_n_steps, int)
            or every_n_steps < 1
        ):
            raise ValueError(
                "`StepCheckpoint` expects `every_n_steps` to be an int >= 1. "
                f"Received: every_n_steps={every_n_steps!r}."
            )
        self.directory = directory
        self.every_n_steps = every_n_steps
        self.keep = keep
        self.save_on_train_end = save_on_train_end
        self.verbose = verbose
        self.manager = CheckpointManager(directory, keep=keep)
        self.resumes = []
        self.restored = None
        self.resume_path = None
        self._chosen = None
        self._step_read = False
        self._step = 0
        self._epoch = 0
        self._epoch_base = 0
        self._offset = 0
        self._saved_step = None
        self._logs = {}

    # --- The resume contract ---

    def _choose(self):
        if self._chosen is None:
            self._chosen = self.manager.latest() or (None, None)
        return self._chosen

    def initial_step(self):
        """Batches consumed at the checkpoint the next `fit` resumes from
        (0 when there is none): skip that many from the training data."""
        self._step_read = True
        path, manifest = self._choose()
        self.resume_path = path
        return 0 if path is None else int(manifest["step"])

    def resume_dataset(self, dataset):
        """`dataset` with the batches before the resume point skipped."""
        step = self.initial_step()
        return dataset.skip(step) if step else dataset

    # --- Position ---

    def _position(self, batch):
        """State after the step ending on batch index `batch`."""
        return {
            "batches": self._epoch_base + batch + 1,
            "epoch": self._epoch,
            "step_in_epoch": self._offset + batch + 1,
            "steps_per_epoch": self.params.get("steps"),
        }

    def save_now(self, batch=None, prefix="step"):
        """Saves a checkpoint after the step ending on `batch` (default: the
        last finished step); returns its path (`None` off the chief)."""
        if batch is None:
            position = {
                "batches": self._step,
                "epoch": self._epoch,
                "step_in_epoch": self._step - self._epoch_base + self._offset,
                "steps_per_epoch": self.params.get("steps"),
            }
        else:
            position = self._position(batch)
        iterations = getattr(self.model.optimizer, "iterations", None)
        state = {
            **position,
            "optimizer_iterations": None
            if iterations is None
            else int(keras.ops.convert_to_numpy(iterations)),
            "logs": {
                k: float(v)
                for k, v in self._logs.items()
                if isinstance(v, (int, float)) or hasattr(v, "__float__")
            },
            "resumes": self.resumes,
        }
        path = self.manager.save(
            self.model, position["batches"], state, prefix=prefix
        )
        if prefix == "step":
            self._saved_step = position["batches"]
        if self.verbose > 1 and path:
            print(f"StepCheckpoint: saved {path}")
        return path

    # --- Callback hooks ---

    def on_train_begin(self, logs=None):
        self._offset = 0
        self._step = 0
        self._resume_epoch = None
        path, manifest = self._choose()
        self._chosen = None  # a later fit looks again
        _check_workers_agree(
            self.model, -1 if path is None else int(manifest["step"])
        )
        if path is None:
            return
        steps = self.params.get("steps")
        saved = manifest["state"]
        step_in_epoch = int(saved.get("step_in_epoch", 0))
        if steps and saved.get("steps_per_epoch") not in (None, steps):
            raise ValueError(
                f"StepCheckpoint: {path} was saved with steps_per_epoch="
                f"{saved['steps_per_epoch']}, this fit has {steps}; resume "
                "with the same steps_per_epoch"
            )
        epoch = int(saved.get("epoch", 0))
        if steps and step_in_epoch >= steps:
            epoch, step_in_epoch = epoch + 1, 0
        if step_in_epoch and not steps:
            raise ValueError(
                f"StepCheckpoint: {path} is in the middle of an epoch; a "
                "step-exact resume needs fit(steps_per_epoch=...) and a "
                "repeating dataset"
            )
        self.restored = self.manager.restore(self.model, path, metrics=False)
        self.resumes = list(saved.get("resumes", [])) + [
            {
                "checkpoint": path,
                "batches": int(manifest["step"]),
                "epoch": epoch,
                "step_in_epoch": step_in_epoch,
                "optimizer_iterations": saved.get("optimizer_iterations"),
            }
        ]
        self._logs = dict(saved.get("logs", {}))
        self._step = self._saved_step = int(manifest["step"])
        self._offset = step_in_epoch
        self._resume_epoch = epoch
        self._restore_path = path
        self.model._initial_epoch = epoch
        if self.verbose:
            print(
                f"StepCheckpoint: resumed from {path} after step "
                f"{self._step} (epoch {epoch + 1}, step {step_in_epoch} of "
                f"{steps or '?'})"
            )
        if not self._step_read:
            print(
                "StepCheckpoint: warning: initial_step() was not read before "
                f"fit; skip {self._step} batches of the training data "
                "(checkpoint.resume_dataset(dataset)) or it repeats them"
            )
        self._step_read = False

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._epoch_base = self._step
        if epoch != self._resume_epoch:
            self._offset = 0
        elif self._offset:
            # fit reset the metrics; bring back the epoch's totals so far.
            self.manager.restore_metrics(self.model, self._restore_path)

    def on_train_batch_end(self, batch, logs=None):
        self._logs = dict(logs or {})
        position = self._position(batch)
        previous, self._step = self._step, position["batches"]
        if (
            self._step // self.every_n_steps > previous // self.every_n_steps
            and _finite_logs(logs)
        ):
            self.save_now(batch)
        steps = self.params.get("steps")
        if (
            self._offset
            and steps
            and position["step_in_epoch"] >= steps
            and not self.model.stop_training
        ):
            self.model.stop_training = _END_OF_RESUMED_EPOCH

    def on_epoch_end(self, epoch, logs=None):
        self._logs = dict(logs or {})
        if self.model.stop_training is _END_OF_RESUMED_EPOCH:
            self.model.stop_training = False

    def on_train_end(self, logs=None):
        self.model._initial_epoch = None
        self._resume_epoch = None
        if (
            self.save_on_train_end
            and self._step
            and self._step != self._saved_step
            and _finite_logs(self._logs)
        ):
            self.save_now()

    def get_config(self):
        return {
            "directory": self.directory,
            "every_n_steps": self.every_n_steps,
            "keep": self.keep,
            "save_on_train_end": self.save_on_train_end,
            "verbose": self.verbose,
        }
