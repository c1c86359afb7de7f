"""The polite crawler against a generated site on 127.0.0.1."""

import gzip
import os

import pytest
from warcio.archiveiterator import ArchiveIterator

from keras_llm.data.crawl import CrawlConfig
from keras_llm.data.crawl import crawl
from keras_llm.data.crawl import normalize_url
from keras_llm.data.documents import StageReport
from keras_llm.errors import UserError
from tests.data.web_site import DRIP_SECONDS
from tests.data.web_site import Site

TIMEOUT = 0.5


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """Requests to 127.0.0.1 must not go through a proxy from the env."""
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)


def _config(**overrides):
    options = dict(
        max_pages=100,
        max_depth=4,
        max_bytes_per_page=50_000,
        timeout=TIMEOUT,
        delay_per_host=0.0,
        concurrency=4,
    )
    options.update(overrides)
    return CrawlConfig(**options)


def _records(paths):
    """(type, url, status, content type, body) of every WARC record."""
    records = []
    for path in paths:
        with open(path, "rb") as f:
            for record in ArchiveIterator(f):
                http = record.http_headers
                records.append(
                    (
                        record.rec_type,
                        record.rec_headers.get_header("WARC-Target-URI"),
                        http.get_statuscode() if http else None,
                        http.get_header("Content-Type") if http else None,
                        record.content_stream().read(),
                    )
                )
    return records


def _responses(paths):
    return {
        url: (content_type, body)
        for kind, url, status, content_type, body in _records(paths)
        if kind == "response" and status == "200"
    }


def test_normalize_url():
    assert (
        normalize_url("HTTP://Example.COM:80/a/./b/../c?q=1#frag")
        == "http://example.com/a/c?q=1"
    )
    assert normalize_url("https://example.com:443") == "https://example.com/"
    assert normalize_url("http://example.com:8080/") == (
        "http://example.com:8080/"
    )
    assert normalize_url("../x?b=2&a=1", base="http://h.org/p/q/") == (
        "http://h.org/p/x?b=2&a=1"
    )
    assert normalize_url("#top", base="http://h.org/p") == "http://h.org/p"
    assert normalize_url("mailto:a@b.org").startswith("mailto:")


