"""Sequence to sequence with `keras_llm.models.EncoderDecoder`: dates written
in words (and other formats) to ISO 8601.

A Transformer encoder reads the source characters ("august 17, 1944",
"17 aug 1944", "17.08.1944", "1944/8/17"); a causal decoder with
cross-attention writes the target ("1944-08-17") one character at a time.
Source and target have their own character vocabularies. Training is
teacher-forced in `model.fit`: the decoder reads the target shifted right
(start token first) and learns every next character at once, padding left
out of the loss. The held-out pairs are dates the model never saw in
training; the script reports their token accuracy (teacher-forced) and
sequence accuracy (greedy `generate`, with the decoder's key/value cache,
must reproduce the whole target) and prints a few generations.

`--task reverse` and `--task sort` turn digit strings around or sort them
instead (one shared vocabulary, tied embeddings). Everything is generated
here: no download.

    python examples/seq2seq.py                     # about 3 minutes, 2 CPUs
    python examples/seq2seq.py --task sort --epochs 4
    python examples/seq2seq.py --quick             # under a minute
    python examples/seq2seq.py --out runs/dates    # also save the model

With `--out`: `model.keras`, `vocabularies.json` (source and target
characters; ids 0, 1, 2 are padding, start and end) and `results.json`.
"""

import argparse
import datetime
import json
import os
import time

import keras
import numpy as np
from rich.console import Console
from rich.table import Table

import keras_llm

PAD, START, END = 0, 1, 2
MONTHS = (
    "january february march april may june july august september october "
    "november december"
).split()
DATE_FORMATS = (
    lambda d: f"{MONTHS[d.month - 1]} {d.day}, {d.year}",  # august 17, 1944
    lambda d: f"{d.day} {MONTHS[d.month - 1][:3]} {d.year}",  # 17 aug 1944
    lambda d: f"{d.day:02d}.{d.month:02d}.{d.year}",  # 17.08.1944
    lambda d: f"{d.year}/{d.month}/{d.day}",  # 1944/8/17
)
TASKS = ("dates", "reverse", "sort")


class Vocabulary:
    """Characters to ids; ids 0, 1, 2 are padding, start and end."""

    def __init__(self, characters):
        self.characters = sorted(set(characters))
        self.ids = {c: i + 3 for i, c in enumerate(self.characters)}

    def __len__(self):
        return len(self.characters) + 3

    def encode(self, texts, length, start_end=False):
        """`(len(texts), length)` int32 ids, padded with 0; with
        `start_end` each row is `[START, ..., END]`."""
        out = np.full((len(texts), length), PAD, "int32")
        for row, text in enumerate(texts):
            ids = [self.ids[c] for c in text]
            if start_end:
                ids = [START, *ids, END]
            out[row, : len(ids)] = ids
        return out

    def decode(self, ids):
        """Characters of `ids` up to the first end token."""
        chars = []
        for i in ids:
            if i == END:
                break
            if i >= 3:
                chars.append(self.characters[i - 3])
        return "".join(chars)


def make_pairs(task, num_train, num_test, seed=0):
    """Generated (source, target) string pairs; no held-out pair shares its
    underlying item (a date, a digit string) with a training pair."""
    rng = np.random.default_rng(seed)
    if task == "dates":
        first = datetime.date(1900, 1, 1).toordinal()
        last = datetime.date(2099, 12, 31).toordinal()
        days = rng.permutation(np.arange(first, last + 1))
        if num_train + num_test > len(days):
            raise ValueError("at most 73,049 distinct dates")
        items = [datetime.date.fromordinal(int(o)) for o in days]
        pairs = [
            (DATE_FORMATS[rng.integers(len(DATE_FORMATS))](d), d.isoformat())
            for d in items[: num_train + num_test]
        ]
    else:
        seen, pairs = set(), []
        while len(pairs) < num_train + num_test:
            length = rng.integers(3, 9)
            digits = "".join(map(str, rng.integers(0, 10, length)))
            if digits in seen:
                continue
            seen.add(digits)
            target = (
                digits[::-1] if task == "reverse" else "".join(sorted(digits))
            )
            pairs.append((digits, target))
    return pairs[:num_train], pairs[num_train:]


def build_dataset(pairs, source_vocabulary, target_vocabulary, lengths):
    """Teacher-forcing arrays `(inputs, labels, sample_weight)`: the
    decoder reads `[START, t1, ..., tn]` and learns `[t1, ..., tn, END]`."""
    source_length, target_length = lengths
    sources = source_vocabulary.encode([s for s, _ in pairs], source_length)
    targets = target_vocabulary.encode(
        [t for _, t in pairs], target_length, start_end=True
    )
    inputs = {
        "encoder_token_ids": sources,
        "decoder_token_ids": targets[:, :-1],
    }
    labels = targets[:, 1:]
    return inputs, labels, (labels != PAD).astype("float32")


def token_accuracy(model, inputs, labels, weights, batch_size=256):
    """Teacher-forced share of target tokens (end token included, padding
    not) predicted right."""
    correct = total = 0.0
    for i in range(0, len(labels), batch_size):
        part = {k: v[i : i + batch_size] for k, v in inputs.items()}
        predicted = np.argmax(keras.ops.convert_to_numpy(model(part)), -1)
        hits = predicted == labels[i : i + batch_size]
        correct += float((hits * weights[i : i + batch_size]).sum())
        total += float(weights[i : i + batch_size].sum())
    return correct / total


