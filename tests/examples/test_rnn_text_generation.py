import math
import os
import runpy
import sys

import keras
import numpy as np

from keras_llm import data

EXAMPLE = os.path.join(
    os.path.dirname(__file__), "..", "..", "examples", "rnn_text_generation.py"
)


def test_quick_run_trains_saves_and_generates(tmp_path, monkeypatch, capsys):
    argv = ["--quick", "--out", str(tmp_path), "--temperature", "0.5", "1.5"]
    monkeypatch.setattr(sys, "argv", [EXAMPLE, *argv])
    example = runpy.run_path(EXAMPLE)
    results = example["main"](argv)
    printed = capsys.readouterr().out
    assert "perplexity" in printed and "written to" in printed
    assert "temperature 0.5" in printed and "temperature 1.5" in printed

    # Training helped: well below the starting loss and a uniform guess.
    v = results["vocabulary_size"]
    assert np.isfinite(results["val_loss"])
    assert results["initial_val_loss"] > math.log(v) - 0.1
    assert results["val_loss"] < results["initial_val_loss"] - 1.0
    assert math.isclose(results["perplexity"], math.exp(results["val_loss"]))

    # Saved model and vocabulary load back and agree.
    model = keras.saving.load_model(os.path.join(tmp_path, "model.keras"))
    assert [type(layer).__name__ for layer in model.layers] == [
        "Embedding",
        "LSTM",
        "Dense",
    ]
    assert model.layers[1].return_sequences
    tokenizer = data.load_tokenizer(os.path.join(tmp_path, "tokenizer.json"))
    vocabulary = tokenizer.get_vocabulary()
    assert len(vocabulary) == v == model.output_shape[-1]

    # One sample per temperature, prompt + 40 generated known characters.
    with open(os.path.join(tmp_path, "samples.txt"), encoding="utf-8") as f:
        written = f.read()
    assert set(results["samples"]) == {0.5, 1.5}
    for temperature, sample in results["samples"].items():
        assert f"=== temperature {temperature:g} ===\n{sample}\n" in written
        assert sample.startswith("The ") and len(sample) == 4 + 40
        assert set(sample[4:]) <= set(vocabulary[1:])

    # The step model, fed a text in pieces with its state carried over, gives
    # the trained model's probabilities for the next character.
    step = example["build_step_model"](model)
    ids = np.random.default_rng(0).integers(1, v, size=(2, 12)).astype("int32")
    full = model.predict_on_batch(ids)[:, -1]
    units = model.layers[1].units
    h = c = np.zeros((2, units), "float32")
    _, h, c = step.predict_on_batch([ids[:, :7], h, c])
    probs = None
    for t in range(7, 12):
        probs, h, c = step.predict_on_batch([ids[:, t : t + 1], h, c])
    np.testing.assert_allclose(probs, full, atol=1e-5)


def test_sampling_temperature():
    sample_next = runpy.run_path(EXAMPLE)["sample_next"]
    rng = np.random.default_rng(0)
    probs = np.array([[0.5, 0.1, 0.3, 0.1]] * 2)
    # Near-zero temperature picks the most likely real character (never the
    # out-of-vocabulary id 0); temperature 1 samples in proportion.
    cold = sample_next(probs, [1e-3, 1e-3], rng)
    assert cold.tolist() == [2, 2]
    draws = np.concatenate(
        [sample_next(probs, [1.0, 1.0], rng) for _ in range(2000)]
    )
    assert 0 not in draws
    share = np.bincount(draws, minlength=4) / len(draws)
    np.testing.assert_allclose(share[1:], [0.2, 0.6, 0.2], atol=0.03)
