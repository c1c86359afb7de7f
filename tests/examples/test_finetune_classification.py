import json
import os
import runpy

import keras
import numpy as np
import pytest

from keras_llm.data.tasks import read_sentiment

EXAMPLE = os.path.join(
    os.path.dirname(__file__),
    "..",
    "..",
    "examples",
    "finetune_classification.py",
)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("finetune_classification"))
    results = runpy.run_path(EXAMPLE)["main"](
        ["--quick", "--quiet", "--out", out]
    )
    return out, results


def test_quick_run_beats_the_majority_baseline_after_unfreezing(quick_run):
    out, results = quick_run
    assert list(results["phases"]) == ["head", "unfreeze"]
    # Negated reviews make a bag of words stop near two thirds; the
    # unfrozen encoder must read them.
    assert results["accuracy"] >= results["majority_baseline"] + 0.25
    assert results["accuracy"] > results["phases"]["head"]["accuracy"]
    with open(os.path.join(out, "results.json")) as f:
        assert json.load(f)["accuracy"] == pytest.approx(results["accuracy"])


def test_quick_run_writes_files_the_cli_reads_and_a_loadable_model(quick_run):
    out, results = quick_run
    for name in ("model.keras", "metrics.json", "manifest.json"):
        assert os.path.exists(os.path.join(out, name)), name
    assert os.listdir(os.path.join(out, "logs"))
    train, report = read_sentiment(
        os.path.join(out, "data", "train.csv"), labels=["negative", "positive"]
    )
    assert len(train.texts) == results["data"]["train"] == report.kept
    assert report.skipped == []
    model = keras.saving.load_model(os.path.join(out, "model.keras"))
    assert model.output_shape[-1] == 2
    # New sentences: the printed predictions came from this model.
    predicted = [row["predicted"] for row in results["new_sentences"]]
    expected = [row["expected"] for row in results["new_sentences"]]
    assert np.mean(np.array(predicted) == np.array(expected)) >= 0.5


def test_backbone_flag_fine_tunes_an_existing_backbone(quick_run, tmp_path):
    out, _ = quick_run
    results = runpy.run_path(EXAMPLE)["main"](
        [
            "--quick",
            "--quiet",
            "--backbone",
            os.path.join(out, "backbone"),
            "--epochs",
            "1",
            "--unfreeze-epochs",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    assert results["pretraining"] is None
    assert not os.path.exists(os.path.join(tmp_path, "backbone"))
    assert results["accuracy"] > results["majority_baseline"]
