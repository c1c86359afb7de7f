import gzip
import io
import json
import os
import random
import tracemalloc

import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from keras_llm.data.documents import StageReport
from keras_llm.data.warc import decode
from keras_llm.data.warc import read_documents
from keras_llm.errors import UserError


def words(n, seed):
    rng = random.Random(seed)
    return " ".join(
        "".join(rng.choice("abcdefghij") for _ in range(5)) for _ in range(n)
    )


def page(n, extra=""):
    return (
        f"<html><head><title>Page {n}</title></head>"
        f"<body><p>Text of page {n}. {extra}</p></body></html>"
    )


def response(writer, url, body, status="200 OK", content_type=None):
    if isinstance(body, str):
        body = body.encode("utf-8")
    content_type = content_type or "text/html; charset=utf-8"
    http = StatusAndHeaders(
        status, [("Content-Type", content_type)], protocol="HTTP/1.1"
    )
    record = writer.create_warc_record(
        url, "response", payload=io.BytesIO(body), http_headers=http
    )
    writer.write_record(record)


def request(writer, url):
    http = StatusAndHeaders(
        "GET / HTTP/1.1", [("Host", "example.com")], is_http_request=True
    )
    record = writer.create_warc_record(
        url, "request", payload=io.BytesIO(b""), http_headers=http
    )
    writer.write_record(record)


def write_warc(path, build, gzip_records=True):
    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=gzip_records)
        writer.write_record(
            writer.create_warcinfo_record("test.warc", {"software": "test"})
        )
        build(writer)
    return path


def read(paths, **kwargs):
    report = StageReport("read")
    documents = list(read_documents(paths, report, **kwargs))
    report.check()
    return documents, report


@pytest.mark.parametrize("gzip_records", [True, False])
def test_warc_responses(tmp_path, gzip_records):
    def build(writer):
        request(writer, "http://a.test/1")
        response(writer, "http://a.test/1", page(1))
        response(writer, "http://a.test/missing", "gone", "404 Not Found")
        response(writer, "http://a.test/2", page(2))
        response(
            writer, "http://a.test/logo.png", b"\x89PNG", "200 OK", "image/png"
        )
        response(
            writer,
            "http://a.test/bin",
            b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 50,
            content_type="text/html",
        )
        response(writer, "http://a.test/blank", b"  \n ")
        for name, kind in (("notes", "text/plain"), ("blob", "image/jpeg")):
            writer.write_record(
                writer.create_warc_record(
                    f"file:///{name}",
                    "resource",
                    payload=io.BytesIO(b"Resource text."),
                    warc_content_type=kind,
                )
            )

    path = write_warc(tmp_path / "crawl.warc.gz", build, gzip_records)
    documents, report = read([path])
    assert [d.url for d in documents] == [
        "http://a.test/1",
        "http://a.test/2",
        "file:///notes",
    ]
    assert documents[2].text == "Resource text."
    assert documents[2].content_type == "text/plain"
    assert documents[0].text == page(1)
    assert documents[0].content_type == "text/html"
    assert documents[0].source.endswith("crawl.warc.gz#record=2")
    assert documents[0].metadata["charset"] == "utf-8"
    assert "warc_date" in documents[0].metadata
    assert report.docs_in == 8  # the request and warcinfo are not documents
    assert dict(report.dropped) == {
        "http_status": 1,
        "binary_content": 1,
        "empty": 1,
        "content_type": 2,
    }
    assert report.examples["http_status"] == [f"{path}#record=3"]


def test_arc_file(tmp_path):
    def arc_record(url, body):
        http = (
            b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n"
            + body.encode()
        )
        line = f"{url} 127.0.0.1 20240101000000 text/html {len(http)}\n"
        return line.encode() + http + b"\n"

    header = (
        b"1 0 Test\nURL IP-address Archive-date Content-type Archive-length\n"
    )
    first = (
        f"filedesc://test.arc 0.0.0.0 20240101000000 text/plain {len(header)}\n"
    ).encode()
    data = (
        first
        + header
        + b"\n"
        + arc_record("http://b.test/1", page(1))
        + arc_record("http://b.test/2", page(2))
    )
    path = tmp_path / "old.arc"
    path.write_bytes(data)
    gz = tmp_path / "old2.arc.gz"
    gz.write_bytes(gzip.compress(data))  # one gzip stream around it all
    documents, report = read([path, gz])
    assert [d.url for d in documents] == [
        "http://b.test/1",
        "http://b.test/2",
    ] * 2
    assert documents[1].text == page(2)
    assert report.dropped_count == 0


