"""The demo's sample upstream: answers every request with what it received, as JSON.

Tests use it to see exactly what Envoy forwarded after ext_authz: the raw request target and every
header copy in order (a header sent twice comes back as a list, so a spoofed copy that survived
is visible).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

__all__ = ["EchoUpstream", "main"]

_CHUNK = 64 * 1024
_MAX_LINE = 8 * 1024
# How often serve_forever checks for shutdown: bounds how long stop() waits.
_POLL_SECONDS = 0.05


class _BadBody(Exception):
    """The request body framing cannot be parsed; the connection must be closed."""


class _EchoServer(ThreadingHTTPServer):
    """Remembers how many requests reached it, so tests can prove a denial never got here."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _EchoHandler)
        self.lock = threading.Lock()
        self.served = 0

    def handle_error(self, request: object, client_address: object) -> None:
        # Envoy resets idle upstream connections when it stops: not worth a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class _EchoHandler(BaseHTTPRequestHandler):
    # Keep-alive: Envoy reuses upstream connections.
    protocol_version = "HTTP/1.1"
    server_version = "ext-authz-echo"
    server: _EchoServer

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request logging (it would flood the demo's terminal)."""

    def do_GET(self) -> None:
        self._echo()

    def do_HEAD(self) -> None:
        self._echo(send_body=False)

    def do_POST(self) -> None:
        self._echo()

    def do_PUT(self) -> None:
        self._echo()

    def do_PATCH(self) -> None:
        self._echo()

    def do_DELETE(self) -> None:
        self._echo()

    def do_OPTIONS(self) -> None:
        self._echo()

    def _echo(self, *, send_body: bool = True) -> None:
        with self.server.lock:
            self.server.served += 1
        try:
            self._discard_body()
        except _BadBody as exc:
            self.close_connection = True
            self.send_error(400, str(exc))
            return
        body = json.dumps(self._description()).encode("utf-8")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _description(self) -> dict[str, Any]:
        headers: dict[str, str | list[str]] = {}
        for name, value in self.headers.items():
            key = name.lower()
            previous = headers.get(key)
            if previous is None:
                headers[key] = value
            elif isinstance(previous, list):
                previous.append(value)
            else:
                headers[key] = [previous, value]
        return {"method": self.command, "path": self.path, "headers": headers}

    def _discard_body(self) -> None:
        """Read the request body off the connection so the next request on it parses cleanly."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._discard_chunked()
            return
        length = self.headers.get("Content-Length")
        if length is None:
            return
        if not length.isdigit():
            raise _BadBody("invalid Content-Length")
        self._discard(int(length))

    def _discard(self, remaining: int) -> None:
        while remaining > 0:
            data = self.rfile.read(min(remaining, _CHUNK))
            if not data:
                raise _BadBody("request body shorter than Content-Length")
            remaining -= len(data)

    def _discard_chunked(self) -> None:
        while True:
            size_text = self._read_line().split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise _BadBody("invalid chunk size") from None
            if size == 0:
                break
            self._discard(size + 2)  # chunk data + CRLF
        while self._read_line() not in (b"", b"\r\n", b"\n"):  # trailers, up to the blank line
            pass

    def _read_line(self) -> bytes:
        line = self.rfile.readline(_MAX_LINE + 1)
        if len(line) > _MAX_LINE:
            raise _BadBody("chunk line too long")
        return line


class EchoUpstream:
    """An HTTP/1.1 echo server running in a daemon thread; binds in the constructor."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = _EchoServer((host, port))
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with port 0)."""
        return int(self._server.server_address[1])

    @property
    def served(self) -> int:
        """How many requests have reached the upstream so far."""
        with self._server.lock:
            return self._server.served

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("EchoUpstream already started")
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": _POLL_SECONDS},
            name="echo-upstream",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        # shutdown() waits for serve_forever, which would block forever if it never ran.
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the echo upstream in the foreground until SIGTERM or Ctrl-C."""
    parser = argparse.ArgumentParser(description="ext-authz demo echo upstream")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    args = parser.parse_args(argv)
    stopping = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    upstream = EchoUpstream(args.host, args.port)
    upstream.start()
    print(f"echo upstream listening on {args.host}:{upstream.port}", file=sys.stderr, flush=True)
    stopping.wait()
    upstream.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
