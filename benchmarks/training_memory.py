"""Peak memory and step time of GPT training: accumulation, remat, precision.

Two tables, each configuration measured in a fresh subprocess so that one
configuration's peak cannot leak into another's:

1. Gradient accumulation (`--tables accumulation`): the same
   `keras_llm.models.GPT` (default 4 blocks, width 256, 4 heads, T=256,
   vocabulary 1024, micro-batch 8) trained with `accumulation_steps` k = 1,
   2, 4, 8 at a fixed micro-batch, with and without remat, in `float32`
   and `mixed_bfloat16`. Target: the peak memory stays flat, within 10% of
   k=1 (accumulation adds one float32 accumulator per weight and nothing
   that grows with k).
2. Gradient checkpointing (`--tables remat`): a 12-block GPT at T=1024
   (width 256, 4 heads, batch 1), `remat=False` vs `remat=True`, without
   and with XLA. Targets: peak memory with remat at most half of without
   (ratio <= 0.5), step time at most 1.4x.

Method. Every configuration trains with the real setup: `model.fit` on a
repeated `tf.data` pipeline of random token windows (memory and time do
not depend on the text), the optimizer from
`keras_llm.optimizers.for_pretraining(total_steps=..., accumulation_steps=
k)` (AdamW, global-norm clipping, schedule; a `GradientAccumulation`
wrapper for k > 1) and the loss and metric of
`keras_llm.pretraining.compile_for_clm`. `fit` is kept, not replaced by a
custom step, because the accumulation wrapper's memory and time only mean
something inside the train step users run, and a callback can do all the
measuring: at the end of each micro-batch (`on_train_batch_end`; Keras has
already copied the step's logs to Python, so the step has finished) it
takes a wall-clock and a process CPU-time stamp. After `--warmup-updates`
full updates (the first micro-batch traces the step and builds the
optimizer), it records the memory held
(`tf.config.experimental.get_memory_info(device)["current"]`: weights,
optimizer slots, input buffers; `device` is `--memory-device`, by default
`GPU:0` when there is a GPU, else `CPU:0`) and calls
`reset_memory_stats(device)`;
after `--updates` more full updates (k micro-batches each) it reads
`["peak"]`. The peak is therefore that of a window of complete updates,
accumulate-only and update micro-batches included, and counts everything
TensorFlow's CPU allocator hands out (XLA's buffers included). For k > 1
"held" is read right after an update, when the accumulators have just been
reset and do not show in `current`; they are part of the peak. Time per
micro-batch is the median of the window's micro-batch intervals (for k > 1
mostly accumulate-only steps); time per update is the median over the
window's updates of the sum of their k intervals; CPU time per update
likewise (all threads of the process; on a shared machine it is less
disturbed by other processes than wall time, and the 1-minute load
average at the end of each window is recorded to show such contention).
The memory ratios use the absolute peak; "step MiB" (peak minus held) is
the memory the training step adds on top of what it starts from.

Table 1 runs without XLA by default (`--jit on` for XLA, as `keras-llm
pretrain` trains by default): each of its 16 configurations then skips an
XLA compile. Table 2 runs `--remat-jit both`, because XLA could undo
rematerialization (common-subexpression elimination can merge the
recomputed forward pass with the original); the table shows whether it
does. The full run takes about 9 minutes on 2 idle CPU cores, mostly process
start-up and tracing (about 20 s per configuration); the smoke run below
about 1.5 minutes.

Run from the repository root:

    python benchmarks/training_memory.py
    python benchmarks/training_memory.py --num-layers 2 \
        --sequence-length 64 --accumulation-steps 1 2 --precisions float32 \
        --remat-num-layers 2 --remat-sequence-length 256 --remat-jit off \
        --updates 2 --remat-steps 2          # quick smoke run

The tables and ratios are printed and written as JSON to `--out` (default
`benchmarks/results/training_memory_cpu.json`).
"""

