"""A polite web crawler that writes what it fetches to gzipped WARC files.

The field's libraries do the work: httpx (its async client) speaks HTTP and
resolves URLs, protego parses robots.txt, warcio writes the WARC files (so a
crawl can be replayed by `keras_llm.data.warc.read_documents` and audited
with any WARC tool), and the standard library's `html.parser` finds links.

Hand-written here is only what no library of the field offers in a small
form: the scheduling (one queue per host, served by one task so a host never
sees two requests at once, a delay between requests to the same host, a
global limit on requests in flight), the limits (pages, depth, bytes per
page, a total deadline per request that also stops a page that drips bytes
forever) and the account of every URL in a `StageReport("crawl")`.

Every URL the crawl meets (a seed or a link, once per normalised spelling)
is counted once: kept (a `200` page of an allowed content type, written to
the WARC files) or dropped with one of the reasons `bad_url`, `bad_scheme`,
`off_site`, `max_depth`, `max_pages`, `robots_disallowed`, `redirect_loop`,
`duplicate` (a redirect to a URL already met), `timeout`, `fetch_error`,
`too_large`, `content_type`, `binary` or `http_<status>`.
"""

import asyncio
import concurrent.futures
import dataclasses
import datetime
import html.parser
import importlib.metadata
import io
import os
import time
import urllib.parse

import httpx
from protego import Protego
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from keras_llm.data.documents import StageReport
from keras_llm.errors import UserError
from keras_llm.version import __version__

SCHEMES = ("http", "https")
_DEFAULT_PORTS = {"http": 80, "https": 443}
# RFC 9309 section 2.5: crawlers must parse at least the first 500 KiB.
_ROBOTS_MAX_BYTES = 500 * 1024
_ALLOW_ALL = "User-agent: *\nAllow: /\n"
_DISALLOW_ALL = "User-agent: *\nDisallow: /\n"
# Headers that describe the bytes on the wire, not the decoded body that
# is stored; they are dropped (Content-Length is rewritten).
_WIRE_HEADERS = ("content-encoding", "transfer-encoding", "content-length")


@dataclasses.dataclass
class CrawlConfig:
    """Limits and manners of a crawl (the seeds are given to `crawl`).

    Attributes:
        max_pages: most page fetches started (redirect hops and robots.txt
            not counted); URLs met after that are dropped as `max_pages`.
        max_depth: most links followed from a seed (seeds are depth 0);
            deeper links are dropped as `max_depth`.
        max_bytes_per_page: a body longer than this (after content
            decoding) is cut off, dropped as `too_large` and not written.
        timeout: seconds per request, all of it: connecting, the headers
            and the whole body, so a page that never finishes is dropped
            as `timeout`.
        delay_per_host: seconds between the end of one request to a host
            and the start of the next; a robots.txt `Crawl-delay` that is
            longer wins.
        concurrency: most requests in flight over all hosts. Each host
            gets one request at a time.
        allowed_content_types: media types that are kept; any other is
            dropped as `content_type` and its body is not read.
        user_agent: sent as `User-Agent` and matched in robots.txt.
        same_host: if `True`, only links to the seeds' hosts (host and
            port; http and https of one host count as one) are followed;
            others are dropped as `off_site`.
        max_redirects: most redirects followed from one URL; a longer
            chain, or one that comes back on itself, is `redirect_loop`.
        respect_robots: if `True`, robots.txt is fetched once per host
            and obeyed (RFC 9309: a 4xx answer allows everything, a 5xx or
            no answer disallows everything).
        warc_records_per_file: pages (request and response record pairs)
            per WARC file before a new file is started.
    """

    max_pages: int = 100
    max_depth: int = 3
    max_bytes_per_page: int = 5_000_000
    timeout: float = 10.0
    delay_per_host: float = 1.0
    concurrency: int = 8
    allowed_content_types: tuple = ("text/html", "text/plain")
    user_agent: str = f"keras-llm-crawler/{__version__}"
    same_host: bool = True
    max_redirects: int = 5
    respect_robots: bool = True
    warc_records_per_file: int = 1000

    def __post_init__(self):
        positive = ("max_pages", "max_bytes_per_page", "concurrency")
        for name in positive + ("warc_records_per_file",):
            if int(getattr(self, name)) < 1:
                raise UserError(f"CrawlConfig.{name} must be at least 1.")
        for name in ("max_depth", "max_redirects", "delay_per_host"):
            if getattr(self, name) < 0:
                raise UserError(f"CrawlConfig.{name} must not be negative.")
        if not self.timeout > 0:
            raise UserError("CrawlConfig.timeout must be positive.")
        if isinstance(self.allowed_content_types, str):
            self.allowed_content_types = (self.allowed_content_types,)
        self.allowed_content_types = tuple(
            t.strip().lower() for t in self.allowed_content_types
        )


