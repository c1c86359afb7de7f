import json
import os
import subprocess
import sys

import keras
import numpy as np

import keras_llm  # noqa: F401  (registers EncoderDecoder for loading)

EXAMPLE = os.path.join(
    os.path.dirname(__file__), "..", "..", "examples", "seq2seq.py"
)


def test_quick_run_learns_dates_to_iso(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, EXAMPLE, "--quick", "--quiet", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    printed = result.stdout
    assert "greedy generations on held-out pairs" in printed
    assert "sequence accuracy" in printed and "written to" in printed

    with open(out / "results.json") as f:
        results = json.load(f)
    # A model that ignores the source cannot guess a held-out date (one in
    # 73,049); one whose cached decoding is broken fails whole sequences.
    assert results["task"] == "dates"
    assert results["loss"] < results["initial_loss"] / 3
    assert results["token_accuracy"] > 0.85
    assert results["sequence_accuracy"] > 0.3
    assert len(results["samples"]) == 8

    # The saved model and vocabularies reproduce the printed generations.
    with open(out / "vocabularies.json") as f:
        vocabularies = json.load(f)
    model = keras.saving.load_model(out / "model.keras")
    source_ids = {c: i + 3 for i, c in enumerate(vocabularies["source"])}
    sources = [source for source, _, _ in results["samples"]]
    batch = np.zeros((len(sources), max(map(len, sources))), "int32")
    for row, source in enumerate(sources):
        batch[row, : len(source)] = [source_ids[c] for c in source]
    generated = model.generate(
        batch, max_length=12, start_token_id=1, end_token_id=2
    )
    for ids, (source, _, text) in zip(generated, results["samples"]):
        chars = [vocabularies["target"][i - 3] for i in ids[1:] if i > 2]
        assert "".join(chars) == text, source
