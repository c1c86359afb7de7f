"""Reading raw inputs: WARC/ARC archives, HTML, plain text and JSONL files.

`read_documents` is the `read` stage of `keras-llm data`: it streams
`Document`s out of files and folders, one archive record at a time, so memory
stays flat however large the input.

The archive format is parsed by warcio (`ArchiveIterator`, which reads WARC
and ARC, gzip-per-record or plain, and converts ARC headers to WARC with
`arc2warc`); character sets are detected by charset_normalizer (a dependency
of trafilatura). Hand-written here, because no library does it for a data
pipeline: the sniffing of a file's format by its content (the suffix is only
a hint), the accounting of every record that is not kept, the size limit that
stops reading a record at `max_bytes` instead of loading it whole, the
detection of truncated gzip files (warcio stops quietly at the cut), and the
resynchronisation after a malformed record (warcio's iterator ends at the
first `ArchiveLoadFailed`; the reader restarts it at the next gzip member or
`WARC/1.` line, so valid records after a bad one are not lost).

What counts as a document (`report.seen`):
- each WARC `response` record (and ARC record): kept when its HTTP status is
  200 and its content type is text (HTML, XHTML or plain text); otherwise
  dropped (`http_status`, `content_type`); `resource` records likewise
  (without the status); `request`, `warcinfo`, `metadata`, `revisit` and
  `conversion` records are not documents and are not counted;
- each HTML or text file, each JSONL line;
- a file that cannot be read at all (`unreadable_file`, `unknown_format`,
  `bad_gzip`, `empty`) counts as one dropped document;
- a malformed archive record (`malformed_record`) or the cut end of a
  truncated gzip file (`truncated_gzip`) or plain archive
  (`truncated_record`) counts as one dropped document.

Other drop reasons: `too_large` (over `max_bytes` decoded bytes),
`binary_content` (NUL bytes or control characters in "text"), `empty`,
`bad_json` (JSONL line that is not a JSON object with a string `"text"`).
"""

import gzip
import json
import os
import re
import zlib

from keras_llm.data.documents import Document
from keras_llm.data.documents import StageReport

#: Content types kept as documents, mapped to `Document.content_type`.
TEXT_TYPES = {
    "text/html": "text/html",
    "application/xhtml+xml": "text/html",
    "text/plain": "text/plain",
}

#: WARC record types that carry a fetched payload (counted as documents).
PAYLOAD_RECORDS = ("response", "resource")