def normalize_url(url, base=None):
    """The one spelling of a URL under which the crawl knows it.

    Scheme and host are lowercased, a default port is removed, the path's
    `.` and `..` segments are resolved, an empty path becomes `/`, the
    fragment is dropped and the query is kept as it is. URLs of other
    schemes (`mailto:`, `ftp:`, ...) come back joined but otherwise as
    they are, for the caller to refuse.

    Args:
        url: string, absolute or (with `base`) relative.
        base: string, the URL of the page the link is on. Defaults to
            `None`.

    Returns:
        The normalised URL, a string.

    Raises:
        ValueError: if the URL cannot be parsed.

    Example:

    ```python
    from keras_llm.data.crawl import normalize_url

    print(normalize_url("HTTP://Example.COM:80/a/./b/../c?q=1#top"))
    # http://example.com/a/c?q=1
    print(normalize_url("../d", base="https://example.com/a/b/"))
    # https://example.com/a/d
    ```
    """
    try:
        parsed = httpx.URL(base).join(url) if base else httpx.URL(url)
        if parsed.scheme not in SCHEMES:
            return str(parsed)
        parsed = parsed.copy_with(fragment=None)
        if parsed.port == _DEFAULT_PORTS[parsed.scheme]:
            parsed = parsed.copy_with(port=None)
        if not urllib.parse.urlsplit(str(parsed)).path:
            parsed = parsed.copy_with(path="/")
        return str(parsed)
    except (httpx.InvalidURL, TypeError, ValueError) as error:
        raise ValueError(f"invalid URL {url!r}: {error}") from None


def _site(url):
    """Host and port, with http and https of one host counting as one."""
    parsed = httpx.URL(url)
    if parsed.port is None:
        return parsed.host
    return f"{parsed.host}:{parsed.port}"


def _origin(url):
    """`scheme://host[:port]`: what robots.txt and the delay are kept for."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class _LinkParser(html.parser.HTMLParser):
    """Collects `<a href>` and `<area href>`, following `<base href>`."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.base = None
        self.links = []

    def handle_starttag(self, tag, attrs):
        if tag not in ("a", "area", "base"):
            return
        href = dict(attrs).get("href")
        if not href or not href.strip():
            return
        if tag == "base":
            if self.base is None:
                self.base = href.strip()
        else:
            self.links.append(href.strip())


def _links(body, encoding, page_url):
    """The links of an HTML page, as written (relative or absolute)."""
    try:
        text = body.decode(encoding or "utf-8", errors="replace")
    except LookupError:
        text = body.decode("utf-8", errors="replace")
    parser = _LinkParser()
    try:
        parser.feed(text)
        parser.close()
    except Exception:  # noqa: BLE001 - a broken page has no links we trust
        pass
    base = page_url
    if parser.base:
        try:
            base = normalize_url(parser.base, base=page_url)
        except ValueError:
            pass
    return base, parser.links


@dataclasses.dataclass
class _Item:
    url: str  # what to request now
    depth: int
    origin: str  # the URL as first met: what the report counts
    chain: tuple  # the redirect chain so far, starting with `origin`


