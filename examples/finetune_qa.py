"""Extractive question answering (SQuAD v1.1) by fine-tuning a small BERT.

The tutorial's "Question-Answering" (comprehend a passage and answer
questions on it) done with its "Transfer Learning" recipe: an encoder
pretrained on unlabelled text, frozen while a new span head learns, then its
top blocks unfrozen and fine-tuned at a lower learning rate. Offline, in four
steps:

1. Data. The script generates short biographies from templated facts
   ("Anna Berg was born in Lyon in 1956. Anna studied physics in Oslo. Anna
   worked as a teacher in Rome.") of one to three people per passage, and
   questions on them ("Where was Anna Berg born?", "When was Anna Berg
   born?", "What did Anna Berg study?", "What did Anna Berg work as?",
   "Where did Anna Berg work?"). Answers are character spans of the passage,
   written in the SQuAD v1.1 layout (`--out/data/train.json`,
   `validation.json`), the files `keras-llm finetune --task qa` reads.
   Passages with several people are longer than one window
   (`--sequence-length`) and are split into overlapping windows `--stride`
   tokens apart; a window without the answer is trained to point at [CLS].
   A model must find the right kind of answer (a city, a year, a subject, a
   job), and, where a passage names several people, the right person's.
   Validation people are new (first and last name combinations not seen in
   training).
2. Backbone. Without `--backbone`, a small BERT is pretrained with masked-LM
   and next-sentence prediction (`keras_llm.models.BertPretrainer`) on the
   training passages and more unlabelled biographies, and written to
   `--out/backbone/` (`backbone.keras`, `tokenizer.json`). `--backbone PATH`
   fine-tunes an existing one instead (e.g. `examples/pretrain_mlm.py
   --out`'s folder; its WordPiece tokenizer must cover the text).
3. Fine-tuning. `keras_llm.finetuning.finetune(task="qa")` puts a
   `SpanQAHead` (start and end logits per token) on the backbone, trains it
   with the backbone frozen, then unfreezes the top `--unfreeze-top` blocks.
   Answers are decoded as the best span of at most `--max-answer-length`
   tokens over all windows of a question. It writes `model.keras`,
   `predictions.json`, `metrics.json`, `manifest.json` and `logs/` into
   `--out`.
4. Results: SQuAD exact match and F1 after each phase, against a baseline
   that always answers the first word of the passage, and a few predicted
   answers (`results.json`).

    python examples/finetune_qa.py                # a few minutes on CPU
    python examples/finetune_qa.py --quick        # < 1 min on CPU
    python examples/finetune_qa.py --backbone runs/example_qa/backbone
"""

import argparse
import json
import os
import sys
import time

import keras
import numpy as np

FIRST_NAMES = (
    "Anna",
    "Bruno",
    "Clara",
    "David",
    "Elena",
    "Felix",
    "Greta",
    "Hugo",
    "Ines",
    "Jonas",
    "Karin",
    "Louis",
    "Maria",
    "Nils",
    "Olga",
    "Pablo",
    "Rosa",
    "Simon",
    "Tara",
    "Victor",
)
LAST_NAMES = (
    "Berg",
    "Costa",
    "Dahl",
    "Evans",
    "Fischer",
    "Garcia",
    "Holm",
    "Ivanov",
    "Jensen",
    "Klein",
    "Lopez",
    "Moreau",
    "Novak",
    "Olsen",
    "Petit",
    "Rossi",
    "Silva",
    "Weber",
)
CITIES = (
    "Lyon",
    "Oslo",
    "Rome",
    "Madrid",
    "Vienna",
    "Prague",
    "Lisbon",
    "Dublin",
    "Berlin",
    "Warsaw",
    "Athens",
    "Geneva",
    "Porto",
    "Naples",
    "Munich",
    "Bergen",
    "Seville",
    "Krakow",
)
SUBJECTS = (
    "physics",
    "chemistry",
    "history",
    "law",
    "medicine",
    "music",
    "biology",
    "economics",
    "painting",
    "architecture",
    "mathematics",
    "geology",
)
JOBS = (
    "teacher",
    "engineer",
    "doctor",
    "painter",
    "lawyer",
    "pilot",
    "nurse",
    "chef",
    "banker",
    "journalist",
    "baker",
    "librarian",
)
# (sentence template, facts it states). Several wordings per fact.
BORN = (
    "{name} was born in {born_city} in {year}.",
    "{name} was born in {year} in {born_city}.",
    "In {year}, {name} was born in {born_city}.",
)
STUDIED = (
    "{first} studied {subject} in {study_city}.",
    "Later {first} studied {subject} in {study_city}.",
)
WORKED = (
    "{first} worked as a {job} in {work_city}.",
    "After that {first} worked in {work_city} as a {job}.",
)
# question kind: (question templates, fact it asks for)
QUESTIONS = {
    "birthplace": (("Where was {name} born?",), "born_city"),
    "year": (
        ("When was {name} born?", "In which year was {name} born?"),
        "year",
    ),
    "subject": (("What did {name} study?",), "subject"),
    "job": (("What did {name} work as?", "What was {name}'s job?"), "job"),
    "workplace": (("Where did {name} work?",), "work_city"),
}


