import json
import os

import pytest

from keras_llm.cli import main
from keras_llm.data.prepare import read_documents_file
from tests.data.test_prepare import make_inputs


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return str(make_inputs(tmp_path_factory.mktemp("cli") / "inputs"))


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_data_prepare_prints_table_and_writes_manifest(
    inputs, tmp_path, capsys
):
    config = tmp_path / "prepare.yaml"
    config.write_text("tokenizer: character\nclean:\n  min_words: 20\n")
    out = str(tmp_path / "shards")
    code = main(
        [
            "data",
            "prepare",
            inputs,
            "--out",
            out,
            "--config",
            str(config),
            "--tokens-per-shard",
            "700",
            "--max-mean-word-length",
            "12",
            "--seed",
            "3",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    for word in ("stage", "documents in", "dedup", "near_duplicate", "total"):
        assert word in printed, word
    assert "vocabulary: character" in printed
    with open(os.path.join(out, "manifest.json")) as f:
        manifest = json.load(f)
    overall = manifest["overall"]
    assert overall["docs_in"] == 10
    assert overall["docs_in"] == overall["kept"] + sum(
        overall["dropped"].values()
    )
    assert manifest["options"]["clean"] == {
        "min_words": 20,
        "max_mean_word_length": 12.0,
    }
    assert manifest["options"]["tokens_per_shard"] == 700
    assert manifest["seed"] == 3
    for split in ("train", "validation"):
        for name in manifest["shards"][split]["files"]:
            assert os.path.isfile(os.path.join(out, split, name))


def test_data_stage_commands_chain(inputs, tmp_path, capsys):
    extracted = str(tmp_path / "extracted.jsonl.gz")
    assert main(["data", "extract", inputs, "--out", extracted]) == 0
    assert "keras-llm data extract" in capsys.readouterr().out
    cleaned = str(tmp_path / "clean.jsonl")
    assert main(["data", "clean", extracted, "--out", cleaned]) == 0
    deduped = str(tmp_path / "dedup.jsonl")
    assert main(["data", "dedup", cleaned, "--out", deduped, "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "exact_duplicate" in printed and "near_duplicate" in printed
    kept = list(read_documents_file(deduped))
    assert len(kept) == 6
    code = main(
        [
            "data",
            "vocab",
            deduped,
            "--kind",
            "character",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "unknown_rate" in printed and "tokens_per_word" in printed
    assert os.path.isfile(tmp_path / "tokenizer.json")


@pytest.mark.parametrize(
    "args, message",
    [
        (["prepare", "/nonexistent/pages"], "/nonexistent/pages"),
        (["prepare", "{inputs}", "--threshold", "2"], "--threshold"),
        (["dedup", "/nonexistent/docs.jsonl"], "no such file"),
        (["vocab", "{inputs}", "--kind", "morse"], "--kind"),
    ],
)
def test_data_errors_are_one_line(inputs, tmp_path, capsys, args, message):
    args = [a.format(inputs=inputs) for a in args]
    code = main(["data", *args, "--out", str(tmp_path / "out")])
    assert code == 2
    line = _error_line(capsys)
    assert line.startswith("keras-llm data: error:") and message in line


def test_data_crawl_writes_warc(tmp_path, capsys):
    import functools
    import http.server
    import threading

    site = tmp_path / "site"
    site.mkdir()
    for i in range(3):
        (site / f"{i}.html").write_text(
            f'<html><body><a href="{i + 1}.html">next</a></body></html>'
        )

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out = tmp_path / "warc"
        code = main(
            [
                "data",
                "crawl",
                f"http://127.0.0.1:{server.server_port}/0.html",
                "--out",
                str(out),
                "--delay-per-host",
                "0",
                "--allowed-content-types",
                "text/html",
                "--no-respect-robots",
                "--quiet",
            ]
        )
    finally:
        server.shutdown()
    assert code == 0
    printed = capsys.readouterr().out
    assert "keras-llm data crawl" in printed and "http_404" in printed
    assert "3 pages" in printed
    assert any(name.endswith(".warc.gz") for name in os.listdir(out))
