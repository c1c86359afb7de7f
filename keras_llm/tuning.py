"""Hyperparameter search for pretraining: learning rate, batch size, decay.

`tune()` runs a keras-tuner search (random or Bayesian) over the peak
learning rate (log-uniform), the batch size and the AdamW weight decay of a
GPT, giving every trial the same budget of training tokens, so a larger
batch takes proportionally fewer optimizer steps. `keras-llm tune` is a thin
layer over it; both write the same output folder: keras-tuner's project
directory (`tuner/`), `best_hyperparameters.json`, `trials.json`,
`val_loss_vs_learning_rate.png`, `logs/` (TensorBoard, one subfolder per
trial, with the HParams dashboard) and `manifest.json`.

The search space lives in `PretrainingHyperModel`; a subclass supplies the
model, its compilation and its datasets (`GPTHyperModel` for causal LMs,
`BertHyperModel` for masked-LM + next-sentence pretraining).
"""

import dataclasses
import json
import logging
import math
import os
import shutil
import time

import keras
import keras_tuner

from keras_llm.data.mlm_nsp import mlm_nsp_dataset
from keras_llm.data.mlm_nsp import special_token_ids
from keras_llm.data.pipelines import clm_dataset
from keras_llm.data.pipelines import num_windows
from keras_llm.data.vocab import TOKENIZER_KINDS
from keras_llm.errors import UserError
from keras_llm.models.bert import BERT
from keras_llm.models.bert import BertPretrainer
from keras_llm.models.gpt import GPT
from keras_llm.models.presets import get_bert_preset
from keras_llm.models.presets import get_preset
from keras_llm.optimizers.pretraining import for_pretraining

ALGORITHMS = ("random", "bayesian")
OBJECTIVE = "val_loss"
PROJECT_NAME = "tuner"