@dataclasses.dataclass
class _Host:
    origin: str
    queue: list = dataclasses.field(default_factory=list)
    running: bool = False
    task: object = None
    robots: object = None
    delay: float = 0.0
    last_end: float = 0.0
    next_time: float = 0.0


@dataclasses.dataclass
class _Outcome:
    kind: str  # "page", "redirect" or "drop"
    reason: str = ""
    location: str = ""
    response: object = None
    body: bytes = b""


class _WarcOutput:
    """Gzipped WARC files under a folder, a new one every N pages."""

    def __init__(self, out, records_per_file, info):
        os.makedirs(out, exist_ok=True)
        stamp = datetime.datetime.now(datetime.timezone.utc)
        self.prefix = os.path.join(
            out, f"crawl-{stamp:%Y%m%d%H%M%S}-{os.getpid()}"
        )
        self.records_per_file = records_per_file
        self.info = info
        self.paths = []
        self.file = None
        self.writer = None
        self.count = 0

    def _open(self):
        self.close()
        number = len(self.paths)
        while True:
            path = f"{self.prefix}-{number:05d}.warc.gz"
            try:
                self.file = open(path, "xb")
                break
            except FileExistsError:
                number += 1
        self.paths.append(path)
        self.writer = WARCWriter(self.file, gzip=True)
        record = self.writer.create_warcinfo_record(
            os.path.basename(path), self.info
        )
        self.writer.write_record(record)
        self.count = 0

    def write(self, url, response, body):
        if self.file is None or self.count >= self.records_per_file:
            self._open()
        request = response.request
        target = request.url.raw_path.decode("ascii", errors="replace")
        request_headers = StatusAndHeaders(
            f"GET {target} HTTP/1.1",
            list(request.headers.multi_items()),
            is_http_request=True,
        )
        headers = [
            (k, v)
            for k, v in response.headers.multi_items()
            if k.lower() not in _WIRE_HEADERS
        ]
        headers.append(("Content-Length", str(len(body))))
        response_headers = StatusAndHeaders(
            f"{response.status_code} {response.reason_phrase}".strip(),
            headers,
            protocol=response.http_version or "HTTP/1.1",
        )
        request_record = self.writer.create_warc_record(
            url, "request", http_headers=request_headers
        )
        response_record = self.writer.create_warc_record(
            url,
            "response",
            payload=io.BytesIO(body),
            length=len(body),
            http_headers=response_headers,
        )
        self.writer.write_request_response_pair(request_record, response_record)
        self.file.flush()
        self.count += 1

    def close(self):
        if self.file is not None:
            self.file.close()
            self.file = None


class _Progress:
    """A rich progress bar of pages done, or nothing."""

    def __init__(self, enabled, total):
        self.bar = None
        if enabled:
            import rich.progress

            self.bar = rich.progress.Progress(
                rich.progress.SpinnerColumn(),
                rich.progress.TextColumn("crawl"),
                rich.progress.BarColumn(),
                rich.progress.MofNCompleteColumn(),
                rich.progress.TextColumn("{task.fields[status]}"),
                rich.progress.TimeElapsedColumn(),
            )
            self.task = self.bar.add_task("crawl", total=total, status="")

    def __enter__(self):
        if self.bar is not None:
            self.bar.start()
        return self

    def update(self, started, kept, dropped):
        if self.bar is not None:
            self.bar.update(
                self.task,
                completed=started,
                status=f"{kept} kept, {dropped} dropped",
            )

    def __exit__(self, *exc_info):
        if self.bar is not None:
            self.bar.stop()