_SNIFF_BYTES = 8192
_CHUNK = 1 << 16
_GZIP_MAGIC = b"\x1f\x8b"
_BOMS = (
    (b"\xef\xbb\xbf", "utf-8"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)
_META_CHARSET = re.compile(
    rb"<meta[^>]+charset\s*=\s*[\"']?\s*([A-Za-z0-9_.:-]+)", re.IGNORECASE
)
_HTTP_CHARSET = re.compile(r"charset\s*=\s*[\"']?([A-Za-z0-9_.:-]+)", re.I)
# Bytes that never occur in text: C0 controls other than \t \n \f \r, DEL.
_CONTROL = bytes(set(range(32)) - {9, 10, 12, 13} | {127})
_HTML_SUFFIXES = (".html", ".htm", ".xhtml")
_TEXT_SUFFIXES = (".txt", ".text", ".md")


def read_documents(paths, report=None, *, max_bytes=50_000_000, progress=False):
    """Streams the documents of WARC/ARC, HTML, text and JSONL files.

    The format of each file is sniffed from its content: gzip magic bytes
    (the decompressed content is sniffed in turn), `WARC/1.` (WARC),
    `filedesc://` (ARC), `{` (JSONL), `<` (HTML), else plain text; the file
    suffix only settles HTML versus text and JSONL versus text. Folders are
    walked recursively in sorted order.

    HTML is returned undecoded of its markup (`content_type="text/html"`,
    run `extract` next), decoded to `str` with the charset of the HTTP
    header, else of a `<meta charset>`, else detected. Nothing raises for
    bad content: every problem is a drop in `report` naming the file and
    record (`path`, `path#record=N` for the N-th archive record, counting
    from 0, or `path:line` for JSONL).

    Args:
        paths: a path or a list of paths of files and folders.
        report: a `StageReport` to count into; a private one when `None`.
        max_bytes: documents larger than this (in bytes, after
            decompression) are dropped as `too_large`, without reading more
            than `max_bytes + 1` bytes of them.
        progress: show a `rich` progress bar over the files.

    Returns:
        An iterator of `Document`s with `source`, `url` (archives, JSONL),
        `content_type` and `metadata` (`charset`, `warc_date`, ...).

    Raises:
        keras_llm.errors.UserError: a given path does not exist.

    Example:

    ```python
    import pathlib
    import tempfile

    from keras_llm.data.documents import StageReport
    from keras_llm.data.warc import read_documents

    folder = pathlib.Path(tempfile.mkdtemp())  # or a crawl's WARC folder
    (folder / "page.html").write_text("<html><p>Hello there.</p></html>")
    (folder / "notes.jsonl").write_text('{"text": "one"}\\nnot json\\n')
    report = StageReport("read")
    for document in read_documents([folder], report):
        print(document.source, document.content_type)
    print(report.summary())  # read: 3 in, 2 kept, 1 dropped (bad_json: 1)
    ```
    """
    if report is None:
        report = StageReport("read")
    files = list(_walk(paths))
    if not progress:
        for path in files:
            yield from _read_file(path, report, max_bytes)
        return
    import rich.progress

    with rich.progress.Progress(
        *rich.progress.Progress.get_default_columns(),
        rich.progress.TextColumn("{task.fields[docs]} docs"),
    ) as bar:
        task = bar.add_task("read", total=len(files), docs=0)
        for path in files:
            for document in _read_file(path, report, max_bytes):
                yield document
                bar.update(task, docs=report.kept_count)
            bar.advance(task)


def _walk(paths):
    from keras_llm.errors import UserError

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    for path in paths:
        path = os.fspath(path)
        if os.path.isdir(path):
            yield from _walk_folder(path)
        elif os.path.exists(path):
            yield path
        else:
            raise UserError(f"read: {path}: no such file or folder")


def _walk_folder(folder):
    """Files under `folder`, depth first, in sorted order of their paths."""
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return
    for name in names:
        path = os.path.join(folder, name)
        if os.path.isdir(path):
            yield from _walk_folder(path)
        elif os.path.isfile(path):
            yield path


# ----------------------------------------------------------------- files


def _read_file(path, report, max_bytes):
    try:
        kind, gzipped = _sniff(path)
    except OSError:
        report.seen()
        report.drop("unreadable_file", path)
        return
    if kind in ("warc", "arc"):
        yield from _read_archive(path, report, max_bytes, gzipped)
    elif kind == "jsonl":
        yield from _read_jsonl(path, report, max_bytes, gzipped)
    elif kind in ("html", "text"):
        yield from _read_single(path, report, max_bytes, gzipped, kind)
    else:
        report.seen()
        report.drop(kind, path)


def _sniff(path):
    """(kind, gzipped): kind is a format or a drop reason."""
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    gzipped = head.startswith(_GZIP_MAGIC)
    if gzipped:
        try:
            head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head)
        except zlib.error:
            return "bad_gzip", True
    if not head.strip():
        return "empty", gzipped
    start = head.lstrip()
    if start.startswith(b"WARC/1."):
        return "warc", gzipped
    if start.startswith(b"filedesc://"):
        return "arc", gzipped
    text = _strip_bom(head)[0]
    if text is not head:
        start = text.lstrip()
    elif _is_binary(head):
        return "unknown_format", gzipped
    name = path.lower().removesuffix(".gz")
    if start.startswith(b"{"):
        return ("text" if name.endswith(_TEXT_SUFFIXES) else "jsonl"), gzipped
    if start.startswith(b"<") or name.endswith(_HTML_SUFFIXES):
        return "html", gzipped
    return "text", gzipped


