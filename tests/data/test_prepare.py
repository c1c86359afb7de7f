import gzip
import io
import json
import os

import numpy as np
import pytest

from keras_llm.data import prepare as prep
from keras_llm.data.shards import read_shards
from keras_llm.data.shards import shard_dataset
from keras_llm.errors import UserError

STOP = ["the", "of", "and", "to", "that", "with", "is", "in", "have", "be"]


def prose(seed, words=180):
    """English-like paragraphs that pass the Gopher-style rules."""
    rng = np.random.default_rng(seed)
    letters = "etaoinshrdlucmfwypvbgk"
    vocabulary = [
        "".join(rng.choice(list(letters), rng.integers(3, 9)))
        for _ in range(400)
    ]
    paragraphs, sentence = [], []
    tokens = []
    for i in range(words):
        word = rng.choice(STOP) if i % 3 == 0 else rng.choice(vocabulary)
        sentence.append(word)
        if len(sentence) >= rng.integers(8, 14):
            tokens.append(" ".join(sentence).capitalize() + ".")
            sentence = []
        if len(tokens) == 4:
            paragraphs.append(" ".join(tokens))
            tokens = []
    if sentence:
        tokens.append(" ".join(sentence).capitalize() + ".")
    if tokens:
        paragraphs.append(" ".join(tokens))
    return paragraphs


def html_page(title, paragraphs):
    nav = "".join(
        f'<li><a href="/section/{i}">Section {i}</a></li>' for i in range(8)
    )
    body = "".join(f"<p>{p}</p>" for p in paragraphs)
    return (
        f"<!DOCTYPE html><html><head><title>{title}</title>"
        '<meta charset="utf-8"></head><body>'
        f"<nav><ul>{nav}</ul></nav><article><h1>{title}</h1>{body}"
        "</article><footer>Copyright 2024 Example Site. All rights "
        "reserved.</footer><script>var x = 1;</script></body></html>"
    )


def boilerplate_page():
    links = "".join(f'<a href="/p/{i}">Page {i}</a> ' for i in range(12))
    return (
        "<html><head><title>Menu</title></head><body><nav>"
        f"{links}</nav><footer>Home | About | Contact</footer></body></html>"
    )


def write_warc(path, pages):
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        for url, html in pages:
            headers = StatusAndHeaders(
                "200 OK",
                [("Content-Type", "text/html; charset=utf-8")],
                protocol="HTTP/1.1",
            )
            record = writer.create_warc_record(
                url,
                "response",
                payload=io.BytesIO(html.encode("utf-8")),
                http_headers=headers,
            )
            writer.write_record(record)


def make_inputs(folder):
    """A mixed folder; returns the URLs/names of documents that must be
    kept and those that must be dropped, by stage."""
    folder.mkdir()
    a, d = prose(1), prose(2)
    near = list(d)
    near[1] = "Moreover " + near[1].replace(" the ", " a ", 1)  # edited
    write_warc(
        folder / "crawl.warc.gz",
        [
            ("http://site.test/a", html_page("Alpha", a)),
            ("http://site.test/a-copy", html_page("Alpha", a)),
            ("http://site.test/d", html_page("Delta", d)),
            ("http://site.test/d-near", html_page("Delta", near)),
            ("http://site.test/menu", boilerplate_page()),
        ],
    )
    (folder / "page.html").write_text(html_page("Page", prose(3)))
    (folder / "notes.txt").write_text("\n\n".join(prose(4)) + "\n")
    with open(folder / "records.jsonl", "w") as f:
        for i in (5, 6):
            record = {"text": "\n\n".join(prose(i)), "url": f"http://j/{i}"}
            f.write(json.dumps(record) + "\n")
    rng = np.random.default_rng(0)
    (folder / "noise.bin").write_bytes(rng.bytes(4000))
    return folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_inputs(tmp_path_factory.mktemp("prep") / "inputs")


OPTIONS = dict(
    tokenizer="character",
    tokens_per_shard=512,
    validation_fraction=0.3,
    seed=5,
)


