"""`keras-llm prune | quantize | distill`: compression runs on a saved GPT.

Each command is a thin layer over one function here (`prune_run`,
`quantize_run`, `distill_run`) with a config dataclass whose fields are the
flags. A run loads the `model.keras` that `keras-llm pretrain` wrote (and
the `tokenizer.json` beside it), tokenizes the evaluation text with that
tokenizer (`--corpus` files, the embedded corpus, or a `keras-llm data
prepare` folder through `--data`), measures the model, compresses it,
measures again and prints a before/after table: parameters, bytes on disk,
gzip'd bytes and validation loss. The output folder gets the compressed
`model.keras`, the tokenizer, `compression.json` and `manifest.json`.
"""

import dataclasses
import gzip
import json
import os
import shutil
import time

import keras
import numpy as np

from keras_llm.compression.quantization import weight_bytes
from keras_llm.data.vocab import TOKENIZER_FILE
from keras_llm.errors import UserError


@dataclasses.dataclass
class CompressConfig:
    """Options shared by `keras-llm prune | quantize | distill`.

    Attributes:
        model: the model.keras written by `keras-llm pretrain`.
        out: output folder.
        corpus: text files or folders for fine-tuning and validation; empty
            means the embedded corpus.
        data: a `keras-llm data prepare` folder instead of corpus (its
            tokenizer must be the model's).
        sequence_length: tokens per example (default: min(128, the model's
            maximum)).
        batch_size: examples per step.
        steps: training steps of the fine-tuning (or QAT, or distillation).
        learning_rate: peak learning rate of that training.
        eval_steps: validation batches per measurement (0: all).
        validation_fraction: last fraction of the token stream held out.
        seed: seed of shuffling and new weights.
        jit_compile: compile train steps with XLA.
        verbose: Keras `fit` verbosity ("auto", 0, 1, 2).
    """

    model: str = "runs/pretrain/model.keras"
    out: str = "runs/compressed"
    corpus: list = dataclasses.field(default_factory=list)
    data: str = None
    sequence_length: int = None
    batch_size: int = 32
    steps: int = 200
    learning_rate: float = 3e-4
    eval_steps: int = 20
    validation_fraction: float = 0.1
    seed: int = 1337
    jit_compile: bool = True
    verbose: object = "auto"

    def validate(self):
        for name in ("batch_size", "steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1")
        if self.eval_steps < 0:
            raise UserError("--eval-steps must be >= 0")
        if not 0 < self.validation_fraction < 1:
            raise UserError("--validation-fraction must be in (0, 1)")


def _tokenizer_for(model_path):
    from keras_llm.data.vocab import load_tokenizer

    path = os.path.join(
        os.path.dirname(os.path.abspath(model_path)), TOKENIZER_FILE
    )
    if not os.path.isfile(path):
        raise UserError(
            f"no {TOKENIZER_FILE} beside {model_path}: pass a model folder "
            "written by `keras-llm pretrain`"
        )
    return load_tokenizer(path), path


