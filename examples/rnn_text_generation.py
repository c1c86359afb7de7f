"""Character-level text generation with the tutorial's RNN: Embedding, LSTM,
Dense.

The model reads a window of characters and predicts, at every position, the
next character (sequence-to-sequence next-token training: the LSTM returns
its whole sequence and the softmax layer is applied at every step). It trains
on the embedded English corpus (`keras_llm.data.default_corpus()`) or on
`--corpus` files, reports the validation loss and perplexity, then generates
text from a prompt by sampling with one or more temperatures, stepping the
LSTM one character at a time with its state carried over.

What was wrong in the tutorial's printed snippet, and what changed here:

* it never added the LSTM layer the text describes (Embedding went straight
  into Dense); here it is `LSTM(units, return_sequences=True)`;
* `Embedding(..., input_length=max_length)`: Keras 3 removed
  `input_length`; the sequence length comes from `keras.Input` instead;
* `loss="categorical_crossentropy"` expects one-hot targets, but next-token
  targets are integer ids, so the loss is `sparse_categorical_crossentropy`;
* `vocab_size` and `max_length` were never defined, there was no data, no
  training and no generation; all of that is here.

Outputs in `--out`: `model.keras` (the trained model), `tokenizer.json` (the
character vocabulary, `keras_llm.data.load_tokenizer` reads it back) and
`samples.txt` (the generated text for each temperature).

    python examples/rnn_text_generation.py                   # embedded corpus
    python examples/rnn_text_generation.py --temperature 0.5 0.8 1.2
    python examples/rnn_text_generation.py --corpus my.txt --epochs 10
    python examples/rnn_text_generation.py --quick           # seconds
"""

import argparse
import math
import os
import time

import keras
import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

from keras_llm import data


def build_model(vocabulary_size, embedding_dim=256, units=256):
    """The tutorial's model: ids `(batch, time)` -> next-character
    probabilities `(batch, time, vocabulary_size)`."""
    return keras.Sequential(
        [
            keras.Input(shape=(None,), dtype="int32"),
            keras.layers.Embedding(vocabulary_size, embedding_dim),
            keras.layers.LSTM(units, return_sequences=True),
            keras.layers.Dense(vocabulary_size, activation="softmax"),
        ],
        name="char_rnn",
    )


def build_step_model(model):
    """A generation twin of `model` that carries the LSTM state explicitly.

    Inputs: ids `(batch, time)` and the state `h`, `c` `(batch, units)`.
    Outputs: the next-character probabilities after the last input id, and
    the new state. The weights are copied from `model`, so feeding a text in
    pieces gives the same probabilities as `model` on the whole text.
    """
    embedding, lstm, dense = model.layers
    units = lstm.units
    ids = keras.Input(shape=(None,), dtype="int32")
    h_in = keras.Input(shape=(units,))
    c_in = keras.Input(shape=(units,))
    layers = [
        keras.layers.Embedding(embedding.input_dim, embedding.output_dim),
        keras.layers.LSTM(units, return_state=True),
        keras.layers.Dense(dense.units, activation="softmax"),
    ]
    last, h, c = layers[1](layers[0](ids), initial_state=[h_in, c_in])
    probs = layers[2](last)
    step = keras.Model([ids, h_in, c_in], [probs, h, c], name="char_rnn_step")
    for source, target in zip(model.layers, layers):
        target.set_weights(source.get_weights())
    return step


def sample_next(probs, temperature, rng):
    """One id per row of `probs`, drawn from `probs ** (1 / temperature)`
    (renormalized); the out-of-vocabulary id 0 is never drawn."""
    probs = np.asarray(probs, dtype="float64").copy()
    probs[:, 0] = 0.0
    logits = np.log(np.maximum(probs, 1e-30)) / np.asarray(temperature)[:, None]
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits) * (probs > 0)
    weights /= weights.sum(axis=1, keepdims=True)
    return np.array([rng.choice(len(row), p=row) for row in weights])


