import os
import runpy
import sys

import numpy as np

EXAMPLE = os.path.join(
    os.path.dirname(__file__), "..", "..", "examples", "long_context.py"
)


def test_quick_run_compares_dense_and_sliding_window(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [EXAMPLE, "--quick"])
    results = runpy.run_path(EXAMPLE)["main"](["--quick"])
    assert set(results) == {"dense", "sliding window 64"}
    for row in results.values():
        assert row["seconds_per_step"] > 0
        assert row["peak_bytes"] > 0
        assert np.isfinite(row["val_loss"])
    assert "less peak memory than dense" in capsys.readouterr().out