def load_run(config):
    """The model, its tokenizer and the train/validation datasets.

    Returns:
        A dict: `model`, `tokenizer`, `tokenizer_path`, `sequence_length`,
        `train` (repeating, shuffled) and `validation` datasets.
    """
    from keras_llm.data import clm_dataset
    from keras_llm.data import default_corpus
    from keras_llm.data import read_corpus
    from keras_llm.data import split_tokens
    from keras_llm.data import tokenize_documents
    from keras_llm.generate import load_gpt

    config.validate()
    model = load_gpt(config.model)
    tokenizer, tokenizer_path = _tokenizer_for(config.model)
    if tokenizer.vocabulary_size() != model.vocabulary_size:
        raise UserError(
            f"{tokenizer_path} has {tokenizer.vocabulary_size()} tokens but "
            f"the model {model.vocabulary_size}"
        )
    if config.data:
        from keras_llm.data.shards import read_shards

        train_ids = read_shards(config.data, "train").astype("int32")
        val_ids = read_shards(config.data, "validation").astype("int32")
        if len(train_ids) and int(train_ids.max()) >= model.vocabulary_size:
            raise UserError(
                f"--data {config.data} holds token ids beyond the model's "
                "vocabulary: prepare it with the model's tokenizer"
            )
    else:
        documents = (
            read_corpus(config.corpus) if config.corpus else default_corpus()
        )
        ids = tokenize_documents(tokenizer, documents)
        train_ids, val_ids = split_tokens(ids, config.validation_fraction)
    t = config.sequence_length or min(128, model.max_sequence_length)
    for split, ids in (("training", train_ids), ("validation", val_ids)):
        if len(ids) < t + 1 + config.batch_size:
            raise UserError(
                f"the {split} text gives {len(ids)} tokens, too few for "
                f"batches of {config.batch_size} x {t}"
            )
    train = clm_dataset(
        train_ids, t, config.batch_size, shuffle=True, seed=config.seed,
        repeat=True,
    )  # fmt: skip
    validation = clm_dataset(val_ids, t, config.batch_size, shuffle=False)
    if config.eval_steps:
        validation = validation.take(config.eval_steps)
    return {
        "model": model,
        "tokenizer": tokenizer,
        "tokenizer_path": tokenizer_path,
        "sequence_length": t,
        "train": train,
        "validation": validation.cache(),
    }


