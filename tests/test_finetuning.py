"""Fine-tuning: frozen and partly unfrozen phases, every task, both kinds
of backbone, and the errors a user can cause."""

import json
import os
import warnings

import keras
import numpy as np
import pytest

import keras_llm
from keras_llm.errors import UserError
from keras_llm.finetuning import FinetuneConfig
from keras_llm.finetuning import backbone_blocks
from keras_llm.finetuning import build_task_model
from keras_llm.finetuning import finetune
from keras_llm.finetuning import load_backbone
from keras_llm.finetuning import set_trainable_blocks

POSITIVE = ("good", "great", "fine", "nice")
NEGATIVE = ("bad", "awful", "poor", "dull")
FILLER = ("the", "film", "was", "a", "story", "of", "plot", "and", "it")
CONTEXTS = (
    "the cat sat on the mat . the dog ran to the park .",
    "anna went to paris in may . bob stayed home in june .",
    "the red ball is big . the blue box is small .",
)
QUESTIONS = (
    # (context index, question, answer)
    (0, "where did the dog run", "the park"),
    (0, "where did the cat sit", "the mat"),
    (1, "where did anna go", "paris"),
    (1, "when did bob stay home", "june"),
    (2, "what is big", "the red ball"),
    (2, "what is small", "the blue box"),
)


def _sentence(rng, label):
    words = list(rng.choice(FILLER, 2))
    words += list(rng.choice(POSITIVE if label else NEGATIVE, 2))
    rng.shuffle(words)
    return " ".join(words)


def write_sentiment(path, count, seed, extra_rows=()):
    """A separable toy sentiment CSV: two sentiment words per text."""
    rng = np.random.default_rng(seed)
    rows = ["text,label"]
    for i in range(count):
        label = i % 2
        rows.append(f"{_sentence(rng, label)},{'pos' if label else 'neg'}")
    rows.extend(extra_rows)
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def write_pairs(path, count, seed, extra_rows=()):
    rng = np.random.default_rng(seed)
    labels = ("entailment", "neutral", "contradiction")
    rows = []
    for i in range(count):
        premise = " ".join(rng.choice(FILLER, 4))
        hypothesis = " ".join(rng.choice(FILLER, 3))
        rows.append(
            {
                "premise": premise,
                "hypothesis": hypothesis,
                "label": labels[i % 3],
            }
        )
    lines = [json.dumps(r) for r in rows] + list(extra_rows)
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def write_squad(path, malformed=()):
    paragraphs = []
    for c, context in enumerate(CONTEXTS):
        qas = []
        for q, (ci, question, answer) in enumerate(QUESTIONS):
            if ci != c:
                continue
            start = context.index(answer)
            qas.append(
                {
                    "id": f"q{q}",
                    "question": question,
                    "answers": [{"text": answer, "answer_start": start}],
                }
            )
        paragraphs.append({"context": context, "qas": qas})
    paragraphs[0]["qas"].extend(malformed)
    path.write_text(json.dumps({"data": [{"paragraphs": paragraphs}]}))
    return str(path)


def make_tokenizer():
    """A WordPiece tokenizer whose vocabulary has every test word whole."""
    import keras_hub

    texts = [" ".join(POSITIVE + NEGATIVE + FILLER)]
    texts += list(CONTEXTS) + [q for _, q, _ in QUESTIONS]
    words = sorted({w for text in texts for w in text.split()})
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    return keras_hub.tokenizers.WordPieceTokenizer(
        vocabulary=vocabulary, oov_token="[UNK]", dtype="int32"
    )


