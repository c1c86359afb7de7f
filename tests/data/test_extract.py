import pytest

from keras_llm.data.documents import Document
from keras_llm.data.documents import StageReport
from keras_llm.data.extract import ENGINES
from keras_llm.data.extract import extract

ARTICLE = [
    "The lighthouse keeper climbed the spiral stairs every evening at dusk.",
    "Salt wind rattled the windows while the lamp turned its slow circle.",
    "Ships far out on the grey water answered with a short blast of horns.",
    "In the morning he wrote the weather and the passing ships in a ledger.",
    "Nobody had asked him to keep the ledger, but he kept it for forty years.",
]
BOILERPLATE = [
    "navhome",
    "navpricing",
    "headerpromo subscribe today",
    "cookiebanner we use cookies",
    "footertext all rights reserved",
]
SCRIPT = ["scriptsecret", "stylesecret"]


def html_page():
    links = "".join(
        f'<li><a href="/section/{n}">navlink{n}</a></li>' for n in range(30)
    )
    paragraphs = "".join(
        f"<p>{ARTICLE[i]} {ARTICLE[i + 1]}</p>" for i in range(0, 4, 2)
    ) + (f"<p>{ARTICLE[4]}</p>")
    return f"""<!DOCTYPE html>
<html><head><title>The Keeper's Ledger</title>
<style>body {{ color: black }} /* stylesecret */</style>
<script>var scriptsecret = "tracking-id-1";</script>
</head><body>
<div class="cookie-banner" id="cookie-consent">
  <p>{BOILERPLATE[3]}</p><button>Accept</button></div>
<header><div class="promo">{BOILERPLATE[2]}</div></header>
<nav><ul><li><a href="/">{BOILERPLATE[0]}</a></li>
<li><a href="/pricing">{BOILERPLATE[1]}</a></li>{links}</ul></nav>
<main><article><h1>The Keeper's Ledger</h1>{paragraphs}</article></main>
<footer><p>{BOILERPLATE[4]}</p></footer>
<script>document.write("scriptsecret");</script>
</body></html>"""


@pytest.mark.parametrize("engine", ENGINES)
def test_main_text_kept_and_boilerplate_removed(engine):
    page = Document(
        html_page(),
        "site.warc.gz#record=1",
        url="http://x.test/keeper",
        content_type="text/html",
        metadata={"warc_date": "2024-01-01"},
    )
    report = StageReport("extract")
    (out,) = extract([page], report, engine=engine)
    report.check()
    for sentence in ARTICLE:
        assert sentence in " ".join(out.text.split()), sentence
    for secret in SCRIPT:
        assert secret not in out.text
    if engine == "trafilatura":
        removed = BOILERPLATE
    else:
        # resiliparse's main-content heuristic drops nav, cookie banner and
        # footer but keeps the header's promo line (stated in the module).
        removed = [BOILERPLATE[i] for i in (0, 1, 3, 4)]
    for text in removed:
        assert text not in out.text, text
    assert "navlink" not in out.text
    assert out.title == "The Keeper's Ledger"
    assert out.url == "http://x.test/keeper"
    assert out.source == "site.warc.gz#record=1"
    assert out.content_type == "text/plain"
    assert out.metadata == {"warc_date": "2024-01-01"}
    assert report.kept_count == 1 and report.dropped_count == 0


@pytest.mark.parametrize("engine", ENGINES)
def test_text_passthrough_and_drops(engine):
    text = Document("Already plain text.\nTwo lines.", "notes.txt")
    empty = Document(
        "<html><head><script>var a = 1;</script></head><body></body></html>",
        "empty.html",
        content_type="text/html",
    )
    short = Document(
        "<html><body><article><p>Tiny words here.</p></article></body></html>",
        "short.html",
        content_type="text/html",
    )
    good = Document(html_page(), "good.html", content_type="text/html")
    report = StageReport("extract")
    out = list(
        extract(
            [text, empty, short, good], report, engine=engine, min_length=50
        )
    )
    report.check()
    assert out[0] is text
    assert [d.source for d in out] == ["notes.txt", "good.html"]
    assert dict(report.dropped) == {"no_text": 2}
    assert report.examples["no_text"] == ["empty.html", "short.html"]
    assert report.docs_in == 4 and report.kept_count == 2


def test_engine_error_is_counted(monkeypatch):
    import trafilatura

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(trafilatura, "bare_extraction", broken)
    page = Document(html_page(), "bad.html", content_type="text/html")
    report = StageReport("extract")
    assert list(extract([page], report)) == []
    report.check()
    assert report.examples["extract_error"] == ["bad.html (RuntimeError)"]


def test_unknown_engine():
    with pytest.raises(ValueError, match="unknown engine 'lynx'"):
        list(extract([], engine="lynx"))