class PretrainingHyperModel(keras_tuner.HyperModel):
    """Search space of a pretraining run under a fixed token budget.

    Declares three hyperparameters: `learning_rate` (the peak of the
    warm-up-then-decay schedule, log-uniform), `batch_size` (a choice) and
    `weight_decay` (a choice). Every trial trains on `tokens_per_trial`
    tokens: `steps_for(batch_size)` optimizer updates, and the schedule of
    `keras_llm.optimizers.for_pretraining` spans exactly those updates.
    Every trial starts from the same initial weights (`seed`), so trials
    differ only in their hyperparameters.

    Subclasses implement `build_model(hp)` (an uncompiled model; it may
    declare more hyperparameters), `compile_model(model, optimizer)` and
    `make_dataset(ids, batch_size, training)`. `fit` takes token-id arrays
    and makes the datasets at the trial's batch size. To pin one
    hyperparameter, register it first: `hp.Fixed("batch_size", 32)`.

    Args:
        sequence_length: int. Tokens per example.
        tokens_per_trial: int. Training tokens of each trial. Defaults to
            `131072`.
        learning_rate_range: `(low, high)` of the log-uniform peak learning
            rate; `low == high` fixes it. Defaults to `(1e-4, 1e-2)`.
        batch_sizes: batch sizes to choose from. Defaults to `(8, 16, 32)`.
        weight_decays: AdamW weight decays to choose from. Defaults to
            `(0.0, 0.1)`.
        validation_steps: int or `None`. Validation batches per trial;
            `None` or 0 means the whole validation split. Defaults to `None`.
        validation_batch_size: int or `None`. Batch size of validation, the
            same in every trial so their losses compare; `None` means the
            largest of `batch_sizes`. Defaults to `None`.
        seed: int or `None`. Seed of the initial weights and the shuffling.
            Defaults to `None`.
        jit_compile: bool. Compile the train step with XLA. Defaults to
            `True`.
        optimizer_options: dict or `None`. More `for_pretraining` arguments
            (for example `beta_2`, `clipnorm`, `schedule`). Defaults to
            `None`.
        name: str or `None`. Name of the hypermodel. Defaults to `None`.
        tunable: bool. Whether its hyperparameters join the search space.
            Defaults to `True`.
    """

    def __init__(
        self,
        sequence_length,
        tokens_per_trial=131072,
        learning_rate_range=(1e-4, 1e-2),
        batch_sizes=(8, 16, 32),
        weight_decays=(0.0, 0.1),
        validation_steps=None,
        validation_batch_size=None,
        seed=None,
        jit_compile=True,
        optimizer_options=None,
        name=None,
        tunable=True,
    ):
        super().__init__(name=name, tunable=tunable)
        _check_positive_int("sequence_length", sequence_length)
        _check_positive_int("tokens_per_trial", tokens_per_trial)
        low, high = (float(v) for v in learning_rate_range)
        if not 0 < low <= high:
            raise ValueError(
                f"`{type(self).__name__}` expects 0 < low <= high in "
                f"`learning_rate_range`. Received: {learning_rate_range!r}."
            )
        if not batch_sizes:
            raise ValueError(
                f"`{type(self).__name__}` expects at least one batch size."
            )
        for b in batch_sizes:
            _check_positive_int("batch_sizes", b)
        if not weight_decays or any(w < 0 for w in weight_decays):
            raise ValueError(
                f"`{type(self).__name__}` expects non-negative weight decays. "
                f"Received: {weight_decays!r}."
            )
        if validation_batch_size is not None:
            _check_positive_int("validation_batch_size", validation_batch_size)
        self.sequence_length = int(sequence_length)
        self.tokens_per_trial = int(tokens_per_trial)
        self.learning_rate_range = (low, high)
        # Sorted numeric choices: the Bayesian oracle treats them as ordered.
        self.batch_sizes = sorted({int(b) for b in batch_sizes})
        self.weight_decays = sorted({float(w) for w in weight_decays})
        self.validation_steps = validation_steps or None
        self.validation_batch_size = validation_batch_size or max(
            self.batch_sizes
        )
        self.seed = seed
        self.jit_compile = jit_compile
        self.optimizer_options = dict(optimizer_options or {})

    # --- Search space ---

    def search_space(self, hp):
        """Declares (or reads) the three hyperparameters.

        Args:
            hp: a `keras_tuner.HyperParameters`.

        Returns:
            A dict with `learning_rate`, `batch_size` and `weight_decay`.
        """
        low, high = self.learning_rate_range
        if low == high:
            learning_rate = hp.Fixed("learning_rate", low)
        else:
            learning_rate = hp.Float("learning_rate", low, high, sampling="log")
        return {
            "learning_rate": float(learning_rate),
            "batch_size": int(hp.Choice("batch_size", self.batch_sizes)),
            "weight_decay": float(
                hp.Choice("weight_decay", self.weight_decays)
            ),
        }

    def steps_for(self, batch_size):
        """Optimizer updates of a trial: the token budget over batch tokens.

        Args:
            batch_size: int. Examples per batch.

        Returns:
            `max(1, tokens_per_trial // (batch_size * sequence_length))`.
        """
        return max(
            1, self.tokens_per_trial // (batch_size * self.sequence_length)
        )

    def make_optimizer(self, hp):
        """`keras_llm.optimizers.for_pretraining` for the trial's values."""
        values = self.search_space(hp)
        return for_pretraining(
            total_steps=self.steps_for(values["batch_size"]),
            learning_rate=values["learning_rate"],
            weight_decay=values["weight_decay"],
            **self.optimizer_options,
        )

    # --- To implement in subclasses ---

    def build_model(self, hp):
        """Returns an uncompiled Keras model (may declare more hps)."""
        raise NotImplementedError

    def compile_model(self, model, optimizer):
        """Compiles `model` with `optimizer`, its loss and metrics."""
        raise NotImplementedError

    def make_dataset(self, ids, batch_size, training):
        """Returns a `tf.data.Dataset` of `(x, y)` batches from token ids.

        With `training=True` it must shuffle (with `self.seed`) and repeat;
        otherwise it must neither shuffle nor repeat.
        """
        raise NotImplementedError

    # --- keras_tuner.HyperModel ---

    def build(self, hp):
        """Builds and compiles the model of a trial.

        Args:
            hp: a `keras_tuner.HyperParameters`.

        Returns:
            A compiled Keras model.
        """
        self.search_space(hp)
        if self.seed is not None:
            keras.utils.set_random_seed(self.seed)
        model = self.build_model(hp)
        self.compile_model(model, self.make_optimizer(hp))
        return model

    def fit(self, hp, model, train_ids, validation_data=None, **kwargs):
        """Trains one trial on its token budget, then validates.

        Args:
            hp: the trial's `keras_tuner.HyperParameters`.
            model: the model from `build(hp)`.
            train_ids: 1-D array of training token ids.
            validation_data: 1-D array of validation token ids (needed: the
                objective is `val_loss`).
            **kwargs: passed to `model.fit` (keras-tuner passes `callbacks`
                and, when given to `search`, `verbose`).

        Returns:
            The Keras `History`.
        """
        if validation_data is None:
            raise ValueError(
                f"`{type(self).__name__}.fit` needs `validation_data` (token "
                "ids): the objective is `val_loss`."
            )
        batch_size = self.search_space(hp)["batch_size"]
        train_ds = self.make_dataset(train_ids, batch_size, training=True)
        val_ds = self.make_dataset(
            validation_data, self.validation_batch_size, training=False
        )
        validation_steps = self.validation_steps
        batches = int(val_ds.cardinality())
        if validation_steps and batches > 0:
            validation_steps = min(validation_steps, batches)
        kwargs.setdefault("shuffle", False)  # the dataset shuffles itself
        return model.fit(
            train_ds,
            epochs=1,
            steps_per_epoch=self.steps_for(batch_size),
            validation_data=val_ds,
            validation_steps=validation_steps,
            **kwargs,
        )


