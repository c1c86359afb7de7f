"""Training throughput and quality of `keras_llm.models.GPT` on tinyshakespeare.

Reproduces nanoGPT's CPU "baby GPT" run (character-level tinyshakespeare,
4 layers, 4 heads, width 128, context 64, batch 12, dropout 0, no biases,
AdamW with lr 1e-3, 100 warm-up steps and cosine decay to 1e-4 over 2000
steps, beta2 0.99, weight decay 0.1, gradient clipping 1.0; first 90% of the
text trains, the last 10% validates) and measures two things in one run:

1. Training tokens per second of our GPT and of keras-hub's `GPT2Backbone`
   built to the same shape (plus a tied-embedding language-model head), with
   the same optimizer, loss, metric, data pipeline and XLA setting. The two
   models are timed alternately for `--rounds` rounds of `--bench-steps`
   steps each (after a compile/warm-up `fit`), and the medians and their
   ratio are reported. Target: ours >= 1.3x keras-hub.
2. Validation loss of a fresh GPT after `--steps` (2000) training steps,
   on the whole validation split. Target: <= 1.85 (nanoGPT's own script
   reaches about 1.87 at that point).

keras-hub's `GPT2Backbone` always has biases in its dense layers and layer
norms (our GPT runs with `use_bias=False`, as nanoGPT's config does), so it
has a few thousand more parameters; both counts are printed. Our GPT uses
rotary positions by default (`--position-embedding rotary`; `learned` gives
GPT-2's learned positions, the peer's architecture).

Run from the repository root:

    python benchmarks/clm_throughput.py                 # full run
    python benchmarks/clm_throughput.py --skip-train    # throughput only
    python benchmarks/clm_throughput.py --steps 200 --bench-steps 30 \
        --rounds 1                                       # quick smoke run

A results JSON and a loss-curve PNG are written to `--out`.
"""

import argparse
import json
import os
import shlex
import statistics
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.normpath(
    os.path.join(REPO_ROOT, "..", "shared", "data", "tinyshakespeare.txt")
)

# nanoGPT's baby GPT (README "I only have a macbook" command line on top of
# config/train_shakespeare_char.py).
NUM_LAYERS = 4
NUM_HEADS = 4
HIDDEN_DIM = 128
INTERMEDIATE_DIM = 4 * HIDDEN_DIM
SEQUENCE_LENGTH = 64
BATCH_SIZE = 12
LEARNING_RATE = 1e-3
MIN_LEARNING_RATE = 1e-4
WARMUP_STEPS = 100
WEIGHT_DECAY = 0.1
BETA_2 = 0.99
CLIPNORM = 1.0
VALIDATION_FRACTION = 0.1

