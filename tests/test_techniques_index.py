"""docs/techniques.md stays true: what it calls implemented exists."""

import importlib
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INDEX = os.path.join(ROOT, "docs", "techniques.md")


def _rows():
    with open(INDEX, encoding="utf-8") as f:
        lines = [
            line
            for line in f
            if line.startswith("|") and not line.startswith("|--")
        ]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in lines[1:]]  # fmt: skip
    assert all(len(r) == 5 for r in rows), "a row without 5 cells"
    return rows


def _resolve(dotted):
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


def test_every_named_api_and_file_of_a_built_row_exists():
    checked = 0
    for _section, technique, api, example, status in _rows():
        if not status.startswith(("implemented", "partial")):
            assert (
                api == "—" or "planned" in status or "not planned" in (status)
            ), (technique, status)
            continue
        for name in re.findall(r"`(keras_llm\.[\w.]+)", api + example):
            _resolve(name)
            checked += 1
        for path in re.findall(
            r"`((?:examples|benchmarks|tests|docs)/[\w./]+)`", api + example
        ):
            assert os.path.exists(os.path.join(ROOT, path)), path
            checked += 1
    assert checked > 30


def test_the_tutorial_techniques_all_have_a_row():
    techniques = " ".join(r[0] + " " + r[1] for r in _rows()).lower()
    for name in (
        "crawling", "cleaning", "tokenization", "encoder-decoder",
        "attention mechanism", "masked language", "causal language",
        "next sentence", "question answering", "entailment", "sentiment",
        "gradient accumulation", "mixed precision", "gradient checkpointing",
        "learning rate", "batch size", "weight decay", "data parallelism",
        "model parallelism", "pipeline parallelism", "gpu", "tpu", "cloud",
        "sparse attention", "axial", "reformer", "quantization",
        "distillation", "pruning", "convolutional", "recurrent",
        "adversarial", "transfer",
    ):  # fmt: skip
        assert name in techniques, name