class GPTHyperModel(PretrainingHyperModel):
    """Searches the pretraining hyperparameters of a causal-LM GPT.

    Builds `keras_llm.models.GPT.from_preset(preset, ...)` (with
    `max_sequence_length` at least `sequence_length`, then
    `model_overrides`), compiles it with
    `keras_llm.pretraining.compile_for_clm` and trains on
    `keras_llm.data.clm_dataset` windows of the token ids.

    Args:
        vocabulary_size: int. Size of the tokenizer's vocabulary.
        preset: str. A name from `keras_llm.models.presets`. Defaults to
            `"nano"`.
        model_overrides: dict or `None`. GPT arguments that replace the
            preset's. Defaults to `None`.
        **kwargs: `PretrainingHyperModel` arguments (`sequence_length` is
            required).

    Example:

    ```python
    import keras_tuner
    import numpy as np
    from keras_llm.tuning import GPTHyperModel

    ids = np.random.default_rng(0).integers(0, 20, 4000)
    hypermodel = GPTHyperModel(
        vocabulary_size=20, preset="nano", sequence_length=16,
        tokens_per_trial=1024, batch_sizes=[4, 8], seed=0, jit_compile=False,
        model_overrides=dict(num_layers=1, hidden_dim=16, num_heads=2),
    )
    tuner = keras_tuner.RandomSearch(
        hypermodel, objective="val_loss", max_trials=2, seed=0,
        directory="runs/hypermodel_example", overwrite=True,
    )
    tuner.search(ids[:3600], validation_data=ids[3600:], verbose=0)
    print(tuner.get_best_hyperparameters()[0].values)
    ```
    """

    def __init__(
        self, vocabulary_size, preset="nano", model_overrides=None, **kwargs
    ):
        super().__init__(**kwargs)
        _check_positive_int("vocabulary_size", vocabulary_size)
        get_preset(preset)  # ValueError naming the known presets
        self.vocabulary_size = int(vocabulary_size)
        self.preset = preset
        self.model_overrides = dict(model_overrides or {})

    def build_model(self, hp):
        preset_length = get_preset(self.preset).get("max_sequence_length", 0)
        kwargs = {
            "vocabulary_size": self.vocabulary_size,
            "max_sequence_length": max(preset_length, self.sequence_length),
        }
        kwargs.update(self.model_overrides)
        return GPT.from_preset(self.preset, **kwargs)

    def compile_model(self, model, optimizer):
        from keras_llm.pretraining import compile_for_clm

        return compile_for_clm(model, optimizer, self.jit_compile)

    def make_dataset(self, ids, batch_size, training):
        if not training:
            # A short split still gives one (smaller) batch.
            windows = num_windows(len(ids), self.sequence_length)
            batch_size = max(1, min(batch_size, windows))
        return clm_dataset(
            ids,
            self.sequence_length,
            batch_size,
            shuffle=training,
            seed=self.seed,
            repeat=training,
        )


