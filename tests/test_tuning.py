import json
import math
import os
import shutil

import keras
import keras_tuner
import numpy as np
import pytest

from keras_llm.errors import UserError
from keras_llm.models.gpt import GPT
from keras_llm.optimizers.adamw import AdamW
from keras_llm.tuning import GPTHyperModel
from keras_llm.tuning import TuneConfig
from keras_llm.tuning import gpt_hypermodel
from keras_llm.tuning import make_tuner
from keras_llm.tuning import tune

TINY = dict(num_layers=1, hidden_dim=16, num_heads=2, intermediate_dim=32)
OPTIONS = dict(
    trials=2,
    sequence_length=16,
    tokens_per_trial=512,
    batch_sizes=[4, 8],
    weight_decays=[0.0, 0.1],
    learning_rate_min=1e-4,
    learning_rate_max=1e-2,
    eval_steps=2,
    seed=3,
    jit_compile=False,
    model_overrides=TINY,
    verbose=0,
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran"]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(" ".join(rng.choice(words, 3000)) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def search(corpus, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tune") / "run")
    return tune(corpus=[corpus], out=out, **OPTIONS), out


def test_search_compares_trials_and_picks_the_lowest_val_loss(search):
    result, _ = search
    trials = result["trials"]
    assert [t["trial_id"] for t in trials] == ["0", "1"]
    assert all(t["status"] == "COMPLETED" for t in trials)
    values = [t["hyperparameters"] for t in trials]
    assert values[0] != values[1]
    for hp in values:
        assert set(hp) == {"learning_rate", "batch_size", "weight_decay"}
        assert 1e-4 <= hp["learning_rate"] <= 1e-2
        assert hp["batch_size"] in (4, 8)
        assert hp["weight_decay"] in (0.0, 0.1)
    losses = [t["val_loss"] for t in trials]
    assert all(math.isfinite(x) and x > 0 for x in losses)
    assert losses[0] != losses[1]
    best = min(trials, key=lambda t: t["val_loss"])
    assert result["best_hyperparameters"] == best["hyperparameters"]
    for t in trials:
        b = t["hyperparameters"]["batch_size"]
        assert t["steps"] == 512 // (b * 16)  # the same token budget
        assert t["tokens"] == 512
        assert t["metrics"]["val_loss"] == pytest.approx(t["val_loss"])


