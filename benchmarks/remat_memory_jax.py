"""Peak accelerator memory and step time of GPT training, remat off vs on,
on the JAX backend (for GPU machines without TensorFlow).

`training_memory.py` measures the same on TensorFlow through its allocator
statistics and needs `tf.data`; this script needs only Keras, keras-hub and
JAX, so it runs where TensorFlow is not installed (the lent GPU machines).
Each configuration runs in a fresh subprocess: `keras_llm.models.GPT`
(default 12 blocks, width 768, 12 heads, T=1024, micro-batch 8, vocabulary
8192: activations dominate) trained with `model.fit` (XLA, as Keras always
compiles on JAX) and the AdamW of `keras_llm.optimizers.for_pretraining`,
`remat=False` vs `remat=True`, in `float32` and `mixed_bfloat16`. After the
steps, `jax.local_devices()[0].memory_stats()` gives `peak_bytes_in_use`
(the process's peak: weights, optimizer state and the largest step) and
`bytes_in_use` (what stays: weights and optimizer state); "step" is their
difference, the memory a training step adds. Step time is the median of
the timed steps' intervals.

Targets (the training-techniques issue): with remat, peak memory at most
half (ratio <= 0.5) and step time at most 1.4x.

    KERAS_BACKEND=jax python benchmarks/remat_memory_jax.py
    KERAS_BACKEND=jax python benchmarks/remat_memory_jax.py --num-layers 2 \
        --hidden-dim 64 --num-heads 2 --sequence-length 128 --batch-size 2
"""

import argparse
import json
import os
import statistics
import sys
import time

import child_process

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEMORY_TARGET = 0.5
TIME_TARGET = 1.4


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-layers", type=int, default=12)
    parser.add_argument("--hidden-dim", type=int, default=768)
    parser.add_argument("--num-heads", type=int, default=12)
    parser.add_argument("--sequence-length", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--vocabulary-size", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--precisions",
        nargs="+",
        default=["mixed_bfloat16", "float32"],
        choices=["float32", "mixed_bfloat16", "mixed_float16"],
    )
    parser.add_argument("--timeout", type=int, default=600)
    parser.add_argument(
        "--out",
        default=os.path.join(
            REPO_ROOT, "runs", "bench_remat_jax", "remat_memory_jax.json"
        ),
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def measure(spec):
    """One configuration, in a fresh process."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax
    import keras
    import numpy as np

    from keras_llm.models import GPT
    from keras_llm.optimizers import for_pretraining

    if keras.backend.backend() != "jax":
        raise SystemExit("run with KERAS_BACKEND=jax")
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy(spec["precision"])
    model = GPT(
        vocabulary_size=spec["vocabulary_size"],
        num_layers=spec["num_layers"],
        num_heads=spec["num_heads"],
        hidden_dim=spec["hidden_dim"],
        max_sequence_length=spec["sequence_length"],
        dropout=0.0,
        remat=spec["remat"],
    )
    steps = spec["warmup"] + spec["steps"]
    model.compile(
        optimizer=for_pretraining(total_steps=steps + 1, learning_rate=3e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    batch, length = spec["batch_size"], spec["sequence_length"]
    tokens = np.random.default_rng(0).integers(
        0, spec["vocabulary_size"], size=(steps * batch, length + 1)
    )
    stamps = []

    class Timer(keras.callbacks.Callback):
        def on_train_batch_end(self, step, logs=None):
            # Logs hold Python floats on JAX after each batch: synchronised.
            float(logs["loss"])
            stamps.append(time.perf_counter())

    history = model.fit(
        tokens[:, :-1].astype("int32"),
        tokens[:, 1:].astype("int32"),
        batch_size=batch,
        epochs=1,
        shuffle=False,
        callbacks=[Timer()],
        verbose=0,
    )
    timed = stamps[spec["warmup"] - 1 :]
    intervals = [b - a for a, b in zip(timed, timed[1:])]
    stats = jax.local_devices()[0].memory_stats() or {}
    peak = int(stats.get("peak_bytes_in_use", 0))
    held = int(stats.get("bytes_in_use", 0))
    return {
        **spec,
        "device": str(jax.local_devices()[0].device_kind),
        "parameters": int(model.count_params()),
        "peak_bytes": peak,
        "held_bytes": held,
        "step_bytes": peak - held,
        "seconds_per_step": statistics.median(intervals),
        "tokens_per_second": batch * length / statistics.median(intervals),
        "loss": float(history.history["loss"][-1]),
    }


def run_child(args, spec):
    """Runs `measure(spec)` in a fresh subprocess; returns its dict."""
    return child_process.run_child(__file__, spec, args.timeout)


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure(json.loads(args.child))), flush=True)
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 120)
    base = {
        key: getattr(args, key)
        for key in (
            "num_layers",
            "hidden_dim",
            "num_heads",
            "sequence_length",
            "batch_size",
            "vocabulary_size",
            "steps",
            "warmup",
        )
    }
    rows = []
    for precision in args.precisions:
        for remat in (False, True):
            spec = {**base, "precision": precision, "remat": remat}
            console.print(f"  {precision} remat={remat} ...", highlight=False)
            rows.append(run_child(args, spec))
    table = Table(
        title=(
            f"GPT {args.num_layers}x{args.hidden_dim}, T={args.sequence_length}"
            f", batch {args.batch_size}: remat off vs on (JAX)"
        )
    )
    for column in (
        "precision",
        "remat",
        "peak MiB",
        "step MiB",
        "step ms",
        "tokens/s",
        "peak ratio",
        "time ratio",
        "verdict",
    ):
        table.add_column(column, justify="right")
    for row in rows:
        if "error" in row:
            table.add_row(row["precision"], str(row["remat"]), row["error"])
            continue
        off = next(
            (
                r
                for r in rows
                if r["precision"] == row["precision"]
                and not r["remat"]
                and "error" not in r
            ),
            None,
        )
        cells = ["", "", ""]
        if row["remat"] and off:
            # CPU devices report no memory statistics (peak 0).
            row["peak_ratio"] = (
                row["peak_bytes"] / off["peak_bytes"]
                if off["peak_bytes"]
                else float("nan")
            )
            row["time_ratio"] = (
                row["seconds_per_step"] / off["seconds_per_step"]
            )
            ok = (
                row["peak_ratio"] <= MEMORY_TARGET
                and row["time_ratio"] <= TIME_TARGET
            )
            cells = [
                f"{row['peak_ratio']:.2f}",
                f"{row['time_ratio']:.2f}",
                "n/a"  # no memory statistics on this device
                if row["peak_ratio"] != row["peak_ratio"]
                else ("PASS" if ok else "MISS"),
            ]
        table.add_row(
            row["precision"],
            str(row["remat"]),
            f"{row['peak_bytes'] / 2**20:,.0f}",
            f"{row['step_bytes'] / 2**20:,.0f}",
            f"{row['seconds_per_step'] * 1e3:.1f}",
            f"{row['tokens_per_second']:,.0f}",
            *cells,
        )
    console.print(table)
    device = next((r["device"] for r in rows if "device" in r), "?")
    results = {
        "command": "KERAS_BACKEND=jax python " + " ".join(sys.argv),
        "device": device,
        "targets": {"peak_ratio": MEMORY_TARGET, "time_ratio": TIME_TARGET},
        "rows": rows,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    console.print(f"device: {device}; results: {args.out}", highlight=False)


if __name__ == "__main__":
    main()
