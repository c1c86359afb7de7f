import json
import os
import runpy

import keras
import pytest

from keras_llm.data.tasks import read_squad
from keras_llm.data.tasks import squad_metrics

EXAMPLE = os.path.join(
    os.path.dirname(__file__), "..", "..", "examples", "finetune_qa.py"
)


def test_quick_run_answers_unseen_people_and_writes_its_files(tmp_path):
    out = str(tmp_path)
    results = runpy.run_path(EXAMPLE)["main"](
        ["--quick", "--quiet", "--out", out]
    )
    assert list(results["phases"]) == ["head", "unfreeze"]
    # The fine-tuned span head must do far better than a fixed guess.
    assert results["f1"] >= results["first_word_baseline"]["f1"] + 25
    assert results["f1"] > results["phases"]["head"]["f1"]
    # Long passages were split into several windows per question.
    assert results["data"]["validation_windows"] > results["data"]["validation"]

    for name in (
        "model.keras",
        "metrics.json",
        "manifest.json",
        "results.json",
    ):
        assert os.path.exists(os.path.join(out, name)), name
    examples, report = read_squad(os.path.join(out, "data", "validation.json"))
    assert len(examples) == results["data"]["validation"] and not report.skipped
    with open(os.path.join(out, "predictions.json")) as f:
        predictions = json.load(f)
    # The saved predictions are the ones the reported metrics were computed on.
    recomputed = squad_metrics(predictions, examples)
    assert recomputed["f1"] == pytest.approx(results["f1"])
    assert recomputed["exact_match"] == pytest.approx(results["exact_match"])
    model = keras.saving.load_model(os.path.join(out, "model.keras"))
    assert len(model.outputs) == 2  # start and end logits
