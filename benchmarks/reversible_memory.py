"""Peak training memory of `ReversibleStack`, reversible vs ordinary autodiff.

Builds a stack of reversible Transformer blocks (default: 12 blocks, width
256, 4 heads, feed-forward 1024, dense causal attention, batch 1, 1024
tokens) twice with identical weights, once with `reversible=True` (one
custom gradient that reconstructs activations in the backward pass) and
once with `reversible=False` (the same computation under ordinary autodiff,
which keeps every block's activations), and measures one forward + backward
step inside `tf.function`: `tf.GradientTape` over the loss (the mean of the
outputs), gradients with respect to all trainable variables.

Memory is read from TensorFlow's allocator for `CPU:0`:
`tf.config.experimental.reset_memory_stats` before the step and
`get_memory_info(...)["peak"]` after it, after one untimed warm-up call
(the trace). Activation memory is the peak minus the memory held just
before the step (the weights and the input); it includes the weight gradients the step
returns (4 bytes per parameter), which are also reported separately.
Target: reversible activation
memory at most one third of the ordinary stack's. Time per step is the
median of `--steps` calls, the two stacks alternating step by step. Both are measured without and with XLA
(`--jit both`, the default).

Run from the repository root:

    python benchmarks/reversible_memory.py
    python benchmarks/reversible_memory.py --num-layers 4 \
        --sequence-length 256 --jit off        # quick smoke run

The results are printed as a table and written as JSON to `--out`.
"""

import argparse
import gc
import json
import os
import shlex
import statistics
import sys
import time

DEFAULT_OUT = os.path.join(
    "benchmarks", "results", "reversible_memory_cpu.json"
)
TARGET_RATIO = 1 / 3
MIB = 2**20


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=(
            "Peak memory and time of one training step of ReversibleStack, "
            "reversible=True vs reversible=False."
        )
    )
    parser.add_argument("--num-layers", type=int, default=12)
    parser.add_argument("--sequence-length", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--hidden-dim", type=int, default=256)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--intermediate-dim", type=int, default=1024)
    parser.add_argument(
        "--attention",
        default="dense",
        help="registered attention name (default: %(default)s)",
    )
    parser.add_argument(
        "--causal",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="causal attention (default: on)",
    )
    parser.add_argument(
        "--jit",
        default="both",
        choices=["off", "on", "both"],
        help="compile the step with XLA (default: %(default)s)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=5,
        help="timed steps per setting; the median is reported "
        "(default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out",
        default=DEFAULT_OUT,
        help="results JSON (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    for name in (
        "num_layers",
        "sequence_length",
        "batch_size",
        "hidden_dim",
        "num_heads",
        "intermediate_dim",
        "steps",
    ):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.hidden_dim % args.num_heads:
        parser.error("--hidden-dim must be divisible by --num-heads")
    return args


def build_stack(args, reversible):
    from keras_llm.layers.reversible import ReversibleStack

    stack = ReversibleStack(
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        intermediate_dim=args.intermediate_dim,
        attention=args.attention,
        causal=args.causal,
        reversible=reversible,
        name="reversible" if reversible else "ordinary",
    )
    stack.build((args.batch_size, args.sequence_length, args.hidden_dim))
    return stack


def make_step(stack, jit):
    import tensorflow as tf

    @tf.function(jit_compile=jit)
    def step(x):
        with tf.GradientTape() as tape:
            y = stack(x, training=True)
            loss = tf.reduce_mean(y)
        return loss, tape.gradient(loss, stack.trainable_variables)

    return step


def measure_memory(step, x):
    """Memory held before one step, its peak and the difference (bytes)."""
    import tensorflow as tf

    loss, grads = step(x)  # trace (and compile) once, untimed
    reference = (float(loss), [g.numpy() for g in grads])
    del loss, grads
    gc.collect()
    held = tf.config.experimental.get_memory_info("CPU:0")["current"]
    tf.config.experimental.reset_memory_stats("CPU:0")
    loss, grads = step(x)
    float(loss)
    peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
    del loss, grads
    gc.collect()
    return {
        "held_bytes": int(held),
        "peak_bytes": int(peak),
        "activation_bytes": int(peak - held),
    }, reference