def test_search_writes_its_folder(search, corpus):
    result, out = search
    paths = result["paths"]
    with open(paths["best_hyperparameters"]) as f:
        assert json.load(f) == result["best_hyperparameters"]
    with open(paths["trials"]) as f:
        assert json.load(f) == result["trials"]
    with open(paths["plot"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(paths["tensorboard"])) == ["0", "1"]
    for trial_id in ("0", "1"):
        logs = os.path.join(paths["tensorboard"], trial_id, "execution0")
        assert os.listdir(os.path.join(logs, "validation"))
        assert os.path.isfile(
            os.path.join(paths["tuner"], f"trial_{trial_id}", "trial.json")
        )
    with open(paths["manifest"]) as f:
        manifest = json.load(f)
    assert manifest == json.loads(json.dumps(result["manifest"]))
    assert manifest["stage"] == "tune"
    assert manifest["inputs"]["corpus"] == [corpus]
    assert manifest["counts"]["vocabulary_size"] == 15  # 14 chars + [UNK]
    assert manifest["counts"]["trials"] == 2
    assert manifest["options"]["batch_sizes"] == [4, 8]
    assert manifest["options"]["tokens_per_trial"] == 512
    assert manifest["seed"] == 3
    assert manifest["versions"]["keras"] == keras.__version__
    assert manifest["versions"]["keras_tuner"] == keras_tuner.__version__
    results = manifest["results"]
    assert results["best_val_loss"] == min(
        t["val_loss"] for t in result["trials"]
    )
    assert results["best_hyperparameters"] == result["best_hyperparameters"]
    assert results["completed_trials"] == 2 and results["failed_trials"] == 0


def test_trial_val_loss_reproduces_outside_the_tuner(search, corpus):
    """Building and fitting the recorded hyperparameters again gives the
    recorded val_loss and the budgeted number of optimizer updates."""
    from keras_llm.pretraining import prepare_clm_data

    result, _ = search
    config = TuneConfig(corpus=[corpus], **OPTIONS)
    data = prepare_clm_data(config)
    hypermodel = gpt_hypermodel(config, data["tokenizer"].vocabulary_size())
    trial = result["trials"][1]
    hp = keras_tuner.HyperParameters()
    for name, value in trial["hyperparameters"].items():
        hp.Fixed(name, value)
    keras.backend.clear_session()
    model = hypermodel.build(hp)
    history = hypermodel.fit(
        hp, model, data["train_ids"], validation_data=data["val_ids"], verbose=0
    )
    assert int(model.optimizer.iterations) == trial["steps"]
    assert history.history["val_loss"][-1] == pytest.approx(
        trial["val_loss"], rel=1e-4
    )


def test_rerun_replaces_the_earlier_search(search, corpus, tmp_path):
    out = str(tmp_path / "run")
    shutil.copytree(search[1], out)  # a finished 2-trial search
    options = dict(OPTIONS, trials=1, tokens_per_trial=128, batch_sizes=[8])
    result = tune(corpus=[corpus], out=out, **options)
    assert len(result["trials"]) == 1
    assert result["trials"][0]["steps"] == 1
    with open(result["paths"]["trials"]) as f:
        assert len(json.load(f)) == 1
    assert os.listdir(result["paths"]["tensorboard"]) == ["0"]
    trial_dirs = [
        d for d in os.listdir(result["paths"]["tuner"]) if d.startswith("trial")
    ]
    assert trial_dirs == ["trial_0"]
    assert result["manifest"]["options"]["trials"] == 1


def test_build_gives_a_compiled_gpt_with_the_trial_values():
    hypermodel = GPTHyperModel(
        vocabulary_size=15,
        preset="nano",
        model_overrides=TINY,
        sequence_length=16,
        tokens_per_trial=1024,
        batch_sizes=[4, 8],
        weight_decays=[0.0, 0.05],
        seed=0,
        jit_compile=False,
    )
    # A fresh space: the three hyperparameters with their ranges.
    space = keras_tuner.HyperParameters()
    hypermodel.build(space)
    by_name = {p.name: p.get_config() for p in space.space}
    assert set(by_name) == {"learning_rate", "batch_size", "weight_decay"}
    assert by_name["learning_rate"]["sampling"] == "log"
    assert (by_name["learning_rate"]["min_value"]) == 1e-4
    assert by_name["learning_rate"]["max_value"] == 1e-2
    assert by_name["batch_size"]["values"] == [4, 8]
    assert by_name["weight_decay"]["values"] == [0.0, 0.05]

    hp = keras_tuner.HyperParameters()
    hp.Fixed("learning_rate", 3e-3)
    hp.Fixed("batch_size", 8)
    hp.Fixed("weight_decay", 0.05)
    model = hypermodel.build(hp)
    assert isinstance(model, GPT) and model.compiled
    assert model.num_layers == 1 and model.vocabulary_size == 15
    assert model.max_sequence_length >= 16
    optimizer = model.optimizer
    assert isinstance(optimizer, AdamW)
    assert optimizer.weight_decay == pytest.approx(0.05)
    schedule = optimizer._learning_rate
    steps = 1024 // (8 * 16)
    assert schedule.warmup_steps + schedule.decay_steps == steps
    peak = max(float(schedule(s)) for s in range(steps + 1))
    assert peak == pytest.approx(3e-3, rel=1e-5)


@pytest.mark.parametrize(
    "tokens, batch_size, expected",
    [(1024, 4, 16), (1024, 8, 8), (1000, 3, 20), (1024, 128, 1)],
)
def test_token_budget_sets_the_steps(tokens, batch_size, expected):
    hypermodel = GPTHyperModel(
        vocabulary_size=15, sequence_length=16, tokens_per_trial=tokens
    )
    assert hypermodel.steps_for(batch_size) == expected


def test_fit_needs_validation_data():
    hypermodel = GPTHyperModel(vocabulary_size=15, sequence_length=16)
    with pytest.raises(ValueError, match="needs `validation_data`"):
        hypermodel.fit(keras_tuner.HyperParameters(), None, np.zeros(100))


def test_bayesian_tuner_explores_half_the_trials_first(tmp_path):
    hypermodel = GPTHyperModel(vocabulary_size=15, sequence_length=16)
    config = TuneConfig(algorithm="bayesian", trials=6)
    tuner = make_tuner(hypermodel, config, str(tmp_path))
    assert isinstance(tuner, keras_tuner.BayesianOptimization)
    assert tuner.oracle.num_initial_points == 3
    assert tuner.oracle.max_trials == 6
    assert tuner.oracle.objective.name == "val_loss"
    assert tuner.oracle.objective.direction == "min"


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(trials=0), "--trials must be a positive integer"),
        (dict(tokens_per_trial=-5), "--tokens-per-trial must be a positive"),
        (dict(eval_steps=-1), "--eval-steps must be a non-negative"),
        (dict(learning_rate_min=0.0), "--learning-rate-min must be a positive"),
        (
            dict(learning_rate_min=1e-2, learning_rate_max=1e-3),
            "must not exceed --learning-rate-max",
        ),
        (dict(batch_sizes=[]), "--batch-sizes must be one or more positive"),
        (dict(batch_sizes=[8, 0]), "--batch-sizes must be one or more"),
        (dict(weight_decays=[-0.1]), "--weight-decays must be one or more"),
        (dict(algorithm="grid"), "--algorithm must be one of random"),
        (dict(preset="enormous"), "Unknown preset 'enormous'"),
        (dict(tokenizer="morse"), "--tokenizer must be one of"),
        (dict(validation_fraction=1.0), "--validation-fraction must be in"),
        (dict(model_overrides=[1]), "model_overrides must be a mapping"),
    ],
)
def test_bad_options(tmp_path, options, message):
    with pytest.raises(UserError, match=_literal(message)):
        tune(out=str(tmp_path / "o"), **options)
    assert not os.path.exists(tmp_path / "o")