def split_names(rng, validation_fraction=0.25):
    """Full names for training and for validation only."""
    names = [f"{f} {last}" for f in FIRST_NAMES for last in LAST_NAMES]
    order = rng.permutation(len(names))
    cut = int(len(names) * validation_fraction)
    held = [names[i] for i in order[:cut]]
    train = [names[i] for i in order[cut:]]
    return train, held


def _pick(rng, options):
    return options[rng.integers(len(options))]


def make_passage(rng, names, max_people):
    """A passage about 1 to `max_people` people, and the answer spans.

    Returns:
        `(context, people)`: each person a dict of their facts, with the
        character start of each fact in the context under `"starts"`.
    """
    count = int(rng.integers(1, max_people + 1))
    chosen, firsts = [], set()
    while len(chosen) < count:
        name = _pick(rng, names)
        first = name.split()[0]
        if first not in firsts:  # one person per first name in a passage
            firsts.add(first)
            chosen.append(name)
    context, people = "", []
    for name in chosen:
        facts = {
            "name": name,
            "first": name.split()[0],
            "born_city": _pick(rng, CITIES),
            "year": str(int(rng.integers(1900, 2000))),
            "subject": _pick(rng, SUBJECTS),
            "study_city": _pick(rng, CITIES),
            "job": _pick(rng, JOBS),
            "work_city": _pick(rng, CITIES),
            "starts": {},
        }
        for templates in (BORN, STUDIED, WORKED):
            template = _pick(rng, templates)
            sentence = template.format(**facts)
            base = len(context) + (1 if context else 0)
            # The character start of each fact this sentence states.
            for key in ("born_city", "year", "subject", "study_city", "job"):
                if "{" + key + "}" in template:
                    prefix = template.split("{" + key + "}")[0]
                    facts["starts"][key] = base + len(prefix.format(**facts))
            if "{work_city}" in template:
                prefix = template.split("{work_city}")[0]
                facts["starts"]["work_city"] = base + len(
                    prefix.format(**facts)
                )
            context = f"{context} {sentence}" if context else sentence
        people.append(facts)
    return context, people


def make_squad(rng, names, passages, questions_per_person, max_people, tag):
    """A SQuAD v1.1 dict of generated passages and questions."""
    paragraphs = []
    for p in range(passages):
        context, people = make_passage(rng, names, max_people)
        qas = []
        for person in people:
            kinds = rng.permutation(list(QUESTIONS))[:questions_per_person]
            for kind in kinds:
                templates, key = QUESTIONS[kind]
                answer = person[key]
                start = person["starts"][key]
                assert context[start : start + len(answer)] == answer
                qas.append(
                    {
                        "id": f"{tag}-{p}-{len(qas)}",
                        "question": _pick(rng, templates).format(
                            name=person["name"]
                        ),
                        "answers": [{"text": answer, "answer_start": start}],
                    }
                )
        paragraphs.append({"context": context, "qas": qas})
    return {
        "version": "1.1",
        "data": [{"title": "generated biographies", "paragraphs": paragraphs}],
    }


def make_data(folder, rng, args):
    """Writes train.json and validation.json; returns unlabelled passages."""
    train_names, held_names = split_names(rng)
    train = make_squad(
        rng,
        train_names,
        args.train_passages,
        args.questions_per_person,
        args.max_people,
        "train",
    )
    validation = make_squad(
        rng,
        held_names,
        args.validation_passages,
        args.questions_per_person,
        args.max_people,
        "val",
    )
    unlabelled = [
        make_passage(rng, train_names, args.max_people)[0]
        for _ in range(args.unlabelled_passages)
    ]
    unlabelled += [p["context"] for p in train["data"][0]["paragraphs"]]
    os.makedirs(folder, exist_ok=True)
    paths = {}
    for split, payload in (("train", train), ("validation", validation)):
        paths[split] = os.path.join(folder, f"{split}.json")
        with open(paths[split], "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=1)
    counts = {
        split: sum(len(p["qas"]) for p in payload["data"][0]["paragraphs"])
        for split, payload in (("train", train), ("validation", validation))
    }
    counts["unlabelled_passages"] = len(unlabelled)
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
        f"({args.preset}, {backbone.num_layers} blocks) with MLM+NSP for "
        f"{args.pretrain_steps} steps on {len(documents)} unlabelled passages "
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


def first_word_baseline(examples):
    """SQuAD scores of always answering the passage's first word."""
    from keras_llm.data.tasks import squad_metrics

    answers = {e.id: e.context.split()[0] for e in examples}
    metrics = squad_metrics(answers, examples)
    return {"exact_match": metrics["exact_match"], "f1": metrics["f1"]}


def print_results(results, examples):
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="question answering: validation (new people)")
    table.add_column("phase")
    table.add_column("exact match", justify="right")
    table.add_column("F1", justify="right")
    for phase, metrics in results["phases"].items():
        table.add_row(
            phase, f"{metrics['exact_match']:.1f}", f"{metrics['f1']:.1f}"
        )
    baseline = results["first_word_baseline"]
    table.add_row(
        "first word of the passage",
        f"{baseline['exact_match']:.1f}",
        f"{baseline['f1']:.1f}",
    )
    console.print(table)
    table = Table(title="a few predicted answers")
    for column in ("question", "answer", "predicted"):
        table.add_column(column)
    for row in results["samples"]:
        table.add_row(row["question"], row["answer"], row["predicted"])
    console.print(table)


