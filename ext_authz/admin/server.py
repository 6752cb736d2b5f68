"""AdminServer: the admin HTTP port (never the gRPC port), served from a daemon thread.

    /metrics      Prometheus text (or OpenMetrics, as the scraper's Accept header asks)
    /healthz      200 "ok" while the server runs
    /             the live view page (one self-contained HTML file: no external resources)
    /api/live     the live view's snapshot as JSON
    /api/stream   the same, pushed as server-sent events every second

It binds loopback unless ``listen`` names another host: the live view shows denied paths and
source addresses, which are for operators only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import socket
import socketserver
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from ext_authz.admin.live import LiveView
from ext_authz.errors import ConfigError
from ext_authz.metrics import Metrics

__all__ = ["AdminServer"]

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
STREAM_INTERVAL = 1.0  # seconds between server-sent snapshots
MAX_STREAMS = 16  # concurrent /api/stream clients; more get 503 (and the page polls instead)
SOCKET_TIMEOUT = 10.0  # seconds a client may stall a read or a write

PAGE = resources.files("ext_authz.admin").joinpath("live.html").read_bytes()


def _csp_hashes(tag: str) -> str:
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>".encode(), PAGE, re.DOTALL)
    digests = (base64.b64encode(hashlib.sha256(block).digest()).decode() for block in blocks)
    return " ".join(f"'sha256-{digest}'" for digest in digests)


# The page's own inline script and style, and requests to this origin; nothing else.
PAGE_CSP = (
    f"default-src 'none'; script-src {_csp_hashes('script')}; style-src {_csp_hashes('style')}; "
    "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


def _parse_listen(listen: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` (loopback) -> (host, port); ConfigError."""
    host, separator, port = listen.rpartition(":")
    if not separator or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ConfigError(f"admin.listen: {listen!r} is not host:port (e.g. 127.0.0.1:9902)")
    host = host.removeprefix("[").removesuffix("]")
    return host or DEFAULT_HOST, int(port)


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True  # a stalled client never holds the process up

    def __init__(self, address: tuple[str, int], metrics: Metrics, live: LiveView) -> None:
        self.metrics = metrics
        self.live = live
        self.stopping = threading.Event()  # ends the event streams
        self.streams = threading.BoundedSemaphore(MAX_STREAMS)
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer's would look the host up in DNS (getfqdn) for a name nothing here uses.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def handle_error(self, request: object, client_address: Any) -> None:
        log.exception("admin: a request from %s failed", client_address[0])


class _HttpServer6(_HttpServer):
    address_family = socket.AF_INET6


class AdminServer:
    """Serves ``metrics`` and ``live`` on ``listen`` (``host:port``; ``:port`` is loopback)
    from ``start()`` until ``stop()``. A port that cannot be bound is a ConfigError naming
    ``admin.listen``."""

    def __init__(self, listen: str, metrics: Metrics, live: LiveView) -> None:
        self._listen = listen
        self._metrics = metrics
        self._live = live
        self._address = _parse_listen(listen)
        self._server: _HttpServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port) once started (the real port when ``listen`` asked for 0)."""
        if self._server is None:
            return self._address
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        if self._server is not None:
            return
        server_class = _HttpServer6 if ":" in self._address[0] else _HttpServer
        try:
            server = server_class(self._address, self._metrics, self._live)
        except OSError as exc:
            raise ConfigError(f"admin.listen: cannot listen on {self._listen}: {exc}") from exc
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="admin", daemon=True
        )
        self._thread.start()
        log.info("admin: serving /metrics and the live view on http://%s:%d/", *self.address)

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join()
        self._server = self._thread = None


class _Handler(BaseHTTPRequestHandler):
    server: _HttpServer
    timeout = SOCKET_TIMEOUT
    server_version = "ext-authz-admin"
    sys_version = ""

    def do_GET(self) -> None:
        server = self.server
        path = urlsplit(self.path).path
        if path == "/metrics":
            body, content_type = server.metrics.exposition(self.headers.get("Accept", ""))
            self._send(HTTPStatus.OK, content_type, body)
        elif path == "/healthz":
            self._send(HTTPStatus.OK, "text/plain; charset=utf-8", b"ok\n")
        elif path == "/":
            self._send(HTTPStatus.OK, "text/html; charset=utf-8", PAGE, PAGE_CSP)
        elif path == "/api/live":
            self._send(HTTPStatus.OK, "application/json", _json(server.live.snapshot()))
        elif path == "/api/stream":
            self._stream(server)
        else:
            self._send(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", b"not found\n")

    def _send(
        self, status: HTTPStatus, content_type: str, body: bytes, csp: str | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self._common_headers(csp)
        self.end_headers()
        self.wfile.write(body)

    def _common_headers(self, csp: str | None) -> None:
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", csp or "default-src 'none'")

    def _stream(self, server: _HttpServer) -> None:
        if not server.streams.acquire(blocking=False):
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, "text/plain; charset=utf-8", b"busy\n")
            return
        try:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/event-stream")
            self._common_headers(None)
            self.end_headers()
            self.wfile.write(b"retry: 2000\n\n")
            while True:
                self.wfile.write(b"data: " + _json(server.live.snapshot()) + b"\n\n")
                self.wfile.flush()
                if server.stopping.wait(STREAM_INTERVAL):
                    break
        except OSError:  # the client went away (or stalled past the socket timeout)
            pass
        finally:
            server.streams.release()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("admin: %s " + format, self.address_string(), *args)


def _json(value: object) -> bytes:
    # ensure_ascii: no raw line separators, so one snapshot is always one `data:` line.
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