def _open(path, gzipped):
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def _read_capped(stream, max_bytes):
    """Reads up to `max_bytes + 1` bytes (so "too large" is visible)."""
    chunks = []
    size = 0
    while size <= max_bytes:
        chunk = stream.read(min(_CHUNK, max_bytes + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _read_single(path, report, max_bytes, gzipped, kind):
    try:
        size = os.path.getsize(path)
        report.seen(min(size, max_bytes + 1))
        if not gzipped and size > max_bytes:
            report.drop("too_large", path)
            return
        with _open(path, gzipped) as f:
            data = _read_capped(f, max_bytes)
    except (EOFError, zlib.error, gzip.BadGzipFile):
        report.drop("truncated_gzip", path)
        return
    except OSError:
        report.drop("unreadable_file", path)
        return
    content_type = "text/html" if kind == "html" else "text/plain"
    document, reason = _make_document(data, path, content_type, max_bytes)
    if reason:
        report.drop(reason, path)
        return
    report.kept(len(data))
    yield document


def _read_jsonl(path, report, max_bytes, gzipped):
    number = 0
    try:
        with _open(path, gzipped) as f:
            while True:
                line = f.readline(max_bytes + 1)
                if not line:
                    break
                number += 1
                source = f"{path}:{number}"
                if len(line) > max_bytes and not line.endswith(b"\n"):
                    report.seen(len(line))
                    report.drop("too_large", source)
                    while line and not line.endswith(b"\n"):
                        line = f.readline(_CHUNK)
                    continue
                if not line.strip():
                    continue
                report.seen(len(line))
                document = _json_document(line, source)
                if document is None:
                    report.drop("bad_json", source)
                elif not document.text.strip():
                    report.drop("empty", source)
                else:
                    report.kept(len(line))
                    yield document
    except (EOFError, zlib.error, gzip.BadGzipFile):
        report.seen()
        report.drop("truncated_gzip", f"{path}:{number + 1}")
    except OSError:
        report.seen()
        report.drop("unreadable_file", f"{path}:{number + 1}")


def _json_document(line, source):
    try:
        record = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        return None
    url = record.pop("url", None)
    title = record.pop("title", None)
    content_type = record.pop("content_type", "text/plain")
    text = record.pop("text")
    record.pop("source", None)
    return Document(
        text=text,
        source=source,
        url=url if isinstance(url, str) else None,
        title=title if isinstance(title, str) else None,
        content_type=content_type
        if content_type in ("text/html", "text/plain")
        else "text/plain",
        metadata=record,
    )


# -------------------------------------------------------------- decoding


def _strip_bom(data):
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return data[len(bom) :], encoding
    return data, None


def _is_binary(data):
    sample = data[:_SNIFF_BYTES]
    if not sample:
        return False
    if b"\x00" in sample:
        return True
    controls = len(sample) - len(sample.translate(None, _CONTROL))
    return controls > 0.05 * len(sample)


def _valid_codec(name):
    import codecs

    try:
        return codecs.lookup(name).name
    except (LookupError, TypeError):
        return None


def decode(data, declared=None, html=False):
    """Decodes bytes of a page: `(text, charset, how)`.

    The declared charset (HTTP header) wins if it decodes without error,
    then a BOM, then a `<meta charset>` (HTML only), then UTF-8, then
    charset_normalizer's guess, then cp1252 with replacement characters.
    A page declared Latin-1/cp1252 that is valid non-ASCII UTF-8 is read
    as UTF-8 (the usual mislabelling).

    Args:
        data: the raw bytes.
        declared: the charset of the HTTP `Content-Type`, if any.
        html: also look for a `<meta charset>` in the first bytes.

    Returns:
        `(text, charset, how)`, `how` one of `"bom"`, `"http"`, `"meta"`,
        `"utf-8"`, `"detected"`, `"fallback"`.
    """
    data, bom = _strip_bom(data)
    if bom:
        return data.decode(bom, errors="replace"), bom, "bom"
    candidates = []
    if declared:
        candidates.append((declared, "http"))
    if html:
        match = _META_CHARSET.search(data[:4096])
        if match:
            candidates.append((match.group(1).decode("ascii"), "meta"))
    for name, how in candidates:
        codec = _valid_codec(name)
        if codec is None:
            continue
        if codec in ("latin-1", "iso8859-1", "cp1252", "ascii"):
            if not data.isascii():
                try:
                    return data.decode("utf-8"), "utf-8", "utf-8"
                except UnicodeDecodeError:
                    pass
            if codec == "ascii":
                codec = "cp1252"
        try:
            return data.decode(codec), codec, how
        except UnicodeDecodeError:
            continue
    try:
        return data.decode("utf-8"), "utf-8", "utf-8"
    except UnicodeDecodeError:
        pass
    import charset_normalizer

    matches = charset_normalizer.from_bytes(data[:200_000])
    best = matches.best()
    if best is not None:
        # Short samples tie between code pages; the web's default wins.
        for match in matches:
            same = (match.chaos, match.coherence) == (
                best.chaos,
                best.coherence,
            )
            if same and "cp1252" in match.could_be_from_charset:
                best = match
                break
        try:
            return data.decode(best.encoding), best.encoding, "detected"
        except (UnicodeDecodeError, LookupError):
            pass
    return data.decode("cp1252", errors="replace"), "cp1252", "fallback"


def _make_document(data, source, content_type, max_bytes, declared=None):
    """(Document, None) or (None, drop reason) for a payload."""
    if len(data) > max_bytes:
        return None, "too_large"
    if not data.strip():
        return None, "empty"
    if _strip_bom(data)[1] is None and _is_binary(data):
        return None, "binary_content"
    html = content_type == "text/html"
    text, charset, how = decode(data, declared, html=html)
    if not text.strip():
        return None, "empty"
    metadata = {"charset": charset, "charset_from": how}
    document = Document(
        text=text, source=source, content_type=content_type, metadata=metadata
    )
    return document, None


# -------------------------------------------------------------- archives


class _Probe:
    """A file wrapper that notices a gzip stream ending mid-member."""

    def __init__(self, fh):
        self.fh = fh
        self.iterator = None
        self.truncated = False

    def tell(self):
        return self.fh.tell()

    def read(self, size=-1):
        data = self.fh.read(size)
        if not data and self.iterator is not None:
            reader = self.iterator.reader
            decompressor = reader and reader.decompressor
            if decompressor is not None and not decompressor.eof:
                self.truncated = True
        return data

    def close(self):
        pass


def _resync(path, offset, gzipped):
    """The offset of the next record start after `offset`, or None."""
    marker = b"\x1f\x8b\x08" if gzipped else b"\nWARC/1."
    skip = 0 if gzipped else 1
    with open(path, "rb") as f:
        f.seek(offset + 1)
        position = offset + 1
        tail = b""
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                return None
            window = tail + chunk
            found = window.find(marker)
            if found >= 0:
                return position - len(tail) + found + skip
            tail = window[-(len(marker) - 1) :]
            position += len(chunk)


def _read_archive(path, report, max_bytes, gzipped):
    from warcio.archiveiterator import ArchiveIterator
    from warcio.exceptions import ArchiveLoadFailed

    state = {"index": 0, "stream": False}
    start = 0
    while start is not None:
        with open(path, "rb") as raw:
            if state["stream"]:
                fh = gzip.open(raw, "rb")
                probe = None
            else:
                raw.seek(start)
                fh = probe = _Probe(raw)
            iterator = ArchiveIterator(fh, arc2warc=True)
            if probe is not None:
                probe.iterator = iterator
            # In stream mode, the records before the restart were counted.
            skip = state["index"] if state["stream"] else 0
            if state["stream"]:
                state["index"] = 0
            start = None
            try:
                for record in iterator:
                    index = state["index"]
                    state["index"] += 1
                    if index < skip:
                        continue
                    cut = yield from _archive_record(
                        record,
                        f"{path}#record={index}",
                        report,
                        max_bytes,
                        gzipped,
                        probe,
                    )
                    if cut:
                        return
            except (EOFError, zlib.error, gzip.BadGzipFile):
                _count(report, "truncated_gzip", path, state["index"])
            except ArchiveLoadFailed as error:
                offset = iterator.offset
                if probe is not None and probe.truncated:
                    _count(report, "truncated_gzip", path, state["index"])
                elif "non-chunked gzip" in str(error) and not state["stream"]:
                    # One gzip stream around the whole file (`gzip x.warc`):
                    # valid, but warcio needs one member per record; read
                    # it again through `gzip` and skip what was read.
                    state["stream"] = True
                    start = 0
                else:
                    source = f"{path}#record={state['index']}&offset={offset}"
                    report.seen()
                    report.drop("malformed_record", source)
                    state["index"] += 1
                    if not state["stream"]:
                        start = _resync(path, offset, gzipped)
            except Exception:
                # Anything else from a damaged archive: count, keep the rest.
                _count(report, "malformed_record", path, state["index"])
            else:
                if probe is not None and probe.truncated:
                    _count(report, "truncated_gzip", path, state["index"])


def _count(report, reason, path, index):
    report.seen()
    report.drop(reason, f"{path}#record={index}")


def _archive_record(record, source, report, max_bytes, gzipped, probe):
    """Yields the Document of one archive record; counts its fate.

    Returns True when the record was dropped as truncated (the end).
    """
    if record.rec_type not in PAYLOAD_RECORDS:
        return False
    headers = record.rec_headers
    url = headers.get_header("WARC-Target-URI")
    http = record.http_headers
    if http is not None and http.protocol.upper().startswith("HTTP"):
        status = http.get_statuscode()
        header_type = http.get_header("Content-Type")
    else:
        status = "200"
        header_type = record.content_type
    try:
        data = _read_capped(record.content_stream(), max_bytes)
        limit = 0
        if len(data) <= max_bytes:
            while record.raw_stream.read(_CHUNK):
                pass
            limit = getattr(record.raw_stream, "limit", 0)
    except Exception:
        report.seen()
        report.drop("malformed_record", source)
        return False
    report.seen(len(data))
    if len(data) <= max_bytes and (limit or (probe and probe.truncated)):
        report.drop("truncated_gzip" if gzipped else "truncated_record", source)
        return True
    if status != "200":
        report.drop("http_status", source)
        return False
    mime, declared = _parse_content_type(header_type)
    if mime is None:
        mime = "text/html" if data.lstrip()[:1] == b"<" else "text/plain"
    if mime not in TEXT_TYPES:
        report.drop("content_type", source)
        return False
    document, reason = _make_document(
        data, source, TEXT_TYPES[mime], max_bytes, declared
    )
    if reason:
        report.drop(reason, source)
        return False
    document.url = url
    date = headers.get_header("WARC-Date")
    if date:
        document.metadata["warc_date"] = date
    report.kept(len(data))
    yield document
    return False


def _parse_content_type(value):
    """(mime type or None, charset or None) of a Content-Type value."""
    if not value:
        return None, None
    mime = value.split(";", 1)[0].strip().lower() or None
    match = _HTTP_CHARSET.search(value)
    return mime, match.group(1) if match else None
