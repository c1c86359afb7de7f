"""A 2-worker training run that tests/test_multi_worker_resume.py kills and
restarts.

Not a test module (no `test_` prefix): the test starts it as two worker
processes, each with its own `TF_CONFIG`, under
`get_strategy("multi_worker")` (or as one process with the default
strategy, the reference), with a `StepCheckpoint` every 2 steps into one
checkpoint folder all processes share. It trains a tiny GPT with plain
`model.fit` on a deterministic repeating stream of global batches, for
EPOCHS * STEPS_PER_EPOCH steps, and prints `STEP k` (batches consumed,
resumes included) after every step.

Usage:

```
TF_CONFIG=... python tests/multi_worker_resume_train.py \
    --strategy multi_worker --checkpoints ckpt/ --out worker_0.npz \
    [--kill-at K --kill-worker I] [--kill-in-save K]
```

`{task}` in `--checkpoints` is replaced by the worker's index (to give
each worker its own folder, which StepCheckpoint must refuse).
`--kill-at K --kill-worker I`: worker I SIGKILLs itself right after fit
step K (after the checkpoint callback ran). `--kill-in-save K`: the chief
SIGKILLs itself inside the save of step K, after the checkpoint's files
are written to the temporary folder and before its rename. A run that is
not killed writes its final weights, `optimizer.iterations`, the steps it
trained and where it resumed from to `--out` (.npz).
"""

import argparse
import os
import signal

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

VOCABULARY = 40
SEQUENCE = 16
GLOBAL_BATCH = 8
STEPS_PER_EPOCH = 4
EPOCHS = 3
EVERY = 2
LEARNING_RATE = 0.5


def dataset():
    """12 distinct global batches, repeated: the same in every process, so
    a resume that skipped too few or too many batches trains on other
    rows than the reference."""
    rows = GLOBAL_BATCH * STEPS_PER_EPOCH * EPOCHS
    tokens = np.random.default_rng(1234).integers(
        1, VOCABULARY, (rows, SEQUENCE + 1)
    )
    data = tf.data.Dataset.from_tensor_slices(
        (tokens[:, :-1].astype("int32"), tokens[:, 1:].astype("int32"))
    )
    return data.batch(GLOBAL_BATCH, drop_remainder=True).repeat()


class StepLog(keras.callbacks.Callback):
    """Prints each step, counts the steps this process trained, kills."""

    def __init__(self, checkpoint, kill_at=None):
        super().__init__()
        self.checkpoint = checkpoint
        self.kill_at = kill_at
        self.trained = 0

    def on_train_batch_end(self, batch, logs=None):
        self.trained += 1
        done = self.checkpoint._step  # batches consumed, resumes included
        print(f"STEP {done}", flush=True)
        if done == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


def kill_inside_save(step):
    """Makes this process SIGKILL itself in the save of `step`, after the
    files are in the temporary folder and before its rename."""
    from keras_llm.callbacks import checkpoint_manager

    original = checkpoint_manager._fsync_dir
    marker = f"{checkpoint_manager._TMP_PREFIX}step-{step:09d}-"

    def fsync_dir(path):
        original(path)
        if os.path.basename(path).startswith(marker):
            print(f"KILLED IN SAVE {step}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    checkpoint_manager._fsync_dir = fsync_dir


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", default="default")
    parser.add_argument("--checkpoints", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--kill-worker", type=int, default=0)
    parser.add_argument("--kill-in-save", type=int)
    args = parser.parse_args()

    from keras_llm.callbacks import StepCheckpoint
    from keras_llm.distribute import get_strategy
    from keras_llm.models.gpt import GPT

    strategy = get_strategy(args.strategy)
    resolver = getattr(strategy, "cluster_resolver", None)
    task_id = getattr(resolver, "task_id", None) or 0
    if args.kill_in_save is not None and task_id == 0:
        kill_inside_save(args.kill_in_save)
    kill_at = args.kill_at if task_id == args.kill_worker else None

    data = dataset()
    options = tf.data.Options()
    # As in tests/multi_worker_train.py: each worker gets its slice of
    # every global batch, so a step sees the same rows in every run.
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = GPT(
            vocabulary_size=VOCABULARY,
            num_layers=2,
            num_heads=2,
            hidden_dim=32,
            max_sequence_length=SEQUENCE,
        )
        model.compile(
            optimizer=keras.optimizers.SGD(LEARNING_RATE, momentum=0.5),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=False,
        )
    initial = model.get_weights()
    directory = args.checkpoints.format(task=task_id)
    checkpoint = StepCheckpoint(directory, every_n_steps=EVERY, keep=3)
    log = StepLog(checkpoint, kill_at)
    history = model.fit(
        checkpoint.resume_dataset(data).with_options(options),
        epochs=EPOCHS,
        steps_per_epoch=STEPS_PER_EPOCH,
        callbacks=[checkpoint, log],
        verbose=0,
    )
    result = {f"w{i}": w for i, w in enumerate(model.get_weights())}
    result.update({f"initial{i}": w for i, w in enumerate(initial)})
    result["iterations"] = np.asarray(
        keras.ops.convert_to_numpy(model.optimizer.iterations), "int64"
    )
    result["trained"] = np.asarray(log.trained)
    result["batches"] = np.asarray(checkpoint._step)
    result["resumed_from"] = np.asarray(
        [r["batches"] for r in checkpoint.resumes], "int64"
    )
    result["loss"] = np.asarray(history.history["loss"], "float64")
    result["replicas"] = np.asarray(strategy.num_replicas_in_sync)
    np.savez(args.out, **result)
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