def write_backbone(folder, hidden_dim=32, num_layers=2):
    """A random-init keras_llm BERT `.keras` and its tokenizer in `folder`."""
    os.makedirs(folder, exist_ok=True)
    tokenizer = make_tokenizer()
    keras_llm.data.save_tokenizer(tokenizer, str(folder))
    keras.utils.set_random_seed(0)
    bert = keras_llm.models.BERT(
        vocabulary_size=tokenizer.vocabulary_size(),
        num_layers=num_layers,
        num_heads=2,
        hidden_dim=hidden_dim,
        intermediate_dim=2 * hidden_dim,
        max_sequence_length=24,
        dropout=0.0,
    )
    path = os.path.join(folder, "model.keras")
    bert.save(path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    return {
        "backbone": write_backbone(root / "bert"),
        "train": write_sentiment(
            root / "train.csv", 64, seed=0, extra_rows=["no label here,"]
        ),
        "validation": write_sentiment(
            root / "val.csv", 32, seed=1, extra_rows=["good film,meh"]
        ),
    }


def _parts(model):
    """Weights of the task model by part: embeddings, each block, head."""
    backbone = next(
        layer for layer in model.layers if isinstance(layer, keras.Model)
    )
    blocks = backbone_blocks(backbone)
    block_ids = {id(w) for b in blocks for w in b.weights}
    head_layers = [
        layer
        for layer in model.layers
        if layer.name.endswith("_head") and not isinstance(layer, keras.Model)
    ]
    parts = {
        "embeddings": [
            np.array(w) for w in backbone.weights if id(w) not in block_ids
        ],
        "head": [np.array(w) for h in head_layers for w in h.weights],
    }
    for i, block in enumerate(blocks):
        parts[f"block_{i}"] = [np.array(w) for w in block.weights]
    return parts


class PartsLog(keras.callbacks.Callback):
    """Weights by part at the start and the end of every `fit`."""

    def __init__(self):
        super().__init__()
        self.phases = []

    def on_train_begin(self, logs=None):
        self._begin = _parts(self.model)

    def on_train_end(self, logs=None):
        self.phases.append((self._begin, _parts(self.model)))


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def _run(files, tmp_path, **options):
    defaults = dict(
        backbone=files["backbone"],
        task="classification",
        train=files["train"],
        validation=files["validation"],
        sequence_length=10,
        batch_size=8,
        dropout=0.0,
        pooling="mean",
        learning_rate=1e-2,
        out=str(tmp_path / "run"),
        jit_compile=False,
        verbose=0,
    )
    defaults.update(options)
    return finetune(**defaults)


def test_frozen_phase_trains_the_head_only_and_separates_sentiment(
    files, tmp_path
):
    log = PartsLog()
    result = _run(files, tmp_path, epochs=6, callbacks=[log])
    ((begin, end),) = log.phases
    # The backbone is the file's, before and after training.
    saved, _, _ = load_backbone(files["backbone"])
    saved_embeddings = [
        np.array(w)
        for w in saved.weights
        if not any(w is v for b in saved.blocks for v in b.weights)
    ]
    assert _same(begin["embeddings"], saved_embeddings)
    for part in ("embeddings", "block_0", "block_1"):
        assert _same(begin[part], end[part]), part
    assert not _same(begin["head"], end["head"])
    head = result["model"].get_layer("classification_head")
    assert result["metrics"]["head"]["trainable_parameters"] == sum(
        int(np.prod(w.shape)) for w in head.weights
    )
    # A separable set: the frozen random encoder's features suffice.
    metrics = result["metrics"]["head"]
    assert metrics["majority_baseline"] == 0.5
    assert metrics["accuracy"] >= 0.9 > metrics["majority_baseline"] + 0.3
    assert "unfreeze" not in result["metrics"]
    # The skipped rows are reported, with line and reason, and counted.
    manifest = json.load(open(result["paths"]["manifest"]))
    assert manifest["reports"]["train"]["skipped"] == 1
    assert manifest["reports"]["train"]["skipped_rows"] == [
        [66, "missing field: 'label'"]
    ]
    assert manifest["reports"]["validation"]["skipped_by_reason"] == {
        "unknown label": 1
    }
    assert manifest["counts"]["train_examples"] == 64
    assert manifest["counts"]["validation_examples"] == 32
    assert manifest["labels"] == ["neg", "pos"]
    metrics_file = json.load(open(result["paths"]["metrics"]))
    assert metrics_file["final"]["accuracy"] == metrics["accuracy"]
    assert os.listdir(result["paths"]["tensorboard"])


def test_unfreeze_top_one_changes_only_the_top_block(files, tmp_path):
    log = PartsLog()
    result = _run(
        files,
        tmp_path,
        epochs=1,
        unfreeze_top=1,
        unfreeze_epochs=1,
        unfreeze_learning_rate=1e-3,
        callbacks=[log],
    )
    (head_begin, head_end), (top_begin, top_end) = log.phases
    for part in ("embeddings", "block_0", "block_1"):
        assert _same(head_begin[part], head_end[part]), part
    assert not _same(head_begin["head"], head_end["head"])
    # Phase 2: the top block and the head move, nothing below them.
    assert _same(head_end["block_1"], top_begin["block_1"])
    assert not _same(top_begin["block_1"], top_end["block_1"])
    assert not _same(top_begin["head"], top_end["head"])
    assert _same(top_begin["block_0"], top_end["block_0"])
    assert _same(top_begin["embeddings"], top_end["embeddings"])
    model = result["model"]
    backbone = model.get_layer("bert")
    head = model.get_layer("classification_head")
    top = sum(int(np.prod(w.shape)) for w in backbone.blocks[1].weights)
    head_size = sum(int(np.prod(w.shape)) for w in head.weights)
    assert result["metrics"]["unfreeze"]["trainable_parameters"] == (
        top + head_size
    )
    assert set(result["history"]) == {"head", "unfreeze"}
    manifest = json.load(open(result["paths"]["manifest"]))
    assert set(manifest["metrics"]) == {"head", "unfreeze"}
    # The saved task model reloads (optimizer included, no warning) and
    # predicts the same.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reloaded = keras.saving.load_model(result["paths"]["model"])
    assert not [w for w in caught if "Skipping variable" in str(w.message)]
    inputs = {
        "token_ids": np.array([[2, 9, 10, 3, 0]], "int32"),
        "segment_ids": np.zeros((1, 5), "int32"),
        "padding_mask": np.array([[1, 1, 1, 1, 0]], "int32"),
    }
    np.testing.assert_allclose(
        reloaded.predict(inputs, verbose=0),
        model.predict(inputs, verbose=0),
        atol=1e-6,
    )
    # The run folder is a backbone for the next fine-tuning: its encoder
    # (with the trained top block) and the tokenizer saved beside it.
    encoder, tokenizer, info = load_backbone(str(tmp_path / "run"))
    assert info["class"] == "BERT" and info["blocks"] == 2
    assert tokenizer.get_vocabulary() == make_tokenizer().get_vocabulary()
    assert _same(
        [np.array(w) for w in encoder.blocks[1].weights], top_end["block_1"]
    )


def test_set_trainable_blocks_in_any_order():
    bert = keras_llm.models.BERT(
        vocabulary_size=20,
        num_layers=3,
        num_heads=2,
        hidden_dim=8,
        max_sequence_length=8,
    )
    model = build_task_model(bert, "classification", num_classes=2)
    head = model.get_layer("classification_head")

    def trainable():
        ids = {id(v) for v in model.trainable_weights}
        owners = {"head": head, **{b.name: b for b in bert.blocks}}
        return {
            name: all(id(w) in ids for w in layer.weights)
            for name, layer in owners.items()
            if any(id(w) in ids for w in layer.weights)
        }

    # The backbone starts trainable: unfreezing must still freeze the rest.
    for top, expected in (
        (1, {"head": True, "block_2": True}),
        (2, {"head": True, "block_1": True, "block_2": True}),
        (0, {"head": True}),
        (1, {"head": True, "block_2": True}),
    ):
        unfrozen = set_trainable_blocks(bert, top)
        assert [b.name for b in unfrozen] == [
            f"block_{i}" for i in range(3 - top, 3)
        ]
        assert trainable() == expected, top
        head_and_blocks = sum(len(b.weights) for b in unfrozen)
        assert len(model.trainable_weights) == head_and_blocks + len(
            head.weights
        )
    with pytest.raises(UserError, match="exceeds the backbone's 3"):
        set_trainable_blocks(bert, 4)


def test_qa_from_a_keras_hub_preset(tmp_path):
    import keras_hub

    vocabulary = make_tokenizer().get_vocabulary()
    tokenizer = keras_hub.models.BertTokenizer(
        vocabulary=vocabulary, lowercase=True
    )
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(vocabulary),
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=32,
    )
    preset = str(tmp_path / "preset")
    backbone.save_to_preset(preset)
    tokenizer.save_to_preset(preset)
    malformed = [
        {
            "id": "outside",
            "question": "where",
            "answers": [{"text": "the mat", "answer_start": 500}],
        },
        {"id": "none", "question": "who", "answers": []},
    ]
    train = write_squad(tmp_path / "train.json", malformed)
    validation = write_squad(tmp_path / "dev.json", malformed[:1])
    log = PartsLog()
    result = finetune(
        backbone=preset,
        task="qa",
        train=train,
        validation=validation,
        sequence_length=20,
        stride=4,
        batch_size=4,
        epochs=1,
        unfreeze_top=1,
        unfreeze_epochs=1,
        max_answer_length=4,
        out=str(tmp_path / "run"),
        jit_compile=False,
        verbose=0,
        callbacks=[log],
    )
    # The preset's blocks are `transformer_layers`; only the top one moved.
    (_, _), (begin, end) = log.phases
    assert not _same(begin["block_1"], end["block_1"])
    assert _same(begin["block_0"], end["block_0"])
    assert _same(begin["embeddings"], end["embeddings"])

    manifest = json.load(open(result["paths"]["manifest"]))
    assert manifest["inputs"]["backbone"]["kind"] == "keras_hub"
    assert manifest["reports"]["train"]["read"] == 8
    assert manifest["reports"]["train"]["skipped_by_reason"] == {
        "answer outside context": 1,
        "no answers": 1,
    }
    assert manifest["counts"]["skipped_validation_rows"] == 1
    # Long contexts are split into several windows.
    assert manifest["counts"]["train_windows"] > 6
    # EM and F1 are those of the written predictions.
    from keras_llm.data.tasks import read_squad
    from keras_llm.data.tasks import squad_metrics

    predictions = json.load(open(result["paths"]["predictions"]))
    examples, _ = read_squad(validation)
    assert set(predictions) == {e.id for e in examples}
    for e in examples:
        assert predictions[e.id] in e.context
    expected = squad_metrics(predictions, examples)
    for phase in ("head", "unfreeze"):
        assert 0 <= result["metrics"][phase]["f1"] <= 100
    final = result["metrics"]["unfreeze"]
    assert final["exact_match"] == pytest.approx(expected["exact_match"])
    assert final["f1"] == pytest.approx(expected["f1"])
    assert final["questions"] == 6


