"""Sentiment classification by fine-tuning a small pretrained BERT.

The tutorial's "Sentiment Analysis" (classify the sentiment of a text) done
with its "Transfer Learning" recipe: take an encoder pretrained on unlabelled
text, freeze it, train a new head on the labelled examples, then unfreeze the
top of the encoder and fine-tune it with a lower learning rate. Offline, in
four steps:

1. Data. The script generates movie reviews: one opinion sentence ("the
   acting was superb.", "i did not think the plot was tedious.") among
   neutral ones ("we saw it on friday."). The label is the adjective's
   polarity, flipped by a negation ("not", "never", "did not think") in about
   a third of the reviews, so a bag of sentiment words cannot score much
   above two thirds; a model must read the negation for the rest. A quarter
   of the (aspect, adjective) combinations appear only in validation, so the
   model is scored on reviews unlike any it trained on. The labelled sets are
   written as `text,label` CSVs (`--out/data/train.csv`, `validation.csv`),
   the files `keras-llm finetune --task classification` reads.
2. Backbone. Without `--backbone`, a small BERT is pretrained with masked-LM
   and next-sentence prediction (`keras_llm.models.BertPretrainer`) on
   unlabelled reviews, which also end with a verdict ("i loved it.", "what a
   waste of an evening."), so the pretraining sees which words go together;
   it is written to `--out/backbone/` (`backbone.keras`, `tokenizer.json`).
   `--backbone PATH` fine-tunes an existing one instead, for example
   `examples/pretrain_mlm.py --out`'s folder, or a keras-hub preset saved on
   disk.
3. Fine-tuning. `keras_llm.finetuning.finetune(task="classification")`:
   the backbone frozen and the new `SequenceClassificationHead` trained
   (`--epochs`, `--learning-rate`), then the top `--unfreeze-top` blocks
   unfrozen and trained with the head (`--unfreeze-epochs`,
   `--unfreeze-learning-rate`, linear warm-up and decay). It writes
   `model.keras`, `metrics.json`, `manifest.json` and TensorBoard `logs/`
   into `--out`.
4. Results: validation accuracy after each phase against the majority-class
   baseline, and predictions on a few new sentences (`results.json`).

What the tutorial's transfer-learning snippet got wrong and how it is done
here: its Sequential model never used the frozen base, never trained, and
used one-hot loss with integer labels. Here the head sits on the backbone's
sequence output in one functional model (`build_task_model`), the model is
recompiled after each change of `trainable` (a change takes effect only at
`compile`), and the loss is sparse categorical cross-entropy.

    python examples/finetune_classification.py                # a few minutes
    python examples/finetune_classification.py --quick        # < 1 min on CPU
    python examples/pretrain_mlm.py --out runs/bert
    python examples/finetune_classification.py --backbone runs/bert
"""

import argparse
import csv
import json
import os
import sys
import time

import keras
import numpy as np

ASPECTS = (
    "the acting",
    "the plot",
    "the soundtrack",
    "the dialogue",
    "the ending",
    "the pacing",
    "the camera work",
    "the cast",
    "the script",
    "the story",
    "the music",
    "the lighting",
)
POSITIVE = ("brilliant", "wonderful", "superb", "charming")
NEGATIVE = ("terrible", "boring", "dreadful", "tedious")
# An opinion: (template, negated). The label is the adjective's polarity,
# flipped when the template negates it.
OPINIONS = (
    ("{aspect} was {adjective}.", False),
    ("{aspect} was really {adjective}.", False),
    ("i thought {aspect} was {adjective}.", False),
    ("honestly , {aspect} felt {adjective}.", False),
    ("{aspect} was not {adjective}.", True),
    ("{aspect} was never {adjective}.", True),
    ("i did not think {aspect} was {adjective}.", True),
    ("honestly , {aspect} did not feel {adjective}.", True),
)
NEUTRAL = (
    "we saw it on friday.",
    "i watched it with my sister.",
    "it runs for two hours.",
    "the cinema was half full.",
    "it came out last year.",
    "my friend picked this one.",
    "we went to the late show.",
    "it is based on a novel.",
)
# Verdicts end the unlabelled reviews of the pretraining corpus only.
VERDICTS = {
    1: ("i loved it.", "would watch again.", "a real treat.", "go and see it."),
    0: (
        "i hated it.",
        "what a waste of an evening.",
        "skip this one.",
        "i want my money back.",
    ),
}
LABELS = ("negative", "positive")
# Sentences the model never saw, for a look at its predictions.
NEW_SENTENCES = (
    ("the lighting was not boring.", "positive"),
    ("i did not think the music was wonderful.", "negative"),
    ("we went to the late show. the cast was charming.", "positive"),
    ("honestly , the ending felt tedious.", "negative"),
    ("the story was never brilliant.", "negative"),
    ("it came out last year. the pacing was not dreadful.", "positive"),
)
NEGATION_RATE = 1 / 3


