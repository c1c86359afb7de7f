"""Train a character-level GPT in plain Keras code, then generate from it.

The same job as `keras-llm pretrain`, written out with the library's pieces so
each step can be changed: read a corpus, learn a character vocabulary, build
`tf.data` windows, compile a GPT with AdamW and a warm-up cosine schedule,
`fit` with Keras' progress bar, and sample with a key/value cache.

    python examples/pretrain_char_gpt.py                 # embedded corpus
    python examples/pretrain_char_gpt.py --corpus my.txt --steps 2000
    python examples/pretrain_char_gpt.py --quick         # seconds
"""

import argparse
import os

import keras

import keras_llm
from keras_llm import data
from keras_llm.pretraining import PretrainConfig
from keras_llm.pretraining import compile_for_clm
from keras_llm.pretraining import make_optimizer


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", nargs="*", default=None)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--sequence-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default=os.path.join("runs", "example_gpt"))
    parser.add_argument("--quick", action="store_true", help="tiny, seconds")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.sequence_length, args.batch_size = 20, 32, 8
    keras.utils.set_random_seed(0)

    documents = (
        data.read_corpus(args.corpus)
        if args.corpus
        else (data.default_corpus())
    )
    tokenizer = data.learn_tokenizer(documents, kind="character")
    ids = data.tokenize_documents(tokenizer, documents)
    train_ids, val_ids = data.split_tokens(ids, 0.1)
    train = data.clm_dataset(
        train_ids, args.sequence_length, args.batch_size, seed=0, repeat=True
    )
    val = data.clm_dataset(
        val_ids, args.sequence_length, args.batch_size, shuffle=False
    )

    size = dict(num_layers=1, hidden_dim=32, num_heads=2) if args.quick else {}
    model = keras_llm.models.GPT.from_preset(
        "nano", vocabulary_size=tokenizer.vocabulary_size(), **size
    )
    schedule = PretrainConfig(steps=args.steps, warmup_steps=args.steps // 10)
    compile_for_clm(model, make_optimizer(schedule))
    print(f"GPT with {model.count_params():,} parameters")
    model.fit(
        train,
        steps_per_epoch=args.steps // 2,
        epochs=2,
        validation_data=val,
        validation_steps=10,
        shuffle=False,  # the dataset shuffles itself
        callbacks=[
            keras_llm.callbacks.ThroughputMeter(
                tokens_per_step=args.batch_size * args.sequence_length,
                sequence_length=args.sequence_length,
            )
        ],
    )
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "model.keras")
    model.save(path)
    data.save_tokenizer(tokenizer, args.out)
    print(model.generate("The ", max_length=120, tokenizer=tokenizer, seed=0))
    print(f"model and tokenizer written to {args.out}")
    return model


if __name__ == "__main__":
    main()
