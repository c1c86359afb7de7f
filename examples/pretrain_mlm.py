"""Pretrain a small BERT with masked-LM and next-sentence prediction.

Learns a WordPiece vocabulary with BERT's special tokens, builds MLM+NSP
examples on the fly (`keras_llm.data.mlm_nsp_dataset`: sentence pairs that
are the true next sentence half the time, packed with [CLS]/[SEP] and
segment ids, masked 80/10/10), trains `keras_llm.models.BertPretrainer`
(keras-hub's `MaskedLMHead` tied to the token embedding plus a
`NextSentenceHead`) in one `model.fit`, and writes the backbone
(`backbone.keras`, what `keras-llm finetune --backbone` loads) and the
tokenizer (`tokenizer.json`) into --out.

Documents are the files given with --corpus (one file, one document); a
single file is split into documents at blank lines. Without --corpus the
embedded corpus (CPython's pydoc topics) is used. The last 10% of the
documents validate.

    python examples/pretrain_mlm.py                  # embedded corpus
    python examples/pretrain_mlm.py --corpus a.txt b.txt --steps 2000
    python examples/pretrain_mlm.py --quick          # under a minute on CPU
"""

import argparse
import os
import re

import keras

import keras_llm
from keras_llm import data
from keras_llm.callbacks.throughput_meter import flops_per_token
from keras_llm.optimizers import for_pretraining

METRICS = (
    "loss",
    "mlm_loss",
    "mlm_accuracy",
    "mlm_perplexity",
    "nsp_loss",
    "nsp_accuracy",
)


def load_documents(paths):
    """Documents of --corpus, or the embedded corpus."""
    if not paths:
        return data.default_corpus()
    documents = data.read_corpus(paths)
    if len(documents) == 1:
        documents = [d for d in re.split(r"\n\s*\n", documents[0]) if d.strip()]
    return documents


def print_metrics(history):
    """A table of the last epoch's per-head training and validation
    metrics."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="BERT pretraining, last epoch")
    table.add_column("metric")
    table.add_column("train", justify="right")
    table.add_column("validation", justify="right")
    for name in METRICS:
        train = history.get(name, [float("nan")])[-1]
        val = history.get(f"val_{name}", [float("nan")])[-1]
        table.add_row(name, f"{train:.4f}", f"{val:.4f}")
    Console().print(table)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", nargs="*", default=None)
    parser.add_argument("--preset", default="bert_nano")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--sequence-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--vocabulary-size", type=int, default=4096)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--mlm-weight", type=float, default=1.0)
    parser.add_argument("--nsp-weight", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join("runs", "example_bert"))
    parser.add_argument("--quick", action="store_true", help="tiny, seconds")
    args = parser.parse_args(argv)
    overrides = {}
    if args.quick:
        args.steps, args.sequence_length, args.batch_size = 60, 64, 16
        args.vocabulary_size = 1000
        overrides = dict(num_layers=1, intermediate_dim=128)
    keras.utils.set_random_seed(args.seed)

    documents = load_documents(args.corpus)
    if args.quick and not args.corpus:
        documents = documents[:24]  # a third of the text: seconds to learn
    n_val = max(2, len(documents) // 10)
    train_docs, val_docs = documents[:-n_val], documents[-n_val:]
    tokenizer = data.learn_mlm_tokenizer(train_docs, args.vocabulary_size)
    train = data.mlm_nsp_dataset(
        train_docs,
        tokenizer,
        args.sequence_length,
        args.batch_size,
        seed=args.seed,
        repeat=True,
    )
    val = data.mlm_nsp_dataset(
        val_docs,
        tokenizer,
        args.sequence_length,
        args.batch_size,
        seed=args.seed + 1,
        shuffle=False,
        drop_remainder=False,
    )

    backbone = keras_llm.models.BERT.from_preset(
        args.preset,
        vocabulary_size=tokenizer.vocabulary_size(),
        max_sequence_length=args.sequence_length,
        **overrides,
    )
    pretrainer = keras_llm.models.BertPretrainer(
        backbone, mlm_weight=args.mlm_weight, nsp_weight=args.nsp_weight
    )
    optimizer = for_pretraining(
        total_steps=args.steps,
        learning_rate=args.learning_rate,
        warmup_steps=args.steps // 10,
        schedule="linear",
        weight_decay=0.01,
        beta_2=0.999,
    )
    # XLA pays off over a long run; on CPU it costs a minute of compiling.
    pretrainer.compile(optimizer=optimizer, jit_compile=not args.quick)
    print(
        f"BERT ({args.preset}) with {backbone.count_params():,} parameters, "
        f"{tokenizer.vocabulary_size()} WordPiece tokens, "
        f"{len(train_docs)} training and {len(val_docs)} validation documents"
    )
    tokens = args.batch_size * args.sequence_length
    history = pretrainer.fit(
        train,
        steps_per_epoch=args.steps // 2,
        epochs=2,
        validation_data=val,
        validation_steps=min(10, int(val.cardinality())),
        shuffle=False,  # the dataset shuffles itself
        callbacks=[
            keras_llm.callbacks.ThroughputMeter(
                tokens_per_step=tokens,
                flops_per_token=flops_per_token(backbone, args.sequence_length),
            )
        ],
    )
    print_metrics(history.history)
    os.makedirs(args.out, exist_ok=True)
    backbone.save(os.path.join(args.out, "backbone.keras"))
    data.save_tokenizer(tokenizer, args.out)
    print(f"backbone and tokenizer written to {args.out}")
    return history


if __name__ == "__main__":
    main()
