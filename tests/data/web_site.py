"""A generated web site on 127.0.0.1 for the crawler's tests.

`Site` serves, from a `http.server.ThreadingHTTPServer` in a thread on a
free port, pages that try every limit of the crawler, and logs each request
(arrival time, time the response started, path, user agent) so tests can check what was and
was not asked for.
"""

import http.server
import threading
import time

HUGE_BYTES = 200_000
DRIP_SECONDS = 0.05


def _page(title, links=(), text=""):
    anchors = "".join(f'<a href="{href}">{href}</a>\n' for href in links)
    return (
        f"<!doctype html><html><head><title>{title}</title></head>"
        f"<body><h1>{title}</h1><p>{text or title}</p>\n{anchors}"
        "</body></html>"
    ).encode()


class Site:
    """The site; use as a context manager.

    Args:
        robots_status: HTTP status of `/robots.txt` (200 serves rules
            disallowing `/private/` with a `Crawl-delay`).
        crawl_delay: the robots.txt `Crawl-delay`, seconds.
        offsite: URL of another host the index links to.
        chain_length: length of the `/chain/N` depth chain.
        latency: seconds each answer waits before it starts.
    """

    def __init__(
        self,
        robots_status=200,
        crawl_delay=0.0,
        offsite=None,
        chain_length=8,
        latency=0.0,
    ):
        self.latency = latency
        self.robots_status = robots_status
        self.crawl_delay = crawl_delay
        self.offsite = offsite
        self.chain_length = chain_length
        # [arrival, response started, path, user agent]: a client cannot
        # have finished a request before its response started.
        self.log = []
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                entry = [time.monotonic(), None, self.path]
                entry.append(self.headers.get("User-Agent"))
                self.entry = entry
                with site.lock:
                    site.log.append(entry)
                time.sleep(site.latency)
                try:
                    site.serve(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def send_response(self, code, message=None):
                if self.entry[1] is None:
                    self.entry[1] = time.monotonic()
                super().send_response(code, message)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_port
        self.base = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, args=(0.02,), daemon=True
        )

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc_info):
        self.stop_event.set()
        self.server.shutdown()
        self.server.server_close()

    def url(self, path):
        return self.base + path

    def paths(self):
        """Paths requested, in order of arrival."""
        with self.lock:
            return [entry[2] for entry in self.log]

    # -- the pages ---------------------------------------------------------

    def index_links(self):
        links = [
            "/page1",
            "./page1",
            "/a/../page1",
            "/page1#top",
            f"HTTP://127.0.0.1:{self.port}/x/./../page1",
            "/private/secret.html",
            "/loop/a",
            "/to-ftp",
            "/slow",
            "/huge",
            "/huge-stream",
            "/image.png",
            "/binary.html",
            "/missing",
            "/notes.txt",
            "/old",
            "/old2",
            "/chain/0",
            "mailto:someone@example.com",
            "javascript:void(0)",
        ]
        if self.offsite:
            links.append(self.offsite)
        return links

    def serve(self, handler):
        path = handler.path
        if path == "/robots.txt":
            body = (
                "User-agent: *\nDisallow: /private/\n"
                f"Crawl-delay: {self.crawl_delay}\n"
            ).encode()
            return self._send(handler, self.robots_status, body, "text/plain")
        if path == "/":
            return self._send(handler, 200, _page("home", self.index_links()))
        if path == "/page1":
            links = ["/", "/page2", "page2", "/private/other.html"]
            return self._send(handler, 200, _page("page one", links))
        if path in ("/page2", "/moved-here"):
            return self._send(handler, 200, _page(path[1:], ["/page1"]))
        if path.startswith("/private/"):
            return self._send(handler, 200, _page("secret"))
        if path.startswith("/chain/"):
            n = int(path.rsplit("/", 1)[1])
            links = [f"/chain/{n + 1}"] if n + 1 < self.chain_length else []
            return self._send(handler, 200, _page(f"chain {n}", links))
        redirects = {
            "/loop/a": "/loop/b",
            "/loop/b": "/loop/a",
            "/to-ftp": "ftp://127.0.0.1/file.txt",
            "/old": "/moved-here",
            "/old2": "/page2",
        }
        if path in redirects:
            return self._redirect(handler, redirects[path])
        if path.startswith("/redirect/"):
            n = int(path.rsplit("/", 1)[1])
            return self._redirect(handler, f"/redirect/{n + 1}")
        if path == "/slow":
            return self._drip(handler)
        if path == "/huge":
            return self._send(handler, 200, b"x" * HUGE_BYTES)
        if path == "/huge-stream":
            return self._stream(handler, b"y" * HUGE_BYTES)
        if path == "/image.png":
            body = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
            return self._send(handler, 200, body, "image/png")
        if path == "/binary.html":
            return self._send(handler, 200, bytes(range(256)) * 4)
        if path == "/notes.txt":
            return self._send(handler, 200, b"plain notes\n", "text/plain")
        return self._send(handler, 404, b"not found", "text/plain")

    def _send(self, handler, status, body, content_type="text/html"):
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def _redirect(self, handler, location):
        handler.send_response(302)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    def _stream(self, handler, body):
        """A body with no Content-Length, ended by closing (HTTP/1.0)."""
        handler.send_response(200)
        handler.send_header("Content-Type", "text/html")
        handler.end_headers()
        for start in range(0, len(body), 8192):
            handler.wfile.write(body[start : start + 8192])

    def _drip(self, handler):
        """A page that never finishes: one byte every DRIP_SECONDS."""
        handler.send_response(200)
        handler.send_header("Content-Type", "text/html")
        handler.end_headers()
        handler.wfile.write(b"<html><body>")
        deadline = time.monotonic() + 30
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            handler.wfile.write(b".")
            handler.wfile.flush()
            time.sleep(DRIP_SECONDS)