def test_config_and_seed_errors(tmp_path):
    with pytest.raises(UserError, match="max_pages"):
        CrawlConfig(max_pages=0)
    with pytest.raises(UserError, match="timeout"):
        CrawlConfig(timeout=0)
    with pytest.raises(UserError, match="example.com"):
        crawl("example.com/page", tmp_path)
    with pytest.raises(UserError, match="ftp"):
        crawl(["ftp://example.com/"], tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        crawl("http://127.0.0.1:9/", tmp_path / "file")


def test_crawl_obeys_robots_limits_and_writes_warc(tmp_path):
    with Site() as offsite:
        with Site(crawl_delay=0.1, offsite=offsite.url("/")) as site:
            report = StageReport("crawl")
            counts = crawl(
                [site.url("/")],
                tmp_path / "warc",
                _config(delay_per_host=0.02),
                report=report,
            )
        offsite_paths = offsite.paths()
    paths = site.paths()
    log = site.log

    report.check()
    # Off-site links are counted, never requested.
    assert offsite_paths == []
    assert counts["dropped"]["off_site"] == 1
    # robots.txt first, once; disallowed pages never requested.
    assert paths[0] == "/robots.txt"
    assert paths.count("/robots.txt") == 1
    assert not [p for p in paths if p.startswith("/private/")]
    assert counts["dropped"]["robots_disallowed"] == 2
    # Every page once, whatever the spelling of its links.
    assert len(paths) == len(set(paths)), paths
    assert paths.count("/page1") == 1
    # A user agent that names the crawler.
    assert {entry[3] for entry in log} == {CrawlConfig().user_agent}
    # The robots.txt Crawl-delay (0.1 s, longer than the configured
    # 0.02 s) between the end of one request and the start of the next
    # (the server logs when it started to answer, before the end).
    for before, after in zip(log, log[1:]):
        assert after[0] - before[1] >= 0.1 - 0.005, (before, after)
    # Depth: the seed is 0, /chain/0 is 1, so /chain/3 is depth 4.
    assert "/chain/3" in paths
    assert "/chain/4" not in paths
    assert counts["dropped"]["max_depth"] == 1
    # The redirect loop stops, the ftp: redirect is refused, the
    # slow page times out, big and binary pages are not kept.
    assert paths.count("/loop/a") == 1 and paths.count("/loop/b") == 1
    expected_drops = {
        "redirect_loop": 1,
        "bad_scheme": 3,  # /to-ftp, mailto:, javascript:
        "timeout": 1,
        "too_large": 2,
        "content_type": 1,
        "binary": 1,
        "http_404": 1,
        "duplicate": 1,  # /old2 redirects to /page2, already met
    }
    for reason, count in expected_drops.items():
        assert counts["dropped"][reason] == count, (reason, counts)
    # The crawl does not wait for the page that never finishes.
    assert counts["seconds"] < 10

    # The WARC files hold exactly the 200 pages, with their URLs.
    expected_html = {
        site.url(p)
        for p in ["/", "/page1", "/page2", "/moved-here"]
        + [f"/chain/{n}" for n in range(4)]
    }
    responses = _responses(counts["warc_paths"])
    html = {url for url, (kind, _) in responses.items() if kind == "text/html"}
    assert html == expected_html
    assert set(responses) == expected_html | {site.url("/notes.txt")}
    assert responses[site.url("/notes.txt")][1] == b"plain notes\n"
    assert b"<title>page one</title>" in responses[site.url("/page1")][1]
    assert counts["pages_fetched"] == len(responses) == report.kept_count
    assert counts["bytes"] == sum(len(b) for _, b in responses.values())
    records = _records(counts["warc_paths"])
    assert records[0][0] == "warcinfo"
    requests = [r for r in records if r[0] == "request"]
    assert {r[1] for r in requests} == set(responses)
    # The report accounts for every URL met, once.
    assert counts["urls_seen"] == report.docs_in
    assert report.docs_in == report.kept_count + report.dropped_count


def test_slow_page_hits_total_deadline(tmp_path):
    # Each byte arrives well within the timeout, so only a deadline on
    # the whole request can stop the page.
    assert DRIP_SECONDS < TIMEOUT / 4
    with Site() as site:
        counts = crawl(site.url("/slow"), tmp_path, _config())
        slow = [e for e in site.log if e[2] == "/slow"]
    assert counts["dropped"] == {"timeout": 1}
    assert counts["warc_files"] == 0
    assert TIMEOUT <= counts["seconds"] < TIMEOUT + 3
    assert len(slow) == 1


def test_max_pages(tmp_path):
    with Site() as site:
        report = StageReport("crawl")
        counts = crawl(
            site.url("/chain/0"), tmp_path, _config(max_pages=3), report
        )
        paths = site.paths()
    report.check()
    assert paths == ["/robots.txt", "/chain/0", "/chain/1", "/chain/2"]
    assert counts["pages_fetched"] == 3
    assert counts["dropped"] == {"max_pages": 1}
    assert len(_responses(counts["warc_paths"])) == 3


def test_max_redirects(tmp_path):
    with Site() as site:
        counts = crawl(
            site.url("/redirect/0"),
            tmp_path,
            _config(max_redirects=3),
            progress=True,
        )
        paths = site.paths()
    assert paths == ["/robots.txt"] + [f"/redirect/{n}" for n in range(4)]
    assert counts["dropped"] == {"redirect_loop": 1}


def test_without_robots_private_pages_are_fetched(tmp_path):
    with Site() as site:
        counts = crawl(
            site.url("/page1"),
            tmp_path,
            _config(respect_robots=False, max_depth=1),
        )
        paths = site.paths()
    assert "/robots.txt" not in paths
    assert "/private/other.html" in paths
    assert "robots_disallowed" not in counts["dropped"]


def test_robots_status(tmp_path):
    # RFC 9309: a 4xx robots.txt allows everything, a 5xx nothing.
    for status, allowed in [(404, True), (403, True), (500, False)]:
        with Site(robots_status=status) as site:
            counts = crawl(
                site.url("/private/x.html"),
                tmp_path / str(status),
                _config(max_depth=0),
            )
        paths = site.paths()
        assert ("/private/x.html" in paths) == allowed, status
        assert counts["pages_fetched"] == int(allowed)
        if not allowed:
            assert paths == ["/robots.txt"]
            assert counts["dropped"] == {"robots_disallowed": 1}


def test_unreachable_robots_disallows(tmp_path):
    with Site() as site:
        url = site.url("/")
    # The server is gone: robots.txt cannot be fetched, nothing is.
    counts = crawl(url, tmp_path, _config())
    assert counts["dropped"] == {"robots_disallowed": 1}
    assert counts["warc_files"] == 0


def test_offsite_followed_when_allowed_with_one_request_per_host(tmp_path):
    with Site() as offsite:
        with Site(offsite=offsite.url("/page1"), latency=0.03) as site:
            counts = crawl(
                site.url("/"),
                tmp_path,
                _config(same_host=False, max_depth=1, concurrency=4),
            )
    offsite_paths = offsite.paths()
    assert offsite_paths[:2] == ["/robots.txt", "/page1"]
    assert offsite.url("/page1") in _responses(counts["warc_paths"])
    assert "off_site" not in counts["dropped"]
    # Per-host concurrency 1: a host's requests never overlap: each
    # comes after the server started to answer the one before.
    for log in (site.log, offsite.log):
        for before, after in zip(log, log[1:]):
            assert after[0] >= before[1], (before, after)


def test_warc_files_rotate_and_are_gzipped(tmp_path):
    with Site() as site:
        counts = crawl(
            site.url("/chain/0"),
            tmp_path,
            _config(max_depth=10, warc_records_per_file=2),
        )
    assert counts["pages_fetched"] == 8
    assert counts["warc_files"] == 4
    for path in counts["warc_paths"]:
        with open(path, "rb") as f:
            assert f.read(2) == b"\x1f\x8b"
        with gzip.open(path) as f:
            assert f.read(8) == b"WARC/1.0"
        records = _records([path])
        assert records[0][0] == "warcinfo"
        assert [r[0] for r in records[1:]].count("response") == 2
    # A second crawl into the same folder adds files, overwrites none.
    with Site() as site:
        again = crawl(site.url("/chain/6"), tmp_path, _config())
    assert not set(again["warc_paths"]) & set(counts["warc_paths"])
    assert len(os.listdir(tmp_path)) == 5


def test_crawl_replays_through_read_documents(tmp_path):
    warc = pytest.importorskip("keras_llm.data.warc")
    with Site() as site:
        counts = crawl(site.url("/page1"), tmp_path, _config(max_depth=1))
    documents = list(warc.read_documents(counts["warc_paths"]))
    urls = {document.url for document in documents}
    assert urls == set(_responses(counts["warc_paths"]))
    assert all("<html>" in document.text for document in documents)