def test_whole_file_gzip_warc(tmp_path):
    def build(writer):
        for n in range(3):
            response(writer, f"http://c.test/{n}", page(n))

    plain = write_warc(tmp_path / "x.warc", build, gzip_records=False)
    whole = tmp_path / "x.warc.gz"
    whole.write_bytes(gzip.compress(plain.read_bytes()))
    documents, report = read([whole])
    assert [d.url for d in documents] == [
        f"http://c.test/{n}" for n in range(3)
    ]
    assert report.dropped_count == 0


def test_html_text_jsonl_and_folders(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "page.html").write_text(page(1), encoding="utf-8")
    (tmp_path / "b" / "notes").write_text("Plain notes.\nSecond line.\n")
    (tmp_path / "a.jsonl").write_text(
        json.dumps({"text": "first", "url": "http://j/1", "lang": "en"})
        + "\n\n"
        + "{not json\n"
        + json.dumps({"text": 3})
        + "\n"
        + json.dumps({"text": "second", "title": "T"})
        + "\n"
    )
    # Content decides, not the suffix: this ".txt" is HTML.
    (tmp_path / "c.txt").write_text("<!DOCTYPE html><html><p>Hi</p></html>")
    (tmp_path / "d.html.gz").write_bytes(gzip.compress(page(4).encode()))
    documents, report = read([tmp_path])
    assert [d.source for d in documents] == [
        f"{tmp_path}/a.jsonl:1",
        f"{tmp_path}/a.jsonl:5",
        f"{tmp_path}/b/notes",
        f"{tmp_path}/b/page.html",
        f"{tmp_path}/c.txt",
        f"{tmp_path}/d.html.gz",
    ]
    first, second, notes, html, c, d = documents
    assert (first.text, first.url, first.metadata) == (
        "first",
        "http://j/1",
        {"lang": "en"},
    )
    assert (second.text, second.title) == ("second", "T")
    assert notes.text == "Plain notes.\nSecond line.\n"
    assert notes.content_type == "text/plain"
    assert html.content_type == c.content_type == d.content_type == "text/html"
    assert d.text == page(4)
    assert dict(report.dropped) == {"bad_json": 2}
    with_bar = list(read_documents([tmp_path], progress=True))
    assert [d.source for d in with_bar] == [d.source for d in documents]
    assert report.examples["bad_json"] == [
        f"{tmp_path}/a.jsonl:3",
        f"{tmp_path}/a.jsonl:4",
    ]


def test_bad_files_are_counted(tmp_path):
    rng = random.Random(0)
    (tmp_path / "random.warc.gz").write_bytes(
        bytes(rng.randrange(256) for _ in range(5000))
    )
    (tmp_path / "empty.html").write_bytes(b"")
    (tmp_path / "empty.jsonl.gz").write_bytes(gzip.compress(b""))
    (tmp_path / "badgz.txt.gz").write_bytes(
        b"\x1f\x8b\x08\x00garbage-not-deflate"
    )
    (tmp_path / "ok.txt").write_text("fine text")
    documents, report = read([tmp_path])
    assert [d.text for d in documents] == ["fine text"]
    assert dict(report.dropped) == {
        "bad_gzip": 1,
        "empty": 2,
        "unknown_format": 1,
    }
    assert report.examples["unknown_format"] == [f"{tmp_path}/random.warc.gz"]


def test_missing_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="nope"):
        list(read_documents([tmp_path / "nope"]))


def test_truncated_gzip_warc_keeps_records_before(tmp_path):
    def build(writer):
        for n in range(4):
            response(writer, f"http://d.test/{n}", page(n, words(500, n)))

    path = write_warc(tmp_path / "cut.warc.gz", build)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 500])  # inside the last record
    documents, report = read([path])
    assert [d.url for d in documents] == [
        f"http://d.test/{n}" for n in range(3)
    ]
    assert dict(report.dropped) == {"truncated_gzip": 1}
    assert report.examples["truncated_gzip"][0].startswith(str(path))


def test_truncated_plain_warc_and_gzip_jsonl(tmp_path):
    def build(writer):
        for n in range(3):
            response(writer, f"http://e.test/{n}", page(n, words(300, n)))

    path = write_warc(tmp_path / "cut.warc", build, gzip_records=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 300])
    lines = "".join(
        json.dumps({"text": f"line {n} " + words(30, n)}) + "\n"
        for n in range(400)
    )
    jsonl = tmp_path / "lines.jsonl.gz"
    jsonl.write_bytes(gzip.compress(lines.encode())[:-2000])
    documents, report = read([path, jsonl])
    urls = [d.url for d in documents if d.url]
    assert urls == ["http://e.test/0", "http://e.test/1"]
    texts = [d.text for d in documents if d.url is None]
    assert 0 < len(texts) < 400
    assert texts == [f"line {n} " + words(30, n) for n in range(len(texts))]
    assert dict(report.dropped) == {"truncated_record": 1, "truncated_gzip": 1}


