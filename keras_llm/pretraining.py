"""Causal-LM pretraining: corpus to trained GPT, as one library call.

`keras-llm pretrain` is a thin layer over `pretrain()`; both write the same
output folder: `model.keras`, `tokenizer.json`, `loss_curve.png`, `logs/`
(TensorBoard) and `manifest.json` (inputs, options, counts, versions,
results, resumes). With `checkpoint_every` (`--checkpoint-every N`) it also
keeps step-exact checkpoints in `checkpoints/`
(`keras_llm.callbacks.StepCheckpoint`); run again with the same `--out`
and options, an interrupted run resumes from the newest intact one.
"""

import dataclasses
import json
import os
import platform
import time

import keras

from keras_llm.callbacks.checkpoint_manager import is_chief
from keras_llm.callbacks.loss_curve import LossCurve
from keras_llm.callbacks.sample_generator import SampleGenerator
from keras_llm.callbacks.step_checkpoint import StepCheckpoint
from keras_llm.callbacks.terminate_on_nan import TerminateOnNaN
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
from keras_llm.distribute import get_strategy
from keras_llm.errors import UserError
from keras_llm.models.gpt import GPT
from keras_llm.models.presets import get_preset
from keras_llm.optimizers.pretraining import SCHEDULES
from keras_llm.optimizers.pretraining import for_pretraining

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


