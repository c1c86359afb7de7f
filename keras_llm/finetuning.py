"""Transfer learning: a pretrained encoder plus a task head, in two phases.

`finetune()` loads a backbone (a keras_llm `.keras` encoder such as
`keras_llm.models.BERT`, or a keras-hub preset saved on disk such as a
`keras_hub.models.BertBackbone`), puts a head from `keras_llm.layers.heads`
on its sequence output and trains in up to two phases:

1. head only: the backbone is frozen (`trainable = False`) and the head
   learns at `learning_rate`;
2. if `unfreeze_top > 0`: the top N Transformer blocks are unfrozen (the
   embeddings and the lower blocks stay frozen), the model is recompiled
   with the lower `unfreeze_learning_rate` (linear warm-up then linear
   decay) and trained for `unfreeze_epochs` more epochs.

Tasks: `classification` (text, label; `SequenceClassificationHead`),
`pair` (premise, hypothesis, label; `PairClassificationHead`) and `qa`
(SQuAD v1.1 JSON; `SpanQAHead`). The task files are read by
`keras_llm.data.tasks`; malformed rows are skipped, printed and counted in
the manifest. After each phase the validation file is scored: accuracy and
the majority-class baseline for classification and pairs, SQuAD exact match
and F1 for QA.

`keras-llm finetune` is a thin layer over `finetune()`; both write the same
output folder: `model.keras` (backbone and head), `tokenizer.json`,
`metrics.json`, `logs/` (TensorBoard), `predictions.json` (QA) and
`manifest.json` (inputs, read reports, options, metrics per phase,
versions).
"""

import dataclasses
import json
import math
import os
import time

import keras
import numpy as np

from keras_llm.errors import UserError

TASKS = ("classification", "pair", "qa")
BACKBONE_INPUTS = ("token_ids", "segment_ids", "padding_mask")
CONTEXT_MASK = "context_mask"
HEAD_NAMES = {
    "classification": "classification_head",
    "pair": "pair_head",
    "qa": "span_head",
}
POOLINGS = ("cls", "mean")
MODEL_FILES = ("model.keras", "backbone.keras")
PRESET_FILES = ("config.json", "metadata.json")
# Skipped rows listed in the manifest per file (all are counted).
MANIFEST_SKIPPED_ROWS = 1000
# Skipped rows printed per file.
PRINTED_SKIPPED_ROWS = 20