def split_combinations(rng, held_per_polarity=1):
    """(aspect, adjective) pairs for training and for validation only.

    Each aspect loses `held_per_polarity` positive and as many negative
    adjectives to validation, and the held-out pairs are spread evenly over
    the adjectives, so in training every aspect still comes with as many
    positive as negative adjectives (an aspect says nothing about the
    label) and every adjective with most aspects; only the pairing is new
    in validation.
    """
    positive = list(rng.permutation(POSITIVE))
    negative = list(rng.permutation(NEGATIVE))
    held = set()
    for i, aspect in enumerate(ASPECTS):
        for j in range(held_per_polarity):
            k = i * held_per_polarity + j
            held.add((aspect, positive[k % len(positive)]))
            held.add((aspect, negative[(k + 3) % len(negative)]))
    pairs = [(a, w) for a in ASPECTS for w in POSITIVE + NEGATIVE]
    train = [p for p in pairs if p not in held]
    return train, sorted(held)


def make_opinion(rng, combinations, label, negation_rate):
    """One opinion sentence whose sentiment is `label`."""
    negated = rng.random() < negation_rate
    polarity = POSITIVE if label ^ negated else NEGATIVE
    choices = [c for c in combinations if c[1] in polarity]
    aspect, adjective = choices[rng.integers(len(choices))]
    templates = [t for t, n in OPINIONS if n == negated]
    template = templates[rng.integers(len(templates))]
    return template.format(aspect=aspect, adjective=adjective)


def make_review(rng, combinations, opinions=1, negation_rate=NEGATION_RATE):
    """One review and its label (0 negative, 1 positive).

    Labelled reviews hold one opinion among neutral sentences. Unlabelled
    ones (`opinions > 1`) hold several opinions of the same sentiment and
    end with a verdict, as reviews do: masked-LM learns from them which
    adjectives go together.
    """
    label = int(rng.integers(2))
    sentences = [
        make_opinion(rng, combinations, label, negation_rate)
        for _ in range(opinions)
    ]
    for _ in range(rng.integers(0, 2)):
        neutral = NEUTRAL[rng.integers(len(NEUTRAL))]
        sentences.insert(rng.integers(len(sentences) + 1), neutral)
    if opinions > 1:
        sentences.append(VERDICTS[label][rng.integers(len(VERDICTS[label]))])
    return " ".join(sentences), label


def write_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for text, label in rows:
            writer.writerow([text, LABELS[label]])


def make_data(folder, rng, train_count, validation_count, unlabelled_count):
    """Writes train.csv and validation.csv; returns the unlabelled texts."""
    train_pairs, held_pairs = split_combinations(rng)
    train = [make_review(rng, train_pairs) for _ in range(train_count)]
    validation = [make_review(rng, held_pairs) for _ in range(validation_count)]
    unlabelled = [
        make_review(rng, train_pairs, opinions=3, negation_rate=0.15)[0]
        for _ in range(unlabelled_count)
    ]
    os.makedirs(folder, exist_ok=True)
    paths = {
        "train": os.path.join(folder, "train.csv"),
        "validation": os.path.join(folder, "validation.csv"),
    }
    write_csv(paths["train"], train)
    write_csv(paths["validation"], validation)
    counts = {
        "train": len(train),
        "validation": len(validation),
        "unlabelled": len(unlabelled),
        "held_out_combinations": len(held_pairs),
        "train_combinations": len(train_pairs),
        "negated_validation": sum(
            any(n in text for n in (" not ", " never "))
            for text, _ in validation
        ),
    }
    return paths, unlabelled, counts


