"""Trains a tiny GPT with plain `model.fit`; run by tests/test_multi_worker.py.

Not a test module (no `test_` prefix): tests/test_multi_worker.py starts it
as two worker processes, each with its own `TF_CONFIG`, under
`get_strategy("multi_worker")`, and once more as a single process with the
default strategy on the same global batches, then compares the `.npz` files
of final weights each run writes.

Usage:

```
TF_CONFIG=... python tests/multi_worker_train.py --strategy multi_worker \
    --out weights_0.npz
python tests/multi_worker_train.py --strategy default --out reference.npz
```

`--no-fix` skips `keras_llm.multi_worker_fix.apply()` (to reproduce
keras#20585); `--evaluate` also runs `model.evaluate` and stores its loss.
"""

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

VOCABULARY = 40
SEQUENCE = 16
GLOBAL_BATCH = 8
STEPS = 4
LEARNING_RATE = 0.5


def data(num_rows):
    """The same token rows in every process (a fixed NumPy seed)."""
    rng = np.random.default_rng(1234)
    tokens = rng.integers(1, VOCABULARY, (num_rows, SEQUENCE + 1))
    return tokens[:, :-1].astype("int32"), tokens[:, 1:].astype("int32")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", default="default")
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--no-fix", action="store_true")
    parser.add_argument("--evaluate", action="store_true")
    args = parser.parse_args()

    from keras_llm.distribute import check_tf_config
    from keras_llm.distribute import get_strategy
    from keras_llm.models.gpt import GPT

    if args.no_fix:
        check_tf_config()
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        strategy = get_strategy(args.strategy)
    inputs, targets = data(GLOBAL_BATCH * args.steps)
    # Unshuffled global batches of GLOBAL_BATCH rows: a multi-worker
    # strategy splits each one between the workers (AutoShardPolicy.DATA
    # on the batched dataset hands each worker its slice of every batch),
    # so one step sees the same rows in every run.
    dataset = tf.data.Dataset.from_tensor_slices((inputs, targets))
    dataset = dataset.batch(GLOBAL_BATCH, drop_remainder=True)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    dataset = dataset.with_options(options)

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
            # Plain SGD: a gradient reduced with the wrong scale (a sum for
            # a mean) or not at all changes the update in proportion.
            optimizer=keras.optimizers.SGD(LEARNING_RATE),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=False,
        )
    initial = model.get_weights()
    history = model.fit(dataset, epochs=1, verbose=0, shuffle=False)
    result = {f"w{i}": w for i, w in enumerate(model.get_weights())}
    result.update({f"initial{i}": w for i, w in enumerate(initial)})
    result["loss"] = np.asarray(history.history["loss"], "float64")
    result["replicas"] = np.asarray(strategy.num_replicas_in_sync)
    if args.evaluate:
        result["eval_loss"] = np.asarray(
            model.evaluate(dataset, verbose=0), "float64"
        )
    np.savez(args.out, **result)


if __name__ == "__main__":
    main()
