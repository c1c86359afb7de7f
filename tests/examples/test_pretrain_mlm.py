import os
import runpy
import sys

import keras

from keras_llm.data import load_tokenizer
from keras_llm.models import BERT

EXAMPLE = os.path.join(
    os.path.dirname(__file__), "..", "..", "examples", "pretrain_mlm.py"
)


def test_quick_run_pretrains_and_saves_backbone_and_tokenizer(
    tmp_path, monkeypatch, capsys
):
    argv = ["--quick", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", [EXAMPLE, *argv])
    history = runpy.run_path(EXAMPLE)["main"](argv).history
    assert history["mlm_loss"][-1] < history["mlm_loss"][0]
    assert history["val_mlm_loss"][-1] < history["val_mlm_loss"][0]
    printed = capsys.readouterr().out
    for name in ("mlm_perplexity", "mlm_accuracy", "nsp_accuracy"):
        assert name in printed
    assert "written to" in printed
    backbone = keras.saving.load_model(os.path.join(tmp_path, "backbone.keras"))
    assert isinstance(backbone, BERT) and backbone.num_layers == 1
    tokenizer = load_tokenizer(str(tmp_path))
    assert tokenizer.vocabulary_size() == backbone.vocabulary_size
    assert tokenizer.token_to_id("[MASK]") == 4