def pretrain(documents, folder, args):
    """Pretrains a small BERT with MLM+NSP; writes backbone and tokenizer."""
    import keras_llm
    from keras_llm import data
    from keras_llm.optimizers import for_pretraining

    tokenizer = data.learn_mlm_tokenizer(
        documents, args.vocabulary_size, lowercase=True
    )
    train = data.mlm_nsp_dataset(
        documents,
        tokenizer,
        args.sequence_length,
        args.batch_size,
        seed=args.seed,
        repeat=True,
    )
    backbone = keras_llm.models.BERT.from_preset(
        args.preset,
        vocabulary_size=tokenizer.vocabulary_size(),
        max_sequence_length=args.sequence_length,
        dropout=args.dropout,
        **({"num_layers": args.num_layers} if args.num_layers else {}),
    )
    pretrainer = keras_llm.models.BertPretrainer(
        backbone, mlm_weight=args.mlm_weight, nsp_weight=args.nsp_weight
    )
    pretrainer.compile(
        optimizer=for_pretraining(
            total_steps=args.pretrain_steps,
            learning_rate=args.pretrain_learning_rate,
            warmup_steps=args.pretrain_steps // 10,
            schedule="linear",
            weight_decay=0.01,
            beta_2=0.999,
        ),
        jit_compile=not args.quick,
    )
    print(
        f"pretraining a {backbone.count_params():,}-parameter BERT "
        f"({args.preset}) with MLM+NSP for {args.pretrain_steps} steps on "
        f"{len(documents)} unlabelled reviews "
        f"({tokenizer.vocabulary_size()} WordPiece tokens)"
    )
    history = pretrainer.fit(
        train,
        steps_per_epoch=args.pretrain_steps,
        epochs=1,
        shuffle=False,  # the dataset shuffles itself
        verbose=args.verbose,
    ).history
    os.makedirs(folder, exist_ok=True)
    backbone.save(os.path.join(folder, "backbone.keras"))
    data.save_tokenizer(tokenizer, folder)
    return {
        k: float(history[k][-1])
        for k in ("mlm_loss", "mlm_accuracy", "nsp_accuracy")
    }


def predict(model, tokenizer, texts, sequence_length):
    """Class probabilities of `model` for raw texts."""
    from keras_llm.data.tasks import classification_dataset

    dataset = classification_dataset(
        list(texts),
        np.zeros(len(texts), "int32"),
        tokenizer,
        sequence_length,
        batch_size=len(texts),
        shuffle=False,
    ).map(lambda x, y: x)
    logits = model.predict(dataset, verbose=0)
    return keras.ops.convert_to_numpy(keras.ops.softmax(logits))


def print_results(results):
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="sentiment: validation (held-out combinations)")
    table.add_column("phase")
    table.add_column("accuracy", justify="right")
    table.add_column("majority baseline", justify="right")
    for phase, metrics in results["phases"].items():
        table.add_row(
            phase,
            f"{metrics['accuracy']:.3f}",
            f"{metrics['majority_baseline']:.3f}",
        )
    console.print(table)
    table = Table(title="predictions on new sentences")
    for column in ("text", "expected", "predicted", "p(positive)"):
        table.add_column(column)
    for row in results["new_sentences"]:
        table.add_row(
            row["text"],
            row["expected"],
            row["predicted"],
            f"{row['p_positive']:.2f}",
        )
    console.print(table)


