"""Causal-LM pretraining: corpus to trained GPT, as one library call.

`keras-llm pretrain` is a thin layer over `pretrain()`; both write the same
output folder: `model.keras`, `tokenizer.json`, `loss_curve.png`, `logs/`
(TensorBoard) and `manifest.json` (inputs, options, counts, versions,
results).
"""

import dataclasses
import json
import os
import platform
import time

import keras

from keras_llm.callbacks.loss_curve import LossCurve
from keras_llm.callbacks.sample_generator import SampleGenerator
from keras_llm.callbacks.throughput_meter import ThroughputMeter
from keras_llm.data.corpus import EMBEDDED_CORPUS_NAME
from keras_llm.data.corpus import CorpusError
from keras_llm.data.corpus import default_corpus
from keras_llm.data.corpus import read_corpus
from keras_llm.data.pipelines import clm_dataset
from keras_llm.data.pipelines import num_windows
from keras_llm.data.pipelines import split_tokens
from keras_llm.data.pipelines import tokenize_documents
from keras_llm.data.vocab import TOKENIZER_KINDS
from keras_llm.data.vocab import learn_tokenizer
from keras_llm.data.vocab import save_tokenizer
from keras_llm.errors import UserError
from keras_llm.models.gpt import GPT
from keras_llm.models.presets import get_preset


@dataclasses.dataclass
class PretrainConfig:
    """Options of `pretrain()`; each is also a `keras-llm pretrain` flag.

    Attributes:
        corpus: text files or folders; empty means the embedded corpus.
        out: output folder.
        preset: model size from `keras_llm.models.presets`.
        tokenizer: `"character"` or `"wordpiece"`.
        vocabulary_size: WordPiece vocabulary size.
        sequence_length: tokens per training example.
        batch_size: examples per step.
        steps: optimizer steps.
        eval_interval: steps between validation runs (one Keras epoch each).
        eval_steps: validation batches per run (0: the whole split).
        learning_rate: peak learning rate.
        min_learning_rate: learning rate at the end of the cosine decay.
        warmup_steps: linear warm-up steps.
        weight_decay: AdamW decoupled weight decay (not on biases/norms).
        beta_2: AdamW second-moment decay.
        clipnorm: global gradient-norm clip (0 disables).
        dropout: dropout rate of the model.
        validation_fraction: last fraction of the token stream held out.
        stride: distance between training windows (None: sequence_length).
        seed: seed of weights, shuffling and sampling.
        jit_compile: compile the train step with XLA.
        mixed_precision: `None`, `"mixed_float16"` or `"mixed_bfloat16"`.
        sample_every: steps between printed samples (0: none during training).
        sample_prompt: prompt of the samples.
        sample_length: length of the samples, prompt included.
        model_overrides: GPT arguments that replace the preset's.
        verbose: Keras `fit` verbosity ("auto", 0, 1, 2).
    """

    corpus: list = dataclasses.field(default_factory=list)
    out: str = "runs/pretrain"
    preset: str = "nano"
    tokenizer: str = "character"
    vocabulary_size: int = 4096
    sequence_length: int = 128
    batch_size: int = 32
    steps: int = 1000
    eval_interval: int = 200
    eval_steps: int = 20
    learning_rate: float = 1e-3
    min_learning_rate: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta_2: float = 0.99
    clipnorm: float = 1.0
    dropout: float = 0.0
    validation_fraction: float = 0.1
    stride: int = None
    seed: int = 1337
    jit_compile: bool = True
    mixed_precision: str = None
    sample_every: int = 0
    sample_prompt: str = "\n"
    sample_length: int = 200
    model_overrides: dict = dataclasses.field(default_factory=dict)
    verbose: object = "auto"

    def validate(self):
        """Raises `ValueError` naming the first bad option."""
        for name in (
            "sequence_length",
            "batch_size",
            "steps",
            "eval_interval",
            "vocabulary_size",
            "sample_length",
        ):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or value <= 0
            ):
                raise UserError(
                    f"--{name.replace('_', '-')} must be a positive integer, "
                    f"got {value!r}"
                )
        for name in ("eval_steps", "warmup_steps", "sample_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise UserError(
                    f"--{name.replace('_', '-')} must be a non-negative "
                    f"integer, got {value!r}"
                )
        if self.stride is not None and self.stride <= 0:
            raise UserError(f"--stride must be positive, got {self.stride}")
        if not self.learning_rate > 0:
            raise UserError(
                f"--learning-rate must be positive, got {self.learning_rate}"
            )
        if not 0 <= self.dropout < 1:
            raise UserError(f"--dropout must be in [0, 1), got {self.dropout}")
        for name in ("weight_decay", "clipnorm", "min_learning_rate"):
            if getattr(self, name) < 0:
                raise UserError(
                    f"--{name.replace('_', '-')} must be non-negative, got "
                    f"{getattr(self, name)}"
                )
        if self.min_learning_rate > self.learning_rate:
            raise UserError(
                f"--min-learning-rate ({self.min_learning_rate}) must not "
                f"exceed --learning-rate ({self.learning_rate})"
            )
        if not 0 < self.validation_fraction < 1:
            raise UserError(
                "--validation-fraction must be in (0, 1), got "
                f"{self.validation_fraction}"
            )
        if self.warmup_steps >= self.steps:
            raise UserError(
                f"--warmup-steps ({self.warmup_steps}) must be fewer than "
                f"--steps ({self.steps})"
            )
        if self.mixed_precision not in (
            None,
            "mixed_float16",
            "mixed_bfloat16",
        ):
            raise UserError(
                "--mixed-precision must be mixed_float16 or mixed_bfloat16, "
                f"got {self.mixed_precision!r}"
            )
        if self.tokenizer not in TOKENIZER_KINDS:
            raise UserError(
                f"--tokenizer must be one of {', '.join(TOKENIZER_KINDS)}, "
                f"got {self.tokenizer!r}"
            )
        try:
            get_preset(self.preset)
        except ValueError as e:
            raise UserError(f"--preset: {e}") from None