class BertHyperModel(PretrainingHyperModel):
    """Searches the pretraining hyperparameters of a BERT (MLM + NSP).

    Builds `keras_llm.models.BERT.from_preset(preset, ...)` (vocabulary of
    the tokenizer, `max_sequence_length` at least `sequence_length`, then
    `model_overrides`) inside a `keras_llm.models.BertPretrainer`, compiles
    it with the trial's `keras_llm.optimizers.for_pretraining` optimizer and
    the pretrainer's per-head losses and metrics, and trains on
    `keras_llm.data.mlm_nsp_dataset` batches. The data given to
    `tuner.search` are documents (lists of texts), not token ids: `search(
    train_documents, validation_data=validation_documents)`. Validation
    pairs and masks are drawn with a fixed seed, so every trial is scored on
    the same examples. The objective is `val_loss` (the weighted sum of the
    two heads' losses); the token budget counts `sequence_length` tokens per
    example, padding included.

    Args:
        tokenizer: a keras-hub tokenizer with `[PAD]`, `[CLS]`, `[SEP]` and
            `[MASK]` (see `keras_llm.data.learn_mlm_tokenizer`).
        preset: str. A name from `keras_llm.models.presets.BERT_PRESETS`.
            Defaults to `"bert_nano"`.
        model_overrides: dict or `None`. BERT arguments that replace the
            preset's. Defaults to `None`.
        mlm_weight: float. Weight of the masked-LM loss. Defaults to `1.0`.
        nsp_weight: float. Weight of the next-sentence loss. Defaults to
            `1.0`.
        mask_rate: float. Fraction of tokens predicted. Defaults to `0.15`.
        **kwargs: `PretrainingHyperModel` arguments (`sequence_length` is
            required).

    Example:

    ```python
    import keras_tuner
    import keras_llm
    from keras_llm.tuning import BertHyperModel

    documents = [
        f"Story {d} begins. It goes on {d} times. Then story {d} ends."
        for d in range(12)
    ]
    tokenizer = keras_llm.data.learn_mlm_tokenizer(documents, 60)
    hypermodel = BertHyperModel(
        tokenizer, sequence_length=16, tokens_per_trial=256,
        batch_sizes=[4, 8], seed=0, jit_compile=False,
        model_overrides=dict(num_layers=1, hidden_dim=16, num_heads=2),
    )
    tuner = keras_tuner.RandomSearch(
        hypermodel, objective="val_loss", max_trials=2, seed=0,
        directory="runs/bert_hypermodel_example", overwrite=True,
    )
    tuner.search(documents[:10], validation_data=documents[10:], verbose=0)
    print(tuner.get_best_hyperparameters()[0].values)
    ```
    """

    def __init__(
        self,
        tokenizer,
        preset="bert_nano",
        model_overrides=None,
        mlm_weight=1.0,
        nsp_weight=1.0,
        mask_rate=0.15,
        **kwargs,
    ):
        super().__init__(**kwargs)
        special_token_ids(tokenizer)  # ValueError naming a missing token
        get_bert_preset(preset)  # ValueError naming the known presets
        self.tokenizer = tokenizer
        self.preset = preset
        self.model_overrides = dict(model_overrides or {})
        self.mlm_weight = mlm_weight
        self.nsp_weight = nsp_weight
        self.mask_rate = mask_rate

    def build_model(self, hp):
        preset_length = get_bert_preset(self.preset).get(
            "max_sequence_length", 0
        )
        kwargs = {
            "vocabulary_size": self.tokenizer.vocabulary_size(),
            "max_sequence_length": max(preset_length, self.sequence_length),
        }
        kwargs.update(self.model_overrides)
        backbone = BERT.from_preset(self.preset, **kwargs)
        return BertPretrainer(
            backbone, mlm_weight=self.mlm_weight, nsp_weight=self.nsp_weight
        )

    def compile_model(self, model, optimizer):
        model.compile(optimizer=optimizer, jit_compile=self.jit_compile)
        return model

    def make_dataset(self, ids, batch_size, training):
        """`mlm_nsp_dataset` batches of documents `ids` (a list of texts)."""
        return mlm_nsp_dataset(
            ids,
            self.tokenizer,
            self.sequence_length,
            batch_size,
            mask_rate=self.mask_rate,
            # Validation: the same pairs and masks in every trial.
            seed=self.seed if training or self.seed is not None else 0,
            shuffle=training,
            repeat=training,
            drop_remainder=training,
        )