TARGET_RATIO = 1.3
TARGET_VAL_LOSS = 1.85


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=(
            "Tokens/s of keras_llm's GPT vs keras-hub's GPT2Backbone and the "
            "validation loss of nanoGPT's baby GPT on tinyshakespeare."
        )
    )
    parser.add_argument(
        "--data",
        default=DEFAULT_DATA,
        help="tinyshakespeare text file (default: %(default)s)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=2000,
        help="training steps of the quality run, also the length of the "
        "learning-rate schedule (default: %(default)s)",
    )
    parser.add_argument(
        "--eval-interval",
        type=int,
        default=250,
        help="steps between validation runs during training "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--eval-steps",
        type=int,
        default=50,
        help="validation batches per run during training; the final "
        "evaluation uses the whole split (default: %(default)s)",
    )
    parser.add_argument(
        "--bench-steps",
        type=int,
        default=200,
        help="timed training steps per model per round (default: %(default)s)",
    )
    parser.add_argument(
        "--bench-warmup",
        type=int,
        default=10,
        help="untimed steps at the start of each timed fit (the first fit "
        "of each model, which compiles, is never timed) "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="alternating timing rounds (ours, keras-hub, ...) "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--skip-train",
        action="store_true",
        help="only measure throughput, no training run",
    )
    parser.add_argument(
        "--skip-bench",
        action="store_true",
        help="only run the training run, no throughput comparison",
    )
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument(
        "--position-embedding",
        default="rotary",
        choices=["rotary", "learned"],
        help="positions of our GPT: rotary (our recommended setting) or "
        "learned (GPT-2's, like the keras-hub peer) (default: %(default)s)",
    )
    parser.add_argument(
        "--jit",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compile the train step with XLA (default: on)",
    )
    parser.add_argument(
        "--mixed-precision",
        default=None,
        choices=["mixed_float16", "mixed_bfloat16"],
        help="Keras dtype policy for both models (default: float32)",
    )
    parser.add_argument(
        "--out",
        default=os.path.join("runs", "bench_clm"),
        help="folder for results.json and loss_curve.png "
        "(default: %(default)s)",
    )
    args = parser.parse_args(argv)
    for name in ("steps", "eval_interval", "bench_steps", "rounds"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    for name in ("eval_steps", "bench_warmup"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be non-negative")
    if args.steps <= WARMUP_STEPS:
        parser.error(f"--steps must exceed the {WARMUP_STEPS} warm-up steps")
    return args


def load_data(path):
    """Character vocabulary of the whole text, 90/10 split by position."""
    from keras_llm.data import CharacterTokenizer
    from keras_llm.data import split_tokens
    from keras_llm.data import tokenize_documents

    with open(path, encoding="utf-8") as f:
        text = f.read()
    tokenizer = CharacterTokenizer.from_texts(text)
    token_ids = tokenize_documents(tokenizer, [text])
    train_ids, val_ids = split_tokens(token_ids, VALIDATION_FRACTION)
    return tokenizer, train_ids, val_ids


def train_dataset(train_ids, seed):
    """Random offsets (stride 1), like nanoGPT's `get_batch`, repeated."""
    from keras_llm.data import clm_dataset

    return clm_dataset(
        train_ids,
        SEQUENCE_LENGTH,
        BATCH_SIZE,
        shuffle=True,
        seed=seed,
        stride=1,
        repeat=True,
    )


def pretrain_config(steps, jit):
    from keras_llm.pretraining import PretrainConfig

    return PretrainConfig(
        sequence_length=SEQUENCE_LENGTH,
        batch_size=BATCH_SIZE,
        steps=steps,
        learning_rate=LEARNING_RATE,
        min_learning_rate=MIN_LEARNING_RATE,
        warmup_steps=WARMUP_STEPS,
        weight_decay=WEIGHT_DECAY,
        beta_2=BETA_2,
        clipnorm=CLIPNORM,
        dropout=0.0,
        validation_fraction=VALIDATION_FRACTION,
        jit_compile=jit,
    )


def build_ours(vocabulary_size, position_embedding="rotary"):
    from keras_llm.models import GPT

    return GPT(
        vocabulary_size=vocabulary_size,
        num_layers=NUM_LAYERS,
        num_heads=NUM_HEADS,
        hidden_dim=HIDDEN_DIM,
        intermediate_dim=INTERMEDIATE_DIM,
        max_sequence_length=SEQUENCE_LENGTH,
        dropout=0.0,
        use_bias=False,
        position_embedding=position_embedding,
        name="keras_llm_gpt",
    )


def build_keras_hub(vocabulary_size):
    """`GPT2Backbone` plus its tied embedding as the output projection."""
    from peers import keras_hub_gpt2_lm

    return keras_hub_gpt2_lm(
        vocabulary_size,
        NUM_LAYERS,
        NUM_HEADS,
        HIDDEN_DIM,
        INTERMEDIATE_DIM,
        SEQUENCE_LENGTH,
    )


def compile_model(model, args):
    from keras_llm.pretraining import compile_for_clm
    from keras_llm.pretraining import make_optimizer

    optimizer = make_optimizer(pretrain_config(args.steps, args.jit))
    return compile_for_clm(model, optimizer, jit_compile=args.jit)


class _StepTimer:
    """Times the steps of one `fit` after its first `skip` steps.

    The clock is read after the loss of a step is fetched to the host, so
    asynchronously dispatched device work is included.
    """

    def __init__(self, skip, total):
        import keras

        timer = self

        class Callback(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                if batch + 1 in (skip, total):
                    if logs is not None and "loss" in logs:
                        float(logs["loss"])
                    timer.marks.append((batch + 1, time.perf_counter()))

        self.marks = []
        self.callback = Callback()
        self.skip = skip

    def seconds_per_step(self):
        (s0, t0), (s1, t1) = self.marks[0], self.marks[-1]
        return (t1 - t0) / (s1 - s0)


def time_fit(model, dataset, steps, skip):
    """Seconds per step of `steps` training steps after `skip` untimed ones.

    With `skip=0` the clock starts when `fit` is called (so compile time is
    included), which is how the warm-up fit is reported.
    """
    timer = _StepTimer(skip, skip + steps)
    start = time.perf_counter()
    if skip == 0:
        timer.marks.append((0, start))
    model.fit(
        dataset,
        epochs=1,
        steps_per_epoch=skip + steps,
        callbacks=[timer.callback],
        shuffle=False,
        verbose=0,
    )
    return timer.seconds_per_step(), time.perf_counter() - start


def benchmark(args, vocabulary_size, train_ids, console):
    import keras

    tokens_per_step = BATCH_SIZE * SEQUENCE_LENGTH
    models = {}
    builders = {
        "ours": lambda v: build_ours(v, args.position_embedding),
        "keras_hub": build_keras_hub,
    }
    result = {}
    for key, build in builders.items():
        keras.utils.set_random_seed(args.seed)
        model = compile_model(build(vocabulary_size), args)
        dataset = train_dataset(train_ids, args.seed)
        _, seconds = time_fit(model, dataset, 5, 0)
        console.print(
            f"  {key}: {model.count_params():,} parameters, first 5 steps "
            f"(trace + compile) in {seconds:.1f} s"
        )
        models[key] = (model, dataset)
        result[key] = {
            "parameters": int(model.count_params()),
            "compile_seconds": seconds,
            "tokens_per_second": [],
        }
    for r in range(args.rounds):
        for key, (model, dataset) in models.items():
            spt, _ = time_fit(
                model, dataset, args.bench_steps, args.bench_warmup
            )
            tps = tokens_per_step / spt
            result[key]["tokens_per_second"].append(tps)
            console.print(
                f"  round {r + 1}/{args.rounds} {key:>9}: "
                f"{spt * 1e3:7.2f} ms/step, {tps:10,.0f} tokens/s"
            )
    for key in models:
        tps = result[key]["tokens_per_second"]
        result[key]["median_tokens_per_second"] = statistics.median(tps)
        result[key]["best_tokens_per_second"] = max(tps)
    result["ratio"] = (
        result["ours"]["median_tokens_per_second"]
        / result["keras_hub"]["median_tokens_per_second"]
    )
    del models
    return result


def train(args, vocabulary_size, train_ids, val_ids, console):
    import keras

    from keras_llm.callbacks import LossCurve
    from keras_llm.callbacks import ThroughputMeter
    from keras_llm.data import clm_dataset
    from keras_llm.data.pipelines import num_windows

    keras.utils.set_random_seed(args.seed)
    model = compile_model(
        build_ours(vocabulary_size, args.position_embedding), args
    )
    train_ds = train_dataset(train_ids, args.seed)
    # During training: the same `eval_steps` batches each time, spread over
    # the whole validation split. At the end: every non-overlapping window.
    full_val_ds = clm_dataset(
        val_ids, SEQUENCE_LENGTH, BATCH_SIZE, shuffle=False
    )
    eval_ds = None
    if args.eval_steps:
        windows = args.eval_steps * BATCH_SIZE
        stride = max(
            SEQUENCE_LENGTH, (len(val_ids) - SEQUENCE_LENGTH - 1) // windows
        )
        eval_ds = (
            clm_dataset(
                val_ids,
                SEQUENCE_LENGTH,
                BATCH_SIZE,
                shuffle=False,
                stride=stride,
            )
            .take(args.eval_steps)
            .cache()
            .repeat()
        )
    os.makedirs(args.out, exist_ok=True)
    curve_path = os.path.join(args.out, "loss_curve.png")
    meter = ThroughputMeter(
        tokens_per_step=BATCH_SIZE * SEQUENCE_LENGTH,
        sequence_length=SEQUENCE_LENGTH,
    )
    callbacks = [
        meter,
        LossCurve(curve_path, title="keras_llm GPT, nanoGPT baby GPT config"),
    ]
    epochs = -(-args.steps // args.eval_interval)
    steps_per_epoch = -(-args.steps // epochs)
    start = time.perf_counter()
    history = model.fit(
        train_ds,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        validation_data=eval_ds,
        validation_steps=args.eval_steps or None,
        callbacks=callbacks,
        shuffle=False,
        verbose=1 if sys.stdout.isatty() else 2,
    )
    train_seconds = time.perf_counter() - start
    final = model.evaluate(full_val_ds, verbose=0, return_dict=True)
    val_batches = num_windows(len(val_ids), SEQUENCE_LENGTH) // BATCH_SIZE
    h = history.history
    return {
        "steps": epochs * steps_per_epoch,
        "final_train_loss": float(h["loss"][-1]),
        "val_loss_curve": [float(v) for v in h.get("val_loss", [])],
        "val_loss": float(final["loss"]),
        "val_perplexity": float(final["perplexity"]),
        "val_tokens": val_batches * BATCH_SIZE * SEQUENCE_LENGTH,
        "train_seconds": train_seconds,
        "tokens_per_second": meter.tokens_per_second,
        "parameters": int(model.count_params()),
        "loss_curve": curve_path,
    }


def verdict(ok, detail):
    mark = "[green]PASS[/green]" if ok else "[red]MISS[/red]"
    return f"{mark} ({detail})"


def report(args, results, console):
    from rich.table import Table

    table = Table(title="CLM throughput benchmark (nanoGPT baby GPT)")
    table.add_column("what")
    table.add_column("value")
    bench = results.get("benchmark")
    training = results.get("training")
    if bench:
        ours = bench["ours"]["median_tokens_per_second"]
        hub = bench["keras_hub"]["median_tokens_per_second"]
        ratio = bench["ratio"]
        table.add_row(
            "tokens/s, keras_llm GPT",
            f"{ours:,.0f} (median of {args.rounds} x {args.bench_steps} steps)",
        )
        table.add_row(
            "tokens/s, keras-hub GPT2Backbone",
            f"{hub:,.0f} (median of {args.rounds} x {args.bench_steps} steps)",
        )
        table.add_row(
            f"ratio ours / keras-hub (target >= {TARGET_RATIO}x)",
            f"{ratio:.2f}x "
            + verdict(
                ratio >= TARGET_RATIO,
                f"{ratio - TARGET_RATIO:+.2f}x, "
                f"{(ratio / TARGET_RATIO - 1) * 100:+.0f}% vs target",
            ),
        )
    if training:
        loss = training["val_loss"]
        table.add_row(
            f"val loss after {training['steps']} steps "
            f"(target <= {TARGET_VAL_LOSS})",
            f"{loss:.4f} "
            + verdict(
                loss <= TARGET_VAL_LOSS, f"{loss - TARGET_VAL_LOSS:+.4f}"
            ),
        )
        table.add_row(
            "val perplexity / train loss",
            f"{training['val_perplexity']:.3f} / "
            f"{training['final_train_loss']:.4f}",
        )
        if training["tokens_per_second"]:
            table.add_row(
                "training run tokens/s (last epoch, with eval)",
                f"{training['tokens_per_second']:,.0f}",
            )
        table.add_row("training run time", f"{training['train_seconds']:.0f} s")
    if bench:
        table.add_row(
            "parameters, keras_llm GPT (no biases)",
            f"{bench['ours']['parameters']:,}",
        )
        table.add_row(
            "parameters, keras-hub GPT2Backbone (always biases)",
            f"{bench['keras_hub']['parameters']:,}",
        )
    elif training:
        table.add_row(
            "parameters, keras_llm GPT (no biases)",
            f"{training['parameters']:,}",
        )
    table.add_row("device", results["device"])
    table.add_row(
        "settings",
        f"XLA {'on' if args.jit else 'off'}, "
        f"dtype policy {args.mixed_precision or 'float32'}, seed {args.seed}, "
        f"our GPT with {args.position_embedding} positions",
    )
    table.add_row("total time", f"{results['seconds']:.0f} s")
    table.add_row("results", results["path"])
    table.add_row("command", results["command"])
    console.print(table)


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    if not os.path.isfile(args.data):
        sys.exit(f"error: data file {args.data} does not exist; pass --data")

    import keras
    from rich.console import Console

    from keras_llm.pretraining import versions

    # A wider table when the output goes to a file or a pipe (tee).
    console = Console(width=None if sys.stdout.isatty() else 110)
    if args.mixed_precision:
        keras.config.set_dtype_policy(args.mixed_precision)
    command = " ".join(
        shlex.quote(a) for a in [os.path.basename(sys.executable)] + sys.argv
    )
    tokenizer, train_ids, val_ids = load_data(args.data)
    vocabulary_size = tokenizer.vocabulary_size()
    from keras_llm.pretraining import device_name

    device = device_name()
    console.print(
        f"[bold]clm_throughput[/bold]: {args.data}: {vocabulary_size} "
        f"character ids (65 characters + out-of-vocabulary), "
        f"{len(train_ids):,} training and {len(val_ids):,} validation "
        f"tokens; {device}"
    )
    results = {
        "command": command,
        "device": device,
        "versions": versions(),
        "options": vars(args),
        "config": {
            "num_layers": NUM_LAYERS,
            "num_heads": NUM_HEADS,
            "hidden_dim": HIDDEN_DIM,
            "intermediate_dim": INTERMEDIATE_DIM,
            "sequence_length": SEQUENCE_LENGTH,
            "batch_size": BATCH_SIZE,
            "vocabulary_size": vocabulary_size,
            "learning_rate": LEARNING_RATE,
            "min_learning_rate": MIN_LEARNING_RATE,
            "warmup_steps": WARMUP_STEPS,
            "weight_decay": WEIGHT_DECAY,
            "beta_2": BETA_2,
            "clipnorm": CLIPNORM,
        },
        "targets": {"ratio": TARGET_RATIO, "val_loss": TARGET_VAL_LOSS},
    }
    if not args.skip_bench:
        console.print(
            "[bold]throughput[/bold]: keras_llm GPT (use_bias=False, "
            f"{args.position_embedding} positions) vs "
            "keras-hub GPT2Backbone (always with biases), same optimizer, "
            f"XLA {'on' if args.jit else 'off'}"
        )
        results["benchmark"] = benchmark(
            args, vocabulary_size, train_ids, console
        )
        console.print(
            f"  ratio ours / keras-hub: {results['benchmark']['ratio']:.2f}x"
        )
    if not args.skip_train:
        console.print(
            f"[bold]training[/bold]: keras_llm GPT, {args.steps} steps"
        )
        results["training"] = train(
            args, vocabulary_size, train_ids, val_ids, console
        )
    results["seconds"] = time.perf_counter() - started
    os.makedirs(args.out, exist_ok=True)
    results["path"] = os.path.join(args.out, "results.json")
    with open(results["path"], "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, default=str)
    report(args, results, console)


if __name__ == "__main__":
    main()