def versions():
    """Versions of the stack, for manifests."""
    import keras_hub
    import tensorflow as tf

    from keras_llm.version import __version__

    return {
        "keras_llm": __version__,
        "keras": keras.__version__,
        "keras_hub": keras_hub.__version__,
        "tensorflow": tf.__version__,
        "python": platform.python_version(),
        "backend": keras.backend.backend(),
    }


def make_optimizer(config):
    """AdamW with linear warm-up and cosine decay (Keras' `CosineDecay`)."""
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        warmup_target=config.learning_rate,
        warmup_steps=config.warmup_steps,
        decay_steps=config.steps - config.warmup_steps,
        alpha=config.min_learning_rate / config.learning_rate,
    )
    optimizer = keras.optimizers.AdamW(
        learning_rate=schedule,
        weight_decay=config.weight_decay,
        beta_1=0.9,
        beta_2=config.beta_2,
        global_clipnorm=config.clipnorm or None,
    )
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


def compile_for_clm(model, optimizer, jit_compile=True):
    """Compiles a GPT for next-token prediction with loss and perplexity."""
    import keras_hub

    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[
            keras_hub.metrics.Perplexity(from_logits=True, name="perplexity")
        ],
        jit_compile=jit_compile,
    )
    return model


def pretrain(config=None, **options):
    """Trains a GPT on a text corpus and writes the run folder.

    Args:
        config: a `PretrainConfig`, or `None` to build one from `options`.
        **options: `PretrainConfig` fields (for example `steps=200`).

    Returns:
        A dict with `model`, `tokenizer`, `history` (Keras `History.history`),
        `sample` (generated text), `paths` (files written) and `manifest`.

    Raises:
        CorpusError: for a corpus that cannot be read or is too short.
        ValueError: for a bad option.

    Example:

    ```python
    import keras_llm

    result = keras_llm.pretrain(
        steps=20, warmup_steps=5, eval_interval=10, sequence_length=64,
        batch_size=8, out="runs/example", verbose=0,
    )
    print(result["sample"])
    ```
    """
    if config is None:
        config = PretrainConfig(**options)
    elif options:
        config = dataclasses.replace(config, **options)
    config.validate()
    started = time.time()
    keras.utils.set_random_seed(config.seed)
    previous_policy = keras.config.dtype_policy()
    if config.mixed_precision:
        keras.config.set_dtype_policy(config.mixed_precision)
    try:
        return _pretrain(config, started)
    finally:
        keras.config.set_dtype_policy(previous_policy)