def test_unbuildable_model_is_reported_once(tmp_path, corpus):
    overrides = dict(TINY, num_heads=3)  # 16 is not divisible by 3
    with pytest.raises(UserError, match="cannot be built.*divisible"):
        tune(
            corpus=[corpus],
            out=str(tmp_path / "o"),
            **dict(OPTIONS, model_overrides=overrides),
        )


def test_refuses_another_stage_folder(tmp_path):
    (tmp_path / "manifest.json").write_text('{"stage": "pretrain"}')
    with pytest.raises(UserError, match="holds the output of another stage"):
        tune(out=str(tmp_path))


def _literal(text):
    import re

    return re.escape(text)


# --- BertHyperModel ---


def _bert_documents():
    """12 documents of 6 sentences, each sentence one repeated word."""
    return [
        [" ".join([f"d{d}s{s}"] * (1 + (d + s) % 3)) for s in range(6)]
        for d in range(12)
    ]


def _bert_tokenizer():
    import keras_hub

    from keras_llm.data.mlm_nsp import SPECIAL_TOKENS

    words = [f"d{d}s{s}" for d in range(12) for s in range(6)]
    return keras_hub.tokenizers.WordPieceTokenizer(
        vocabulary=list(SPECIAL_TOKENS) + words, dtype="int32"
    )


def test_bert_hypermodel_search(tmp_path):
    from keras_llm.models.bert import BertPretrainer
    from keras_llm.tuning import BertHyperModel

    documents = _bert_documents()
    hypermodel = BertHyperModel(
        _bert_tokenizer(),
        model_overrides=dict(TINY, max_sequence_length=16),
        sequence_length=16,
        tokens_per_trial=16 * 4 * 3,
        batch_sizes=[4, 8],
        validation_steps=2,
        seed=0,
        jit_compile=False,
    )
    tuner = keras_tuner.RandomSearch(
        hypermodel,
        objective="val_loss",
        max_trials=2,
        seed=1,
        directory=str(tmp_path),
        overwrite=True,
    )
    tuner.search(documents[:10], validation_data=documents[10:], verbose=0)
    trials = [tuner.oracle.trials[i] for i in tuner.oracle.start_order]
    assert [t.status for t in trials] == ["COMPLETED", "COMPLETED"]
    values = [t.hyperparameters.values for t in trials]
    assert values[0] != values[1]
    scores = [t.score for t in trials]
    assert all(math.isfinite(s) and s > 0 for s in scores)
    for trial in trials:
        for name in ("val_mlm_loss", "val_nsp_loss", "val_nsp_accuracy"):
            assert trial.metrics.exists(name), name

    # A trial's model: a compiled pretrainer whose optimizer schedule spans
    # the token budget.
    hp = keras_tuner.HyperParameters()
    for name, value in values[1].items():
        hp.Fixed(name, value)
    model = hypermodel.build(hp)
    assert isinstance(model, BertPretrainer) and model.compiled
    assert isinstance(model.optimizer, AdamW)
    assert model.backbone.vocabulary_size == 5 + 72
    schedule = model.optimizer._learning_rate
    assert schedule.warmup_steps + schedule.decay_steps == (
        hypermodel.steps_for(values[1]["batch_size"])
    )


def test_bert_hypermodel_needs_mlm_special_tokens():
    import keras_hub

    from keras_llm.tuning import BertHyperModel

    plain = keras_hub.tokenizers.WordPieceTokenizer(
        vocabulary=["[PAD]", "[UNK]", "a"]
    )
    with pytest.raises(ValueError, match=r"\[CLS\]"):
        BertHyperModel(plain, sequence_length=16)
    with pytest.raises(ValueError, match="Unknown BERT preset"):
        BertHyperModel(_bert_tokenizer(), preset="nano", sequence_length=16)