class _Crawler:
    def __init__(self, config, warc, report, progress):
        self.config = config
        self.warc = warc
        self.report = report
        self.progress = progress
        self.seen = set()
        self.sites = set()
        self.hosts = {}
        self.started = 0
        self.pending = 0
        self.requests = 0
        self.bytes = 0
        self.duplicates = 0
        self.errors = []
        self.done = None
        self.semaphore = None
        self.client = None

    # -- accounting --------------------------------------------------------

    def _keep(self, nbytes):
        self.report.seen(nbytes)
        self.report.kept(nbytes)
        self._show()

    def _drop(self, reason, source):
        self.report.seen()
        self.report.drop(reason, source)
        self._show()

    def _show(self):
        self.progress.update(
            self.started, self.report.kept_count, self.report.dropped_count
        )

    # -- the frontier ------------------------------------------------------

    def add(self, url, depth):
        """Counts a newly met URL and queues it if it may be fetched."""
        if url in self.seen:
            self.duplicates += 1
            return
        self.seen.add(url)
        parsed = httpx.URL(url)
        if parsed.scheme not in SCHEMES:
            return self._drop("bad_scheme", url)
        if not parsed.host:
            return self._drop("bad_url", url)
        if self.config.same_host and _site(url) not in self.sites:
            return self._drop("off_site", url)
        if depth > self.config.max_depth:
            return self._drop("max_depth", url)
        if self.started >= self.config.max_pages:
            return self._drop("max_pages", url)
        self._enqueue(_Item(url, depth, url, (url,)))

    def _enqueue(self, item):
        origin = _origin(item.url)
        host = self.hosts.get(origin)
        if host is None:
            host = self.hosts[origin] = _Host(
                origin, delay=self.config.delay_per_host
            )
        host.queue.append(item)
        self.pending += 1
        if not host.running:
            host.running = True
            host.task = asyncio.ensure_future(self._serve(host))

    async def _serve(self, host):
        """The one task that requests anything from `host`, in order."""
        try:
            while host.queue:
                item = host.queue.pop(0)
                try:
                    await self._process(host, item)
                except Exception as error:  # a bug: stop the crawl loudly
                    self.errors.append(error)
                    self.done.set()
                finally:
                    self.pending -= 1
                    if self.pending == 0:
                        self.done.set()
        finally:
            host.running = False

    # -- one URL -----------------------------------------------------------

    async def _process(self, host, item):
        config = self.config
        is_hop = len(item.chain) > 1
        if not is_hop and self.started >= config.max_pages:
            return self._drop("max_pages", item.origin)
        if config.respect_robots:
            robots = await self._robots(host)
            if not robots.can_fetch(item.url, config.user_agent):
                return self._drop("robots_disallowed", item.origin)
        if not is_hop:
            if self.started >= config.max_pages:
                return self._drop("max_pages", item.origin)
            self.started += 1
            self._show()
        try:
            outcome = await self._polite(host, self._fetch, item.url)
        except (asyncio.TimeoutError, httpx.TimeoutException):
            return self._drop("timeout", item.origin)
        except httpx.InvalidURL:
            return self._drop("bad_url", item.origin)
        except (httpx.HTTPError, OSError, UnicodeError):
            return self._drop("fetch_error", item.origin)
        if outcome.kind == "drop":
            return self._drop(outcome.reason, item.origin)
        if outcome.kind == "redirect":
            return self._redirect(item, outcome.location)
        self._page(item, outcome)

    def _redirect(self, item, location):
        source = f"{item.origin} -> {location}"
        try:
            target = normalize_url(location, base=item.url)
        except ValueError:
            return self._drop("bad_url", source)
        parsed = httpx.URL(target)
        if parsed.scheme not in SCHEMES:
            return self._drop("bad_scheme", source)
        if not parsed.host:
            return self._drop("bad_url", source)
        if self.config.same_host and _site(target) not in self.sites:
            return self._drop("off_site", source)
        if target in item.chain or len(item.chain) > self.config.max_redirects:
            return self._drop("redirect_loop", source)
        if target in self.seen:
            return self._drop("duplicate", source)
        self.seen.add(target)
        self._enqueue(
            _Item(target, item.depth, item.origin, item.chain + (target,))
        )

    def _page(self, item, outcome):
        response, body = outcome.response, outcome.body
        if b"\x00" in body[:1024]:
            return self._drop("binary", item.origin)
        self.warc.write(item.url, response, body)
        self.bytes += len(body)
        self._keep(len(body))
        media = _media_type(response)
        if media != "text/html":
            return
        base, links = _links(body, response.charset_encoding, item.url)
        for link in links:
            try:
                url = normalize_url(link, base=base)
            except ValueError:
                self._drop("bad_url", f"{item.url}: {link}")
                continue
            self.add(url, item.depth + 1)

    # -- HTTP --------------------------------------------------------------

    async def _polite(self, host, fetch, url):
        """Runs `fetch(url)` after the host's delay, under the deadline."""
        wait = host.next_time - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        async with self.semaphore:
            try:
                self.requests += 1
                return await asyncio.wait_for(fetch(url), self.config.timeout)
            finally:
                host.last_end = time.monotonic()
                host.next_time = host.last_end + host.delay

    async def _fetch(self, url):
        config = self.config
        request = self.client.build_request("GET", url)
        response = await self.client.send(request, stream=True)
        try:
            status = response.status_code
            location = response.headers.get("location")
            if 300 <= status < 400 and location:
                return _Outcome("redirect", location=location)
            if status != 200:
                return _Outcome("drop", reason=f"http_{status}")
            if _media_type(response) not in config.allowed_content_types:
                return _Outcome("drop", reason="content_type")
            length = response.headers.get("content-length", "")
            encoded = response.headers.get("content-encoding", "identity")
            if (
                length.isdigit()
                and encoded.lower() == "identity"
                and int(length) > config.max_bytes_per_page
            ):
                return _Outcome("drop", reason="too_large")
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > config.max_bytes_per_page:
                    return _Outcome("drop", reason="too_large")
                chunks.append(chunk)
            return _Outcome("page", response=response, body=b"".join(chunks))
        finally:
            await response.aclose()

    async def _fetch_robots(self, url):
        response = await self.client.get(url, follow_redirects=True)
        status = response.status_code
        if 200 <= status < 300:
            body = response.content[:_ROBOTS_MAX_BYTES]
            return body.decode("utf-8", errors="replace")
        if status >= 500:
            return _DISALLOW_ALL
        return _ALLOW_ALL  # 4xx, or a 3xx that led nowhere: "unavailable"

    async def _robots(self, host):
        """The host's robots.txt rules, fetched on first use."""
        if host.robots is None:
            url = host.origin + "/robots.txt"
            try:
                text = await self._polite(host, self._fetch_robots, url)
            except httpx.TooManyRedirects:
                text = _ALLOW_ALL  # RFC 9309 2.3.1.2: "unavailable"
            except (asyncio.TimeoutError, httpx.HTTPError, OSError):
                text = _DISALLOW_ALL  # "unreachable"
            host.robots = Protego.parse(text)
            delay = host.robots.crawl_delay(self.config.user_agent)
            if delay is not None:
                host.delay = max(self.config.delay_per_host, float(delay))
                host.next_time = host.last_end + host.delay
        return host.robots

    async def run(self, seeds):
        self.done = asyncio.Event()
        self.semaphore = asyncio.Semaphore(self.config.concurrency)
        async with httpx.AsyncClient(
            headers={"User-Agent": self.config.user_agent},
            timeout=httpx.Timeout(self.config.timeout),
            follow_redirects=False,
            max_redirects=self.config.max_redirects,
            limits=httpx.Limits(max_connections=self.config.concurrency),
        ) as self.client:
            for url in seeds:
                self.add(url, 0)
            if self.pending:
                await self.done.wait()
            tasks = [h.task for h in self.hosts.values() if h.task]
            for task in tasks:
                if not task.done():
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.errors:
            raise self.errors[0]


