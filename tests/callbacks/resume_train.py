"""A tiny GPT training run that `test_step_checkpoint.py` kills and resumes.

Usage: python resume_train.py CHECKPOINT_DIR WEIGHTS_OUT [KILL_AT_STEP]

Trains a 1-layer GPT with dropout, `GradientAccumulation(steps=2)` and
op determinism for EPOCHS * STEPS_PER_EPOCH fit steps, with a
`StepCheckpoint` every 3 steps (so some checkpoints fall in the middle of
an accumulation) and validation at each epoch end. With KILL_AT_STEP the
process SIGKILLs itself right after that fit step; without it, it resumes
from CHECKPOINT_DIR (if it holds checkpoints), finishes, and writes the
final weights, optimizer variables and its resume record to WEIGHTS_OUT
(.npz). Prints "STEP k" after every step. Not collected by pytest.
"""

import os
import signal
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_llm.callbacks import StepCheckpoint  # noqa: E402
from keras_llm.data.pipelines import clm_dataset  # noqa: E402
from keras_llm.models.gpt import GPT  # noqa: E402
from keras_llm.optimizers import GradientAccumulation  # noqa: E402

EPOCHS = 3
STEPS_PER_EPOCH = 5
EVERY = 3
SEQ = 8


class KillAt(keras.callbacks.Callback):
    def __init__(self, kill_at):
        super().__init__()
        self.kill_at = kill_at

    def on_train_batch_end(self, batch, logs=None):
        done = checkpoint._step  # batches consumed, resumes included
        print(f"STEP {done}", flush=True)
        if self.kill_at is not None and done == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


def main():
    directory, weights_out = sys.argv[1], sys.argv[2]
    kill_at = int(sys.argv[3]) if len(sys.argv) > 3 else None
    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(7)
    tokens = np.random.default_rng(0).integers(0, 13, 400).astype("int32")
    train = clm_dataset(tokens[:320], SEQ, 4, shuffle=True, seed=3, repeat=True)
    val = clm_dataset(tokens[320:], SEQ, 4, shuffle=False)
    model = GPT(
        vocabulary_size=13,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=SEQ,
        dropout=0.2,
    )
    model.compile(
        optimizer=GradientAccumulation(keras.optimizers.AdamW(3e-3), steps=2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    global checkpoint
    checkpoint = StepCheckpoint(directory, every_n_steps=EVERY, keep=2)
    model.fit(
        checkpoint.resume_dataset(train),
        epochs=EPOCHS,
        steps_per_epoch=STEPS_PER_EPOCH,
        validation_data=val,
        callbacks=[checkpoint, KillAt(kill_at)],
        verbose=0,
    )
    arrays = {f"w{i}": v for i, v in enumerate(model.get_weights())}
    for i, v in enumerate(model.optimizer.variables):
        arrays[f"o{i}"] = keras.ops.convert_to_numpy(v)
    arrays["resumed_from"] = np.array(
        [r["batches"] for r in checkpoint.resumes], "int64"
    )
    np.savez(weights_out, **arrays)
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