def generate(step_model, tokenizer, prompt, temperatures, length, seed=0):
    """Continues `prompt` by `length` characters once per temperature.

    All temperatures run together, one row of the batch each: the prompt is
    read in one call, then each sampled character is fed back with the LSTM
    state from the previous call.

    Returns:
        A list of strings (prompt + continuation), one per temperature.
    """
    rng = np.random.default_rng(seed)
    vocabulary = tokenizer.get_vocabulary()
    prompt_ids = keras.ops.convert_to_numpy(tokenizer.tokenize(prompt))
    batch = len(temperatures)
    units = step_model.inputs[1].shape[-1]
    ids = np.tile(prompt_ids.astype("int32")[None, :], (batch, 1))
    h = np.zeros((batch, units), "float32")
    c = np.zeros((batch, units), "float32")
    out = [[] for _ in range(batch)]
    for _ in range(length):
        probs, h, c = step_model.predict_on_batch([ids, h, c])
        ids = sample_next(probs, temperatures, rng)
        for row, i in enumerate(ids):
            out[row].append(vocabulary[i])
        ids = ids.astype("int32")[:, None]
    return [prompt + "".join(chars) for chars in out]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--corpus",
        nargs="*",
        default=None,
        help="text files or folders (default: embedded)",
    )
    parser.add_argument("--sequence-length", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--embedding-dim", type=int, default=256)
    parser.add_argument("--units", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument(
        "--steps-per-epoch",
        type=int,
        default=None,
        help="default: one pass over the training windows",
    )
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--prompt", default="The ")
    parser.add_argument(
        "--length", type=int, default=300, help="characters to generate"
    )
    parser.add_argument(
        "--temperature",
        type=float,
        nargs="+",
        default=[0.8],
        help="one or more sampling temperatures",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join("runs", "rnn_text"))
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--quick", action="store_true", help="tiny, seconds")
    args = parser.parse_args(argv)
    if any(t <= 0 for t in args.temperature):
        parser.error("--temperature values must be positive")
    if args.quick:
        args.sequence_length, args.batch_size = 32, 32
        args.embedding_dim, args.units = 32, 64
        args.epochs, args.steps_per_epoch, args.length = 1, 120, 40
    keras.utils.set_random_seed(args.seed)
    console = Console()
    start = time.perf_counter()

    documents = (
        data.read_corpus(args.corpus) if args.corpus else data.default_corpus()
    )
    text = "\n\n".join(documents)
    if args.quick:
        text = text[:60_000]
    tokenizer = data.CharacterTokenizer.from_texts([text])
    vocabulary_size = tokenizer.vocabulary_size()
    ids = keras.ops.convert_to_numpy(tokenizer.tokenize(text))
    train_ids, val_ids = data.split_tokens(ids, 0.1)
    t, b = args.sequence_length, args.batch_size
    # Windows of t + 1 characters: inputs are the first t, targets the last t
    # (each input character's next character).
    train = data.clm_dataset(train_ids, t, b, seed=args.seed, repeat=True)
    val = data.clm_dataset(val_ids, t, b, shuffle=False)
    steps = args.steps_per_epoch or max(1, (len(train_ids) - 1) // (t * b))
    console.print(
        f"{len(text):,} characters ({len(train_ids):,} train, "
        f"{len(val_ids):,} validation), vocabulary of {vocabulary_size} "
        f"characters; windows of {t}, batch {b}, {args.epochs} epoch(s) of "
        f"{steps} steps"
    )

    model = build_model(vocabulary_size, args.embedding_dim, args.units)
    model.compile(
        optimizer=keras.optimizers.Adam(
            learning_rate=args.learning_rate, clipnorm=1.0
        ),
        loss="sparse_categorical_crossentropy",
    )
    model.summary(print_fn=lambda line, **_: console.print(Text(line)))
    initial_val_loss = float(model.evaluate(val, verbose=0))
    console.print(
        f"before training: validation loss {initial_val_loss:.3f} "
        f"(uniform guess: ln {vocabulary_size} = "
        f"{math.log(vocabulary_size):.3f})"
    )
    history = model.fit(
        train,
        epochs=args.epochs,
        steps_per_epoch=steps,
        validation_data=val,
        shuffle=False,  # the dataset shuffles itself
        verbose=0 if args.quiet else 1,
    )
    train_seconds = time.perf_counter() - start
    val_loss = float(model.evaluate(val, verbose=0))
    perplexity = math.exp(val_loss)
    console.print(
        f"validation loss {val_loss:.3f}, perplexity {perplexity:.2f} "
        f"({val_loss / math.log(2):.2f} bits per character)"
    )

    step_model = build_step_model(model)
    samples = generate(
        step_model,
        tokenizer,
        args.prompt,
        args.temperature,
        args.length,
        seed=args.seed,
    )
    table = Table(title=f"Generated from {args.prompt!r}", expand=True)
    for temperature in args.temperature:
        table.add_column(
            f"temperature {temperature:g}", ratio=1, overflow="fold"
        )
    table.add_row(*(Text(s) for s in samples))
    console.print(table)

    os.makedirs(args.out, exist_ok=True)
    model_path = os.path.join(args.out, "model.keras")
    model.save(model_path)
    tokenizer_path = data.save_tokenizer(
        tokenizer, os.path.join(args.out, "tokenizer.json")
    )
    samples_path = os.path.join(args.out, "samples.txt")
    with open(samples_path, "w", encoding="utf-8") as f:
        for temperature, sample in zip(args.temperature, samples):
            f.write(f"=== temperature {temperature:g} ===\n{sample}\n\n")
    console.print(
        f"trained in {train_seconds:.0f} s; model, tokenizer and samples "
        f"written to {args.out}"
    )
    return {
        "vocabulary_size": vocabulary_size,
        "initial_val_loss": initial_val_loss,
        "val_loss": val_loss,
        "perplexity": perplexity,
        "history": history.history,
        "samples": dict(zip(args.temperature, samples)),
        "model_path": model_path,
        "tokenizer_path": tokenizer_path,
        "samples_path": samples_path,
        "train_seconds": train_seconds,
    }


if __name__ == "__main__":
    main()