def training_optimizer(config):
    """AdamW over `config.steps`: 10% warm-up, cosine decay, no decay."""
    from keras_llm.optimizers import for_pretraining

    return for_pretraining(
        total_steps=config.steps,
        learning_rate=config.learning_rate,
        warmup_steps=max(1, config.steps // 10),
        weight_decay=0.0,
    )


def compile_for_training(model, config):
    """`training_optimizer` and the next-token loss."""
    from keras_llm.pretraining import compile_for_clm

    return compile_for_clm(
        model, training_optimizer(config), config.jit_compile
    )


def validation_loss(model, validation):
    """Mean next-token cross-entropy of `model` on `validation`."""
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    total, count = 0.0, 0
    for x, y in validation:
        logits = model(x, training=False)
        n = int(np.prod(y.shape))
        total += float(loss(y, logits)) * n
        count += n
    return total / count


def file_sizes(path):
    """Bytes of a file and of its gzip'd form (level 9)."""
    with open(path, "rb") as f:
        raw = f.read()
    return len(raw), len(gzip.compress(raw, compresslevel=9))


def measure(model, validation, path, name):
    """Saves `model` to `path` and returns its row of the table."""
    model.save(path)
    size, gzipped = file_sizes(path)
    return {
        "model": name,
        "parameters": int(model.count_params()),
        "weight_bytes": weight_bytes(model),
        "bytes": size,
        "gzip_bytes": gzipped,
        "validation_loss": validation_loss(model, validation),
        "path": path,
    }


def report_table(rows, title):
    """A rich table of before/after rows (and changes against the first)."""
    from rich.table import Table

    table = Table(title=title)
    for column in (
        "model",
        "parameters",
        "bytes on disk",
        "gzip'd",
        "gzip ratio",
        "val loss",
        "change",
    ):
        table.add_column(
            column, justify="left" if column == "model" else "right"
        )
    base = rows[0]
    for row in rows:
        change = row["validation_loss"] / base["validation_loss"] - 1
        table.add_row(
            row["model"],
            f"{row['parameters']:,}",
            f"{row['bytes']:,}",
            f"{row['gzip_bytes']:,}",
            f"{row['gzip_bytes'] / base['gzip_bytes']:.3f}",
            f"{row['validation_loss']:.4f}",
            "-" if row is base else f"{100 * change:+.2f}%",
        )
    return table


def finish(config, run, rows, technique, extra, started):
    """Writes tokenizer, compression.json and manifest.json; prints."""
    from rich.console import Console

    from keras_llm.pretraining import versions

    shutil.copyfile(
        run["tokenizer_path"], os.path.join(config.out, TOKENIZER_FILE)
    )
    result = {
        "technique": technique,
        "rows": rows,
        **extra,
        "seconds": time.time() - started,
    }
    with open(os.path.join(config.out, "compression.json"), "w") as f:
        json.dump(result, f, indent=2, default=str)
    manifest = {
        "stage": technique,
        "inputs": {
            "model": config.model,
            "corpus": config.corpus,
            "data": config.data,
        },
        "options": dataclasses.asdict(config),
        "results": result,
        "versions": versions(),
    }
    with open(os.path.join(config.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2, default=str)
    console = Console()
    console.print(report_table(rows, f"keras-llm {technique}"))
    console.print(f"written to {config.out}", highlight=False)
    return result


def _start(config, name):
    """Seeds, loads the run and measures the model as it comes (row `name`,
    its file removed again): `(run, row, start time)`."""
    started = time.time()
    if os.path.abspath(config.out) == os.path.dirname(
        os.path.abspath(config.model)
    ):
        raise UserError("--out must differ from the model's folder")
    os.makedirs(config.out, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    run = load_run(config)
    path = os.path.join(config.out, "before.keras")
    row = measure(run["model"], run["validation"], path, name)
    os.remove(row.pop("path"))
    return run, row, started


@dataclasses.dataclass
class PruneConfig(CompressConfig):
    """Options of `keras-llm prune` (and the shared ones).

    Attributes:
        sparsity: final fraction of zeros in every pruned kernel.
        prune_fraction: share of the steps over which sparsity ramps up
            (tfmot `PolynomialDecay` from 0); the rest fine-tunes at it.
        frequency: steps between mask updates.
        block_size: structured pruning blocks, e.g. 1 4 (1 1: unstructured).
    """

    sparsity: float = 0.5
    prune_fraction: float = 0.5
    frequency: int = 10
    block_size: list[int] = dataclasses.field(default_factory=lambda: [1, 1])


@dataclasses.dataclass
class QuantizeConfig(CompressConfig):
    """Options of `keras-llm quantize` (and the shared ones).

    Attributes:
        mode: int8 or int4 (post-training, Keras `Model.quantize`), or qat
            (int8 quantization-aware fine-tuning for --steps, then int8).
    """

    mode: str = "int8"


@dataclasses.dataclass
class DistillConfig(CompressConfig):
    """Options of `keras-llm distill` (and the shared ones); `model` is the
    teacher.

    Attributes:
        student_preset: GPT preset of the student (keras_llm.models.presets).
        student_layers: blocks of the student (default: the preset's).
        student_hidden_dim: width of the student (default: the preset's).
        temperature: softening of both distributions (loss scaled by T^2).
        alpha: weight of the ground-truth loss; 1 - alpha on the teacher's.
    """

    student_preset: str = "nano"
    student_layers: int = None
    student_hidden_dim: int = None
    temperature: float = 2.0
    alpha: float = 0.5


def _fit(model, run, config, callbacks=()):
    return model.fit(
        run["train"],
        steps_per_epoch=config.steps,
        epochs=1,
        callbacks=list(callbacks),
        shuffle=False,  # the dataset shuffles itself
        verbose=config.verbose,
    )


def prune_run(config=None, **options):
    """Prunes a saved GPT to `sparsity` while fine-tuning, strips the masks
    and writes the plain model; see `keras_llm.compression.pruning`.

    Returns:
        The `compression.json` dict: `rows` (before, after), `sparsity`.
    """
    from keras_llm.compression import pruning

    config = config or PruneConfig(**options)
    if not 0 <= config.sparsity < 1:
        raise UserError(f"--sparsity must be in [0, 1), got {config.sparsity}")
    if not 0 < config.prune_fraction <= 1:
        raise UserError("--prune-fraction must be in (0, 1]")
    run, before, started = _start(config, "original")
    model = run["model"]
    schedule = pruning._tfmot_sparsity().PolynomialDecay(
        initial_sparsity=0.0,
        final_sparsity=config.sparsity,
        begin_step=0,
        end_step=max(1, int(config.steps * config.prune_fraction)),
        frequency=config.frequency,
    )
    pruned = pruning.prune_low_magnitude(
        model, schedule, block_size=tuple(config.block_size)
    )
    compile_for_training(pruned, config)
    _fit(pruned, run, config, [pruning.UpdatePruningStep()])
    plain = pruning.strip_pruning(pruned)
    after = measure(
        plain, run["validation"], os.path.join(config.out, "model.keras"),
        f"pruned {config.sparsity:.0%}",
    )  # fmt: skip
    report = pruning.sparsity_report(plain)
    return finish(
        config, run, [before, after], "prune", {"sparsity": report}, started
    )


def quantize_run(config=None, **options):
    """Quantizes a saved GPT (int8/int4 post-training, or int8 QAT) and
    writes the Keras quantized model; see
    `keras_llm.compression.quantization`."""
    from keras_llm.compression import quantization

    config = config or QuantizeConfig(**options)
    if config.mode not in ("int8", "int4", "qat"):
        raise UserError(
            f"--mode must be int8, int4 or qat, got {config.mode!r}"
        )
    run, before, started = _start(config, "float32")
    model = run["model"]
    if config.mode == "qat":
        aware = quantization.quantize_aware(
            model, input_quantization="dynamic", initial_range=None
        )
        compile_for_training(aware, config)
        _fit(aware, run, config)
        quantized = quantization.convert_qat(aware)
        name = "int8 (QAT)"
    else:
        quantized = quantization.quantize_weights(model, mode=config.mode).model
        name = config.mode
    after = measure(
        quantized, run["validation"], os.path.join(config.out, "model.keras"),
        name,
    )  # fmt: skip
    extra = {
        "weight_bytes_ratio": after["weight_bytes"] / before["weight_bytes"]
    }
    return finish(config, run, [before, after], "quantize", extra, started)


def distill_run(config=None, **options):
    """Distils a saved GPT (the teacher) into a smaller GPT student and
    writes the student; see `keras_llm.compression.distillation`."""
    from keras_llm.compression.distillation import Distiller
    from keras_llm.models import GPT

    config = config or DistillConfig(**options)
    if config.temperature <= 0 or not 0 <= config.alpha <= 1:
        raise UserError("--temperature must be > 0 and --alpha in [0, 1]")
    run, teacher_row, started = _start(config, "teacher")
    teacher = run["model"]
    overrides = {
        "vocabulary_size": teacher.vocabulary_size,
        "max_sequence_length": teacher.max_sequence_length,
        "position_embedding": teacher.position_embedding,
    }
    if config.student_layers:
        overrides["num_layers"] = config.student_layers
    if config.student_hidden_dim:
        overrides["hidden_dim"] = config.student_hidden_dim
        overrides["intermediate_dim"] = 4 * config.student_hidden_dim
    try:
        student = GPT.from_preset(config.student_preset, **overrides)
    except (KeyError, ValueError) as e:
        raise UserError(f"bad student: {e}") from None
    distiller = Distiller(
        teacher, student, task="clm", temperature=config.temperature,
        alpha=config.alpha,
    )  # fmt: skip
    distiller.compile(optimizer=training_optimizer(config))
    _fit(distiller, run, config)
    student_row = measure(
        distiller.student, run["validation"],
        os.path.join(config.out, "model.keras"), "student (distilled)",
    )  # fmt: skip
    extra = {
        "parameter_ratio": student_row["parameters"] / teacher_row["parameters"]
    }
    return finish(
        config, run, [teacher_row, student_row], "distill", extra, started
    )