# --quick: a smaller data set, a one-block BERT and shorter training;
# flags given on the command line still win.
QUICK = dict(
    train_examples=1200,
    validation_examples=400,
    unlabelled_examples=1500,
    num_layers=1,
    dropout=0.0,
    pretrain_steps=200,
    sequence_length=32,
    batch_size=16,
    epochs=2,
    unfreeze_top=1,
    unfreeze_epochs=6,
)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backbone",
        default=None,
        help="a pretrained encoder (.keras file, folder, or keras-hub "
        "preset folder); default: pretrain one here",
    )
    parser.add_argument("--tokenizer", default=None)
    parser.add_argument("--train-examples", type=int, default=4000)
    parser.add_argument("--validation-examples", type=int, default=1000)
    parser.add_argument("--unlabelled-examples", type=int, default=8000)
    parser.add_argument("--preset", default="bert_nano")
    parser.add_argument(
        "--num-layers", type=int, default=None, help="default: the preset's"
    )
    parser.add_argument(
        "--dropout", type=float, default=0.1, help="of the pretrained BERT"
    )
    parser.add_argument("--vocabulary-size", type=int, default=512)
    parser.add_argument("--pretrain-steps", type=int, default=1500)
    parser.add_argument("--pretrain-learning-rate", type=float, default=2e-3)
    parser.add_argument("--mlm-weight", type=float, default=1.0)
    parser.add_argument("--nsp-weight", type=float, default=1.0)
    parser.add_argument("--sequence-length", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=5e-3)
    parser.add_argument("--unfreeze-top", type=int, default=2)
    parser.add_argument("--unfreeze-epochs", type=int, default=6)
    parser.add_argument("--unfreeze-learning-rate", type=float, default=2e-3)
    parser.add_argument("--pooling", default="mean", choices=("cls", "mean"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", default=os.path.join("runs", "example_sentiment")
    )
    parser.add_argument("--quick", action="store_true", help="< 1 min on CPU")
    parser.add_argument("--quiet", action="store_true", help="no progbars")
    if "--quick" in (sys.argv[1:] if argv is None else argv):
        parser.set_defaults(**QUICK)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    args.verbose = 0 if args.quiet else "auto"
    started = time.time()
    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    from keras_llm.finetuning import finetune

    files, unlabelled, counts = make_data(
        os.path.join(args.out, "data"),
        rng,
        args.train_examples,
        args.validation_examples,
        args.unlabelled_examples,
    )
    print(
        f"{counts['train']} training and {counts['validation']} validation "
        f"reviews ({counts['held_out_combinations']} aspect-adjective "
        f"combinations held out for validation) in {os.path.dirname(files['train'])}"
    )
    pretraining = None
    backbone = args.backbone
    if backbone is None:
        backbone = os.path.join(args.out, "backbone")
        pretraining = pretrain(unlabelled, backbone, args)

    result = finetune(
        backbone=backbone,
        tokenizer=args.tokenizer,
        task="classification",
        train=files["train"],
        validation=files["validation"],
        labels=list(LABELS),
        out=args.out,
        sequence_length=args.sequence_length,
        batch_size=args.batch_size,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        unfreeze_top=args.unfreeze_top,
        unfreeze_epochs=args.unfreeze_epochs,
        unfreeze_learning_rate=args.unfreeze_learning_rate,
        pooling=args.pooling,
        seed=args.seed,
        jit_compile=not args.quick,
        verbose=args.verbose,
    )
    texts = [text for text, _ in NEW_SENTENCES]
    probabilities = predict(
        result["model"], result["tokenizer"], texts, args.sequence_length
    )
    labels = result["labels"]
    positive = labels.index("positive")
    results = {
        "backbone": backbone,
        "pretraining": pretraining,
        "data": counts,
        "phases": {
            phase: {
                "accuracy": m["accuracy"],
                "majority_baseline": m["majority_baseline"],
            }
            for phase, m in result["metrics"].items()
        },
        "new_sentences": [
            {
                "text": text,
                "expected": expected,
                "predicted": labels[int(np.argmax(p))],
                "p_positive": float(p[positive]),
            }
            for (text, expected), p in zip(NEW_SENTENCES, probabilities)
        ],
        "seconds": time.time() - started,
    }
    final = result["metrics"][list(result["metrics"])[-1]]
    results["accuracy"] = final["accuracy"]
    results["majority_baseline"] = final["majority_baseline"]
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print_results(results)
    print(
        f"validation accuracy {results['accuracy']:.3f} vs majority baseline "
        f"{results['majority_baseline']:.3f}; results in {args.out} "
        f"({results['seconds']:.0f} s)"
    )
    return results


if __name__ == "__main__":
    main()