def sequence_accuracy(model, inputs, labels, batch_size=256):
    """Share of rows where greedy generation reproduces the whole target
    (end token included); also returns the generated ids."""
    outputs = []
    sources = inputs["encoder_token_ids"]
    for i in range(0, len(sources), batch_size):
        outputs.append(
            model.generate(
                sources[i : i + batch_size],
                max_length=labels.shape[1] + 1,
                start_token_id=START,
                end_token_id=END,
                sampler="greedy",
            )
        )
    generated = np.concatenate(outputs)
    exact = np.all(generated[:, 1:] == labels, axis=1)
    return float(exact.mean()), generated


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=TASKS, default="dates")
    parser.add_argument("--train-size", type=int, default=20_000)
    parser.add_argument("--test-size", type=int, default=1_000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--hidden-dim", type=int, default=128)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="folder for the model")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--quick", action="store_true", help="under a minute")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_size, args.test_size, args.epochs = 3_000, 200, 5
        args.hidden_dim, args.learning_rate = 64, 5e-3
    for name in ("train_size", "test_size", "epochs", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    keras.utils.set_random_seed(args.seed)
    console = Console()
    start = time.perf_counter()

    train_pairs, test_pairs = make_pairs(
        args.task, args.train_size, args.test_size, args.seed
    )
    everything = train_pairs + test_pairs
    source_vocabulary = Vocabulary("".join(s for s, _ in everything))
    target_vocabulary = Vocabulary("".join(t for _, t in everything))
    lengths = (
        max(len(s) for s, _ in everything),
        max(len(t) for _, t in everything) + 2,  # + start and end tokens
    )
    train = build_dataset(
        train_pairs, source_vocabulary, target_vocabulary, lengths
    )
    test = build_dataset(
        test_pairs, source_vocabulary, target_vocabulary, lengths
    )
    shared = source_vocabulary.characters == target_vocabulary.characters
    model = keras_llm.models.EncoderDecoder(
        vocabulary_size=len(source_vocabulary),
        target_vocabulary_size=None if shared else len(target_vocabulary),
        num_encoder_layers=args.num_layers,
        num_decoder_layers=args.num_layers,
        num_heads=args.num_heads,
        hidden_dim=args.hidden_dim,
        intermediate_dim=2 * args.hidden_dim,
        max_sequence_length=lengths[0],
        max_target_length=lengths[1],
        # Rotary positions: relative offsets inside the source (where in
        # "17 aug 1944" the year starts) are what the model has to find.
        position_embedding="rotary",
        pad_token_id=PAD,
    )
    steps = args.epochs * -(-args.train_size // args.batch_size)
    model.compile(
        optimizer=keras_llm.optimizers.for_pretraining(
            steps,
            learning_rate=args.learning_rate,
            warmup_steps=min(30, steps // 10 + 1),
            weight_decay=0.01,
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[
            keras.metrics.SparseCategoricalAccuracy(name="token_accuracy")
        ],
    )
    console.print(
        f"task {args.task}: {len(train_pairs):,} training and "
        f"{len(test_pairs):,} held-out pairs, source vocabulary "
        f"{len(source_vocabulary)}, target vocabulary "
        f"{len(target_vocabulary)}{' (shared)' if shared else ''}; "
        f"{model.count_params():,} parameters, {args.epochs} epoch(s) of "
        f"{steps // args.epochs} steps"
    )
    history = model.fit(
        train[0],
        train[1],
        sample_weight=train[2],
        batch_size=args.batch_size,
        epochs=args.epochs,
        # Validation each epoch costs a traced evaluation: not in --quick.
        validation_data=None if args.quick else test,
        verbose=0 if args.quiet else 2,
    )
    tokens = token_accuracy(model, *test)
    accuracy, generated = sequence_accuracy(model, test[0], test[1])

    table = Table(title=f"greedy generations on held-out pairs ({args.task})")
    for column in ("source", "target", "generated", ""):
        table.add_column(column)
    samples = []
    for (source, target), ids in list(zip(test_pairs, generated))[
        : args.samples
    ]:
        text = target_vocabulary.decode(ids[1:])
        samples.append((source, target, text))
        table.add_row(source, target, text, "ok" if text == target else "x")
    console.print(table)
    seconds = time.perf_counter() - start
    console.print(
        f"held-out token accuracy {tokens:.3f}, sequence accuracy "
        f"{accuracy:.3f} ({len(test_pairs)} pairs) after {seconds:.0f} s"
    )
    results = {
        "task": args.task,
        "token_accuracy": tokens,
        "sequence_accuracy": accuracy,
        "initial_loss": float(history.history["loss"][0]),
        "loss": float(history.history["loss"][-1]),
        "samples": samples,
        "seconds": seconds,
    }
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        model.save(os.path.join(args.out, "model.keras"))
        with open(os.path.join(args.out, "vocabularies.json"), "w") as f:
            json.dump(
                {
                    "source": source_vocabulary.characters,
                    "target": target_vocabulary.characters,
                },
                f,
            )
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
        console.print(f"model, vocabularies and results written to {args.out}")
    return results


if __name__ == "__main__":
    main()