import argparse
import gc
import json
import os
import shlex
import statistics
import sys
import time

import child_process

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join("benchmarks", "results", "training_memory_cpu.json")
FLAT_TOLERANCE = 0.10
REMAT_MEMORY_TARGET = 0.5
REMAT_TIME_TARGET = 1.4
MIB = 2**20
JIT_SETTINGS = {"off": [False], "on": [True], "both": [False, True]}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=(
            "Peak memory and step time of GPT training with gradient "
            "accumulation, remat and mixed precision."
        )
    )
    parser.add_argument(
        "--tables",
        nargs="+",
        default=["accumulation", "remat"],
        choices=["accumulation", "remat"],
        help="which tables to measure (default: both)",
    )
    model = parser.add_argument_group("model (both tables)")
    model.add_argument("--hidden-dim", type=int, default=256)
    model.add_argument("--num-heads", type=int, default=4)
    model.add_argument("--vocabulary-size", type=int, default=1024)
    model.add_argument("--seed", type=int, default=0)
    acc = parser.add_argument_group("table 1: accumulation")
    acc.add_argument("--num-layers", type=int, default=4)
    acc.add_argument("--sequence-length", type=int, default=256)
    acc.add_argument(
        "--batch-size", type=int, default=8, help="micro-batch size"
    )
    acc.add_argument(
        "--accumulation-steps", type=int, nargs="+", default=[1, 2, 4, 8]
    )
    acc.add_argument(
        "--remat",
        nargs="+",
        default=["off", "on"],
        choices=["off", "on"],
        help="remat settings of table 1 (default: off on)",
    )
    acc.add_argument(
        "--precisions",
        nargs="+",
        default=["float32", "mixed_bfloat16"],
        choices=["float32", "mixed_float16", "mixed_bfloat16"],
    )
    acc.add_argument(
        "--jit",
        default="off",
        choices=["off", "on"],
        help="XLA for table 1 (default: %(default)s)",
    )
    acc.add_argument(
        "--updates",
        type=int,
        default=3,
        help="measured updates per configuration, after the warm-up "
        "(default: %(default)s)",
    )
    acc.add_argument(
        "--warmup-updates",
        type=int,
        default=1,
        help="untimed updates before measuring (default: %(default)s)",
    )
    rem = parser.add_argument_group("table 2: remat")
    rem.add_argument("--remat-num-layers", type=int, default=12)
    rem.add_argument("--remat-sequence-length", type=int, default=1024)
    rem.add_argument("--remat-batch-size", type=int, default=1)
    rem.add_argument(
        "--remat-precision",
        default="float32",
        choices=["float32", "mixed_float16", "mixed_bfloat16"],
    )
    rem.add_argument(
        "--remat-jit",
        default="both",
        choices=sorted(JIT_SETTINGS),
        help="XLA for table 2 (default: %(default)s)",
    )
    rem.add_argument(
        "--remat-steps",
        type=int,
        default=5,
        help="measured steps per setting (default: %(default)s)",
    )
    parser.add_argument(
        "--memory-device",
        default="auto",
        help="TensorFlow device whose allocator is measured: auto (GPU:0 "
        "when TensorFlow sees a GPU, else CPU:0), CPU:0, GPU:0, ... "
        "(default: %(default)s)",
    )
    parser.add_argument("--timeout", type=int, default=900)
    parser.add_argument(
        "--out", default=DEFAULT_OUT, help="results JSON (default: %(default)s)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    child_process.check_positive(
        parser,
        args,
        (
            "hidden_dim",
            "num_heads",
            "vocabulary_size",
            "num_layers",
            "sequence_length",
            "batch_size",
            "updates",
            "warmup_updates",
            "remat_num_layers",
            "remat_sequence_length",
            "remat_batch_size",
            "remat_steps",
        ),
    )
    if min(args.accumulation_steps) <= 0:
        parser.error("--accumulation-steps must be positive")
    if args.hidden_dim % args.num_heads:
        parser.error("--hidden-dim must be divisible by --num-heads")
    return args