def _media_type(response):
    value = response.headers.get("content-type", "")
    return value.split(";")[0].strip().lower()


def _seed_urls(seeds):
    if isinstance(seeds, str):
        seeds = [seeds]
    urls = []
    for seed in seeds:
        try:
            url = normalize_url(str(seed).strip())
        except ValueError as error:
            raise UserError(f"Bad seed URL: {error}.") from None
        parsed = httpx.URL(url)
        if parsed.scheme not in SCHEMES or not parsed.host:
            raise UserError(
                f"Seed {seed!r} is not an absolute http(s) URL; "
                "write it as https://host/path."
            )
        urls.append(url)
    if not urls:
        raise UserError("No seed URLs to crawl.")
    return urls


def crawl(seeds, out, config=None, report=None, progress=False):
    """Crawls from seed URLs politely and writes the pages to WARC files.

    URLs are fetched breadth first, one request at a time per host with
    `config.delay_per_host` (or robots.txt's longer `Crawl-delay`) between
    them, at most `config.concurrency` in flight over all hosts. Each `200`
    page of an allowed content type is written as a request and a response
    record to gzipped WARC files under `out` (each file starts with a
    `warcinfo` record); links of HTML pages are followed up to
    `config.max_depth`. Redirects are followed hop by hop, each hop
    checked like a link (scheme, host, robots.txt). Bodies are stored
    decoded (the `Content-Encoding` header is dropped and `Content-Length`
    set to the stored length).

    Every URL met is counted in `report` once: kept or dropped with a
    reason (see the module docstring), so `report.check()` holds.

    Args:
        seeds: a URL or an iterable of URLs (absolute http or https).
        out: folder for the WARC files (made if missing); files are named
            `crawl-<UTC time>-<pid>-<n>.warc.gz` and never overwritten.
        config: a `CrawlConfig`. Defaults to `None` (`CrawlConfig()`).
        report: a `StageReport` to count into. Defaults to `None` (a new
            `StageReport("crawl")`).
        progress: if `True`, shows a rich progress bar. Defaults to
            `False`.

    Returns:
        A dict: `pages_fetched` (pages written), `urls_seen`, `requests`
        (HTTP requests made, robots.txt and redirect hops included),
        `bytes` (body bytes written), `warc_files`, `warc_paths`,
        `dropped` (reason -> count), `duplicates` (links to URLs already
        met, not counted again) and `seconds`.

    Raises:
        UserError: if a seed is not an absolute http(s) URL, or `out` is
            a file.

    Example:

    ```python
    import functools
    import http.server
    import os
    import tempfile
    import threading

    from keras_llm.data.crawl import CrawlConfig, crawl

    site = tempfile.mkdtemp()
    for i in range(3):
        with open(os.path.join(site, f"{i}.html"), "w") as f:
            f.write(f'<html><a href="{i + 1}.html">next</a></html>')

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=site)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    counts = crawl(
        f"http://127.0.0.1:{server.server_port}/0.html",
        tempfile.mkdtemp(),
        CrawlConfig(delay_per_host=0.0, timeout=5.0),
    )
    server.shutdown()
    print(counts["pages_fetched"], counts["dropped"])  # 3 {'http_404': 1}
    ```
    """
    config = config or CrawlConfig()
    report = report if report is not None else StageReport("crawl")
    urls = _seed_urls(seeds)
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"Crawl output {out!r} is a file, not a folder.")
    started = time.monotonic()
    info = {
        "software": (
            f"keras-llm/{__version__} (httpx {httpx.__version__}, "
            f"warcio {importlib.metadata.version('warcio')})"
        ),
        "format": "WARC File Format 1.0",
        "http-header-user-agent": config.user_agent,
        "robots": "obey" if config.respect_robots else "ignore",
        "description": f"seeds: {' '.join(urls)}",
    }
    warc = _WarcOutput(out, config.warc_records_per_file, info)
    with _Progress(progress, config.max_pages) as bar:
        crawler = _Crawler(config, warc, report, bar)
        crawler.sites = {_site(url) for url in urls}
        try:
            _run(crawler.run(urls))
        finally:
            warc.close()
    return {
        "pages_fetched": report.kept_count,
        "urls_seen": report.docs_in,
        "requests": crawler.requests,
        "bytes": crawler.bytes,
        "warc_files": len(warc.paths),
        "warc_paths": list(warc.paths),
        "dropped": dict(report.dropped.most_common()),
        "duplicates": crawler.duplicates,
        "seconds": time.monotonic() - started,
    }


def _run(coroutine):
    """`asyncio.run`, also from inside a running loop (a notebook)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()
