"""Time and peak memory of attention layers as the sequence grows.

Measures one forward + backward pass (the gradient of a weighted sum of the
outputs with respect to the input and every weight, inside `tf.function`)
of causal self-attention at T = 1k, 2k, 4k, 8k, 16k tokens (batch 1, 4 heads
of size 64, window 256) for, in the same run:

- `dense`: `keras.layers.MultiHeadAttention`, the full `T x T` matrix;
- `keras_sliding_window`: `keras.layers.MultiHeadAttention(sliding_window=
  256)`, which masks that same dense matrix;
- `ours`: `keras_llm.layers.attention.SlidingWindowAttention(window=256)`,
  computed in chunks;
- optionally (`--layers`) our block-sparse, axial and LSH layers.

Each measurement runs in a fresh subprocess, so peak memory is that of one
step alone (`tf.config.experimental.get_memory_info("CPU:0")["peak"]` after
`reset_memory_stats`, minus what was held before the step) and one layer
running out of memory does not end the run. Time is the median of
`--repeats` steps after one warm-up step. Targets at 16k: ours at least 4x
faster and 8x less peak memory than dense; our time at most 2.3x per
doubling of T. A table, a JSON and a log-log PNG of both curves are written.

The same run then measures a 12-block `ReversibleStack` at T=1024 against
the ordinary stack of the same blocks (`benchmarks/reversible_memory.py`,
target: activation memory at most a third); `--skip-reversible` skips it.

Run from the repository root:

    python benchmarks/attention_scaling.py
    python benchmarks/attention_scaling.py --lengths 1024 2048 --repeats 2
"""

import argparse
import json
import os
import shlex
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _keras_mha(heads, head_dim, window, sliding=False):
    import keras

    return keras.layers.MultiHeadAttention(
        num_heads=heads, key_dim=head_dim,
        sliding_window=window if sliding else None,
    )  # fmt: skip


def _ours(name, **options):
    def make(heads, head_dim, window):
        from keras_llm.layers import attention

        layer_options = {k: v(window) for k, v in options.items()}
        return getattr(attention, name)(
            num_heads=heads, key_dim=head_dim, **layer_options
        )

    return make


# Name -> function (heads, head_dim, window) -> layer; window-relative
# options are functions of the window.
LAYERS = {
    "dense": _keras_mha,
    "keras_sliding_window": lambda h, d, w: _keras_mha(h, d, w, True),
    "ours": _ours("SlidingWindowAttention", window=lambda w: w),
    "block_sparse": _ours(
        "BlockSparseAttention",
        block_size=lambda w: w // 4,
        num_random_blocks=lambda w: 2,
    ),
    "axial": _ours("AxialAttention", axial_shape=lambda w: (w,)),
    "lsh": _ours(
        "LSHAttention",
        chunk_length=lambda w: w // 4,
        num_buckets=lambda w: 64,
    ),
}
KERAS_LAYERS = ("dense", "keras_sliding_window")


def measure(name, length, heads, head_dim, window, repeats, jit):
    """One measurement in this process; returns a dict."""
    import statistics
    import time

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    layer = LAYERS[name](heads, head_dim, window)
    width = heads * head_dim
    x = tf.random.normal((1, length, width))
    weights = tf.random.normal((1, length, width))
    if name in KERAS_LAYERS:
        layer(x[:, :8], x[:, :8])

        def call(x):
            return layer(x, x, use_causal_mask=True)
    else:
        layer(x[:, :8])

        def call(x):
            return layer(x, use_causal_mask=True)

    variables = [w.value for w in layer.trainable_weights]

    @tf.function(jit_compile=jit, reduce_retracing=True)
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(call(x) * weights)
        return tape.gradient(loss, [x] + variables)

    def run():
        grads = step(x)
        return [g.numpy() for g in grads[:1]]

    run()  # trace, compile, warm up
    held = tf.config.experimental.get_memory_info("CPU:0")["current"]
    tf.config.experimental.reset_memory_stats("CPU:0")
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
    return {
        "layer": name,
        "length": length,
        "seconds": statistics.median(times),
        "peak_bytes": peak - held,
    }


def run_one(args, name, length):
    """Runs `measure` in a subprocess; returns its dict or an error entry."""
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        name,
        str(length),
        "--heads",
        str(args.heads),
        "--head-dim",
        str(args.head_dim),
        "--window",
        str(args.window),
        "--repeats",
        str(args.repeats),
    ] + (["--jit"] if args.jit else [])
    proc = subprocess.run(
        command, capture_output=True, text=True, cwd=REPO_ROOT,
        timeout=args.timeout,
    )  # fmt: skip
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"layer": name, "length": length, "error": tail[-200:]}