def _pretrain(config, started):
    from rich.console import Console
    from rich.table import Table

    console = Console()
    # --- Data ---
    if config.corpus:
        documents = read_corpus(config.corpus)
        corpus_name = [os.fspath(p) for p in config.corpus]
    else:
        documents = default_corpus()
        corpus_name = EMBEDDED_CORPUS_NAME
    tokenizer = learn_tokenizer(
        documents, kind=config.tokenizer, vocabulary_size=config.vocabulary_size
    )
    token_ids = tokenize_documents(tokenizer, documents)
    train_ids, val_ids = split_tokens(token_ids, config.validation_fraction)
    t = config.sequence_length
    for split, ids in (("training", train_ids), ("validation", val_ids)):
        if num_windows(len(ids), t) < 1:
            raise CorpusError(
                f"the corpus gives {len(ids)} {split} tokens, fewer than one "
                f"block of sequence_length + 1 = {t + 1}; use more text or a "
                "shorter --sequence-length"
            )
    train_ds = clm_dataset(
        train_ids,
        t,
        config.batch_size,
        shuffle=True,
        seed=config.seed,
        stride=config.stride,
        repeat=True,
    )
    val_batches = num_windows(len(val_ids), t) // config.batch_size
    val_batch_size = config.batch_size if val_batches else 1
    val_ds = clm_dataset(
        val_ids, t, val_batch_size, shuffle=False, repeat=False
    )
    validation_steps = (
        min(config.eval_steps, max(val_batches, 1))
        if config.eval_steps
        else None
    )

    # --- Model ---
    model_kwargs = get_preset(config.preset)
    model_kwargs.update(
        vocabulary_size=tokenizer.vocabulary_size(),
        max_sequence_length=max(
            model_kwargs.get("max_sequence_length", t), t, config.sample_length
        ),
        dropout=config.dropout,
    )
    model_kwargs.update(config.model_overrides)
    model = GPT(**model_kwargs)
    compile_for_clm(model, make_optimizer(config), config.jit_compile)

    # --- Outputs ---
    out = config.out
    os.makedirs(out, exist_ok=True)
    paths = {
        "model": os.path.join(out, "model.keras"),
        "tokenizer": os.path.join(out, "tokenizer.json"),
        "loss_curve": os.path.join(out, "loss_curve.png"),
        "tensorboard": os.path.join(out, "logs"),
        "manifest": os.path.join(out, "manifest.json"),
    }
    save_tokenizer(tokenizer, paths["tokenizer"])
    console.print(
        f"[bold]keras-llm pretrain[/bold]: {model.num_parameters():,}-parameter "
        f"GPT ({config.preset}), {tokenizer.vocabulary_size()} "
        f"{config.tokenizer} tokens, {len(train_ids):,} training and "
        f"{len(val_ids):,} validation tokens from "
        f"{corpus_name if isinstance(corpus_name, str) else len(corpus_name)}"
        f"{'' if isinstance(corpus_name, str) else ' files'}"
    )

    meter = ThroughputMeter(
        tokens_per_step=config.batch_size * t, sequence_length=t
    )
    callbacks = [
        meter,
        LossCurve(
            paths["loss_curve"], title=f"GPT {config.preset} pretraining"
        ),
        keras.callbacks.TensorBoard(paths["tensorboard"], update_freq="epoch"),
    ]
    if config.sample_every:
        callbacks.append(
            SampleGenerator(
                tokenizer,
                prompt=config.sample_prompt,
                every_n_steps=config.sample_every,
                max_length=min(config.sample_length, model.max_sequence_length),
                seed=config.seed,
                print_fn=lambda text: console.print(
                    text, markup=False, highlight=False
                ),
            )
        )
    epochs = -(-config.steps // config.eval_interval)
    history = model.fit(
        train_ds,
        epochs=epochs,
        steps_per_epoch=config.eval_interval,
        validation_data=val_ds,
        validation_steps=validation_steps,
        callbacks=callbacks,
        shuffle=False,  # the dataset shuffles itself
        verbose=config.verbose,
    )
    model.save(paths["model"])

    sample = model.generate(
        config.sample_prompt,
        max_length=min(config.sample_length, model.max_sequence_length),
        sampler="top_k",
        tokenizer=tokenizer,
        seed=config.seed,
    )
    h = history.history
    results = {
        "steps": epochs * config.eval_interval,
        "final_loss": float(h["loss"][-1]),
        "final_val_loss": float(h["val_loss"][-1]) if "val_loss" in h else None,
        "final_val_perplexity": float(h["val_perplexity"][-1])
        if "val_perplexity" in h
        else None,
        "tokens_per_second": meter.tokens_per_second,
        "seconds": time.time() - started,
    }
    manifest = {
        "stage": "pretrain",
        "inputs": {"corpus": corpus_name, "documents": len(documents)},
        "counts": {
            "tokens": int(len(token_ids)),
            "train_tokens": int(len(train_ids)),
            "validation_tokens": int(len(val_ids)),
            "vocabulary_size": int(tokenizer.vocabulary_size()),
            "parameters": int(model.count_params()),
        },
        "options": dataclasses.asdict(config),
        "model": model.get_config(),
        "seed": config.seed,
        "versions": versions(),
        "results": results,
        "outputs": {k: os.path.basename(v) for k, v in paths.items()},
    }
    with open(paths["manifest"], "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, default=str)

    table = Table(title="pretraining finished")
    table.add_column("what")
    table.add_column("value")
    table.add_row("steps", str(results["steps"]))
    table.add_row("train loss", f"{results['final_loss']:.4f}")
    if results["final_val_loss"] is not None:
        table.add_row("validation loss", f"{results['final_val_loss']:.4f}")
        table.add_row(
            "validation perplexity", f"{results['final_val_perplexity']:.2f}"
        )
    if meter.tokens_per_second:
        table.add_row("tokens / second", f"{meter.tokens_per_second:,.0f}")
    table.add_row("time", f"{results['seconds']:.0f} s")
    for key in ("model", "tokenizer", "loss_curve", "tensorboard", "manifest"):
        table.add_row(key.replace("_", " "), paths[key])
    console.print(table)
    console.print("[bold]sample:[/bold]")
    console.print(sample, markup=False, highlight=False)
    return {
        "model": model,
        "tokenizer": tokenizer,
        "history": h,
        "sample": sample,
        "paths": paths,
        "manifest": manifest,
    }
