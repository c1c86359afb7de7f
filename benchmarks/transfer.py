"""Transfer learning: MLM+NSP pretraining vs random init, speaker attribution.

Does self-supervised pretraining with `keras_llm.models.BertPretrainer`
(masked LM + next-sentence prediction) help a downstream task on the same
text? The task is speaker attribution on tinyshakespeare
(`../shared/data/tinyshakespeare.txt`, or `--data`): given the text of one
speech, name its speaker among the 10 most frequent ones (chance 10%).

Task. Speeches are the blocks between blank lines whose first line is
`NAME:`; blocks with no text after the name (stage business cut from the
text) are dropped. The 10 most frequent speakers are GLOUCESTER, DUKE
VINCENTIO, MENENIUS, ROMEO, PETRUCHIO, CORIOLANUS, KING RICHARD III,
ISABELLA, JULIET and LEONTES (1,536 speeches, about 30 words each). Each
speaker's speeches lie in one region of the file (their play), so the split
is by position: the first 80% of each speaker's speeches (in text order)
train, the last 20% validate. Several pairs share a play (ROMEO/JULIET,
MENENIUS/CORIOLANUS, DUKE VINCENTIO/ISABELLA, GLOUCESTER/KING RICHARD III),
so topic alone does not solve it.

Pretraining data. "The training part of the text" is every speech of the
file (all speakers) except the validation speeches, in text order, with
the `NAME:` heading lines removed, so pretraining never sees a speaker
label. Documents for NSP are chunks of `--speeches-per-document`
consecutive speeches (the text has no scene marks), each speech a paragraph
(`split_sentences` splits it into sentences). The WordPiece vocabulary
(`keras_llm.data.learn_mlm_tokenizer`) is learned on the same training
text. The validation speeches, chunked the same way, give held-out MLM and
NSP metrics after pretraining (never used to choose anything).

Method. One BERT (`--preset`, default `bert_tiny`: 2 blocks, width 128) is
built with `--seed` and its initial weights saved; the pretrained arm
trains it with MLM+NSP for `--pretrain-steps` steps (`for_pretraining`:
AdamW, linear warm-up then linear decay) and saves it; the random arm is
the saved initial weights. Both arms are then fine-tuned identically, only
the initial backbone weights differ: the same seed (head weights, dropout,
shuffling), data, steps and schedule.

- `--protocol full` (default): every weight trains (embeddings, blocks,
  head), as in BERT fine-tuning; for the random arm this is "the same model
  trained from random initialisation for the same steps". The backbone and
  tokenizer are loaded with `keras_llm.finetuning.load_backbone`, the
  CSV files are read with `keras_llm.data.tasks.read_sentiment`, a
  `SequenceClassificationHead` goes on top (`build_task_model`, `--pooling
  mean` by default: a random-init encoder's `[CLS]` output barely varies
  from text to text), and `model.fit` trains with AdamW (no decay on
  biases, norms, embeddings) and `LinearDecayWithWarmup` (10% warm-up).
- `--protocol cli`: `keras_llm.finetuning.finetune()`, the library
  function behind `keras-llm finetune`, on the same CSV files: the head
  alone for `--head-epochs` with the backbone frozen, then every block
  unfrozen for `--finetune-epochs` (the embeddings stay frozen: that is what
  `--unfreeze-top` does).

The validation accuracy reported is that of the model after the last
epoch (no early stopping, no choice of epoch). Targets: pretrained at least
5 points above random init. The majority-class baseline (the most frequent
training speaker, predicted always) and chance (1/10) are printed with it.

Result on 2 CPU cores (benchmarks/results/transfer_cpu.json): the target
is missed. Random init 29.9% (seeds 30.0, 30.0, 29.6), pretrained 20.8%
(23.1, 19.9, 19.5), majority 13.7%, chance 10%: pretraining costs 9 points.
A TF-IDF logistic regression scores 30-32% on the same split, so the
task is lexical at this size, and a randomly initialised encoder fine-tuned
end to end already matches a bag of words. Checked by hand with a
pre-norm BERT and 6,000 pretraining steps (held-out MLM accuracy 26%
instead of 16%): fine-tuned 24.4% against 29.6% from random init, and a
linear probe on frozen mean-pooled features falls from 19.9% (random) to
17.3% (pretrained). About 1M characters of pretraining text is too little
for MLM+NSP to learn features that beat fresh embeddings here; the
benchmark reports what it measures.

Run from the repository root:

    python benchmarks/transfer.py            # about 12 minutes on 2 cores
    python benchmarks/transfer.py --quick    # smoke run, 1-2 minutes

The tables are printed and the results written as JSON to `--out` (default
`benchmarks/results/transfer_cpu.json`; with `--quick`
`runs/bench_transfer/transfer_quick.json`).
"""

