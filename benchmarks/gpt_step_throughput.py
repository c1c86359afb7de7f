"""Training-step throughput of our GPT against keras-hub's GPT2Backbone.

Both models are built to the same shape (a keras_llm preset), compiled with
the same AdamW and loss, and trained with `model.fit` on the same random
token batches (throughput does not depend on the text), alternating rounds.
Prints tokens per second, TFLOP/s and MFU (6N + 12 L T d FLOPs per token,
peak from `ThroughputMeter`'s table or --peak-tflops) and the ratio.

It needs no tf.data, so it also runs on the JAX backend, for GPUs without
TensorFlow:

    KERAS_BACKEND=jax python benchmarks/gpt_step_throughput.py \
        --preset gpt2-small --sequence-length 1024 --batch-size 16 \
        --mixed-precision mixed_bfloat16
"""

import argparse
import json
import os
import statistics
import sys
import time

import keras
import numpy as np
from peers import keras_hub_gpt2_lm

import keras_llm
from keras_llm.callbacks.throughput_meter import ThroughputMeter
from keras_llm.callbacks.throughput_meter import _accelerator_name
from keras_llm.models.presets import get_preset


def build_ours(shape, sequence_length):
    return keras_llm.models.GPT(
        **dict(shape, max_sequence_length=sequence_length), dropout=0.0
    )


def build_keras_hub(shape, sequence_length):
    return keras_hub_gpt2_lm(
        shape["vocabulary_size"],
        shape["num_layers"],
        shape["num_heads"],
        shape["hidden_dim"],
        shape["intermediate_dim"],
        sequence_length,
    )


def compile_model(model, args):
    model.compile(
        optimizer=keras.optimizers.AdamW(1e-4, weight_decay=0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=args.jit,
    )


def measure(model, x, args):
    meter = ThroughputMeter(
        tokens_per_step=args.batch_size * args.sequence_length,
        sequence_length=args.sequence_length,
        peak_flops=args.peak_tflops * 1e12 if args.peak_tflops else None,
        warmup_steps=args.warmup_steps,
    )
    model.fit(
        x,
        x,
        batch_size=args.batch_size,
        epochs=1,
        shuffle=False,
        callbacks=[meter],
        verbose=0,
    )
    return meter.history[-1], meter.peak_flops


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="nano")
    parser.add_argument("--vocabulary-size", type=int, default=None)
    parser.add_argument("--sequence-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup-steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--mixed-precision", default=None)
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument(
        "--jit", action=argparse.BooleanOptionalAction, default=True
    )
    parser.add_argument("--out", default=None, help="write results JSON here")
    args = parser.parse_args(argv)

    if args.mixed_precision:
        keras.config.set_dtype_policy(args.mixed_precision)
    shape = get_preset(args.preset)
    shape.setdefault("vocabulary_size", 50257)
    if args.vocabulary_size:
        shape["vocabulary_size"] = args.vocabulary_size
    shape.pop("max_sequence_length", None)
    rng = np.random.default_rng(0)
    x = rng.integers(
        0,
        shape["vocabulary_size"],
        (
            args.batch_size * (args.steps + args.warmup_steps),
            args.sequence_length,
        ),
    ).astype("int32")

    builders = {"keras_llm": build_ours, "keras_hub": build_keras_hub}
    models, results, params = {}, {k: [] for k in builders}, {}
    for name, build in builders.items():
        keras.utils.set_random_seed(0)
        models[name] = build(shape, args.sequence_length)
        compile_model(models[name], args)
        params[name] = models[name].count_params()
    peak = None
    for _ in range(args.rounds):
        for name in builders:
            figures, peak = measure(models[name], x, args)
            results[name].append(figures)
            print(
                f"{name:10s} {figures['tokens_per_second']:12,.0f} tokens/s "
                f"{figures['tflops']:8.2f} TFLOP/s"
                + (f"  MFU {figures['mfu']:.1%}" if "mfu" in figures else ""),
                flush=True,
            )
    summary = {
        "backend": keras.backend.backend(),
        "device": _accelerator_name() or "CPU",
        "policy": keras.config.dtype_policy().name,
        "jit": args.jit,
        "preset": args.preset,
        "shape": shape,
        "sequence_length": args.sequence_length,
        "batch_size": args.batch_size,
        "parameters": params,
        "peak_flops": peak,
        "command": " ".join(sys.argv),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    for name, rounds in results.items():
        for key in rounds[0]:
            summary[f"{name}_{key}"] = statistics.median(r[key] for r in rounds)
    summary["ratio"] = (
        summary["keras_llm_tokens_per_second"]
        / summary["keras_hub_tokens_per_second"]
    )
    print(json.dumps(summary, indent=2, default=str))
    print(
        f"ours / keras-hub tokens per second: {summary['ratio']:.2f}x "
        f"({summary['device']}, {summary['backend']}, {summary['policy']})"
    )
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, "gpt_step_throughput.json")
        with open(path, "w") as f:
            json.dump(summary, f, indent=2, default=str)
    return summary


if __name__ == "__main__":
    main()