def test_pair_task(files, tmp_path):
    train = write_pairs(
        tmp_path / "train.jsonl", 12, 0, ['{"premise": "a", "label": "-"}']
    )
    validation = write_pairs(tmp_path / "dev.jsonl", 6, 1)
    result = _run(
        files,
        tmp_path,
        task="pair",
        train=train,
        validation=validation,
        sequence_length=16,
        epochs=1,
    )
    assert result["labels"] == ["entailment", "neutral", "contradiction"]
    assert result["model"].get_layer("pair_head").pooling == "cls"
    assert result["model"].output_shape == (None, 3)
    metrics = result["metrics"]["head"]
    assert 0 <= metrics["accuracy"] <= 1
    assert metrics["examples"] == 6
    assert result["reports"]["train"].counts == {"missing field": 1}


def test_bad_backbones_and_options(files, tmp_path):
    def check(message, **options):
        with pytest.raises(UserError, match=message) as info:
            _run(files, tmp_path, **options)
        assert "\n" not in str(info.value)

    check("backbone .*nothing.keras does not exist", backbone="nothing.keras")
    not_keras = tmp_path / "notes.keras"
    not_keras.write_text("hello")
    check("cannot load backbone .*notes.keras", backbone=str(not_keras))
    dense = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    dense.save(str(tmp_path / "dense.keras"))
    check(
        "is not an encoder taking token_ids, segment_ids, padding_mask",
        backbone=str(tmp_path / "dense.keras"),
    )
    check("--task must be one of classification, pair, qa", task="ner")
    check("--train is required", train=None)
    check("--unfreeze-top 3 exceeds the backbone's 2", unfreeze_top=3)
    check("--sequence-length 64 exceeds", sequence_length=64)
    small = keras_llm.data.learn_mlm_tokenizer(["a b c"], vocabulary_size=20)
    keras_llm.data.save_tokenizer(small, str(tmp_path / "small.json"))
    check(
        r"has \d+ tokens but the backbone's embedding has",
        tokenizer=str(tmp_path / "small.json"),
    )
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    os.link(files["backbone"], lonely / "model.keras")
    check("no tokenizer for backbone", backbone=str(lonely))
    with pytest.raises(UserError, match="does not exist"):
        _run(files, tmp_path, train=str(tmp_path / "missing.csv"))


def test_config_flags_validate():
    with pytest.raises(UserError, match="--epochs must be a non-negative"):
        FinetuneConfig(
            backbone="b", train="t", validation="v", epochs=-1
        ).validate()
    with pytest.raises(UserError, match="needs --unfreeze-epochs"):
        FinetuneConfig(
            backbone="b",
            train="t",
            validation="v",
            unfreeze_top=1,
            unfreeze_epochs=0,
        ).validate()
    with pytest.raises(UserError, match="nothing to train"):
        FinetuneConfig(
            backbone="b", train="t", validation="v", epochs=0
        ).validate()
    with pytest.raises(UserError, match="--labels applies"):
        FinetuneConfig(
            backbone="b", train="t", validation="v", task="qa", labels=["x"]
        ).validate()
