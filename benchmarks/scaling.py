"""Data-parallel throughput and checkpoint cost of GPT training.

Two tables.

1. Throughput (`--tables throughput`): the same `keras_llm.models.GPT`
   (default: 4 blocks, width 128, 4 heads, T=128, vocabulary 256) trained
   with `model.fit` at a fixed per-replica batch (`--per-replica-batch`,
   default 8) under `tf.distribute.MirroredStrategy` over 1, 2 and 4
   replicas (`--replicas`), and without a strategy (the baseline). The
   replicas are logical CPU devices (`keras_llm.distribute.get_strategy(
   "cpu:N")`) on a machine without a GPU, GPUs where there are as many
   (`--device gpu`). Each configuration runs in a fresh subprocess (the
   logical devices must be set before TensorFlow starts). Reported: the
   median step time over `--steps` steps after `--warmup` steps, tokens per
   second, and the ratio to the baseline, i.e. tokens per second per
   replica-count against one process without distribution.

   On a 2-core machine N logical CPU devices share the same two cores:
   the table then shows the strategy's OVERHEAD (per-replica graph copies,
   all-reduce of the gradients, splitting the batch), not a speed-up. An
   ideal result there is "tokens per second stays flat as N grows".

2. Checkpoints (`--tables checkpoint`): the same model trained a few steps
   with `keras_llm.callbacks.StepCheckpoint` (the step-exact checkpoint
   manager): the time of one save (median of `--saves`), the time of a
   resume (building the model and optimizer, restoring the newest intact
   checkpoint, including its integrity check), and the bytes of one
   checkpoint against the model's parameter bytes (float32: 4 bytes per
   parameter). AdamW keeps two moments per weight, so a checkpoint with
   optimizer state is about 3x the parameter bytes; more with gradient
   accumulation (one more float32 accumulator per weight).

Run from the repository root:

    python benchmarks/scaling.py                       # both tables
    python benchmarks/scaling.py --tables throughput --replicas 1 2 4 8
    python benchmarks/scaling.py --device gpu --replicas 1   # on one GPU

Writes the results as JSON to `--out` (default
`benchmarks/results/scaling_cpu.json`, `scaling_gpu.json` with `--device
gpu`).
"""

import argparse
import json
import os
import shlex
import statistics
import sys
import time