@dataclasses.dataclass
class PretrainConfig:
    """Options of `pretrain()`; each is also a `keras-llm pretrain` flag.

    Attributes:
        corpus: text files or folders; empty means the embedded corpus.
        data: a folder written by `keras-llm data prepare` (token shards
            and tokenizer.json); replaces corpus, tokenizer and
            vocabulary_size, and its train/validation split is used.
        out: output folder.
        preset: model size from `keras_llm.models.presets`.
        tokenizer: `"character"` or `"wordpiece"`.
        vocabulary_size: WordPiece vocabulary size.
        sequence_length: tokens per training example.
        batch_size: examples per micro-batch (one fit step); the update
            batch is batch_size * accumulate.
        steps: optimizer updates.
        accumulate: micro-batches accumulated per update (gradient
            accumulation).
        eval_interval: updates between validation runs (one Keras epoch each).
        eval_steps: validation batches per run (0: the whole split).
        learning_rate: peak learning rate.
        min_learning_rate: learning rate at the end of the cosine decay.
        warmup_steps: linear warm-up updates.
        schedule: learning-rate decay after warm-up: cosine, linear or constant.
        weight_decay: AdamW decoupled weight decay (not on biases/norms).
        beta_2: AdamW second-moment decay.
        clipnorm: global gradient-norm clip (0 disables).
        dropout: dropout rate of the model.
        validation_fraction: last fraction of the token stream held out.
        stride: distance between training windows (None: sequence_length).
        seed: seed of weights, shuffling and sampling.
        jit_compile: compile the train step with XLA (one device only).
        precision: float32, mixed_float16 or mixed_bfloat16 (Keras dtype policy).
        remat: gradient checkpointing in every block.
        strategy: auto, default, mirrored or cpu:N (keras_llm.distribute).
        sample_every: steps between printed samples (0: none during training).
        sample_prompt: prompt of the samples.
        sample_length: length of the samples, prompt included.
        model_overrides: GPT arguments that replace the preset's.
        verbose: Keras `fit` verbosity ("auto", 0, 1, 2).
        checkpoint_every: updates between step-exact checkpoints in
            OUT/checkpoints (0: none); a run whose --out holds checkpoints
            resumes from the newest intact one.
        keep_checkpoints: checkpoints kept in OUT/checkpoints.
        checkpoint_dir: folder of the checkpoints instead of
            OUT/checkpoints. Under `--strategy multi_worker` give every
            worker the same folder, one all of them see (each worker has
            its own --out; only the chief writes checkpoints, and all
            workers must resume from the same one).
    """

    corpus: list = dataclasses.field(default_factory=list)
    data: str = None
    out: str = "runs/pretrain"
    preset: str = "nano"
    tokenizer: str = "character"
    vocabulary_size: int = 4096
    sequence_length: int = 128
    batch_size: int = 32
    steps: int = 1000
    accumulate: int = 1
    eval_interval: int = 200
    eval_steps: int = 20
    learning_rate: float = 1e-3
    min_learning_rate: float = 1e-4
    warmup_steps: int = 100
    schedule: str = "cosine"
    weight_decay: float = 0.1
    beta_2: float = 0.99
    clipnorm: float = 1.0
    dropout: float = 0.0
    validation_fraction: float = 0.1
    stride: int = None
    seed: int = 1337
    jit_compile: bool = True
    precision: str = "float32"
    remat: bool = False
    strategy: str = "auto"
    sample_every: int = 0
    sample_prompt: str = "\n"
    sample_length: int = 200
    model_overrides: dict = dataclasses.field(default_factory=dict)
    verbose: object = "auto"
    checkpoint_every: int = 0
    keep_checkpoints: int = 3
    checkpoint_dir: str = None

    def validate(self):
        """Raises `ValueError` naming the first bad option."""
        for name in (
            "sequence_length",
            "batch_size",
            "steps",
            "accumulate",
            "eval_interval",
            "vocabulary_size",
            "sample_length",
            "keep_checkpoints",
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
        for name in (
            "eval_steps",
            "warmup_steps",
            "sample_every",
            "checkpoint_every",
        ):
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
        if self.precision not in PRECISIONS:
            raise UserError(
                f"--precision must be one of {', '.join(PRECISIONS)}, "
                f"got {self.precision!r}"
            )
        if self.schedule not in SCHEDULES:
            raise UserError(
                f"--schedule must be one of {', '.join(SCHEDULES)}, "
                f"got {self.schedule!r}"
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


def device_name():
    """The GPU a run uses (name, and count if several), or the CPU model and
    core count: the `device` line of benchmark results and manifests."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        name = details.get("device_name", gpus[0].name)
        return f"GPU: {name}" + (f" (x{len(gpus)})" if len(gpus) > 1 else "")
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"CPU: {cpu} ({os.cpu_count()} cores)"


def make_optimizer(config):
    """`keras_llm.optimizers.for_pretraining` with the config's options:
    AdamW (no decay on biases, norms, embeddings), global-norm clipping,
    warm-up then decay over `steps` updates, and accumulation."""
    return for_pretraining(
        total_steps=config.steps,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_steps,
        schedule=config.schedule,
        min_learning_rate=config.min_learning_rate,
        weight_decay=config.weight_decay,
        beta_1=0.9,
        beta_2=config.beta_2,
        epsilon=1e-7,
        clipnorm=config.clipnorm or None,
        accumulation_steps=config.accumulate,
    )


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
    # Before any TensorFlow operation: "cpu:N" creates logical devices.
    strategy = get_strategy(config.strategy)
    keras.utils.set_random_seed(config.seed)
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(config.precision)
    try:
        return _pretrain(config, strategy, started)
    finally:
        keras.config.set_dtype_policy(previous_policy)


def prepare_clm_data(config):
    """Reads the corpus, learns the tokenizer and splits the token ids.

    Args:
        config: an object with `corpus`, `tokenizer`, `vocabulary_size`,
            `validation_fraction` and `sequence_length` (a `PretrainConfig`).

    Returns:
        A dict with `documents`, `corpus_name` (for manifests), `tokenizer`,
        `token_ids`, `train_ids` and `val_ids`.

    Raises:
        CorpusError: for an unreadable corpus or one shorter than a window
            of `sequence_length + 1` tokens in either split.
    """
    if getattr(config, "data", None):
        return _prepared_clm_data(config)
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
    _check_windows(train_ids, val_ids, config.sequence_length)
    return {
        "documents": len(documents),
        "corpus_name": corpus_name,
        "tokenizer": tokenizer,
        "token_ids": token_ids,
        "train_ids": train_ids,
        "val_ids": val_ids,
    }


def sample_prompt(tokenizer, prompt, train_ids):
    """`prompt`, or the first training token's text when `prompt` gives no
    token (`"\\n"` with a WordPiece or SentencePiece vocabulary)."""
    ids = keras.ops.convert_to_numpy(tokenizer.tokenize(prompt))
    if len(ids):
        return prompt
    text = tokenizer.detokenize(train_ids[:1])
    if not isinstance(text, str):
        text = keras.ops.convert_to_numpy(text).item()
        text = text.decode("utf-8") if isinstance(text, bytes) else text
    return text


def _check_windows(train_ids, val_ids, sequence_length):
    for split, ids in (("training", train_ids), ("validation", val_ids)):
        if num_windows(len(ids), sequence_length) < 1:
            raise CorpusError(
                f"the corpus gives {len(ids)} {split} tokens, fewer than one "
                f"block of sequence_length + 1 = {sequence_length + 1}; use "
                "more text or a shorter --sequence-length"
            )


def _prepared_clm_data(config):
    """`prepare_clm_data` for a `keras-llm data prepare` output folder."""
    import numpy as np

    from keras_llm.data.shards import read_shards
    from keras_llm.data.vocab import load_tokenizer

    folder = os.fspath(config.data)
    manifest_path = os.path.join(folder, "manifest.json")
    if not os.path.isfile(manifest_path):
        raise CorpusError(
            f"--data {folder} has no manifest.json: pass the --out folder of "
            "a finished `keras-llm data prepare`"
        )
    with open(manifest_path, encoding="utf-8") as f:
        prepared = json.load(f)
    tokenizer = load_tokenizer(folder)
    try:
        train_ids = read_shards(folder, "train").astype("int32")
        val_ids = read_shards(folder, "validation").astype("int32")
    except (OSError, ValueError) as e:
        raise CorpusError(
            f"--data {folder}: cannot read the shards ({e})"
        ) from e
    _check_windows(train_ids, val_ids, config.sequence_length)
    shards = prepared.get("shards", {})
    documents = sum(int(split.get("documents", 0)) for split in shards.values())
    return {
        "documents": documents,
        "corpus_name": folder,
        "tokenizer": tokenizer,
        "token_ids": np.concatenate([train_ids, val_ids]),
        "train_ids": train_ids,
        "val_ids": val_ids,
    }


def data_manifest(data):
    """The `inputs` and `counts` of a manifest for `prepare_clm_data`'s dict."""
    return {
        "inputs": {
            "corpus": data["corpus_name"],
            "documents": data["documents"],
        },
        "counts": {
            "tokens": int(len(data["token_ids"])),
            "train_tokens": int(len(data["train_ids"])),
            "validation_tokens": int(len(data["val_ids"])),
            "vocabulary_size": int(data["tokenizer"].vocabulary_size()),
        },
    }


# Options a resumed run must share with the run that saved the checkpoints:
# they fix the model, the data stream and the micro-step bookkeeping.
_RESUME_OPTIONS = (
    "data",
    "corpus",
    "preset",
    "tokenizer",
    "vocabulary_size",
    "sequence_length",
    "batch_size",
    "accumulate",
    "eval_interval",
    "stride",
    "seed",
    "dropout",
    "validation_fraction",
    "model_overrides",
)


def _resume_or_start(config, paths, train_ds, console):
    """The `StepCheckpoint` of a run (or `None`) and its training data,
    advanced past the batches of the checkpoint it resumes from."""
    folder = paths["checkpoints"]
    options_path = os.path.join(folder, "options.json")
    options = {
        k: v
        for k, v in dataclasses.asdict(config).items()
        if k in _RESUME_OPTIONS
    }
    options = json.loads(json.dumps(options, default=str))
    checkpoint = StepCheckpoint(
        folder,
        # A fit step is one micro-batch; with checkpoints off, a run that
        # resumed still saves once at its end.
        every_n_steps=(config.checkpoint_every or config.steps)
        * config.accumulate,
        keep=config.keep_checkpoints,
        verbose=0,
    )
    start = checkpoint.initial_step()
    if not start and not config.checkpoint_every:
        return None, train_ds
    if start and os.path.isfile(options_path):
        with open(options_path, encoding="utf-8") as f:
            saved = json.load(f)
        for key, value in options.items():
            if key in saved and saved[key] != value:
                raise UserError(
                    f"{folder} holds checkpoints of a run with "
                    f"{key}={saved[key]!r}, not {value!r}: resume with the "
                    "same options, or use another --out (--checkpoint-dir)"
                )
    if is_chief():  # the workers of one run share the folder
        # Written then renamed: another worker may be reading it.
        os.makedirs(folder, exist_ok=True)
        partial = f"{options_path}.{os.getpid()}.tmp"
        with open(partial, "w", encoding="utf-8") as f:
            json.dump(options, f, indent=2)
        os.replace(partial, options_path)
    if start:
        update = start // config.accumulate
        console.print(
            f"resuming from {checkpoint.resume_path}: update {update} of "
            f"{config.steps} (micro-batch {start})",
            markup=False,
        )
        train_ds = train_ds.skip(start)
    return checkpoint, train_ds


def _pretrain(config, strategy, started):
    from rich.console import Console
    from rich.table import Table

    console = Console()
    # --- Data ---
    data = prepare_clm_data(config)
    corpus_name, tokenizer = data["corpus_name"], data["tokenizer"]
    train_ids, val_ids = data["train_ids"], data["val_ids"]
    t = config.sequence_length
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
    model_kwargs["remat"] = config.remat or model_kwargs.get("remat", False)
    model_kwargs.update(config.model_overrides)
    replicas = strategy.num_replicas_in_sync
    jit_compile = config.jit_compile
    if jit_compile and replicas > 1:
        # XLA compiles for one device; Keras' fit under MirroredStrategy
        # with jit_compile=True fails reading the other replicas' variables.
        console.print(
            f"XLA off: jit_compile needs one device, strategy "
            f"{config.strategy!r} has {replicas} replicas"
        )
        jit_compile = False
    with strategy.scope():
        model = GPT(**model_kwargs)
        compile_for_clm(model, make_optimizer(config), jit_compile)

    # --- Outputs ---
    out = config.out
    os.makedirs(out, exist_ok=True)
    paths = {
        "model": os.path.join(out, "model.keras"),
        "tokenizer": os.path.join(out, "tokenizer.json"),
        "loss_curve": os.path.join(out, "loss_curve.png"),
        "tensorboard": os.path.join(out, "logs"),
        "manifest": os.path.join(out, "manifest.json"),
        "checkpoints": config.checkpoint_dir
        or os.path.join(out, "checkpoints"),
    }
    checkpoint, train_ds = _resume_or_start(config, paths, train_ds, console)
    save_tokenizer(tokenizer, paths["tokenizer"])
    console.print(
        f"[bold]keras-llm pretrain[/bold]: {model.num_parameters():,}-parameter "
        f"GPT ({config.preset}), {tokenizer.vocabulary_size()} "
        f"{config.tokenizer} tokens, {len(train_ids):,} training and "
        f"{len(val_ids):,} validation tokens from "
        f"{corpus_name if isinstance(corpus_name, str) else len(corpus_name)}"
        f"{'' if isinstance(corpus_name, str) else ' files'}"
    )
    if config.accumulate > 1 or replicas > 1 or config.remat:
        console.print(
            f"update batch {config.batch_size * config.accumulate} "
            f"({config.accumulate} micro-batches of {config.batch_size}), "
            f"{replicas} replica(s) ({config.strategy}), {config.precision}"
            f"{', remat' if config.remat else ''}",
            markup=False,
        )

    meter = ThroughputMeter(
        tokens_per_step=config.batch_size * t, sequence_length=t
    )
    callbacks = [
        *([checkpoint] if checkpoint else []),
        TerminateOnNaN(
            checkpoint,
            print_fn=lambda text: console.print(text, markup=False),
        ),
        meter,
        LossCurve(
            paths["loss_curve"], title=f"GPT {config.preset} pretraining"
        ),
        keras.callbacks.TensorBoard(paths["tensorboard"], update_freq="epoch"),
    ]
    prompt = sample_prompt(tokenizer, config.sample_prompt, data["train_ids"])
    if config.sample_every:
        callbacks.append(
            SampleGenerator(
                tokenizer,
                prompt=prompt,
                every_n_steps=config.sample_every * config.accumulate,
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
        # One fit step is one micro-batch; an update every `accumulate`.
        steps_per_epoch=config.eval_interval * config.accumulate,
        validation_data=val_ds,
        validation_steps=validation_steps,
        callbacks=callbacks,
        shuffle=False,  # the dataset shuffles itself
        verbose=config.verbose,
    )
    model.save(paths["model"])

    sample = model.generate(
        prompt,
        max_length=min(config.sample_length, model.max_sequence_length),
        sampler="top_k",
        tokenizer=tokenizer,
        seed=config.seed,
    )
    h = history.history
    if not h and checkpoint is not None and checkpoint.restored:
        # Resumed from the final checkpoint: nothing left to train.
        h = {k: [v] for k, v in checkpoint.restored.get("logs", {}).items()}
    results = {
        "steps": int(keras.ops.convert_to_numpy(model.optimizer.iterations)),
        "micro_batches": epochs * config.eval_interval * config.accumulate,
        "replicas": replicas,
        "final_loss": float(h["loss"][-1]) if "loss" in h else None,
        "final_val_loss": float(h["val_loss"][-1]) if "val_loss" in h else None,
        "final_val_perplexity": float(h["val_perplexity"][-1])
        if "val_perplexity" in h
        else None,
        "tokens_per_second": meter.tokens_per_second,
        "seconds": time.time() - started,
    }
    manifest = {"stage": "pretrain", **data_manifest(data)}
    manifest["counts"]["parameters"] = int(model.count_params())
    manifest |= {
        "options": dataclasses.asdict(config),
        "model": model.get_config(),
        "seed": config.seed,
        "versions": versions(),
        "results": results,
        "outputs": {k: os.path.basename(v) for k, v in paths.items()},
        "resumes": [
            {
                "checkpoint": os.path.basename(r["checkpoint"]),
                "update": r["optimizer_iterations"],
                "micro_batches": r["batches"],
            }
            for r in (checkpoint.resumes if checkpoint else [])
        ],
    }
    if not checkpoint:
        del manifest["outputs"]["checkpoints"]
    with open(paths["manifest"], "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, default=str)

    table = Table(title="pretraining finished")
    table.add_column("what")
    table.add_column("value")
    table.add_row("updates", str(results["steps"]))
    if results["final_loss"] is not None:
        table.add_row("train loss", f"{results['final_loss']:.4f}")
    if manifest["resumes"]:
        table.add_row(
            "resumed at update",
            ", ".join(str(r["update"]) for r in manifest["resumes"]),
        )
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