@pytest.mark.parametrize("gzip_records", [True, False])
def test_malformed_record_in_the_middle(tmp_path, gzip_records):
    def build(writer):
        response(writer, "http://f.test/0", page(0))
        response(writer, "http://f.test/1", page(1))

    first = write_warc(tmp_path / "1.warc", build, gzip_records)
    buffer = io.BytesIO()
    response(WARCWriter(buffer, gzip=gzip_records), "http://f.test/2", page(2))
    garbage = b"NOT A WARC HEADER\r\nfoo: bar\r\n\r\nbody\r\n\r\n"
    if gzip_records:
        garbage = gzip.compress(garbage)
    path = tmp_path / "mixed.warc"
    path.write_bytes(first.read_bytes() + garbage + buffer.getvalue())
    first.unlink()
    documents, report = read([path])
    assert [d.url for d in documents] == [
        "http://f.test/0",
        "http://f.test/1",
        "http://f.test/2",
    ]
    assert dict(report.dropped) == {"malformed_record": 1}
    (example,) = report.examples["malformed_record"]
    assert example.startswith(f"{path}#record=3&offset=")
    offset = int(example.rsplit("=", 1)[1])
    assert path.read_bytes()[offset:].startswith(garbage[:8])


def test_encodings(tmp_path):
    text = "Café crème, naïve façade — “quoted”"
    cp1252 = f"<html><body><p>{text}</p></body></html>".encode("cp1252")

    def build(writer):
        # Declared UTF-8, actually cp1252: must not crash, decoded by guess.
        response(writer, "http://g.test/wrong", cp1252)
        # Unknown charset name.
        response(
            writer,
            "http://g.test/unknown",
            cp1252,
            content_type="text/html; charset=x-no-such-charset",
        )
        # No HTTP charset, <meta> says windows-1252.
        meta = b'<html><head><meta charset="windows-1252"></head>' + cp1252
        response(writer, "http://g.test/meta", meta, content_type="text/html")
        # Declared Latin-1 but valid UTF-8: the usual mislabelling.
        response(
            writer,
            "http://g.test/latin",
            text.encode("utf-8"),
            content_type="text/plain; charset=iso-8859-1",
        )

    path = write_warc(tmp_path / "enc.warc.gz", build)
    (tmp_path / "page.html").write_bytes(cp1252)
    documents, report = read([path, tmp_path / "page.html"])
    assert len(documents) == 5 and report.dropped_count == 0
    for document in documents:
        assert text in document.text, document.url
    assert documents[2].metadata["charset_from"] == "meta"
    assert documents[3].metadata["charset"] == "utf-8"


def test_decode_fallback_never_raises():
    text, charset, how = decode(b"\x81\x8d\x8f\x90\x9d" * 3, declared="utf-8")
    assert isinstance(text, str) and how in ("detected", "fallback")
    assert decode(b"\xef\xbb\xbfhello")[0] == "hello"


def test_huge_page_is_dropped_without_loading_it(tmp_path):
    # A 200 MB page in a gzip WARC record (compressed, it is small), between
    # two good pages; and a 200 MB HTML file written in chunks.
    size = 200 * 1024 * 1024
    chunk = (b"<p>" + b"lorem ipsum dolor sit amet " * 36 + b"</p>\n") * 1024
    http = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n"
    block = len(http) + size
    headers = (
        "WARC/1.0\r\nWARC-Type: response\r\n"
        "WARC-Target-URI: http://h.test/huge\r\n"
        "WARC-Date: 2024-01-01T00:00:00Z\r\n"
        "WARC-Record-ID: <urn:uuid:00000000-0000-0000-0000-000000000001>\r\n"
        "Content-Type: application/http; msgtype=response\r\n"
        f"Content-Length: {block}\r\n\r\n"
    ).encode()

    def build(writer):
        response(writer, "http://h.test/0", page(0))

    path = write_warc(tmp_path / "huge.warc.gz", build)
    with open(path, "ab") as f:
        with gzip.GzipFile(fileobj=f, mode="wb", compresslevel=1) as gz:
            gz.write(headers + http)
            written = 0
            while written < size:
                part = chunk[: size - written]
                gz.write(part)
                written += len(part)
            gz.write(b"\r\n\r\n")
        writer = WARCWriter(f, gzip=True)
        response(writer, "http://h.test/1", page(1))
    assert os.path.getsize(path) < size // 10
    big = tmp_path / "big.html"
    with open(big, "wb") as f:
        for _ in range(size // len(chunk)):
            f.write(chunk)
    tracemalloc.start()
    try:
        documents, report = read([path, big], max_bytes=1_000_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [d.url for d in documents] == ["http://h.test/0", "http://h.test/1"]
    assert dict(report.dropped) == {"too_large": 2}
    assert peak < 40 * 1024 * 1024, peak