def time_steps(step, x, steps):
    """Seconds of `steps` calls, each waiting for its loss."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        loss, grads = step(x)
        float(loss)
        times.append(time.perf_counter() - start)
        del loss, grads
    return times


def run(args, console):
    import keras
    import numpy as np
    import tensorflow as tf

    keras.utils.set_random_seed(args.seed)
    ordinary = build_stack(args, reversible=False)
    reversible = build_stack(args, reversible=True)
    reversible.set_weights(ordinary.get_weights())
    parameters = int(sum(np.prod(w.shape) for w in ordinary.weights))
    # The step returns one float32 gradient per weight: part of its peak.
    gradient_bytes = 4 * int(
        sum(np.prod(w.shape) for w in ordinary.trainable_weights)
    )
    x = tf.constant(
        np.random.default_rng(args.seed)
        .normal(size=(args.batch_size, args.sequence_length, args.hidden_dim))
        .astype("float32")
    )
    settings = {"off": [False], "on": [True], "both": [False, True]}[args.jit]
    results = []
    for jit in settings:
        row = {"xla": jit}
        refs, step_fns = {}, {}
        stacks = (("ordinary", ordinary), ("reversible", reversible))
        for name, stack in stacks:
            step_fns[name] = make_step(stack, jit)
            row[name], refs[name] = measure_memory(step_fns[name], x)
            row[name]["gradient_bytes"] = gradient_bytes
            row[name]["activation_bytes_without_gradients"] = (
                row[name]["activation_bytes"] - gradient_bytes
            )
        # Timing: the two stacks alternate, one step at a time, so a load
        # change on a shared machine affects both alike.
        times = {name: [] for name, _ in stacks}
        for _ in range(args.steps):
            for name, _ in stacks:
                times[name] += time_steps(step_fns[name], x, 1)
        for name, _ in stacks:
            m = row[name]
            m["seconds_per_step"] = statistics.median(times[name])
            m["seconds_per_step_all"] = times[name]
            console.print(
                f"  XLA {'on ' if jit else 'off'} {name:>10}: peak "
                f"{m['peak_bytes'] / MIB:8.1f} MiB, held before "
                f"{m['held_bytes'] / MIB:6.1f} MiB, activations "
                f"{m['activation_bytes'] / MIB:8.1f} MiB (of which "
                f"gradients {gradient_bytes / MIB:.1f} MiB), "
                f"{m['seconds_per_step'] * 1e3:7.0f} ms/step"
            )
        (loss_a, grads_a), (loss_b, grads_b) = (
            refs["ordinary"],
            refs["reversible"],
        )
        row["loss_abs_diff"] = abs(loss_a - loss_b)
        row["grad_max_abs_diff"] = max(
            float(np.max(np.abs(a - b))) for a, b in zip(grads_a, grads_b)
        )
        row["grad_max_abs"] = max(float(np.max(np.abs(a))) for a in grads_a)
        row["activation_ratio"] = (
            row["reversible"]["activation_bytes"]
            / row["ordinary"]["activation_bytes"]
        )
        row["activation_ratio_without_gradients"] = (
            row["reversible"]["activation_bytes_without_gradients"]
            / row["ordinary"]["activation_bytes_without_gradients"]
        )
        row["peak_ratio"] = (
            row["reversible"]["peak_bytes"] / row["ordinary"]["peak_bytes"]
        )
        row["time_ratio"] = (
            row["reversible"]["seconds_per_step"]
            / row["ordinary"]["seconds_per_step"]
        )
        results.append(row)
    return parameters, results


def report(args, results, console):
    from rich.table import Table

    table = Table(
        title=(
            f"ReversibleStack training-step memory: {args.num_layers} blocks, "
            f"T={args.sequence_length}, batch {args.batch_size}, width "
            f"{args.hidden_dim}, {args.num_heads} heads, ffn "
            f"{args.intermediate_dim}, {args.attention}"
            f"{' causal' if args.causal else ''} attention"
        )
    )
    for col in (
        "XLA",
        "stack",
        "peak MiB",
        "held before MiB",
        "activation MiB",
        "without gradients MiB",
        "ms/step",
    ):
        table.add_column(col, justify="right" if "MiB" in col else "left")
    for row in results["rows"]:
        for name in ("ordinary", "reversible"):
            m = row[name]
            table.add_row(
                "on" if row["xla"] else "off",
                name,
                f"{m['peak_bytes'] / MIB:,.1f}",
                f"{m['held_bytes'] / MIB:,.1f}",
                f"{m['activation_bytes'] / MIB:,.1f}",
                f"{m['activation_bytes_without_gradients'] / MIB:,.1f}",
                f"{m['seconds_per_step'] * 1e3:,.0f}",
            )
    console.print(table)
    for row in results["rows"]:
        ratio = row["activation_ratio"]
        ok = ratio <= TARGET_RATIO
        mark = "[green]PASS[/green]" if ok else "[red]MISS[/red]"
        console.print(
            f"XLA {'on ' if row['xla'] else 'off'}: activation memory "
            f"reversible / ordinary = {ratio:.3f} (target <= "
            f"{TARGET_RATIO:.3f}) {mark}; without the weight gradients "
            f"{row['activation_ratio_without_gradients']:.3f}; peak ratio "
            f"{row['peak_ratio']:.3f}; "
            f"time ratio {row['time_ratio']:.2f}x; gradient max |diff| "
            f"{row['grad_max_abs_diff']:.2e} (max |grad| "
            f"{row['grad_max_abs']:.2e})"
        )
    console.print(f"parameters: {results['parameters']:,}")
    console.print(f"device: {results['device']}")
    console.print(f"results: {results['path']}")
    console.print(f"command: {results['command']}")


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    import keras
    from rich.console import Console

    from keras_llm.pretraining import versions

    console = Console(width=None if sys.stdout.isatty() else 120)
    keras.config.set_dtype_policy("float32")
    command = " ".join(
        shlex.quote(a) for a in [os.path.basename(sys.executable)] + sys.argv
    )
    from keras_llm.pretraining import device_name

    device = device_name()
    console.print(
        f"[bold]reversible_memory[/bold]: {args.num_layers} blocks, "
        f"T={args.sequence_length}; {device}"
    )
    parameters, rows = run(args, console)
    results = {
        "command": command,
        "device": device,
        "versions": versions(),
        "options": vars(args),
        "parameters": parameters,
        "target_activation_ratio": TARGET_RATIO,
        "rows": rows,
    }
    results["seconds"] = time.perf_counter() - started
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    results["path"] = args.out
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, default=str)
    report(args, results, console)


if __name__ == "__main__":
    main()