@dataclasses.dataclass
class TuneConfig:
    """Options of `tune()`; each is also a `keras-llm tune` flag.

    Attributes:
        corpus: text files or folders; empty means the embedded corpus.
        out: output folder (an earlier search there is replaced).
        preset: model size from `keras_llm.models.presets`.
        tokenizer: `"character"` or `"wordpiece"`.
        vocabulary_size: WordPiece vocabulary size.
        sequence_length: tokens per training example.
        validation_fraction: last fraction of the token stream held out.
        trials: hyperparameter sets to train and compare.
        algorithm: search algorithm: random or bayesian (needs scikit-learn).
        learning_rate_min: lowest peak learning rate searched (log-uniform).
        learning_rate_max: highest peak learning rate searched.
        batch_sizes: batch sizes to choose from.
        weight_decays: AdamW weight decays to choose from.
        tokens_per_trial: training tokens of every trial (steps = tokens /
            (batch size * sequence length)).
        eval_steps: validation batches per trial (0: the whole split).
        seed: seed of the search, initial weights and shuffling.
        jit_compile: compile the train step with XLA.
        model_overrides: GPT arguments that replace the preset's.
        verbose: Keras `fit` and keras-tuner verbosity ("auto", 0, 1, 2).
    """

    corpus: list = dataclasses.field(default_factory=list)
    out: str = "runs/tune"
    preset: str = "nano"
    tokenizer: str = "character"
    vocabulary_size: int = 4096
    sequence_length: int = 64
    validation_fraction: float = 0.1
    trials: int = 4
    algorithm: str = "random"
    learning_rate_min: float = 1e-4
    learning_rate_max: float = 1e-2
    batch_sizes: list[int] = dataclasses.field(
        default_factory=lambda: [8, 16, 32]
    )
    weight_decays: list[float] = dataclasses.field(
        default_factory=lambda: [0.0, 0.1]
    )
    tokens_per_trial: int = 131072
    eval_steps: int = 10
    seed: int = 1337
    jit_compile: bool = True
    model_overrides: dict = dataclasses.field(default_factory=dict)
    verbose: object = "auto"

    def validate(self):
        """Raises `UserError` naming the first bad option."""
        for name in (
            "sequence_length",
            "vocabulary_size",
            "trials",
            "tokens_per_trial",
        ):
            if not _is_int(getattr(self, name), 1):
                raise UserError(
                    f"{_flag(name)} must be a positive integer, got "
                    f"{getattr(self, name)!r}"
                )
        if not _is_int(self.eval_steps, 0):
            raise UserError(
                f"--eval-steps must be a non-negative integer, got "
                f"{self.eval_steps!r}"
            )
        if not _is_int(self.seed, 0):
            raise UserError(
                f"--seed must be a non-negative integer, got {self.seed!r}"
            )
        if not _is_number(self.validation_fraction) or not (
            0 < self.validation_fraction < 1
        ):
            raise UserError(
                "--validation-fraction must be in (0, 1), got "
                f"{self.validation_fraction!r}"
            )
        for name in ("learning_rate_min", "learning_rate_max"):
            value = getattr(self, name)
            if not _is_number(value) or not value > 0:
                hint = (
                    " (YAML reads 1e-4 as text: write 1.0e-4)"
                    if isinstance(value, str)
                    else ""
                )
                raise UserError(
                    f"{_flag(name)} must be a positive number, got "
                    f"{value!r}{hint}"
                )
        if self.learning_rate_min > self.learning_rate_max:
            raise UserError(
                f"--learning-rate-min ({self.learning_rate_min}) must not "
                f"exceed --learning-rate-max ({self.learning_rate_max})"
            )
        if (
            not isinstance(self.batch_sizes, (list, tuple))
            or not self.batch_sizes
            or not all(_is_int(b, 1) for b in self.batch_sizes)
        ):
            raise UserError(
                "--batch-sizes must be one or more positive integers, got "
                f"{self.batch_sizes!r}"
            )
        if (
            not isinstance(self.weight_decays, (list, tuple))
            or not self.weight_decays
            or not all(_is_number(w) and w >= 0 for w in self.weight_decays)
        ):
            raise UserError(
                "--weight-decays must be one or more non-negative numbers, "
                f"got {self.weight_decays!r}"
            )
        if self.algorithm not in ALGORITHMS:
            raise UserError(
                f"--algorithm must be one of {', '.join(ALGORITHMS)}, "
                f"got {self.algorithm!r}"
            )
        if self.tokenizer not in TOKENIZER_KINDS:
            raise UserError(
                f"--tokenizer must be one of {', '.join(TOKENIZER_KINDS)}, "
                f"got {self.tokenizer!r}"
            )
        if not isinstance(self.model_overrides, dict):
            raise UserError(
                "model_overrides must be a mapping of GPT arguments, got "
                f"{self.model_overrides!r}"
            )
        try:
            get_preset(self.preset)
        except ValueError as e:
            raise UserError(f"--preset: {e}") from None


def _flag(name):
    return "--" + name.replace("_", "-")


def _is_int(value, low):
    return (
        isinstance(value, int) and not isinstance(value, bool) and value >= low
    )


def _is_number(value):
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _check_positive_int(name, value):
    if not _is_int(value, 1):
        raise ValueError(
            f"expected a positive integer for `{name}`. Received: {value!r}."
        )


