"""Main text from HTML: the `extract` stage of `keras-llm data`.

The work is done by trafilatura (`bare_extraction`: boilerplate,
navigation, scripts and comments removed; title from `<title>`), the
default for its quality, or by resiliparse (`extract_plain_text` with
`main_content=True`, title from its `HTMLTree`), offered because the issue's
throughput target (extract + clean + dedup at 2 MB/s per core) leaves
trafilatura little room. Only the accounting is written here.

Measured on this 2-core machine (shared: load average about 8 during the
run, so both figures are low by perhaps 3-4x; unloaded, ../shared/DESIGN.md
has trafilatura at about 9 MB/s and resiliparse at about 66 MB/s on simpler
pages), one process, `extract` over 200 generated pages (5.2 MB of HTML,
26 KB each: a `<title>`, style, two scripts, a cookie banner, a header promo
line, a nav of 500 links, an article of 12-40 planted sentences, an aside,
a footer):

| engine      | MB/s of HTML | planted sentences kept | boilerplate leaked |
|-------------|--------------|------------------------|--------------------|
| trafilatura | 0.6          | 100 %                  | 0 %                |
| resiliparse | 16.5         | 100 %                  | 14.3 %             |

"Leaked" is the share of the 7 planted boilerplate strings per page (nav,
header, cookie banner, aside, footer, script, style) found in the output:
resiliparse kept the header promo line on every page, dropped the rest.
Reading `<title>` from the parsed tree instead of trafilatura's
`with_metadata=True` (which also runs htmldate) made trafilatura 3 times
faster here and is why the title is read that way. The script was a
throw-away (200 `Document`s through `extract`, timed with
`time.perf_counter`); `benchmarks/data_pipeline.py` measures the chain.
"""

from keras_llm.data.documents import Document
from keras_llm.data.documents import StageReport

#: The extraction engines, the default first.
ENGINES = ("trafilatura", "resiliparse")


def extract(
    documents,
    report=None,
    *,
    engine="trafilatura",
    min_length=1,
    include_tables=True,
):
    """Turns HTML documents into their main text.

    HTML documents (`content_type == "text/html"`) come out as plain text
    (`content_type="text/plain"`) with `title` set from the page and `url`
    and `metadata` kept; plain-text documents pass through unchanged. A page
    from which nothing (or less than `min_length` characters) is extracted
    is dropped as `no_text`; an engine error as `extract_error` (the
    exception class is kept in the report's examples).

    Args:
        documents: an iterable of `Document`s (from `read_documents`).
        report: a `StageReport` to count into; a private one when `None`.
        engine: `"trafilatura"` (default, best quality) or `"resiliparse"`
            (10 to 25 times faster, leaks more boilerplate).
        min_length: the fewest characters of extracted text to keep.
        include_tables: keep the text of tables (trafilatura only;
            resiliparse always keeps it).

    Returns:
        An iterator of plain-text `Document`s.

    Raises:
        ValueError: `engine` is not one of `ENGINES`.

    Example:

    ```python
    from keras_llm.data.documents import Document
    from keras_llm.data.extract import extract

    html = (
        "<html><head><title>Hi</title></head><body><nav>Home</nav>"
        "<article><p>" + "A sentence of the article. " * 20 + "</p>"
        "</article></body></html>"
    )
    (page,) = extract([Document(html, "a.html", content_type="text/html")])
    print(page.title, page.text[:26])  # Hi A sentence of the article
    ```
    """
    if engine not in ENGINES:
        raise ValueError(
            f"extract: unknown engine {engine!r}; choose one of {ENGINES}"
        )
    if report is None:
        report = StageReport("extract")
    if engine == "trafilatura":
        run = _trafilatura(include_tables)
    else:
        run = _resiliparse()
    for document in documents:
        nbytes = len(document.text.encode("utf-8", errors="replace"))
        report.seen(nbytes)
        if document.content_type != "text/html":
            report.kept(nbytes)
            yield document
            continue
        try:
            text, title = run(document)
        except Exception as error:  # any engine failure is one dropped page
            report.drop(
                "extract_error",
                f"{document.source} ({type(error).__name__})",
            )
            continue
        text = (text or "").strip()
        if len(text) < max(min_length, 1):
            report.drop("no_text", document.source)
            continue
        out = Document(
            text=text,
            source=document.source,
            url=document.url,
            title=title or document.title,
            content_type="text/plain",
            metadata=dict(document.metadata),
        )
        report.kept(len(text.encode("utf-8", errors="replace")))
        yield out


def _trafilatura(include_tables):
    import trafilatura
    from trafilatura.utils import load_html

    def run(document):
        # The page is parsed once; the title is read from `<title>` (with
        # `with_metadata=True`, trafilatura also runs htmldate and a
        # metadata pass, which made it 3 times slower here).
        tree = load_html(document.text)
        if tree is None:
            return None, None
        title = " ".join((tree.findtext(".//title") or "").split()) or None
        result = trafilatura.bare_extraction(
            tree,
            url=document.url,
            include_comments=False,
            include_tables=include_tables,
        )
        if result is None:
            return None, title
        return result.text, title

    return run


def _resiliparse():
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.html import HTMLTree

    def run(document):
        tree = HTMLTree.parse(document.text)
        text = extract_plain_text(tree, main_content=True)
        title = (tree.title or "").strip() or None
        return text, title

    return run