# --- One measurement (in the child process) ---


def measure(spec):
    """Trains one configuration with `fit`; returns its memory and times.

    Args:
        spec: dict with `precision`, `remat`, `accumulation_steps`, `jit`,
            `num_layers`, `hidden_dim`, `num_heads`, `vocabulary_size`,
            `sequence_length`, `batch_size`, `warmup_updates`, `updates`,
            `seed`.

    Returns:
        A dict: the spec plus `held_bytes`, `peak_bytes`, `step_bytes`,
        `seconds_per_micro_batch`, `seconds_per_update`, `intervals`,
        `parameters`, `loss`.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_llm.models import GPT
    from keras_llm.optimizers import for_pretraining
    from keras_llm.pretraining import compile_for_clm

    k = spec["accumulation_steps"]
    warmup = spec["warmup_updates"] * k
    window = spec["updates"] * k
    keras.utils.set_random_seed(spec["seed"])
    keras.config.set_dtype_policy(spec["precision"])
    length, batch = spec["sequence_length"], spec["batch_size"]
    model = GPT(
        vocabulary_size=spec["vocabulary_size"],
        num_layers=spec["num_layers"],
        num_heads=spec["num_heads"],
        hidden_dim=spec["hidden_dim"],
        max_sequence_length=length,
        remat=spec["remat"],
    )
    optimizer = for_pretraining(
        total_steps=spec["warmup_updates"] + spec["updates"],
        accumulation_steps=k,
    )
    compile_for_clm(model, optimizer, jit_compile=spec["jit"])
    # A few distinct micro-batches of random tokens, repeated: memory and
    # time do not depend on the text.
    tokens = np.random.default_rng(spec["seed"]).integers(
        0, spec["vocabulary_size"], size=(4 * batch, length + 1)
    )
    data = (
        tf.data.Dataset.from_tensor_slices(
            (tokens[:, :-1].astype("int32"), tokens[:, 1:].astype("int32"))
        )
        .batch(batch, drop_remainder=True)
        .repeat()
    )
    record = {}
    memory_device = spec.get("memory_device", "auto")
    if memory_device == "auto":
        gpus = tf.config.list_logical_devices("GPU")
        memory_device = "GPU:0" if gpus else "CPU:0"
    record["memory_device"] = memory_device

    class Probe(keras.callbacks.Callback):
        def on_train_batch_end(self, step, logs=None):
            # Keras has turned `logs` into Python floats: the step is done.
            now, cpu = time.perf_counter(), time.process_time()
            if step == warmup - 1:
                gc.collect()
                info = tf.config.experimental.get_memory_info(memory_device)
                record["held_bytes"] = int(info["current"])
                tf.config.experimental.reset_memory_stats(memory_device)
                record["intervals"], record["cpu_intervals"] = [], []
                record["last"] = time.perf_counter(), time.process_time()
            elif step >= warmup:
                record["intervals"].append(now - record["last"][0])
                record["cpu_intervals"].append(cpu - record["last"][1])
                record["last"] = now, cpu
                if step == warmup + window - 1:
                    info = tf.config.experimental.get_memory_info(memory_device)
                    record["peak_bytes"] = int(info["peak"])
                    record["loss"] = float(logs["loss"])

    model.fit(
        data,
        epochs=1,
        steps_per_epoch=warmup + window,
        callbacks=[Probe()],
        verbose=0,
    )

    def per_update(values):
        return [sum(values[i : i + k]) for i in range(0, len(values), k)]

    intervals, cpu_intervals = record["intervals"], record["cpu_intervals"]
    return {
        **spec,
        "parameters": int(model.count_params()),
        "held_bytes": record["held_bytes"],
        "peak_bytes": record["peak_bytes"],
        "step_bytes": record["peak_bytes"] - record["held_bytes"],
        "seconds_per_micro_batch": statistics.median(intervals),
        "seconds_per_update": statistics.median(per_update(intervals)),
        "cpu_seconds_per_update": statistics.median(per_update(cpu_intervals)),
        "intervals": intervals,
        "cpu_intervals": cpu_intervals,
        "loss": record["loss"],
        "memory_device": record["memory_device"],
        "load_average": os.getloadavg()[0],
    }


def run_child(args, spec):
    """Runs `measure(spec)` in a fresh subprocess; returns its dict."""
    return child_process.run_child(__file__, spec, args.timeout)


# --- The two tables (in the parent process) ---


def model_spec(args, table):
    spec = {
        "memory_device": args.memory_device,
        "hidden_dim": args.hidden_dim,
        "num_heads": args.num_heads,
        "vocabulary_size": args.vocabulary_size,
        "seed": args.seed,
    }
    if table == "accumulation":
        spec.update(
            num_layers=args.num_layers,
            sequence_length=args.sequence_length,
            batch_size=args.batch_size,
            warmup_updates=args.warmup_updates,
            updates=args.updates,
            jit=args.jit == "on",
        )
    else:
        spec.update(
            num_layers=args.remat_num_layers,
            sequence_length=args.remat_sequence_length,
            batch_size=args.remat_batch_size,
            warmup_updates=1,
            updates=args.remat_steps,
            precision=args.remat_precision,
            accumulation_steps=1,
        )
    return spec


def describe(row):
    if "error" in row:
        return f"failed: {row['error']}"
    return (
        f"peak {row['peak_bytes'] / MIB:7.1f} MiB (held "
        f"{row['held_bytes'] / MIB:6.1f}), "
        f"{row['seconds_per_micro_batch'] * 1e3:6.0f} ms/micro-batch, "
        f"{row['seconds_per_update'] * 1e3:6.0f} ms/update, load "
        f"{row['load_average']:.1f}"
    )


def accumulation_table(args, console):
    rows = []
    base = model_spec(args, "accumulation")
    for precision in args.precisions:
        for remat in args.remat:
            for k in args.accumulation_steps:
                spec = dict(
                    base,
                    precision=precision,
                    remat=remat == "on",
                    accumulation_steps=k,
                )
                row = run_child(args, spec)
                console.print(
                    f"  {precision:>14} remat {remat:>3} k={k}: {describe(row)}"
                )
                rows.append(row)
    # Peak relative to the smallest k of the same precision and remat (the
    # target), and to the smallest k > 1 (growth with k once the fixed
    # accumulators exist).
    for row in rows:
        if "error" in row:
            continue
        peers = [
            r
            for r in rows
            if r["precision"] == row["precision"]
            and r["remat"] == row["remat"]
            and "error" not in r
        ]
        first = min(peers, key=lambda r: r["accumulation_steps"])
        row["memory_vs_smallest_k"] = row["peak_bytes"] / first["peak_bytes"]
        row["flat"] = abs(row["memory_vs_smallest_k"] - 1) <= FLAT_TOLERANCE
        accumulating = [r for r in peers if r["accumulation_steps"] > 1]
        if row["accumulation_steps"] > 1:
            first = min(accumulating, key=lambda r: r["accumulation_steps"])
            row["memory_vs_smallest_accumulating_k"] = (
                row["peak_bytes"] / first["peak_bytes"]
            )
    return rows


def remat_table(args, console):
    rows = []
    base = model_spec(args, "remat")
    for jit in JIT_SETTINGS[args.remat_jit]:
        row = {"xla": jit}
        for remat in (False, True):
            result = run_child(args, dict(base, remat=remat, jit=jit))
            name = "remat" if remat else "plain"
            console.print(
                f"  XLA {'on ' if jit else 'off'} {name:>5}: {describe(result)}"
            )
            row[name] = result
        if "error" not in row["plain"] and "error" not in row["remat"]:
            plain, remat = row["plain"], row["remat"]
            row["peak_ratio"] = remat["peak_bytes"] / plain["peak_bytes"]
            row["step_memory_ratio"] = remat["step_bytes"] / plain["step_bytes"]
            row["time_ratio"] = (
                remat["seconds_per_update"] / plain["seconds_per_update"]
            )
            row["cpu_time_ratio"] = (
                remat["cpu_seconds_per_update"]
                / plain["cpu_seconds_per_update"]
            )
            row["memory_ok"] = row["peak_ratio"] <= REMAT_MEMORY_TARGET
            row["time_ok"] = row["time_ratio"] <= REMAT_TIME_TARGET
        rows.append(row)
    return rows


def verdict(ok):
    return "[green]PASS[/green]" if ok else "[red]MISS[/red]"


def add_columns(table, columns):
    for col in columns:
        left = col in ("precision", "remat", "XLA")
        table.add_column(col, justify="left" if left else "right")


def report_accumulation(args, rows, console):
    from rich.table import Table

    measured = [r for r in rows if "error" not in r]
    smallest = min(args.accumulation_steps)
    table = Table(
        title=(
            f"Gradient accumulation: GPT {args.num_layers} blocks, width "
            f"{args.hidden_dim}, {args.num_heads} heads, T="
            f"{args.sequence_length}, micro-batch {args.batch_size}, "
            f"vocabulary {args.vocabulary_size}, XLA {args.jit}"
        )
    )
    add_columns(
        table,
        (
            "precision",
            "remat",
            "k",
            "peak MiB",
            "step MiB",
            "ms/micro-batch",
            "ms/update",
            "CPU ms/update",
            f"peak vs k={smallest}",
        ),
    )
    for row in rows:
        head = [
            row["precision"],
            "on" if row["remat"] else "off",
            str(row["accumulation_steps"]),
        ]
        if "error" in row:
            table.add_row(*head, "failed", "", "", "", "", row["error"][:40])
            continue
        table.add_row(
            *head,
            f"{row['peak_bytes'] / MIB:,.1f}",
            f"{row['step_bytes'] / MIB:,.1f}",
            f"{row['seconds_per_micro_batch'] * 1e3:,.0f}",
            f"{row['seconds_per_update'] * 1e3:,.0f}",
            f"{row['cpu_seconds_per_update'] * 1e3:,.0f}",
            f"{row['memory_vs_smallest_k']:.3f} " + verdict(row["flat"]),
        )
    console.print(table)
    if not measured:
        return
    worst = max(measured, key=lambda r: abs(r["memory_vs_smallest_k"] - 1))
    console.print(
        f"Peak memory flat within {FLAT_TOLERANCE:.0%} of k={smallest} in "
        f"{sum(r['flat'] for r in measured)}/{len(measured)} rows; largest "
        f"ratio {worst['memory_vs_smallest_k']:.3f} ({worst['precision']}, "
        f"remat {'on' if worst['remat'] else 'off'}, "
        f"k={worst['accumulation_steps']}) "
        + verdict(all(r["flat"] for r in measured))
    )
    growth = [
        r["memory_vs_smallest_accumulating_k"]
        for r in measured
        if "memory_vs_smallest_accumulating_k" in r
    ]
    if len({k for k in args.accumulation_steps if k > 1}) > 1 and growth:
        accumulators = 4 * measured[0]["parameters"] / MIB
        console.print(
            "Among k > 1 the peak stays within "
            f"{min(growth):.3f}..{max(growth):.3f} of the smallest k > 1; "
            f"k > 1 adds float32 accumulators, {accumulators:.1f} MiB (4 "
            f"bytes x {measured[0]['parameters']:,} parameters), whatever k."
        )


def report_remat(args, rows, console):
    from rich.table import Table

    table = Table(
        title=(
            f"Gradient checkpointing: GPT {args.remat_num_layers} blocks, "
            f"width {args.hidden_dim}, {args.num_heads} heads, T="
            f"{args.remat_sequence_length}, batch {args.remat_batch_size}, "
            f"{args.remat_precision}"
        )
    )
    add_columns(
        table,
        ("XLA", "remat", "peak MiB", "step MiB", "ms/step", "CPU ms/step"),
    )
    for row in rows:
        for name in ("plain", "remat"):
            m = row[name]
            head = ["on" if row["xla"] else "off", name]
            if "error" in m:
                table.add_row(*head, "failed", m["error"][:40], "", "")
                continue
            table.add_row(
                *head,
                f"{m['peak_bytes'] / MIB:,.1f}",
                f"{m['step_bytes'] / MIB:,.1f}",
                f"{m['seconds_per_update'] * 1e3:,.0f}",
                f"{m['cpu_seconds_per_update'] * 1e3:,.0f}",
            )
    console.print(table)
    for row in rows:
        if "peak_ratio" not in row:
            continue
        console.print(
            f"XLA {'on ' if row['xla'] else 'off'}: peak memory remat / "
            f"plain = {row['peak_ratio']:.3f} (target <= "
            f"{REMAT_MEMORY_TARGET}) {verdict(row['memory_ok'])}; step "
            f"memory ratio {row['step_memory_ratio']:.3f}; time ratio "
            f"{row['time_ratio']:.2f}x (target <= {REMAT_TIME_TARGET}x) "
            f"{verdict(row['time_ok'])}; CPU-time ratio "
            f"{row['cpu_time_ratio']:.2f}x"
        )


def report(args, results, console):
    if results.get("accumulation"):
        report_accumulation(args, results["accumulation"], console)
    if results.get("remat"):
        report_remat(args, results["remat"], console)
    loads = [
        m["load_average"]
        for m in results.get("accumulation", [])
        + [
            row[name]
            for row in results.get("remat", [])
            for name in ("plain", "remat")
        ]
        if "load_average" in m
    ]
    cores = os.cpu_count() or 1
    busy = [load for load in loads if load > cores + 0.5]
    if busy:
        console.print(
            f"[yellow]Note:[/yellow] {len(busy)}/{len(loads)} measurements "
            f"ran with other processes on the CPU (1-minute load average up "
            f"to {max(busy):.1f} on {cores} cores): their wall times are "
            "inflated; CPU times much less so, memory not at all."
        )
    console.print(f"device: {results['device']}")
    console.print(f"results: {results['path']}")
    console.print(f"command: {results['command']}")


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure(json.loads(args.child))), flush=True)
        return
    started = time.perf_counter()
    from rich.console import Console

    from keras_llm.pretraining import versions

    console = Console(width=None if sys.stdout.isatty() else 120)
    command = " ".join(
        shlex.quote(a)
        for a in [os.path.basename(sys.executable)]
        + (sys.argv if argv is None else [sys.argv[0]] + list(argv))
    )
    from keras_llm.pretraining import device_name

    device = device_name()
    console.print(f"[bold]training_memory[/bold]: {device}")
    results = {
        "command": command,
        "device": device,
        "versions": versions(),
        "options": vars(args),
        "load_average_at_start": os.getloadavg(),
        "targets": {
            "accumulation_flat_tolerance": FLAT_TOLERANCE,
            "remat_peak_ratio": REMAT_MEMORY_TARGET,
            "remat_time_ratio": REMAT_TIME_TARGET,
        },
    }
    if "accumulation" in args.tables:
        console.print("Table 1: gradient accumulation")
        results["accumulation"] = accumulation_table(args, console)
    if "remat" in args.tables:
        console.print("Table 2: gradient checkpointing")
        results["remat"] = remat_table(args, console)
    results["seconds"] = time.perf_counter() - started
    results["load_average_at_end"] = os.getloadavg()
    results["path"] = args.out
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, default=str)
    report(args, results, console)


if __name__ == "__main__":
    main()