@dataclasses.dataclass
class FinetuneConfig:
    """Options of `finetune()`; each is also a `keras-llm finetune` flag.

    Attributes:
        backbone: a keras_llm `.keras` encoder (or the folder holding
            model.keras), or a keras-hub preset folder (config.json,
            metadata.json).
        task: classification (text,label), pair (premise,hypothesis,label)
            or qa (SQuAD v1.1 JSON).
        train: training file (CSV or JSONL; SQuAD JSON for qa).
        validation: validation file, scored after each phase.
        tokenizer: tokenizer file or keras-hub preset folder; None: the
            tokenizer.json next to a .keras backbone, or the preset's own.
        labels: label names in id order; empty: every label of the training
            file (classification) or entailment neutral contradiction (pair).
        out: output folder.
        sequence_length: tokens per example (QA: per context window).
        batch_size: examples per batch.
        epochs: epochs of the first phase (frozen backbone, head only).
        learning_rate: learning rate of the first phase.
        unfreeze_top: Transformer blocks unfrozen, from the top, in the
            second phase (0: no second phase).
        unfreeze_epochs: epochs of the second phase.
        unfreeze_learning_rate: peak learning rate of the second phase
            (lower than the first, e.g. 2e-5 to 1e-4).
        warmup_fraction: fraction of the second phase spent warming up.
        weight_decay: AdamW weight decay (not on biases, norms, embeddings).
        dropout: dropout in the classification heads.
        pooling: classification pooling: cls or mean (pair always uses cls).
        stride: QA: tokens between the starts of overlapping context windows.
        max_query_length: QA: questions are cut to this many tokens.
        max_answer_length: QA: longest decoded answer, in tokens.
        seed: seed of the head weights, dropout and shuffling.
        jit_compile: compile the train step with XLA.
        verbose: Keras `fit` verbosity ("auto", 0, 1, 2).
    """

    backbone: str = None
    task: str = "classification"
    train: str = None
    validation: str = None
    tokenizer: str = None
    labels: list = dataclasses.field(default_factory=list)
    out: str = "runs/finetune"
    sequence_length: int = 128
    batch_size: int = 32
    epochs: int = 3
    learning_rate: float = 1e-3
    unfreeze_top: int = 0
    unfreeze_epochs: int = 2
    unfreeze_learning_rate: float = 5e-5
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    dropout: float = 0.1
    pooling: str = "cls"
    stride: int = 64
    max_query_length: int = 64
    max_answer_length: int = 30
    seed: int = 1337
    jit_compile: bool = True
    verbose: object = "auto"

    def validate(self):
        """Raises `UserError` naming the first bad option."""
        for name in ("backbone", "train", "validation"):
            if not getattr(self, name):
                raise UserError(f"{_flag(name)} is required")
        if self.task not in TASKS:
            raise UserError(
                f"--task must be one of {', '.join(TASKS)}, got {self.task!r}"
            )
        for name in (
            "sequence_length",
            "batch_size",
            "stride",
            "max_query_length",
            "max_answer_length",
        ):
            if not _is_int(getattr(self, name), 1):
                raise UserError(
                    f"{_flag(name)} must be a positive integer, got "
                    f"{getattr(self, name)!r}"
                )
        for name in ("epochs", "unfreeze_top", "unfreeze_epochs"):
            if not _is_int(getattr(self, name), 0):
                raise UserError(
                    f"{_flag(name)} must be a non-negative integer, got "
                    f"{getattr(self, name)!r}"
                )
        if self.sequence_length < 3:
            raise UserError(
                "--sequence-length must be at least 3 ([CLS], a token, "
                f"[SEP]), got {self.sequence_length}"
            )
        for name in ("learning_rate", "unfreeze_learning_rate"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise UserError(
                    f"{_flag(name)} must be positive, got {value!r}"
                )
        if not 0 <= self.weight_decay:
            raise UserError(
                f"--weight-decay must be non-negative, got {self.weight_decay}"
            )
        if not 0 <= self.warmup_fraction < 1:
            raise UserError(
                "--warmup-fraction must be in [0, 1), got "
                f"{self.warmup_fraction}"
            )
        if not 0 <= self.dropout < 1:
            raise UserError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.pooling not in POOLINGS:
            raise UserError(
                f"--pooling must be one of {', '.join(POOLINGS)}, got "
                f"{self.pooling!r}"
            )
        if self.unfreeze_top and not self.unfreeze_epochs:
            raise UserError(
                f"--unfreeze-top {self.unfreeze_top} needs --unfreeze-epochs "
                "of at least 1"
            )
        if not self.epochs and not self.unfreeze_top:
            raise UserError(
                "nothing to train: --epochs is 0 and --unfreeze-top is 0"
            )
        if self.labels and self.task == "qa":
            raise UserError(
                "--labels applies to the classification and pair tasks, not qa"
            )
        if isinstance(self.labels, str):
            raise UserError(
                f"--labels must be a list of label names, got {self.labels!r}"
            )


def _flag(name):
    return "--" + name.replace("_", "-")


def _is_int(value, low):
    return (
        isinstance(value, (int, np.integer))
        and not isinstance(value, bool)
        and value >= low
    )


def _one_line(error):
    text = str(error).strip().splitlines()
    text = text[0] if text else type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# --- Backbone and tokenizer ---------------------------------------------


def _is_preset_dir(path):
    return os.path.isdir(path) and any(
        os.path.isfile(os.path.join(path, f)) for f in PRESET_FILES
    )


def _input_names(model):
    """Names of a functional model's dict inputs, or `None`."""
    try:
        inputs = model.input
    except (AttributeError, ValueError):
        return None
    if isinstance(inputs, dict):
        return set(inputs)
    return None


def _is_encoder(model):
    """A functional model taking exactly the three BERT inputs and returning
    a `(B, T, hidden)` sequence (or a dict with `"sequence_output"`)."""
    if _input_names(model) != set(BACKBONE_INPUTS):
        return False
    output = model.output
    if isinstance(output, dict):
        output = output.get("sequence_output")
    return getattr(output, "shape", None) is not None and len(output.shape) == 3


def _find_encoder(model):
    """`model` if it is an encoder, else its `backbone` attribute or its
    only nested encoder layer (a pretrainer or an earlier task model), else
    `None`."""
    if _is_encoder(model):
        return model
    if _is_encoder(getattr(model, "backbone", None)):
        return model.backbone
    nested = [
        layer
        for layer in getattr(model, "layers", [])
        if isinstance(layer, keras.Model) and _is_encoder(layer)
    ]
    return nested[0] if len(nested) == 1 else None


def backbone_blocks(backbone):
    """The Transformer blocks of an encoder, bottom to top.

    `keras_llm.models.BERT` keeps them in `blocks`, keras-hub's
    `BertBackbone` (and its other encoders) in `transformer_layers`.

    Args:
        backbone: an encoder model.

    Returns:
        A list of layers (empty when the model names none).
    """
    for name in ("blocks", "transformer_layers"):
        blocks = getattr(backbone, name, None)
        if blocks:
            return list(blocks)
    return []


def backbone_vocabulary_size(backbone):
    """The number of token ids of an encoder's token embedding.

    Args:
        backbone: an encoder with a `vocabulary_size` or a
            `token_embedding` layer.

    Returns:
        An int, or `None` when the model shows neither.
    """
    size = getattr(backbone, "vocabulary_size", None)
    if isinstance(size, (int, np.integer)):
        return int(size)
    embedding = getattr(backbone, "token_embedding", None)
    if embedding is not None and hasattr(embedding, "input_dim"):
        return int(embedding.input_dim)
    return None


def _load_keras_backbone(path):
    # Registers keras_llm's serializable classes before deserialising.
    import keras_hub  # noqa: F401

    import keras_llm.layers  # noqa: F401
    import keras_llm.models  # noqa: F401

    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as e:
        raise UserError(
            f"cannot load backbone {path}: {_one_line(e)}; give a .keras "
            "file saved by keras_llm or a keras-hub preset folder"
        ) from e
    return model


def _load_preset_backbone(path):
    import keras_hub

    try:
        return keras_hub.models.Backbone.from_preset(path)
    except Exception as e:
        raise UserError(
            f"cannot load the keras-hub preset {path}: {_one_line(e)}"
        ) from e


def _load_tokenizer(path):
    from keras_llm.data.vocab import load_tokenizer

    if _is_preset_dir(path):
        import keras_hub

        try:
            return keras_hub.models.Tokenizer.from_preset(path)
        except Exception as e:
            raise UserError(
                f"cannot load the tokenizer of the keras-hub preset {path}: "
                f"{_one_line(e)}"
            ) from e
    return load_tokenizer(path)


def load_backbone(path, tokenizer=None):
    """Loads a pretrained encoder and its tokenizer for fine-tuning.

    Args:
        path: a `.keras` file holding a keras_llm encoder (a
            `keras_llm.models.BERT`, or a model holding one: a
            `BertPretrainer`, or a task model saved by `finetune`), a
            folder holding `model.keras` or `backbone.keras` (as written by
            `finetune` and `examples/pretrain_mlm.py`), or a keras-hub
            preset saved on disk (a folder with `config.json` and
            `metadata.json`, e.g. from `BertBackbone.save_to_preset`).
        tokenizer: a tokenizer file written by
            `keras_llm.data.save_tokenizer`, a keras-hub preset folder, or
            `None` for the `tokenizer.json` next to a `.keras` backbone or
            the preset's own tokenizer. Defaults to `None`.

    Returns:
        `(backbone, tokenizer, info)`: the encoder (a functional model
        taking `{"token_ids", "segment_ids", "padding_mask"}`), a keras-hub
        tokenizer whose vocabulary matches its token embedding, and a dict
        (`kind` "keras_llm" or "keras_hub", `path`, `class`, `tokenizer`,
        `parameters`, `blocks`, `vocabulary_size`).

    Raises:
        UserError: for a missing or unreadable backbone or tokenizer, a
            model that is not such an encoder, or a tokenizer whose
            vocabulary size differs from the embedding's.

    Example:

    ```python
    import os
    import tempfile

    import keras_llm
    from keras_llm.finetuning import load_backbone

    folder = tempfile.mkdtemp()
    tokenizer = keras_llm.data.learn_mlm_tokenizer(
        ["the cat sat on the mat", "a dog ran"], vocabulary_size=30
    )
    keras_llm.data.save_tokenizer(tokenizer, folder)
    bert = keras_llm.models.BERT(
        vocabulary_size=tokenizer.vocabulary_size(), num_layers=1,
        num_heads=2, hidden_dim=8, max_sequence_length=16,
    )
    bert.save(os.path.join(folder, "model.keras"))
    backbone, tokenizer, info = load_backbone(
        os.path.join(folder, "model.keras")
    )
    print(info["kind"], len(backbone.blocks))  # keras_llm 1
    ```
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise UserError(f"backbone {path} does not exist")
    if _is_preset_dir(path):
        kind = "keras_hub"
        model = _load_preset_backbone(path)
        default_tokenizer = path
    else:
        kind = "keras_llm"
        file = path
        if os.path.isdir(path):
            found = [
                os.path.join(path, f)
                for f in MODEL_FILES
                if os.path.isfile(os.path.join(path, f))
            ]
            if not found:
                names = " or ".join(MODEL_FILES)
                raise UserError(
                    f"backbone folder {path} holds no {names} and is not a "
                    "keras-hub preset (no config.json)"
                )
            file = found[0]
        model = _load_keras_backbone(file)
        default_tokenizer = os.path.join(
            os.path.dirname(file), "tokenizer.json"
        )
    backbone = _find_encoder(model)
    if backbone is None:
        raise UserError(
            f"backbone {path} ({type(model).__name__}) is not an encoder "
            f"taking {', '.join(BACKBONE_INPUTS)}; give a BERT-style encoder"
        )
    vocabulary_size = backbone_vocabulary_size(backbone)
    if vocabulary_size is None:
        raise UserError(
            f"backbone {path} ({type(backbone).__name__}) has no "
            "token_embedding to check the tokenizer against"
        )

    tokenizer_path = os.fspath(tokenizer) if tokenizer else default_tokenizer
    if (
        not tokenizer
        and kind == "keras_llm"
        and not os.path.isfile(tokenizer_path)
    ):
        raise UserError(
            f"no tokenizer for backbone {path}: {tokenizer_path} does not "
            "exist; pass --tokenizer"
        )
    if tokenizer and not os.path.exists(tokenizer_path):
        raise UserError(f"tokenizer {tokenizer_path} does not exist")
    tokenizer = _load_tokenizer(tokenizer_path)
    if tokenizer.vocabulary_size() != vocabulary_size:
        raise UserError(
            f"tokenizer {tokenizer_path} has {tokenizer.vocabulary_size()} "
            f"tokens but the backbone's embedding has {vocabulary_size}; "
            "pass the tokenizer the backbone was pretrained with"
        )
    info = {
        "kind": kind,
        "path": path,
        "class": type(backbone).__name__,
        "tokenizer": tokenizer_path,
        "parameters": int(backbone.count_params()),
        "blocks": len(backbone_blocks(backbone)),
        "vocabulary_size": vocabulary_size,
    }
    return backbone, tokenizer, info


# --- Task model and trainable blocks -----------------------------------


def _sequence_output(outputs):
    if isinstance(outputs, dict):
        if "sequence_output" not in outputs:
            raise UserError(
                "the backbone returns a dict without 'sequence_output' "
                f"(keys {sorted(outputs)}); give an encoder"
            )
        return outputs["sequence_output"]
    return outputs


def build_task_model(
    backbone,
    task,
    num_classes=None,
    pooling="cls",
    dropout=0.1,
    max_answer_length=30,
):
    """Puts a task head on an encoder's sequence output.

    The functional model takes `{"token_ids", "segment_ids",
    "padding_mask"}` (int32 `(B, T)`), plus `"context_mask"` for `qa`:
    1 on the context tokens and on `[CLS]` (position 0, the target of a
    window that does not hold the answer).

    Args:
        backbone: an encoder taking that dict and returning `(B, T,
            hidden)` (or a dict with `"sequence_output"`, as keras-hub's
            `BertBackbone` does).
        task: `"classification"` (`SequenceClassificationHead`), `"pair"`
            (`PairClassificationHead` with `[CLS]` pooling) or `"qa"`
            (`SpanQAHead`).
        num_classes: int. Classes of the classification tasks. Defaults to
            `None`.
        pooling: `"cls"` or `"mean"`, for `classification`. Defaults to
            `"cls"`.
        dropout: float. Dropout of the classification heads. Defaults to
            `0.1`.
        max_answer_length: int. The span head's decoding limit. Defaults to
            `30`.

    Returns:
        A `keras.Model`: `(B, num_classes)` logits, or for `qa` a dict of
        `"start_logits"` and `"end_logits"`, `(B, T)` each.

    Example:

    ```python
    import numpy as np
    import keras_llm
    from keras_llm.finetuning import build_task_model

    bert = keras_llm.models.BERT(
        vocabulary_size=30, num_layers=1, num_heads=2, hidden_dim=8,
        max_sequence_length=16,
    )
    model = build_task_model(bert, "classification", num_classes=3)
    logits = model({
        "token_ids": np.array([[2, 7, 3, 0]], "int32"),
        "segment_ids": np.zeros((1, 4), "int32"),
        "padding_mask": np.array([[1, 1, 1, 0]], "int32"),
    })  # (1, 3)
    ```
    """
    from keras_llm.layers.heads import PairClassificationHead
    from keras_llm.layers.heads import SequenceClassificationHead
    from keras_llm.layers.heads import SpanQAHead

    if task not in TASKS:
        raise ValueError(
            f"`build_task_model` expects `task` to be one of {TASKS}. "
            f"Received: task={task!r}."
        )
    names = BACKBONE_INPUTS + ((CONTEXT_MASK,) if task == "qa" else ())
    inputs = {
        name: keras.Input(shape=(None,), dtype="int32", name=name)
        for name in names
    }
    sequence = _sequence_output(
        backbone({name: inputs[name] for name in BACKBONE_INPUTS})
    )
    name = HEAD_NAMES[task]
    if task == "classification":
        head = SequenceClassificationHead(
            num_classes, pooling=pooling, dropout=dropout, name=name
        )
        outputs = head(sequence, padding_mask=inputs["padding_mask"])
    elif task == "pair":
        head = PairClassificationHead(
            num_classes, pooling="cls", dropout=dropout, name=name
        )
        outputs = head(
            sequence,
            segment_ids=inputs["segment_ids"],
            padding_mask=inputs["padding_mask"],
        )
    else:
        head = SpanQAHead(max_answer_length=max_answer_length, name=name)
        outputs = head(sequence, context_mask=inputs[CONTEXT_MASK])
    return keras.Model(inputs, outputs, name=f"{task}_model")


def _set_trainable(layer, value):
    """`layer.trainable = value`, also for the layer's sublayers when its
    own flag already equals `value`.

    On TensorFlow, `layer.trainable = True` on a layer whose flag is
    already `True` is skipped (TF's `AutoTrackable.__setattr__`
    short-circuits assigning an attribute the object it already holds), so
    sublayers frozen one by one would stay frozen. Flipping first makes
    the setter run and reach every sublayer.
    """
    layer.trainable = not value
    layer.trainable = value


def set_trainable_blocks(backbone, top):
    """Freezes an encoder except its top `top` Transformer blocks.

    `top=0` freezes the whole backbone (`backbone.trainable = False`).
    Otherwise the backbone stays trainable, each of its layers is frozen
    but the last `top` of `backbone_blocks(backbone)`: the embeddings,
    their normalisation, the lower blocks and anything after the blocks
    keep their weights. Recompile the model afterwards.

    Args:
        backbone: an encoder with `blocks` or `transformer_layers`.
        top: int. Blocks to leave trainable, counted from the top.

    Returns:
        The list of trainable blocks.

    Raises:
        UserError: if `top` exceeds the number of blocks.
    """
    blocks = backbone_blocks(backbone)
    if top > len(blocks):
        raise UserError(
            f"--unfreeze-top {top} exceeds the backbone's {len(blocks)} "
            "Transformer blocks"
        )
    if not top:
        _set_trainable(backbone, False)
        return []
    unfrozen = blocks[len(blocks) - top :]
    _set_trainable(backbone, True)
    for layer in backbone.layers:
        _set_trainable(layer, any(layer is block for block in unfrozen))
    return unfrozen


# --- Data ---------------------------------------------------------------


def _arrays(dataset):
    """Concatenates a finite `(features, labels)` dataset into numpy."""
    features, labels = [], []
    for x, y in dataset.as_numpy_iterator():
        features.append(x)
        labels.append(y)
    return (
        {k: np.concatenate([f[k] for f in features]) for k in features[0]},
        np.concatenate(labels),
    )


def _in_memory_dataset(features, labels, batch_size, shuffle, seed):
    """Batches of int32 model inputs and labels held in memory.

    The examples are tokenized and packed once (the task pipelines do it
    per batch, and building their tokenizer graph costs a fraction of a
    second for every epoch's iterator), then shuffled each epoch.
    """
    import tensorflow as tf

    features = {k: np.asarray(v).astype("int32") for k, v in features.items()}
    ds = tf.data.Dataset.from_tensor_slices((features, labels))
    if shuffle:
        count = len(next(iter(features.values())))
        ds = ds.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _report_manifest(report):
    return {
        "file": report.file,
        "read": report.read,
        "kept": report.kept,
        "skipped": len(report.skipped),
        "skipped_by_reason": report.counts,
        "skipped_rows": [
            [line, reason]
            for line, reason in report.skipped[:MANIFEST_SKIPPED_ROWS]
        ],
        "blank_lines": report.blank_lines,
    }


def _print_report(console, split, report):
    from rich.table import Table
    from rich.text import Text

    # Text, not markup: paths, labels and reasons may hold brackets.
    style = "yellow" if report.skipped else "green"
    console.print(Text.assemble((split, style), ": ", report.summary()))
    if not report.skipped:
        return
    table = Table(show_header=True, box=None, padding=(0, 2))
    table.add_column("line")
    table.add_column("reason")
    for line, reason in report.skipped[:PRINTED_SKIPPED_ROWS]:
        table.add_row(Text(str(line)), Text(reason))
    more = len(report.skipped) - PRINTED_SKIPPED_ROWS
    if more > 0:
        table.add_row("...", f"and {more} more (all in manifest.json)")
    console.print(table)


def _check_tokenizer(tokenizer, task):
    import keras_hub

    from keras_llm.data.tasks import special_token_ids

    try:
        special_token_ids(tokenizer)
    except ValueError as e:
        raise UserError(f"the tokenizer cannot pack examples: {e}") from e
    if task == "qa" and not isinstance(
        tokenizer, keras_hub.tokenizers.WordPieceTokenizer
    ):
        raise UserError(
            "--task qa maps answers to tokens through WordPiece offsets; the "
            f"tokenizer is a {type(tokenizer).__name__}"
        )


def _concatenate(first, second):
    """Two `TextClassificationData` (or `TextPairData`) as one."""
    return dataclasses.replace(
        first,
        **{
            f.name: np.concatenate(
                [getattr(first, f.name), getattr(second, f.name)]
            )
            if f.name == "label_ids"
            else list(getattr(first, f.name)) + list(getattr(second, f.name))
            for f in dataclasses.fields(first)
            if f.name != "labels"
        },
    )


def _classification_data(config, tokenizer):
    from keras_llm.data import tasks

    labels = list(config.labels) or None
    if config.task == "classification":
        train, train_report = tasks.read_sentiment(config.train, labels=labels)
        val, val_report = tasks.read_sentiment(
            config.validation, labels=train.labels
        )

        def make(data):
            return tasks.classification_dataset(
                data.texts,
                data.label_ids,
                tokenizer,
                config.sequence_length,
                config.batch_size,
                shuffle=False,  # shuffled in memory, each epoch
            )
    else:
        kwargs = {"labels": labels} if labels else {}
        train, train_report = tasks.read_entailment(config.train, **kwargs)
        val, val_report = tasks.read_entailment(
            config.validation, labels=train.labels
        )

        def make(data):
            return tasks.pair_dataset(
                data.premises,
                data.hypotheses,
                data.label_ids,
                tokenizer,
                config.sequence_length,
                config.batch_size,
                shuffle=False,  # shuffled in memory, each epoch
            )

    # One pipeline for both files: tokenized and packed once, then held
    # in memory (see `_in_memory_dataset`).
    features, label_ids = _arrays(make(_concatenate(train, val)))
    split = len(train)
    train_ds, val_ds = (
        _in_memory_dataset(
            {k: features[k][part] for k in BACKBONE_INPUTS},
            label_ids[part],
            config.batch_size,
            shuffle,
            config.seed,
        )
        for part, shuffle in (
            (slice(None, split), True),
            (slice(split, None), False),
        )
    )
    return {
        "train": train,
        "validation": val,
        "reports": {"train": train_report, "validation": val_report},
        "labels": list(train.labels),
        "train_ds": train_ds,
        "val_ds": val_ds,
        "train_count": len(train),
        "counts": {
            "train_examples": len(train),
            "validation_examples": len(val),
            "classes": len(train.labels),
        },
    }


def _qa_features(config, tokenizer, examples, path):
    from keras_llm.data.tasks import squad_features

    try:
        return squad_features(
            examples,
            tokenizer,
            sequence_length=config.sequence_length,
            stride=config.stride,
            max_query_length=config.max_query_length,
        )
    except ValueError as e:
        raise UserError(f"{path}: {_one_line(e)}") from e


def _qa_dataset(features, config, shuffle):
    # [CLS] is the target of windows without the answer: let the head put
    # logits there during training (decoding masks it out again).
    context_mask = features[CONTEXT_MASK].copy()
    context_mask[:, 0] = True
    inputs = {k: features[k] for k in BACKBONE_INPUTS}
    inputs[CONTEXT_MASK] = context_mask
    targets = {
        "start_logits": features["start_positions"],
        "end_logits": features["end_positions"],
    }
    return _in_memory_dataset(
        inputs, targets, config.batch_size, shuffle, config.seed
    )


def _qa_data(config, tokenizer):
    import warnings

    from keras_llm.data import tasks

    train, train_report = tasks.read_squad(config.train)
    val, val_report = tasks.read_squad(config.validation)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_features = _qa_features(config, tokenizer, train, config.train)
        val_features = _qa_features(config, tokenizer, val, config.validation)
    notes = [str(w.message) for w in caught]
    return {
        "train": train,
        "validation": val,
        "reports": {"train": train_report, "validation": val_report},
        "labels": None,
        "train_features": train_features,
        "val_features": val_features,
        "train_ds": _qa_dataset(train_features, config, True),
        "val_ds": _qa_dataset(val_features, config, False),
        "train_count": len(train_features["start_positions"]),
        "notes": notes,
        "counts": {
            "train_examples": len(train),
            "validation_examples": len(val),
            "train_windows": len(train_features["start_positions"]),
            "validation_windows": len(val_features["start_positions"]),
            "train_windows_with_answer": int(
                np.sum(train_features["start_positions"] > 0)
            ),
        },
    }


# --- Training and scoring -----------------------------------------------


def _compile(model, config, optimizer):
    losses = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if config.task == "qa":
        loss = {"start_logits": losses, "end_logits": losses}
        metrics = {
            "start_logits": [
                keras.metrics.SparseCategoricalAccuracy(name="accuracy")
            ],
            "end_logits": [
                keras.metrics.SparseCategoricalAccuracy(name="accuracy")
            ],
        }
    else:
        loss = losses
        metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    model.compile(
        optimizer=optimizer,
        loss=loss,
        metrics=metrics,
        jit_compile=config.jit_compile,
    )


def _optimizer(config, learning_rate):
    from keras_llm.optimizers import NO_DECAY_NAMES
    from keras_llm.optimizers import AdamW

    return AdamW(
        learning_rate=learning_rate,
        weight_decay=config.weight_decay,
        no_decay_names=NO_DECAY_NAMES,
    )


def _score(model, config, data, history):
    """Validation metrics of the model as it is after a phase."""
    if config.task == "qa":
        return _score_qa(model, config, data)
    # The last epoch's validation pass scored the model as it is now.
    truth = np.asarray(data["validation"].label_ids)
    majority = int(np.argmax(np.bincount(data["train"].label_ids)))
    return {
        "accuracy": history["val_accuracy"][-1],
        "majority_baseline": float(np.mean(truth == majority)),
        "majority_label": data["labels"][majority],
        "examples": int(len(truth)),
    }


def decode_predictions(head, features, start_logits, end_logits):
    """Answer text per question from a span model's logits.

    A start must lie where its window gives the token the most context
    (`token_is_max_context`); both ends must be context tokens; the span
    is the best one of `head.decode` (at most `head.max_answer_length`
    tokens) in the question's best-scoring window.

    Args:
        head: the model's `SpanQAHead`.
        features: the dict of `keras_llm.data.tasks.squad_features`.
        start_logits: `(N, T)` start logits of the windows.
        end_logits: `(N, T)` end logits.

    Returns:
        A dict `{question id: answer text}`.
    """
    from keras_llm.data.tasks import decode_answers

    context = features[CONTEXT_MASK]
    start_ok = context & features["token_is_max_context"]
    start_logits = np.where(start_ok, np.asarray(start_logits), -np.inf)
    start, end, score = head.decode(start_logits, end_logits, context)
    return decode_answers(features, start, end, scores=score)


def _score_qa(model, config, data):
    from keras_llm.data.tasks import squad_metrics

    outputs = model.predict(data["val_ds"], verbose=0)
    head = model.get_layer(HEAD_NAMES["qa"])
    answers = decode_predictions(
        head,
        data["val_features"],
        outputs["start_logits"],
        outputs["end_logits"],
    )
    metrics = squad_metrics(answers, data["validation"])
    data["predictions"] = answers
    return {
        "exact_match": float(metrics["exact_match"]),
        "f1": float(metrics["f1"]),
        "questions": int(metrics["count"]),
        "missing": int(metrics["missing"]),
    }


def _fit(model, config, data, epochs, initial_epoch, log_dir, callbacks):
    history = model.fit(
        data["train_ds"],
        epochs=initial_epoch + epochs,
        initial_epoch=initial_epoch,
        validation_data=data["val_ds"],
        callbacks=[
            keras.callbacks.TensorBoard(log_dir, update_freq="epoch"),
            *callbacks,
        ],
        shuffle=False,  # the training dataset shuffles itself
        verbose=config.verbose,
    )
    return {k: [float(v) for v in vs] for k, vs in history.history.items()}


def _count_weights(weights):
    return int(sum(np.prod(w.shape) for w in weights))


def finetune(config=None, callbacks=None, **options):
    """Fine-tunes a pretrained encoder on a task and writes the run folder.

    Loads the backbone (`load_backbone`), reads the task files (malformed
    rows are skipped, printed and counted), puts a head on the backbone
    (`build_task_model`), trains the head with the backbone frozen, then,
    with `unfreeze_top > 0`, the top blocks too at a lower learning rate
    (`set_trainable_blocks`), scoring the validation file after each phase.

    Args:
        config: a `FinetuneConfig`, or `None` to build one from `options`.
        callbacks: extra Keras callbacks for the `fit` of each phase (for
            example `keras.callbacks.EarlyStopping`). Defaults to `None`.
        **options: `FinetuneConfig` fields (for example `epochs=2`).

    Returns:
        A dict with `model` (backbone and head, as saved: every layer
        trainable again and compiled with a fresh optimizer), `tokenizer`,
        `metrics`
        (per phase: `"head"`, and `"unfreeze"` when it ran; each with the
        validation scores, the last training and validation loss and the
        trainable parameter count), `history` (per phase), `reports` (the
        `ReadReport`s of `"train"` and `"validation"`), `labels`,
        `predictions` (QA answers of the validation questions), `paths`
        and `manifest`.

    Raises:
        UserError: for a bad option, backbone, tokenizer or task file.

    Example:

    ```python
    import os
    import tempfile

    import keras_llm
    from keras_llm.finetuning import finetune

    folder = tempfile.mkdtemp()
    rows = ["text,label"] + [
        f"{word} film {i},{label}"
        for i in range(12)
        for word, label in (("good", "pos"), ("bad", "neg"))
    ]
    with open(os.path.join(folder, "train.csv"), "w") as f:
        f.write("\\n".join(rows))
    texts = [row.split(",")[0] for row in rows[1:]]
    tokenizer = keras_llm.data.learn_mlm_tokenizer(texts, vocabulary_size=50)
    keras_llm.data.save_tokenizer(tokenizer, folder)
    keras_llm.models.BERT(
        vocabulary_size=tokenizer.vocabulary_size(), num_layers=2,
        num_heads=2, hidden_dim=16, max_sequence_length=16,
    ).save(os.path.join(folder, "model.keras"))

    result = finetune(
        backbone=os.path.join(folder, "model.keras"),
        task="classification",
        train=os.path.join(folder, "train.csv"),
        validation=os.path.join(folder, "train.csv"),
        sequence_length=8, batch_size=8, epochs=2, unfreeze_top=1,
        unfreeze_epochs=1, unfreeze_learning_rate=1e-4,
        out=os.path.join(folder, "run"), jit_compile=False, verbose=0,
    )
    print(result["metrics"]["unfreeze"]["accuracy"])
    ```
    """
    if config is None:
        config = FinetuneConfig(**options)
    elif options:
        config = dataclasses.replace(config, **options)
    config.validate()
    started = time.time()
    keras.utils.set_random_seed(config.seed)
    return _finetune(config, started, list(callbacks or []))


def _finetune(config, started, callbacks):
    from rich.console import Console
    from rich.text import Text

    from keras_llm.data.vocab import save_tokenizer
    from keras_llm.pretraining import versions

    console = Console()
    backbone, tokenizer, info = load_backbone(config.backbone, config.tokenizer)
    max_length = getattr(backbone, "max_sequence_length", None)
    if isinstance(max_length, int) and config.sequence_length > max_length:
        raise UserError(
            f"--sequence-length {config.sequence_length} exceeds the "
            f"backbone's max_sequence_length {max_length}"
        )
    blocks = backbone_blocks(backbone)
    if config.unfreeze_top > len(blocks):
        raise UserError(
            f"--unfreeze-top {config.unfreeze_top} exceeds the backbone's "
            f"{len(blocks)} Transformer blocks"
        )
    _check_tokenizer(tokenizer, config.task)

    # --- Data ---
    if config.task == "qa":
        data = _qa_data(config, tokenizer)
    else:
        data = _classification_data(config, tokenizer)
    for split in ("train", "validation"):
        _print_report(console, split, data["reports"][split])
    for note in data.get("notes", []):
        console.print(Text.assemble(("note", "yellow"), ": ", note))

    # --- Model ---
    labels = data["labels"]
    model = build_task_model(
        backbone,
        config.task,
        num_classes=len(labels) if labels else None,
        pooling=config.pooling,
        dropout=config.dropout,
        max_answer_length=config.max_answer_length,
    )
    console.print(
        Text.assemble(
            ("keras-llm finetune", "bold"),
            f": {config.task} on a {info['parameters']:,}-parameter "
            f"{info['class']} ({info['kind']}, {len(blocks)} blocks) from "
            f"{info['path']}" + (f", {len(labels)} labels" if labels else ""),
        )
    )

    out = config.out
    os.makedirs(out, exist_ok=True)
    paths = {
        "model": os.path.join(out, "model.keras"),
        "tokenizer": os.path.join(out, "tokenizer.json"),
        "metrics": os.path.join(out, "metrics.json"),
        "tensorboard": os.path.join(out, "logs"),
        "manifest": os.path.join(out, "manifest.json"),
    }
    if config.task == "qa":
        paths["predictions"] = os.path.join(out, "predictions.json")

    # --- Phase 1: frozen backbone, head only ---
    metrics, history = {}, {}
    epoch = 0
    if config.epochs:
        set_trainable_blocks(backbone, 0)
        _compile(model, config, _optimizer(config, config.learning_rate))
        trainable = _count_weights(model.trainable_weights)
        console.print(
            f"phase 1: backbone frozen, training the head "
            f"({trainable:,} parameters) for {config.epochs} epochs at "
            f"learning rate {config.learning_rate:g}",
            highlight=False,
        )
        history["head"] = _fit(
            model,
            config,
            data,
            config.epochs,
            epoch,
            paths["tensorboard"],
            callbacks,
        )
        epoch += config.epochs
        metrics["head"] = _phase_metrics(
            model, config, data, history["head"], trainable
        )

    # --- Phase 2: top blocks unfrozen at a lower learning rate ---
    if config.unfreeze_top:
        set_trainable_blocks(backbone, config.unfreeze_top)
        steps = config.unfreeze_epochs * math.ceil(
            data["train_count"] / config.batch_size
        )
        from keras_llm.optimizers import LinearDecayWithWarmup

        schedule = LinearDecayWithWarmup(
            config.unfreeze_learning_rate,
            warmup_steps=int(config.warmup_fraction * steps),
            decay_steps=max(steps, 1),
        )
        _compile(model, config, _optimizer(config, schedule))
        trainable = _count_weights(model.trainable_weights)
        console.print(
            f"phase 2: top {config.unfreeze_top} of {len(blocks)} blocks "
            f"unfrozen ({trainable:,} trainable parameters), "
            f"{config.unfreeze_epochs} epochs at peak learning rate "
            f"{config.unfreeze_learning_rate:g}",
            highlight=False,
        )
        history["unfreeze"] = _fit(
            model,
            config,
            data,
            config.unfreeze_epochs,
            epoch,
            paths["tensorboard"],
            callbacks,
        )
        metrics["unfreeze"] = _phase_metrics(
            model, config, data, history["unfreeze"], trainable
        )

    # --- Outputs ---
    # Saved as a plain model: every layer trainable, a fresh optimizer
    # built for all of them, so `load_model` restores it without warnings
    # (the per-block trainable flags are not part of a model's config).
    _set_trainable(backbone, True)
    last_rate = (
        config.unfreeze_learning_rate
        if config.unfreeze_top
        else config.learning_rate
    )
    _compile(model, config, _optimizer(config, last_rate))
    model.optimizer.build(model.trainable_variables)
    model.save(paths["model"])
    save_tokenizer(tokenizer, paths["tokenizer"])
    final = metrics[list(metrics)[-1]]
    metrics_file = {
        "task": config.task,
        "labels": labels,
        "phases": metrics,
        "final": final,
    }
    with open(paths["metrics"], "w", encoding="utf-8") as f:
        json.dump(metrics_file, f, indent=2)
    if config.task == "qa":
        with open(paths["predictions"], "w", encoding="utf-8") as f:
            json.dump(data["predictions"], f, indent=2, ensure_ascii=False)
    reports = data["reports"]
    manifest = {
        "stage": "finetune",
        "inputs": {
            "backbone": info,
            "train": config.train,
            "validation": config.validation,
        },
        "reports": {k: _report_manifest(r) for k, r in reports.items()},
        "counts": {
            **data["counts"],
            "skipped_train_rows": len(reports["train"].skipped),
            "skipped_validation_rows": len(reports["validation"].skipped),
            "parameters": int(model.count_params()),
        },
        "labels": labels,
        "options": dataclasses.asdict(config),
        "seed": config.seed,
        "versions": versions(),
        "metrics": metrics,
        "notes": data.get("notes", []),
        "seconds": time.time() - started,
        "outputs": {k: os.path.basename(v) for k, v in paths.items()},
    }
    with open(paths["manifest"], "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, default=str)
    _print_table(console, config, metrics, reports, paths, started)
    return {
        "model": model,
        "tokenizer": tokenizer,
        "metrics": metrics,
        "history": history,
        "reports": reports,
        "labels": labels,
        "predictions": data.get("predictions"),
        "paths": paths,
        "manifest": manifest,
    }


def _phase_metrics(model, config, data, history, trainable):
    scores = _score(model, config, data, history)
    scores["train_loss"] = history["loss"][-1]
    if "val_loss" in history:
        scores["validation_loss"] = history["val_loss"][-1]
    scores["trainable_parameters"] = trainable
    return scores


def _print_table(console, config, metrics, reports, paths, started):
    from rich.table import Table

    table = Table(title=f"fine-tuning finished ({config.task})")
    table.add_column("what")
    for phase in metrics:
        table.add_column(
            "head only"
            if phase == "head"
            else f"top {config.unfreeze_top} unfrozen"
        )
    rows = (
        [("exact match", "exact_match", "{:.1f}"), ("F1", "f1", "{:.1f}")]
        if config.task == "qa"
        else [
            ("validation accuracy", "accuracy", "{:.4f}"),
            ("majority baseline", "majority_baseline", "{:.4f}"),
        ]
    )
    rows += [
        ("train loss", "train_loss", "{:.4f}"),
        ("validation loss", "validation_loss", "{:.4f}"),
        ("trainable parameters", "trainable_parameters", "{:,}"),
    ]
    for label, key, fmt in rows:
        table.add_row(
            label,
            *(
                fmt.format(m[key]) if key in m else "-"
                for m in metrics.values()
            ),
        )
    console.print(table)
    for split, report in reports.items():
        console.print(
            f"{split}: {report.summary()}", highlight=False, markup=False
        )
    console.print(f"time: {time.time() - started:.0f} s", highlight=False)
    for key, path in paths.items():
        console.print(f"{key}: {path}", highlight=False, markup=False)