# --quick: fewer passages, a one-block BERT, shorter training; flags given
# on the command line still win.
QUICK = dict(
    train_passages=300,
    validation_passages=60,
    unlabelled_passages=300,
    questions_per_person=2,
    num_layers=1,
    dropout=0.0,
    pretrain_steps=150,
    epochs=2,
    unfreeze_top=1,
    unfreeze_epochs=3,
    unfreeze_learning_rate=2e-3,
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
    parser.add_argument("--train-passages", type=int, default=1500)
    parser.add_argument("--validation-passages", type=int, default=200)
    parser.add_argument("--unlabelled-passages", type=int, default=3000)
    parser.add_argument("--questions-per-person", type=int, default=3)
    parser.add_argument("--max-people", type=int, default=3)
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
    parser.add_argument("--sequence-length", type=int, default=64)
    parser.add_argument("--stride", type=int, default=24)
    parser.add_argument("--max-answer-length", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=5e-3)
    parser.add_argument("--unfreeze-top", type=int, default=2)
    parser.add_argument("--unfreeze-epochs", type=int, default=4)
    parser.add_argument("--unfreeze-learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join("runs", "example_qa"))
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

    from keras_llm.data.tasks import read_squad
    from keras_llm.finetuning import finetune

    files, unlabelled, counts = make_data(
        os.path.join(args.out, "data"), rng, args
    )
    print(
        f"{counts['train']} training and {counts['validation']} validation "
        f"questions (validation about new people) in "
        f"{os.path.dirname(files['train'])}"
    )
    pretraining = None
    backbone = args.backbone
    if backbone is None:
        backbone = os.path.join(args.out, "backbone")
        pretraining = pretrain(unlabelled, backbone, args)

    result = finetune(
        backbone=backbone,
        tokenizer=args.tokenizer,
        task="qa",
        train=files["train"],
        validation=files["validation"],
        out=args.out,
        sequence_length=args.sequence_length,
        stride=args.stride,
        max_answer_length=args.max_answer_length,
        batch_size=args.batch_size,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        unfreeze_top=args.unfreeze_top,
        unfreeze_epochs=args.unfreeze_epochs,
        unfreeze_learning_rate=args.unfreeze_learning_rate,
        seed=args.seed,
        jit_compile=not args.quick,
        verbose=args.verbose,
    )
    examples, _ = read_squad(files["validation"])
    predictions = result["predictions"]
    manifest_counts = result["manifest"]["counts"]
    results = {
        "backbone": backbone,
        "pretraining": pretraining,
        "data": {
            **counts,
            "train_windows": manifest_counts["train_windows"],
            "validation_windows": manifest_counts["validation_windows"],
        },
        "phases": {
            phase: {"exact_match": m["exact_match"], "f1": m["f1"]}
            for phase, m in result["metrics"].items()
        },
        "first_word_baseline": first_word_baseline(examples),
        "samples": [
            {
                "question": e.question,
                "answer": e.answer_text,
                "predicted": predictions.get(e.id, ""),
            }
            for e in examples[:8]
        ],
        "seconds": time.time() - started,
    }
    final = result["metrics"][list(result["metrics"])[-1]]
    results["exact_match"] = final["exact_match"]
    results["f1"] = final["f1"]
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print_results(results, examples)
    print(
        f"validation exact match {results['exact_match']:.1f}, F1 "
        f"{results['f1']:.1f} (first word of the passage: F1 "
        f"{results['first_word_baseline']['f1']:.1f}); results in "
        f"{args.out} ({results['seconds']:.0f} s)"
    )
    return results


if __name__ == "__main__":
    main()