def plot(results, path, layers, lengths):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in layers:
        rows = [r for r in results if r["layer"] == name and "error" not in r]
        if not rows:
            continue
        xs = [r["length"] for r in rows]
        axes[0].plot(xs, [r["seconds"] for r in rows], "o-", label=name)
        axes[1].plot(
            xs, [r["peak_bytes"] / 2**20 for r in rows], "o-", label=name
        )
    for ax, title in zip(
        axes, ("forward + backward time (s)", "peak memory of a step (MiB)")
    ):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T")
        ax.set_title(title)
        ax.set_xticks(lengths, [str(t) for t in lengths])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summarize(results, layers, lengths):
    def get(name, length, key):
        for r in results:
            if r["layer"] == name and r["length"] == length:
                return r.get(key)
        return None

    lines = []
    header = f"{'T':>6} " + " ".join(
        f"{name + ' s':>22} {name + ' MiB':>24}" for name in layers
    )
    lines.append(header)
    for t in lengths:
        cells = []
        for name in layers:
            s, m = get(name, t, "seconds"), get(name, t, "peak_bytes")
            cells.append(f"{s:22.3f}" if s is not None else f"{'OOM/err':>22}")
            cells.append(
                f"{m / 2**20:24.1f}" if m is not None else f"{'-':>24}"
            )
        lines.append(f"{t:>6} " + " ".join(cells))
    summary = {}
    longest = max(lengths)
    ours_t, dense_t = get("ours", longest, "seconds"), get(
        "dense", longest, "seconds"
    )  # fmt: skip
    ours_m, dense_m = get("ours", longest, "peak_bytes"), get(
        "dense", longest, "peak_bytes"
    )  # fmt: skip
    if ours_t and dense_t:
        summary["speedup_vs_dense_at_longest"] = dense_t / ours_t
    if ours_m and dense_m:
        summary["memory_ratio_dense_over_ours_at_longest"] = dense_m / ours_m
    kw_t = get("keras_sliding_window", longest, "seconds")
    if ours_t and kw_t:
        summary["speedup_vs_keras_sliding_window_at_longest"] = kw_t / ours_t
    doublings = []
    for a, b in zip(lengths, lengths[1:]):
        ta, tb = get("ours", a, "seconds"), get("ours", b, "seconds")
        if ta and tb and b == 2 * a:
            doublings.append(tb / ta)
    if doublings:
        summary["ours_time_ratio_per_doubling"] = doublings
    return "\n".join(lines), summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--lengths", type=int, nargs="+",
        default=[1024, 2048, 4096, 8192, 16384],
    )  # fmt: skip
    parser.add_argument(
        "--layers", nargs="+", default=["dense", "keras_sliding_window", "ours"],
        choices=sorted(LAYERS),
    )  # fmt: skip
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jit", action="store_true", help="XLA-compile")
    parser.add_argument("--timeout", type=int, default=900)
    parser.add_argument("--out", default="runs/bench_attention")
    parser.add_argument("--skip-reversible", action="store_true")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        name, length = args.child[0], int(args.child[1])
        result = measure(
            name, length, args.heads, args.head_dim, args.window,
            args.repeats, args.jit,
        )  # fmt: skip
        print(json.dumps(result))
        return

    os.makedirs(args.out, exist_ok=True)
    results = []
    for length in args.lengths:
        for name in args.layers:
            result = run_one(args, name, length)
            results.append(result)
            shown = (
                f"{result['seconds']:.3f} s, "
                f"{result['peak_bytes'] / 2**20:.1f} MiB"
                if "error" not in result
                else f"failed: {result['error']}"
            )
            print(f"T={length:>6} {name:>22}: {shown}", flush=True)
    table, summary = summarize(results, args.layers, args.lengths)
    print()
    print(table)
    print()
    for key, value in summary.items():
        if isinstance(value, list):
            value = ", ".join(f"{v:.2f}" for v in value)
        else:
            value = f"{value:.2f}"
        print(f"{key}: {value}")
    png = os.path.join(args.out, "attention_scaling.png")
    plot(results, png, args.layers, args.lengths)
    record = {
        "command": "python benchmarks/attention_scaling.py "
        + shlex.join(argv if argv is not None else sys.argv[1:]),
        "config": {
            "heads": args.heads,
            "head_dim": args.head_dim,
            "window": args.window,
            "batch": 1,
            "repeats": args.repeats,
            "jit": args.jit,
            "causal": True,
        },
        "results": results,
        "summary": summary,
        "plot": png,
    }
    with open(os.path.join(args.out, "attention_scaling.json"), "w") as f:
        json.dump(record, f, indent=2)
    print(f"\nplot: {png}")
    if not args.skip_reversible:
        print(
            "\nReversible stack (benchmarks/reversible_memory.py):", flush=True
        )
        subprocess.run(
            [
                sys.executable,
                os.path.join(REPO_ROOT, "benchmarks", "reversible_memory.py"),
                "--out",
                os.path.join(os.path.abspath(args.out), "reversible.json"),
            ],
            cwd=REPO_ROOT,
            check=True,
        )


if __name__ == "__main__":
    main()
