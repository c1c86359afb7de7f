"""Long context on a CPU: a character-level GPT on 4096-token sequences with
sliding-window attention, next to the same model with dense attention.

Both models start from the same weights (`GPT.with_attention`), see the same
batches of tinyshakespeare (`../shared/data/tinyshakespeare.txt`, or
`--corpus`), and train for `--steps` steps in `model.fit`. The script prints,
for each, the time per training step (after the first, compiling, step), the
peak memory of the training steps as TensorFlow's CPU allocator counts it,
and the validation loss. Dense attention holds a 4096 x 4096 score matrix
per head; the sliding window keeps only 4096 x 2 x window.

    python examples/long_context.py                  # T=4096, window 256
    python examples/long_context.py --quick          # seconds
    python examples/long_context.py --sequence-length 8192 --steps 10
"""

import argparse
import os
import time

import keras
import numpy as np
from rich.console import Console
from rich.table import Table

import keras_llm
from keras_llm import data
from keras_llm.data.pipelines import clm_dataset
from keras_llm.data.pipelines import split_tokens

SHAKESPEARE = os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    "..", "..", "shared", "data", "tinyshakespeare.txt",
)  # fmt: skip


class StepTimer(keras.callbacks.Callback):
    """Wall time of each training batch and the allocator's peak memory of
    the batches after the first (the first one traces and compiles)."""

    def __init__(self):
        super().__init__()
        self.times = []
        self.peak_bytes = None

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 1:
            _reset_peak()
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._start)

    def on_train_end(self, logs=None):
        self.peak_bytes = _peak()


def _reset_peak():
    import tensorflow as tf

    tf.config.experimental.reset_memory_stats("CPU:0")


def _peak():
    import tensorflow as tf

    return tf.config.experimental.get_memory_info("CPU:0")["peak"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", nargs="*", default=None)
    parser.add_argument("--sequence-length", type=int, default=4096)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--hidden-dim", type=int, default=128)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="tiny, seconds")
    args = parser.parse_args(argv)
    if args.quick:
        args.sequence_length, args.window, args.steps = 512, 64, 4
        args.num_layers, args.hidden_dim = 1, 64
    keras.utils.set_random_seed(0)
    console = Console()

    if args.corpus:
        documents = data.read_corpus(args.corpus)
    elif os.path.exists(SHAKESPEARE):
        documents = data.read_corpus([SHAKESPEARE])
    else:
        documents = data.default_corpus()
    text = "\n".join(documents)
    tokenizer = data.CharacterTokenizer.from_texts([text])
    ids = keras.ops.convert_to_numpy(tokenizer(text))
    train, val = split_tokens(ids, 0.1)
    t = args.sequence_length
    # One fixed set of batches, so both models see the same data.
    x, y = next(iter(clm_dataset(train, t, args.batch_size * args.steps,
                                 seed=0, stride=t // 2)))  # fmt: skip
    val_x, val_y = next(iter(clm_dataset(val, t, 4, shuffle=False)))

    dense = keras_llm.models.GPT(
        vocabulary_size=tokenizer.vocabulary_size(),
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        hidden_dim=args.hidden_dim,
        max_sequence_length=t,
        position_embedding="rotary",
    )
    models = {
        "dense": dense,
        f"sliding window {args.window}": dense.with_attention(
            "sliding_window", window=args.window
        ),
    }
    console.print(
        f"{len(text):,} characters, vocabulary {tokenizer.vocabulary_size()}"
        f", sequences of {t}, batch {args.batch_size}, {args.steps} steps, "
        f"{dense.num_parameters():,} parameters"
    )
    table = Table(title=f"Training at T={t} on CPU")
    for column in ("attention", "s / step", "peak memory (MiB)", "val loss"):
        table.add_column(column, justify="right")
    results = {}
    for name, model in models.items():
        model.compile(
            keras.optimizers.AdamW(1e-3, weight_decay=0.1, clipnorm=1.0),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=False,
        )
        timer = StepTimer()
        console.print(f"[bold]{name}[/bold]")
        model.fit(
            x, y, batch_size=args.batch_size, shuffle=False,
            callbacks=[timer], verbose=1,
        )  # fmt: skip
        step = float(np.median(timer.times[1:] or timer.times))
        loss = model.evaluate(val_x, val_y, batch_size=2, verbose=0)
        results[name] = dict(
            seconds_per_step=step, peak_bytes=timer.peak_bytes, val_loss=loss
        )
        table.add_row(
            name,
            f"{step:.3f}",
            f"{timer.peak_bytes / 2**20:,.0f}",
            f"{loss:.3f}",
        )
    console.print(table)
    dense_r, window_r = results.values()
    console.print(
        f"sliding window: {dense_r['seconds_per_step'] / window_r['seconds_per_step']:.2f}x "
        f"faster, {dense_r['peak_bytes'] / window_r['peak_bytes']:.2f}x less "
        "peak memory than dense"
    )
    return results


if __name__ == "__main__":
    main()