import child_process

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO_ROOT, "benchmarks", "results", "{}.json")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=(
            "Throughput of GPT training under MirroredStrategy over 1, 2, 4 "
            "replicas, and the cost of step-exact checkpoints."
        )
    )
    parser.add_argument(
        "--tables",
        nargs="+",
        default=["throughput", "checkpoint"],
        choices=["throughput", "checkpoint"],
    )
    parser.add_argument(
        "--device",
        choices=["cpu", "gpu"],
        default="cpu",
        help="replicas are logical CPU devices or GPUs (default: %(default)s)",
    )
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--per-replica-batch", type=int, default=8)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--hidden-dim", type=int, default=128)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--sequence-length", type=int, default=128)
    parser.add_argument("--vocabulary-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--saves", type=int, default=5, help="checkpoint saves timed"
    )
    parser.add_argument(
        "--jit",
        choices=["on", "off"],
        default="off",
        help="XLA for the no-strategy baseline only (Keras' fit under "
        "MirroredStrategy does not compile with XLA; default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=int, default=600)
    parser.add_argument("--out", default=None, help="results JSON")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    child_process.check_positive(
        parser,
        args,
        (
            "per_replica_batch",
            "num_layers",
            "hidden_dim",
            "num_heads",
            "sequence_length",
            "vocabulary_size",
            "steps",
            "saves",
        ),
    )
    if min(args.replicas) <= 0:
        parser.error("--replicas must be positive")
    if args.hidden_dim % args.num_heads:
        parser.error("--hidden-dim must be divisible by --num-heads")
    if args.out is None:
        args.out = DEFAULT_OUT.format(f"scaling_{args.device}")
    return args


# --- One measurement (in a child process) ---


def _build(spec):
    from keras_llm.models import GPT

    return GPT(
        vocabulary_size=spec["vocabulary_size"],
        num_layers=spec["num_layers"],
        num_heads=spec["num_heads"],
        hidden_dim=spec["hidden_dim"],
        max_sequence_length=spec["sequence_length"],
        dropout=0.0,
    )


def _compile(model, spec, jit_compile):
    from keras_llm.optimizers import for_pretraining
    from keras_llm.pretraining import compile_for_clm

    optimizer = for_pretraining(
        total_steps=spec["warmup"] + spec["steps"] + 10,
        learning_rate=1e-3,
        accumulation_steps=spec.get("accumulation_steps", 1),
    )
    compile_for_clm(model, optimizer, jit_compile=jit_compile)


def _dataset(spec, global_batch):
    import numpy as np
    import tensorflow as tf

    length = spec["sequence_length"]
    tokens = np.random.default_rng(spec["seed"]).integers(
        0, spec["vocabulary_size"], size=(4 * global_batch, length + 1)
    )
    return (
        tf.data.Dataset.from_tensor_slices(
            (tokens[:, :-1].astype("int32"), tokens[:, 1:].astype("int32"))
        )
        .batch(global_batch, drop_remainder=True)
        .repeat()
    )


class _StepTimer:
    """Wall-clock stamps at the end of every training batch."""

    def __init__(self):
        import keras

        stamps = []

        class Timer(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                stamps.append(time.perf_counter())

        self.callback = Timer()
        self.stamps = stamps


def measure_throughput(spec):
    """Trains one configuration; returns its median step time."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import contextlib

    import keras

    try:
        strategy = _strategy(spec)
    except RuntimeError as e:
        return {**spec, "error": str(e)}
    replicas = spec["replicas"]
    keras.utils.set_random_seed(spec["seed"])
    scope = strategy.scope() if strategy else contextlib.nullcontext()
    with scope:
        model = _build(spec)
        _compile(model, spec, jit_compile=spec["jit"] and strategy is None)
    global_batch = spec["per_replica_batch"] * replicas
    timer = _StepTimer()
    started = time.perf_counter()
    history = model.fit(
        _dataset(spec, global_batch),
        epochs=1,
        steps_per_epoch=spec["warmup"] + spec["steps"],
        callbacks=[timer.callback],
        verbose=0,
    )
    stamps = timer.stamps[spec["warmup"] - 1 :]
    intervals = [b - a for a, b in zip(stamps, stamps[1:])]
    step = statistics.median(intervals)
    return {
        **spec,
        "global_batch": global_batch,
        "replicas_in_sync": strategy.num_replicas_in_sync if strategy else 1,
        "parameters": int(model.count_params()),
        "seconds_per_step": step,
        "tokens_per_second": global_batch * spec["sequence_length"] / step,
        "wall_seconds": time.perf_counter() - started,
        "loss": float(history.history["loss"][-1]),
        "load_average": os.getloadavg()[0],
    }


def _strategy(spec):
    """The strategy a spec names (`None` for no strategy)."""
    from keras_llm.distribute import get_strategy

    replicas = spec["replicas"]
    if spec["strategy"] == "none":
        return None
    if spec["device"] == "cpu":
        return get_strategy(f"cpu:{replicas}")
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) < replicas:
        raise RuntimeError(f"{len(gpus)} GPU(s) for {replicas} replicas")
    return tf.distribute.MirroredStrategy([g.name for g in gpus[:replicas]])


def measure_checkpoint(spec):
    """Times `CheckpointManager` saves and a resume; returns the bytes."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import contextlib
    import tempfile

    import keras
    import numpy as np

    from keras_llm.callbacks import CheckpointManager
    from keras_llm.compression.quantization import weight_bytes

    strategy = _strategy(spec)
    keras.utils.set_random_seed(spec["seed"])
    scope = strategy.scope if strategy else contextlib.nullcontext

    def build():
        with scope():
            model = _build(spec)
            _compile(model, spec, jit_compile=False)
        return model

    model = build()
    global_batch = spec["per_replica_batch"] * spec["replicas"]
    # A few real steps so the optimizer holds its state (moments, sums).
    model.fit(
        _dataset(spec, global_batch),
        epochs=1,
        steps_per_epoch=3,
        verbose=0,
    )
    parameter_bytes = weight_bytes(model)
    folder = tempfile.mkdtemp(prefix="scaling_ckpt_")
    manager = CheckpointManager(folder, keep=2)
    saves = []
    for i in range(spec["saves"]):
        started = time.perf_counter()
        path = manager.save(model, step=i + 1, state={"epoch": 0})
        saves.append(time.perf_counter() - started)
    checkpoint_bytes = sum(
        os.path.getsize(os.path.join(path, name)) for name in os.listdir(path)
    )
    restores, resumes = [], []
    for _ in range(spec["saves"]):
        started = time.perf_counter()
        fresh = build()
        with scope():
            fresh.optimizer.build(fresh.trainable_variables)
        built = time.perf_counter()
        # As StepCheckpoint resumes: metric totals restart with the epoch.
        manager.restore(fresh, metrics=False)
        done = time.perf_counter()
        restores.append(done - built)
        resumes.append(done - started)
    same = all(
        np.array_equal(a, b)
        for a, b in zip(fresh.get_weights(), model.get_weights())
    ) and all(
        np.array_equal(np.asarray(a.numpy()), np.asarray(b.numpy()))
        for a, b in zip(fresh.optimizer.variables, model.optimizer.variables)
    )
    return {
        **spec,
        "parameters": int(model.count_params()),
        "parameter_bytes": parameter_bytes,
        "optimizer_variables": len(model.optimizer.variables),
        "checkpoint_bytes": checkpoint_bytes,
        "bytes_ratio": checkpoint_bytes / parameter_bytes,
        "save_seconds": statistics.median(saves),
        "restore_seconds": statistics.median(restores),
        "resume_seconds": statistics.median(resumes),
        "restored_state_equal": bool(same),
    }


def run_child(args, spec):
    """Runs one measurement in a fresh subprocess; returns its dict."""
    env = dict(os.environ)
    if spec.get("device") == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # logical CPUs even beside a GPU
    return child_process.run_child(__file__, spec, args.timeout, env)


def model_spec(args):
    return {
        "device": args.device,
        "per_replica_batch": args.per_replica_batch,
        "num_layers": args.num_layers,
        "hidden_dim": args.hidden_dim,
        "num_heads": args.num_heads,
        "sequence_length": args.sequence_length,
        "vocabulary_size": args.vocabulary_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "seed": args.seed,
    }


def throughput_table(args, console):
    rows = []
    configs = [("none", 1)] + [("mirrored", n) for n in args.replicas]
    for strategy, replicas in configs:
        spec = {
            **model_spec(args),
            "kind": "throughput",
            "strategy": strategy,
            "replicas": replicas,
            "jit": args.jit == "on",
        }
        label = (
            "no strategy"
            if strategy == "none"
            else f"MirroredStrategy x{replicas}"
        )
        console.print(f"  {label} ...", highlight=False)
        rows.append(run_child(args, spec))
    base = rows[0].get("tokens_per_second")
    for row in rows:
        if base and "tokens_per_second" in row:
            row["ratio_to_no_strategy"] = row["tokens_per_second"] / base
    return rows


def checkpoint_table(args, console):
    rows = []
    configs = [("none", 1, 1), ("none", 1, 2)]
    if args.device == "cpu" or max(args.replicas) > 1:
        configs.append(("mirrored", 2, 2))
    for strategy, replicas, accumulation in configs:
        spec = {
            **model_spec(args),
            "kind": "checkpoint",
            "strategy": strategy,
            "replicas": replicas,
            "accumulation_steps": accumulation,
            "saves": args.saves,
        }
        console.print(
            f"  {strategy} x{replicas}, accumulation {accumulation} ...",
            highlight=False,
        )
        rows.append(run_child(args, spec))
    return rows


# --- Report ---


def report_throughput(args, rows, console):
    from rich.table import Table

    table = Table(
        title=(
            f"Throughput, per-replica batch {args.per_replica_batch}, "
            f"T={args.sequence_length} ({args.device} replicas)"
        )
    )
    for column in (
        "configuration",
        "replicas",
        "global batch",
        "step ms",
        "tokens/s",
        "vs no strategy",
        "load",
    ):
        table.add_column(column, justify="right")
    for row in rows:
        label = (
            "no strategy"
            if row["strategy"] == "none"
            else f"MirroredStrategy x{row['replicas']}"
        )
        if "error" in row:
            table.add_row(label, str(row["replicas"]), "", row["error"])
            continue
        table.add_row(
            label,
            str(row["replicas_in_sync"]),
            str(row["global_batch"]),
            f"{row['seconds_per_step'] * 1e3:.1f}",
            f"{row['tokens_per_second']:,.0f}",
            f"{row.get('ratio_to_no_strategy', float('nan')):.2f}x",
            f"{row['load_average']:.1f}",
        )
    console.print(table)
    if args.device == "cpu":
        console.print(
            f"(logical CPU devices share {os.cpu_count()} cores: the ratios "
            "show the strategy's overhead per token, not a speed-up)",
            highlight=False,
        )


def report_checkpoint(args, rows, console):
    from rich.table import Table

    table = Table(
        title="Step-exact checkpoints (CheckpointManager: weights, "
        "optimizer, RNG; atomic, SHA-256 verified)"
    )
    for column in (
        "configuration",
        "parameters",
        "param MB",
        "checkpoint MB",
        "ratio",
        "save ms",
        "restore ms",
        "resume ms",
        "exact",
    ):
        table.add_column(column, justify="right")
    for row in rows:
        label = (
            "no strategy"
            if row["strategy"] == "none"
            else f"MirroredStrategy x{row['replicas']}"
        ) + f", accumulate {row['accumulation_steps']}"
        if "error" in row:
            table.add_row(label, row["error"])
            continue
        table.add_row(
            label,
            f"{row['parameters']:,}",
            f"{row['parameter_bytes'] / 1e6:.2f}",
            f"{row['checkpoint_bytes'] / 1e6:.2f}",
            f"{row['bytes_ratio']:.2f}x",
            f"{row['save_seconds'] * 1e3:.0f}",
            f"{row['restore_seconds'] * 1e3:.0f}",
            f"{row['resume_seconds'] * 1e3:.0f}",
            "yes" if row["restored_state_equal"] else "NO",
        )
    console.print(table)
    console.print(
        "ratio: checkpoint bytes / parameter bytes (AdamW keeps 2 moments "
        "per weight; accumulation adds a float32 sum per weight, one per "
        "replica under MirroredStrategy). restore: verify + load into a "
        "built model; resume: build + compile + restore.",
        highlight=False,
    )


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        measure = MEASURES[spec["kind"]]
        print(json.dumps(measure(spec)), flush=True)
        return
    started = time.perf_counter()
    from rich.console import Console

    from keras_llm.pretraining import device_name
    from keras_llm.pretraining import versions

    console = Console(width=None if sys.stdout.isatty() else 120)
    command = " ".join(
        shlex.quote(a)
        for a in ["python"]
        + (sys.argv if argv is None else [sys.argv[0]] + list(argv))
    )
    device = device_name()
    console.print(f"[bold]scaling[/bold]: {device}")
    results = {
        "command": command,
        "device": device,
        "versions": versions(),
        "options": vars(args),
        "load_average_at_start": os.getloadavg(),
    }
    if "throughput" in args.tables:
        console.print("Table 1: throughput")
        results["throughput"] = throughput_table(args, console)
    if "checkpoint" in args.tables:
        console.print("Table 2: checkpoints")
        results["checkpoint"] = checkpoint_table(args, console)
    results["seconds"] = time.perf_counter() - started
    results["load_average_at_end"] = os.getloadavg()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, default=str)
    if "throughput" in results:
        report_throughput(args, results["throughput"], console)
    if "checkpoint" in results:
        report_checkpoint(args, results["checkpoint"], console)
    console.print(f"results: {args.out}", highlight=False)


MEASURES = {
    "throughput": measure_throughput,
    "checkpoint": measure_checkpoint,
}

if __name__ == "__main__":
    main()
