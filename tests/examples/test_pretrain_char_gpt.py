import os
import runpy
import sys

import keras

EXAMPLE = os.path.join(
    os.path.dirname(__file__), "..", "..", "examples", "pretrain_char_gpt.py"
)


def test_quick_run_trains_saves_and_generates(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(
        sys, "argv", [EXAMPLE, "--quick", "--out", str(tmp_path)]
    )
    runpy.run_path(EXAMPLE, run_name="__main__")
    printed = capsys.readouterr().out
    assert "parameters" in printed and "written to" in printed
    model = keras.saving.load_model(os.path.join(tmp_path, "model.keras"))
    assert model.num_layers == 1
    assert os.path.isfile(os.path.join(tmp_path, "tokenizer.json"))