import argparse
import collections
import csv
import json
import math
import os
import shlex
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.normpath(
    os.path.join(REPO_ROOT, "..", "shared", "data", "tinyshakespeare.txt")
)
DEFAULT_OUT = os.path.join("benchmarks", "results", "transfer_cpu.json")
QUICK_OUT = os.path.join("runs", "bench_transfer", "transfer_quick.json")
TARGET_POINTS = 5.0
PRETRAIN_METRICS = (
    "loss",
    "mlm_loss",
    "mlm_accuracy",
    "mlm_perplexity",
    "nsp_loss",
    "nsp_accuracy",
)
ARMS = ("random", "pretrained")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=(
            "MLM+NSP pretraining vs random init of a small BERT, fine-tuned "
            "on tinyshakespeare speaker attribution."
        )
    )
    parser.add_argument(
        "--data",
        default=DEFAULT_DATA,
        help="tinyshakespeare text file (default: %(default)s)",
    )
    parser.add_argument("--out", default=None, help="results JSON file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run (bert_nano, 60 pretraining steps, 1+1 epochs)",
    )
    task = parser.add_argument_group("task")
    task.add_argument("--num-speakers", type=int, default=10)
    task.add_argument(
        "--validation-fraction",
        type=float,
        default=0.2,
        help="last fraction of each speaker's speeches that validates",
    )
    model = parser.add_argument_group("model")
    model.add_argument("--preset", default="bert_tiny")
    model.add_argument(
        "--sequence-length",
        type=int,
        default=64,
        help="tokens per example, pretraining and fine-tuning",
    )
    model.add_argument("--vocabulary-size", type=int, default=4096)
    model.add_argument(
        "--jit",
        default="on",
        choices=["on", "off"],
        help="XLA for the train steps (default: %(default)s)",
    )
    pre = parser.add_argument_group("pretraining (MLM + NSP)")
    pre.add_argument("--pretrain-steps", type=int, default=2000)
    pre.add_argument("--pretrain-batch-size", type=int, default=32)
    pre.add_argument("--pretrain-learning-rate", type=float, default=1e-3)
    pre.add_argument(
        "--speeches-per-document",
        type=int,
        default=8,
        help="consecutive speeches per NSP document",
    )
    fine = parser.add_argument_group("fine-tuning (both arms)")
    fine.add_argument(
        "--protocol",
        default="full",
        choices=["full", "cli"],
        help="full: every weight trains; cli: finetune(), head then blocks",
    )
    fine.add_argument("--finetune-epochs", type=int, default=10)
    fine.add_argument(
        "--finetune-seeds",
        type=int,
        default=3,
        help="fine-tuning runs per arm, seeds --seed, --seed + 1, ...",
    )
    fine.add_argument("--batch-size", type=int, default=32)
    fine.add_argument(
        "--learning-rate",
        type=float,
        default=3e-4,
        help="peak fine-tuning learning rate (cli: of the unfrozen phase)",
    )
    fine.add_argument(
        "--head-epochs",
        type=int,
        default=2,
        help="cli protocol: epochs of the head alone, at 1e-3",
    )
    fine.add_argument("--pooling", default="mean", choices=["mean", "cls"])
    fine.add_argument("--dropout", type=float, default=0.1)
    fine.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument(
        "--verbose",
        default="auto",
        help=(
            "Keras fit verbosity: 0, 1, 2 or auto (a progress bar on a "
            "terminal, a line per epoch otherwise; default: %(default)s)"
        ),
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.preset = "bert_nano"
        args.pretrain_steps = 60
        args.sequence_length = 32
        args.vocabulary_size = 1000
        args.finetune_epochs = 1
        args.head_epochs = 1
        args.finetune_seeds = 1
        args.jit = "off"
    if args.out is None:
        args.out = QUICK_OUT if args.quick else DEFAULT_OUT
    if args.verbose == "auto":
        # A progress bar on a terminal, one line per epoch in a log.
        args.verbose = 1 if sys.stdout.isatty() else 2
    else:
        args.verbose = int(args.verbose)
    for name in (
        "num_speakers",
        "sequence_length",
        "vocabulary_size",
        "pretrain_steps",
        "pretrain_batch_size",
        "speeches_per_document",
        "finetune_epochs",
        "finetune_seeds",
        "batch_size",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.sequence_length < 8:
        parser.error("--sequence-length must be at least 8")
    if not 0 < args.validation_fraction < 1:
        parser.error("--validation-fraction must be in (0, 1)")
    if not os.path.isfile(args.data):
        parser.error(f"--data {args.data} does not exist")
    return args


# --- Data ---------------------------------------------------------------


def read_speeches(path):
    """`(speaker, text)` of every speech of the file, in text order.

    A speech is a block between blank lines whose first line is `NAME:`;
    its lines are joined with spaces. Blocks without text are dropped.
    """
    with open(path, encoding="utf-8") as f:
        text = f.read()
    speeches = []
    for block in text.split("\n\n"):
        lines = block.strip("\n").split("\n")
        if len(lines) < 2 or not lines[0].endswith(":"):
            continue
        body = " ".join(line.strip() for line in lines[1:] if line.strip())
        if body:
            speeches.append((lines[0][:-1].strip(), body))
    return speeches


def split_task(speeches, num_speakers, validation_fraction):
    """Labels and the per-speaker positional split.

    Returns:
        A dict: `speakers` (most frequent first), `train` and `validation`
        (indices into `speeches`, text order), `counts` per speaker.
    """
    counts = collections.Counter(speaker for speaker, _ in speeches)
    if len(counts) < num_speakers:
        raise SystemExit(
            f"the text has {len(counts)} speakers, fewer than "
            f"--num-speakers {num_speakers}"
        )
    speakers = [name for name, _ in counts.most_common(num_speakers)]
    train, validation, per_speaker = [], [], {}
    for speaker in speakers:
        index = [i for i, (s, _) in enumerate(speeches) if s == speaker]
        n_val = max(1, round(validation_fraction * len(index)))
        train += index[:-n_val]
        validation += index[-n_val:]
        per_speaker[speaker] = {
            "train": len(index) - n_val,
            "validation": n_val,
        }
    return {
        "speakers": speakers,
        "train": sorted(train),
        "validation": sorted(validation),
        "counts": per_speaker,
    }


def chunk_documents(texts, per_document):
    """Consecutive texts joined as paragraphs, `per_document` at a time."""
    return [
        "\n\n".join(texts[i : i + per_document])
        for i in range(0, len(texts), per_document)
    ]


def write_csv(path, speeches, index):
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i in index:
            speaker, text = speeches[i]
            writer.writerow([text, speaker])
    return path


# --- Pretraining --------------------------------------------------------


def materialize(dataset, steps):
    """The first `steps` batches of a dataset, drawn once into memory, as
    a dataset that yields them in the same order.

    `mlm_nsp_dataset` with a seed packs and masks one example at a time
    (about 30 ms of one core per batch of 32 x 64 here); streamed, that
    work competes with the train step for the 2 cores and doubles the
    step time. Drawn up front, every step still gets its own fresh pairs
    and masks, and the batches are the same as streamed.
    """
    import keras
    import numpy as np
    import tensorflow as tf

    batches = list(dataset.take(steps).as_numpy_iterator())
    stacked = keras.tree.map_structure(
        lambda *parts: np.concatenate(parts), *batches
    )
    size = len(batches[0][0]["token_ids"])
    return (
        tf.data.Dataset.from_tensor_slices(stacked)
        .batch(size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )


def pretrain(args, backbone, tokenizer, train_docs, val_docs, console):
    import keras

    import keras_llm
    from keras_llm import data
    from keras_llm.optimizers import for_pretraining

    started = time.perf_counter()
    train = materialize(
        data.mlm_nsp_dataset(
            train_docs,
            tokenizer,
            args.sequence_length,
            args.pretrain_batch_size,
            seed=args.seed,
            repeat=True,
        ),
        args.pretrain_steps,
    )
    data_seconds = time.perf_counter() - started
    val = data.mlm_nsp_dataset(
        val_docs,
        tokenizer,
        args.sequence_length,
        args.pretrain_batch_size,
        seed=args.seed + 1,
        shuffle=False,
        drop_remainder=False,
    )
    keras.utils.set_random_seed(args.seed)
    pretrainer = keras_llm.models.BertPretrainer(backbone)
    pretrainer.compile(
        optimizer=for_pretraining(
            total_steps=args.pretrain_steps,
            learning_rate=args.pretrain_learning_rate,
            warmup_steps=args.pretrain_steps // 10,
            schedule="linear",
            weight_decay=0.01,
            beta_2=0.999,
        ),
        jit_compile=args.jit == "on",
    )
    # A few epochs, so that the last one's mean metrics describe the end
    # of training.
    epochs = min(4, args.pretrain_steps)
    steps = [args.pretrain_steps // epochs] * epochs
    steps[-1] += args.pretrain_steps - sum(steps)
    console.print(
        f"pretraining: {args.pretrain_steps} steps of "
        f"{args.pretrain_batch_size} x {args.sequence_length} tokens, "
        f"{len(train_docs)} documents (batches drawn in "
        f"{data_seconds:.0f} s)",
        highlight=False,
    )
    history = collections.defaultdict(list)
    for epoch, n in enumerate(steps):
        h = pretrainer.fit(
            train,
            steps_per_epoch=n,
            epochs=epoch + 1,
            initial_epoch=epoch,
            shuffle=False,  # the dataset shuffles itself
            verbose=args.verbose,
        )
        for key, values in h.history.items():
            history[key] += [float(v) for v in values]
    seconds = time.perf_counter() - started
    held_out = pretrainer.evaluate(val, return_dict=True, verbose=0)
    return {
        "train_last_epoch": {k: history[k][-1] for k in PRETRAIN_METRICS},
        "held_out": {k: float(held_out[k]) for k in PRETRAIN_METRICS},
        "history": dict(history),
        "seconds": seconds,
        "data_seconds": data_seconds,
        "steps": args.pretrain_steps,
        "tokens": args.pretrain_steps
        * args.pretrain_batch_size
        * args.sequence_length,
        "documents": len(train_docs),
        "held_out_documents": len(val_docs),
    }


# --- Fine-tuning --------------------------------------------------------


def task_arrays(files, labels, tokenizer, sequence_length):
    """Reads the task CSVs (`read_sentiment`) and packs them once with
    `classification_dataset`: `{split: (features, label_ids)}` in memory."""
    import numpy as np

    from keras_llm.data.tasks import classification_dataset
    from keras_llm.data.tasks import read_sentiment

    out = {}
    for split, path in files.items():
        rows, report = read_sentiment(path, labels=labels)
        if report.skipped:
            raise SystemExit(f"{path}: {report.summary()}")
        features, label_ids = [], []
        for x, y in classification_dataset(
            rows.texts,
            rows.label_ids,
            tokenizer,
            sequence_length,
            batch_size=256,
            shuffle=False,
        ).as_numpy_iterator():
            features.append(x)
            label_ids.append(y)
        out[split] = (
            {
                k: np.concatenate([f[k] for f in features]).astype("int32")
                for k in features[0]
            },
            np.concatenate(label_ids),
        )
    return out


def in_memory(split, batch_size, shuffle, seed):
    import tensorflow as tf

    features, label_ids = split
    ds = tf.data.Dataset.from_tensor_slices((features, label_ids))
    if shuffle:
        ds = ds.shuffle(
            len(label_ids), seed=seed, reshuffle_each_iteration=True
        )
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def finetune_full(args, backbone_path, arrays, labels, seed):
    """Every weight trains; returns the validation scores of one seed."""
    import keras
    import numpy as np

    from keras_llm.finetuning import build_task_model
    from keras_llm.finetuning import load_backbone
    from keras_llm.optimizers import NO_DECAY_NAMES
    from keras_llm.optimizers import AdamW
    from keras_llm.optimizers import LinearDecayWithWarmup

    keras.utils.set_random_seed(seed)
    backbone, _, _ = load_backbone(backbone_path)
    model = build_task_model(
        backbone,
        "classification",
        num_classes=len(labels),
        pooling=args.pooling,
        dropout=args.dropout,
    )
    count = len(arrays["train"][1])
    steps = args.finetune_epochs * math.ceil(count / args.batch_size)
    schedule = LinearDecayWithWarmup(
        args.learning_rate, warmup_steps=steps // 10, decay_steps=steps
    )
    model.compile(
        optimizer=AdamW(
            learning_rate=schedule,
            weight_decay=args.weight_decay,
            no_decay_names=NO_DECAY_NAMES,
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=args.jit == "on",
    )
    val = in_memory(arrays["validation"], args.batch_size, False, seed)
    started = time.perf_counter()
    history = model.fit(
        in_memory(arrays["train"], args.batch_size, True, seed),
        epochs=args.finetune_epochs,
        validation_data=val,
        shuffle=False,  # the dataset shuffles itself
        verbose=args.verbose,
    ).history
    seconds = time.perf_counter() - started
    predicted = np.argmax(model.predict(val, verbose=0), axis=-1)
    return {
        **scores(predicted, arrays["validation"][1], labels),
        "val_accuracy_per_epoch": [float(v) for v in history["val_accuracy"]],
        "train_accuracy_per_epoch": [float(v) for v in history["accuracy"]],
        "train_loss": float(history["loss"][-1]),
        "validation_loss": float(history["val_loss"][-1]),
        "steps": steps,
        "seconds": seconds,
    }


def finetune_cli(args, backbone_path, arrays, files, labels, seed, out):
    """`keras_llm.finetuning.finetune()` on the CSV files: the head, then
    every block (the embeddings stay frozen); one seed."""
    import numpy as np

    from keras_llm.finetuning import backbone_blocks
    from keras_llm.finetuning import finetune
    from keras_llm.finetuning import load_backbone

    backbone, _, _ = load_backbone(backbone_path)
    num_blocks = len(backbone_blocks(backbone))
    del backbone
    started = time.perf_counter()
    result = finetune(
        backbone=backbone_path,
        task="classification",
        train=files["train"],
        validation=files["validation"],
        labels=list(labels),
        out=out,
        sequence_length=args.sequence_length,
        batch_size=args.batch_size,
        epochs=args.head_epochs,
        unfreeze_top=num_blocks,
        unfreeze_epochs=args.finetune_epochs,
        unfreeze_learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        dropout=args.dropout,
        pooling=args.pooling,
        seed=seed,
        jit_compile=args.jit == "on",
        verbose=args.verbose,
    )
    seconds = time.perf_counter() - started
    val = in_memory(arrays["validation"], args.batch_size, False, seed)
    predicted = np.argmax(result["model"].predict(val, verbose=0), axis=-1)
    history = result["history"]
    last = history[list(history)[-1]]
    return {
        **scores(predicted, arrays["validation"][1], labels),
        "finetune_reported_accuracy": float(
            result["metrics"][list(result["metrics"])[-1]]["accuracy"]
        ),
        "val_accuracy_per_epoch": [
            float(v)
            for phase in history.values()
            for v in phase["val_accuracy"]
        ],
        "train_accuracy_per_epoch": [
            float(v) for phase in history.values() for v in phase["accuracy"]
        ],
        "train_loss": float(last["loss"][-1]),
        "validation_loss": float(last["val_loss"][-1]),
        "seconds": seconds,
    }


def scores(predicted, truth, labels):
    import numpy as np

    truth = np.asarray(truth)
    predicted = np.asarray(predicted)
    return {
        "accuracy": float(np.mean(predicted == truth)),
        "accuracy_per_speaker": {
            label: float(np.mean(predicted[truth == i] == i))
            for i, label in enumerate(labels)
            if np.any(truth == i)
        },
        "predicted_counts": {
            label: int(np.sum(predicted == i)) for i, label in enumerate(labels)
        },
    }


def summarize(runs, labels):
    """Mean and spread over the fine-tuning seeds of one arm."""
    import numpy as np

    accuracies = [run["accuracy"] for run in runs]
    return {
        "accuracy": float(np.mean(accuracies)),
        "accuracy_std": float(np.std(accuracies)),
        "accuracies": accuracies,
        "train_accuracy": float(
            np.mean([run["train_accuracy_per_epoch"][-1] for run in runs])
        ),
        "accuracy_per_speaker": {
            label: float(
                np.mean([run["accuracy_per_speaker"][label] for run in runs])
            )
            for label in labels
        },
        "seconds": float(sum(run["seconds"] for run in runs)),
        "runs": runs,
    }


# --- Report -------------------------------------------------------------


def report(results, console):
    from rich.table import Table

    arms = results["arms"]
    base = results["baselines"]
    diff = results["difference_points"]
    table = Table(
        title=(
            f"speaker attribution ({len(results['task']['speakers'])} "
            f"speakers), validation accuracy after fine-tuning "
            f"({results['options']['protocol']} protocol)"
        )
    )
    table.add_column("model")
    table.add_column("val accuracy (mean)", justify="right")
    table.add_column("per seed", justify="right")
    table.add_column("train accuracy", justify="right")
    table.add_column("fine-tune s", justify="right")
    table.add_row("chance", f"{base['chance']:.1%}", "-", "-", "-")
    table.add_row(
        f"majority class ({base['majority_label']})",
        f"{base['majority']:.1%}",
        "-",
        "-",
        "-",
    )
    for arm in ARMS:
        table.add_row(
            f"{arm} init",
            f"{arms[arm]['accuracy']:.1%}",
            " ".join(f"{a:.1%}" for a in arms[arm]["accuracies"]),
            f"{arms[arm]['train_accuracy']:.1%}",
            f"{arms[arm]['seconds']:.0f}",
        )
    verdict = "[green]PASS[/green]" if results["passed"] else "[red]MISS[/red]"
    table.add_row(
        "pretrained - random",
        f"{diff:+.1f} points",
        " ".join(f"{d:+.1f}" for d in results["difference_points_per_seed"]),
        f"target >= {TARGET_POINTS:g}",
        verdict,
    )
    console.print(table)

    pre = results["pretraining"]
    table = Table(
        title=(
            f"MLM+NSP pretraining: {pre['steps']} steps, "
            f"{pre['tokens'] / 1e6:.1f}M tokens, {pre['seconds']:.0f} s"
        )
    )
    table.add_column("metric")
    table.add_column("train (last epoch)", justify="right")
    table.add_column("held out (validation speeches)", justify="right")
    for name in PRETRAIN_METRICS:
        table.add_row(
            name,
            f"{pre['train_last_epoch'][name]:.4f}",
            f"{pre['held_out'][name]:.4f}",
        )
    console.print(table)

    table = Table(title="per-speaker validation accuracy")
    table.add_column("speaker")
    table.add_column("train", justify="right")
    table.add_column("val", justify="right")
    for arm in ARMS:
        table.add_column(arm, justify="right")
    for speaker in results["task"]["speakers"]:
        counts = results["task"]["counts"][speaker]
        table.add_row(
            speaker,
            str(counts["train"]),
            str(counts["validation"]),
            *(
                f"{arms[arm]['accuracy_per_speaker'][speaker]:.0%}"
                for arm in ARMS
            ),
        )
    console.print(table)
    times = results["seconds"]
    console.print(
        "time: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in times.items())
        + f"; load average at end {results['load_average_at_end'][0]:.1f}",
        highlight=False,
    )
    console.print(f"device: {results['device']}", highlight=False)
    console.print(f"results: {results['path']}", highlight=False)
    console.print(f"command: {results['command']}", highlight=False)


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 120)
    command = " ".join(
        shlex.quote(a)
        for a in [os.path.basename(sys.executable)]
        + (sys.argv if argv is None else [sys.argv[0]] + list(argv))
    )
    import keras
    import numpy as np

    import keras_llm
    from keras_llm import data
    from keras_llm.pretraining import device_name
    from keras_llm.pretraining import versions

    device = device_name()
    console.print(f"[bold]transfer[/bold]: {device}")
    load_at_start = os.getloadavg()
    seconds = {}

    # --- Task and pretraining text ---
    speeches = read_speeches(args.data)
    task = split_task(speeches, args.num_speakers, args.validation_fraction)
    labels = task["speakers"]
    held_out = set(task["validation"])
    train_text = [t for i, (_, t) in enumerate(speeches) if i not in held_out]
    val_text = [speeches[i][1] for i in task["validation"]]
    train_docs = chunk_documents(train_text, args.speeches_per_document)
    val_docs = chunk_documents(val_text, args.speeches_per_document)
    label_of = {name: i for i, name in enumerate(labels)}
    train_labels = np.array([label_of[speeches[i][0]] for i in task["train"]])
    val_labels = np.array(
        [label_of[speeches[i][0]] for i in task["validation"]]
    )
    majority = int(np.argmax(np.bincount(train_labels, minlength=len(labels))))
    baselines = {
        "chance": 1 / len(labels),
        "majority": float(np.mean(val_labels == majority)),
        "majority_label": labels[majority],
    }
    console.print(
        f"{len(speeches)} speeches; task: {len(labels)} speakers, "
        f"{len(task['train'])} training and {len(task['validation'])} "
        f"validation speeches; pretraining text: {len(train_text)} speeches "
        f"({sum(len(t) for t in train_text):,} characters) in "
        f"{len(train_docs)} documents",
        highlight=False,
    )

    folder = tempfile.mkdtemp(prefix="keras_llm_transfer_")
    files = {
        "train": write_csv(
            os.path.join(folder, "train.csv"), speeches, task["train"]
        ),
        "validation": write_csv(
            os.path.join(folder, "validation.csv"),
            speeches,
            task["validation"],
        ),
    }

    # --- Tokenizer and the two backbones ---
    t0 = time.perf_counter()
    tokenizer = data.learn_mlm_tokenizer(train_docs, args.vocabulary_size)
    seconds["tokenizer"] = time.perf_counter() - t0
    keras.utils.set_random_seed(args.seed)
    backbone = keras_llm.models.BERT.from_preset(
        args.preset,
        vocabulary_size=tokenizer.vocabulary_size(),
        max_sequence_length=args.sequence_length,
    )
    paths = {}
    for arm in ARMS:
        os.makedirs(os.path.join(folder, arm))
        data.save_tokenizer(tokenizer, os.path.join(folder, arm))
        paths[arm] = os.path.join(folder, arm, "backbone.keras")
    backbone.save(paths["random"])  # the initial weights of both arms
    console.print(
        f"BERT {args.preset}: {backbone.count_params():,} parameters, "
        f"{tokenizer.vocabulary_size()} WordPiece tokens",
        highlight=False,
    )

    t0 = time.perf_counter()
    pretraining = pretrain(
        args, backbone, tokenizer, train_docs, val_docs, console
    )
    backbone.save(paths["pretrained"])
    seconds["pretraining"] = time.perf_counter() - t0
    keras.backend.clear_session()

    # --- Fine-tuning, both arms identically ---
    arrays = task_arrays(files, labels, tokenizer, args.sequence_length)
    seeds = [args.seed + k for k in range(args.finetune_seeds)]
    arms = {}
    for arm in ARMS:
        t0 = time.perf_counter()
        runs = []
        for seed in seeds:
            console.print(
                f"fine-tuning from the {arm} backbone ({args.protocol} "
                f"protocol, seed {seed})",
                highlight=False,
            )
            if args.protocol == "full":
                run = finetune_full(args, paths[arm], arrays, labels, seed)
            else:
                run = finetune_cli(
                    args,
                    paths[arm],
                    arrays,
                    files,
                    labels,
                    seed,
                    os.path.join(folder, f"finetune_{arm}_{seed}"),
                )
            runs.append({"seed": seed, **run})
            console.print(
                f"{arm}, seed {seed}: validation accuracy "
                f"{run['accuracy']:.1%}",
                highlight=False,
            )
            keras.backend.clear_session()
        arms[arm] = summarize(runs, labels)
        seconds[f"fine-tune {arm}"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - started

    difference = 100 * (
        arms["pretrained"]["accuracy"] - arms["random"]["accuracy"]
    )
    paired = [
        100 * (p["accuracy"] - r["accuracy"])
        for p, r in zip(arms["pretrained"]["runs"], arms["random"]["runs"])
    ]
    results = {
        "command": command,
        "device": device,
        "versions": versions(),
        "options": vars(args),
        "load_average_at_start": load_at_start,
        "task": {
            "speeches": len(speeches),
            "speakers": labels,
            "counts": task["counts"],
            "train_examples": len(task["train"]),
            "validation_examples": len(task["validation"]),
            "split": (
                "per speaker, by position: first "
                f"{1 - args.validation_fraction:.0%} of each speaker's "
                "speeches train, the rest validate"
            ),
            "pretraining_text": (
                "every speech except the validation speeches, text order, "
                "speaker headings removed; documents of "
                f"{args.speeches_per_document} consecutive speeches"
            ),
            "pretraining_speeches": len(train_text),
            "pretraining_characters": sum(len(t) for t in train_text),
        },
        "model": {
            "preset": args.preset,
            "parameters": int(backbone.count_params()),
            "vocabulary_size": int(tokenizer.vocabulary_size()),
        },
        "baselines": baselines,
        "pretraining": pretraining,
        "arms": arms,
        "difference_points": difference,
        "difference_points_per_seed": paired,
        "target_points": TARGET_POINTS,
        "passed": bool(difference >= TARGET_POINTS),
        "seconds": seconds,
        "load_average_at_end": os.getloadavg(),
        "path": args.out,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, default=str)
    report(results, console)
    return results


if __name__ == "__main__":
    main()