@pytest.fixture(scope="module")
def prepared(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("prep") / "out"
    manifest = prep.prepare(inputs=[str(inputs)], out=str(out), **OPTIONS)
    return out, manifest


def _kept_documents(out):
    return list(prep.read_documents_file(out / prep.DOCUMENTS_FILE))


def test_counts_balance_and_reasons(prepared):
    out, manifest = prepared
    with open(out / "manifest.json") as f:
        assert json.load(f)["overall"] == manifest["overall"]
    stages = {s["stage"]: s for s in manifest["stages"]}
    assert list(stages) == ["read", "extract", "clean", "dedup"]
    for s in stages.values():
        assert s["docs_in"] == s["kept"] + sum(s["dropped"].values())
    overall = manifest["overall"]
    drops = sum(sum(s["dropped"].values()) for s in stages.values())
    assert stages["read"]["docs_in"] == overall["docs_in"]
    assert overall["docs_in"] == overall["kept"] + drops
    # 5 WARC pages + HTML + text + 2 JSONL records + the random bytes.
    assert stages["read"]["docs_in"] == 10
    assert sum(stages["read"]["dropped"].values()) == 1
    assert "noise.bin" in json.dumps(stages["read"]["examples"])
    # The menu page has no main text: extract or clean drops it.
    boilerplate = {
        reason: sources
        for stage in ("extract", "clean")
        for reason, sources in stages[stage]["examples"].items()
    }
    assert (
        sum(stages["extract"]["dropped"].values())
        + sum(stages["clean"]["dropped"].values())
        == 1
    )
    assert "crawl.warc.gz#record=4" in json.dumps(boilerplate)
    assert stages["dedup"]["dropped"] == {
        "exact_duplicate": 1,
        "near_duplicate": 1,
    }
    kept = _kept_documents(out)
    assert overall["kept"] == len(kept) == manifest["documents"]["count"] == 6
    urls = {d.url for d in kept}
    assert {"http://site.test/a", "http://site.test/d"} <= urls
    assert not urls & {"http://site.test/a-copy", "http://site.test/menu"}
    assert manifest["vocabulary"]["kind"] == "character"
    assert manifest["seed"] == 5 and manifest["options"]["seed"] == 5
    assert manifest["versions"]["keras_llm"]


def test_shards_decode_to_kept_documents(prepared):
    out, manifest = prepared
    from keras_llm.data.vocab import load_tokenizer

    tokenizer = load_tokenizer(out / "tokenizer.json")
    vocabulary = set(tokenizer.get_vocabulary())
    texts = {"train": [], "validation": []}
    forced = manifest["documents"]["forced_validation"]
    for i, document in enumerate(_kept_documents(out)):
        split = prep.split_of(i, 5, 0.3, forced)
        texts[split].append(document.text)
    assert texts["train"] and texts["validation"]
    for split, docs in texts.items():
        ids = read_shards(out, split=split)
        assert len(ids) == manifest["shards"][split]["tokens"]
        assert manifest["shards"][split]["documents"] == len(docs)
        decoded = tokenizer.detokenize(ids.astype("int32"))
        decoded = (
            decoded.numpy().decode()
            if hasattr(decoded, "numpy")
            else (decoded if isinstance(decoded, str) else decoded.decode())
        )
        # Documents are joined by "\n" (the separator of a character
        # vocabulary); held-out characters never seen decode as [UNK].
        expected = "".join(
            "".join(c if c in vocabulary else "[UNK]" for c in t) + "\n"
            for t in docs
        )
        assert decoded == expected
    assert len(manifest["shards"]["train"]["files"]) > 1


def test_shard_dataset_reads_prepared_folder(prepared):
    out, _ = prepared
    ds = shard_dataset(out, sequence_length=16, batch_size=4, seed=1)
    assert ds.element_spec[0].shape == (4, 16)
    x, y = next(iter(ds))
    np.testing.assert_array_equal(x.numpy()[:, 1:], y.numpy()[:, :-1])
    val = shard_dataset(out, 16, 2, shuffle=False, split="validation")
    assert val.element_spec[1].shape == (2, 16)


def test_resume_after_interruption(inputs, prepared, tmp_path, monkeypatch):
    whole, _ = prepared
    out = tmp_path / "out"
    calls = []
    real = prep._tokenize_batch

    def failing(tokenizer, texts):
        calls.append(len(texts))
        if len(calls) == 3:
            raise RuntimeError("interrupted")
        return real(tokenizer, texts)

    monkeypatch.setattr(prep, "_TOKENIZE_BATCH", 1)
    monkeypatch.setattr(prep, "_tokenize_batch", failing)
    with pytest.raises(RuntimeError, match="interrupted"):
        prep.prepare(inputs=[str(inputs)], out=str(out), **OPTIONS)
    written = {
        f"{split}/{name}": os.stat(out / split / name).st_mtime_ns
        for split in prep.SPLITS
        if (out / split).is_dir()
        for name in os.listdir(out / split)
        if name.endswith(".npy")
    }
    assert written, "no shard was written before the interruption"
    monkeypatch.setattr(prep, "_tokenize_batch", real)

    def no_rerun(*args, **kwargs):
        raise AssertionError("the documents phase ran again")

    monkeypatch.setattr(prep, "stage_chain", no_rerun)
    manifest = prep.prepare(inputs=[str(inputs)], out=str(out), **OPTIONS)
    for name, mtime in written.items():
        assert os.stat(out / name).st_mtime_ns == mtime, name
    for split in prep.SPLITS:
        assert sorted(os.listdir(out / split)) == sorted(
            os.listdir(whole / split)
        )
        np.testing.assert_array_equal(
            read_shards(out, split=split), read_shards(whole, split=split)
        )
    with open(whole / "manifest.json") as f:
        reference = json.load(f)
    assert manifest["shards"] == reference["shards"]
    assert manifest["overall"] == reference["overall"]
    # A finished run re-run is a no-op; other options are refused.
    prep.prepare(inputs=[str(inputs)], out=str(out), **OPTIONS)
    with pytest.raises(UserError, match="other inputs or options"):
        prep.prepare(
            inputs=[str(inputs)], out=str(out), **{**OPTIONS, "seed": 6}
        )


def test_bad_options(tmp_path, inputs):
    with pytest.raises(UserError, match="no such file"):
        prep.prepare(inputs=[str(tmp_path / "missing")], out=str(tmp_path))
    with pytest.raises(UserError, match="--tokenizer"):
        prep.prepare(inputs=[str(inputs)], tokenizer="morse")
    with pytest.raises(UserError, match="unknown clean option"):
        prep.prepare(inputs=[str(inputs)], clean={"min_wurds": 3})
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "tokenizer.json").write_text("{}")
    with pytest.raises(UserError, match="already holds tokenizer.json"):
        prep.prepare(inputs=[str(inputs)], out=str(tmp_path / "run"))
    assert (tmp_path / "run" / "tokenizer.json").read_text() == "{}"


def test_write_and_read_documents(tmp_path):
    from keras_llm.data.documents import Document

    docs = [Document(f"text {i} é", f"s{i}", url=f"u{i}") for i in range(3)]
    for name in ("d.jsonl", "d.jsonl.gz"):
        assert prep.write_documents(iter(docs), tmp_path / name) == 3
        assert list(prep.read_documents_file(tmp_path / name)) == docs
    with gzip.open(tmp_path / "d.jsonl.gz", "rt") as f:
        assert json.loads(f.readline())["url"] == "u0"