def gpt_hypermodel(config, vocabulary_size):
    """The `GPTHyperModel` of a `TuneConfig`, as `tune()` makes it.

    Its optimizer settings other than the searched ones (schedule,
    `beta_2`, `clipnorm`) are the defaults of `keras-llm pretrain`, so the
    best values carry over to it.

    Args:
        config: a `TuneConfig`.
        vocabulary_size: int. Size of the tokenizer's vocabulary.

    Returns:
        A `GPTHyperModel`.
    """
    from keras_llm.pretraining import PretrainConfig

    defaults = PretrainConfig()
    return GPTHyperModel(
        vocabulary_size=vocabulary_size,
        preset=config.preset,
        model_overrides=config.model_overrides,
        sequence_length=config.sequence_length,
        tokens_per_trial=config.tokens_per_trial,
        learning_rate_range=(
            config.learning_rate_min,
            config.learning_rate_max,
        ),
        batch_sizes=config.batch_sizes,
        weight_decays=config.weight_decays,
        validation_steps=config.eval_steps or None,
        seed=config.seed,
        jit_compile=config.jit_compile,
        optimizer_options=dict(
            schedule=defaults.schedule,
            beta_2=defaults.beta_2,
            clipnorm=defaults.clipnorm,
        ),
    )


def make_tuner(hypermodel, config, directory):
    """The keras-tuner `Tuner` of `config.algorithm`, replacing any earlier
    project in `directory`."""
    common = dict(
        objective=keras_tuner.Objective(OBJECTIVE, direction="min"),
        max_trials=config.trials,
        # keras-tuner draws a random seed for 0: keep every seed fixed.
        seed=config.seed + 1,
        directory=directory,
        project_name=PROJECT_NAME,
        # An earlier search may have used other options: never resume it.
        overwrite=True,
    )
    if config.algorithm == "random":
        return keras_tuner.RandomSearch(hypermodel, **common)
    try:
        return keras_tuner.BayesianOptimization(
            hypermodel,
            # Half the trials explore at random before the Gaussian process
            # (keras-tuner's default, 3 per hyperparameter, would be all 4).
            num_initial_points=max(2, config.trials // 2),
            **common,
        )
    except ImportError as e:
        raise UserError(
            "--algorithm bayesian needs scikit-learn and scipy "
            f"(pip install keras-tuner[bayesian]): {e}"
        ) from None


def tune(config=None, **options):
    """Searches learning rate, batch size and weight decay of a GPT.

    Every trial trains a fresh GPT (same initial weights) on the same
    number of tokens and is scored by its validation loss.

    Args:
        config: a `TuneConfig`, or `None` to build one from `options`.
        **options: `TuneConfig` fields (for example `trials=8`).

    Returns:
        A dict with `best_hyperparameters` (a dict), `trials` (a list of
        dicts with `trial_id`, `status`, `hyperparameters`, `val_loss`,
        `steps` and `tokens`, in the order they ran), `paths` (files
        written) and `manifest`.

    Raises:
        UserError: for a bad option (a `ValueError`).
        CorpusError: for a corpus that cannot be read or is too short.

    Example:

    ```python
    from keras_llm.tuning import tune

    result = tune(
        trials=2, sequence_length=16, tokens_per_trial=2048,
        batch_sizes=[4, 8], eval_steps=2, out="runs/tune_example", verbose=0,
        model_overrides=dict(num_layers=1, hidden_dim=16, num_heads=2),
    )
    print(result["best_hyperparameters"])
    ```
    """
    if config is None:
        config = TuneConfig(**options)
    elif options:
        config = dataclasses.replace(config, **options)
    config.validate()
    _check_out(config.out)
    started = time.time()
    keras.utils.set_random_seed(config.seed)
    return _tune(config, started)


def _check_out(out):
    """Refuses to write into another stage's folder (it would lose files)."""
    manifest = os.path.join(out, "manifest.json")
    if not os.path.isfile(manifest):
        return
    try:
        with open(manifest, encoding="utf-8") as f:
            stage = json.load(f).get("stage")
    except (OSError, ValueError, AttributeError):
        stage = None
    if stage != "tune":
        raise UserError(
            f"--out {out} holds the output of another stage ({stage!r}); "
            "choose a new folder"
        )


def _tune(config, started):
    from rich.console import Console
    from rich.table import Table

    from keras_llm.pretraining import data_manifest
    from keras_llm.pretraining import prepare_clm_data
    from keras_llm.pretraining import versions

    console = Console()
    data = prepare_clm_data(config)
    corpus_name, tokenizer = data["corpus_name"], data["tokenizer"]
    train_ids, val_ids = data["train_ids"], data["val_ids"]

    hypermodel = gpt_hypermodel(config, tokenizer.vocabulary_size())
    # Bad model overrides fail here, once, instead of in every trial.
    try:
        parameters = hypermodel.build_model(
            keras_tuner.HyperParameters()
        ).count_params()
    except (TypeError, ValueError) as e:
        raise UserError(
            f"the GPT of --preset {config.preset} with model_overrides "
            f"{config.model_overrides} cannot be built: {e}"
        ) from None
    keras.backend.clear_session()

    out = config.out
    os.makedirs(out, exist_ok=True)
    paths = {
        "tuner": os.path.join(out, PROJECT_NAME),
        "best_hyperparameters": os.path.join(out, "best_hyperparameters.json"),
        "trials": os.path.join(out, "trials.json"),
        "plot": os.path.join(out, "val_loss_vs_learning_rate.png"),
        "tensorboard": os.path.join(out, "logs"),
        "manifest": os.path.join(out, "manifest.json"),
    }
    if os.path.isdir(paths["tuner"]):
        console.print(
            f"replacing the earlier search in {out} (trials are never "
            "reused across runs)",
            markup=False,
        )
    if os.path.isdir(paths["tensorboard"]):
        shutil.rmtree(paths["tensorboard"])
    tuner = make_tuner(hypermodel, config, out)

    source = (
        corpus_name
        if isinstance(corpus_name, str)
        else f"{len(corpus_name)} files"
    )
    console.print(
        f"[bold]keras-llm tune[/bold]: {config.trials} {config.algorithm} "
        f"trials of a {parameters:,}-parameter GPT ({config.preset}), "
        f"{config.tokens_per_trial:,} training tokens each; "
        f"{tokenizer.vocabulary_size()} {config.tokenizer} tokens, "
        f"{len(train_ids):,} training and {len(val_ids):,} validation tokens "
        f"from {source}"
    )
    # Every trial traces a new model's train step; TensorFlow would warn
    # about "excessive retracing" from the second trial on.
    tf_logger = logging.getLogger("tensorflow")
    previous_level = tf_logger.level
    tf_logger.setLevel(logging.ERROR)
    try:
        tuner.search(
            train_ids,
            validation_data=val_ids,
            callbacks=[
                keras.callbacks.TensorBoard(
                    paths["tensorboard"], update_freq="epoch"
                )
            ],
            verbose=config.verbose,
        )
    finally:
        tf_logger.setLevel(previous_level)

    trials = [
        _trial_record(tuner.oracle.trials[i], hypermodel, config)
        for i in tuner.oracle.start_order
    ]
    completed = [t for t in trials if t["status"] == "COMPLETED"]
    if not completed:
        _raise_no_trial(tuner, trials)
    best = min(completed, key=lambda t: t["val_loss"])
    best_hp = best["hyperparameters"]

    with open(paths["best_hyperparameters"], "w", encoding="utf-8") as f:
        json.dump(best_hp, f, indent=2)
    with open(paths["trials"], "w", encoding="utf-8") as f:
        json.dump(trials, f, indent=2)
    _plot_trials(
        trials,
        best,
        paths["plot"],
        f"GPT {config.preset}: search over "
        f"{config.tokens_per_trial:,} tokens per trial",
    )

    results = {
        "best_trial": best["trial_id"],
        "best_hyperparameters": best_hp,
        "best_val_loss": best["val_loss"],
        "completed_trials": len(completed),
        "failed_trials": len(trials) - len(completed),
        "seconds": time.time() - started,
    }
    manifest = {"stage": "tune", **data_manifest(data)}
    manifest["counts"] |= {"parameters": int(parameters), "trials": len(trials)}
    manifest |= {
        "options": dataclasses.asdict(config),
        "search_space": {
            "objective": OBJECTIVE,
            "learning_rate": {
                "min": config.learning_rate_min,
                "max": config.learning_rate_max,
                "sampling": "log",
            },
            "batch_size": hypermodel.batch_sizes,
            "weight_decay": hypermodel.weight_decays,
            "validation_batch_size": hypermodel.validation_batch_size,
            "optimizer_options": hypermodel.optimizer_options,
        },
        "seed": config.seed,
        "versions": dict(versions(), keras_tuner=keras_tuner.__version__),
        "results": results,
        "outputs": {k: os.path.basename(v) for k, v in paths.items()},
    }
    with open(paths["manifest"], "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, default=str)

    table = Table(title=f"search finished in {results['seconds']:.0f} s")
    for column in (
        "trial",
        "learning rate",
        "batch",
        "weight decay",
        "steps",
        "val loss",
    ):
        table.add_column(column, justify="right")
    ranked = sorted(
        trials,
        key=lambda t: (t["val_loss"] is None, t["val_loss"] or 0.0),
    )
    for t in ranked:
        hp = t["hyperparameters"]
        loss = (
            f"{t['val_loss']:.4f}"
            if t["val_loss"] is not None
            else t["status"].lower()
        )
        table.add_row(
            t["trial_id"] + (" *" if t is best else ""),
            f"{hp.get('learning_rate', float('nan')):.2e}",
            str(hp.get("batch_size")),
            f"{hp.get('weight_decay', float('nan')):g}",
            str(t["steps"]),
            loss,
        )
    console.print(table)
    console.print(
        f"best (*): {json.dumps(best_hp)}; wrote "
        f"{paths['best_hyperparameters']}, {paths['trials']}, "
        f"{paths['plot']}, {paths['tensorboard']}, {paths['manifest']}",
        markup=False,
        highlight=False,
    )
    return {
        "best_hyperparameters": best_hp,
        "trials": trials,
        "paths": paths,
        "manifest": manifest,
    }


def _trial_record(trial, hypermodel, config):
    values = dict(trial.hyperparameters.values)
    batch_size = values.get("batch_size")
    steps = hypermodel.steps_for(batch_size) if batch_size else None
    completed = trial.status == "COMPLETED"
    metrics = {}
    if completed:
        for name in ("loss", "val_loss", "val_perplexity"):
            if trial.metrics.exists(name):
                metrics[name] = float(trial.metrics.get_last_value(name))
    record = {
        "trial_id": trial.trial_id,
        "status": trial.status,
        "hyperparameters": values,
        "val_loss": float(trial.score) if completed else None,
        "steps": steps,
        "tokens": steps * batch_size * config.sequence_length
        if steps
        else None,
        "metrics": metrics,
    }
    if trial.message:
        lines = trial.message.strip().splitlines()
        record["error"] = lines[-1] if lines else trial.message
    return record


def _raise_no_trial(tuner, trials):
    messages = [
        tuner.oracle.trials[t["trial_id"]].message
        for t in trials
        if tuner.oracle.trials[t["trial_id"]].message
    ]
    if messages:
        # An exception in training: a bug or a resource limit; keep the
        # traceback keras-tuner recorded.
        raise RuntimeError(
            f"all {len(trials)} trials failed; the first with:\n{messages[0]}"
        )
    raise UserError(
        f"all {len(trials)} trials diverged (NaN validation loss); lower "
        "--learning-rate-max"
    )


def _plot_trials(trials, best, path, title):
    """Validation loss of each trial against its learning rate (log x),
    one colour per batch size and one marker per weight decay."""
    from matplotlib.figure import Figure

    done = [t for t in trials if t["val_loss"] is not None]
    fig = Figure(figsize=(7, 4.5), dpi=100)
    ax = fig.subplots()
    batch_sizes = sorted({t["hyperparameters"]["batch_size"] for t in done})
    decays = sorted({t["hyperparameters"]["weight_decay"] for t in done})
    markers = "osD^vP*X"
    for t in done:
        hp = t["hyperparameters"]
        ax.scatter(
            hp["learning_rate"],
            t["val_loss"],
            color=f"C{batch_sizes.index(hp['batch_size']) % 10}",
            marker=markers[decays.index(hp["weight_decay"]) % len(markers)],
            s=50,
            zorder=3,
        )
        ax.annotate(
            t["trial_id"],
            (hp["learning_rate"], t["val_loss"]),
            textcoords="offset points",
            xytext=(5, 4),
            fontsize=8,
        )
    ax.scatter(
        best["hyperparameters"]["learning_rate"],
        best["val_loss"],
        s=220,
        facecolors="none",
        edgecolors="black",
        zorder=4,
        label="best",
    )
    for i, b in enumerate(batch_sizes):
        ax.scatter([], [], color=f"C{i % 10}", label=f"batch {b}")
    for i, w in enumerate(decays):
        ax.scatter(
            [],
            [],
            color="gray",
            marker=markers[i % len(markers)],
            label=f"weight decay {w:g}",
        )
    ax.set_xscale("log")
    ax.margins(0.12)
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
