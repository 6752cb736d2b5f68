"""In-memory fakes for the seams, shared by the unit tests."""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, unquote_plus

import pytest

from ext_authz.credentials import CredentialExtractor
from ext_authz.identity.jwks import KeySet
from ext_authz.models import AuthRequest, Identity, PolicyResult
from ext_authz.pipeline import AuthPipeline
from ext_authz.runtime import Runtime
from ext_authz.settings import CredentialSettings, HeaderSettings


class StaticKeys:
    """A KeySource with a fixed key set (what a loaded JWKS file gives the verifier); counts
    refresh requests."""

    def __init__(self, keys: Sequence[Mapping[str, Any]], version: int = 1) -> None:
        self.keyset = KeySet(tuple(keys), fetched_at=0.0, version=version)
        self.refresh_requests = 0

    def current(self) -> KeySet:
        return self.keyset

    def await_refetch(self, timeout: float) -> bool:
        self.refresh_requests += 1
        return False  # a fixed set: a refetch never brings a new key


class FakeClock:
    """A clock a test sets or advances: ``clock()`` is the time now."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def wait_for(condition: Callable[[], bool], timeout: float = 3.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


class LocalHttpServer:
    """``handler`` served on 127.0.0.1 (a free port, ``url``) from a thread until ``stop()``;
    also a context manager."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        # A short poll interval makes shutdown() quick.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()
        self._stopped = False

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class IntrospectionEndpoint(LocalHttpServer):
    """A fake RFC 7662 endpoint at ``url + PATH``.

    It checks HTTP Basic client authentication (``client_id`` and ``secret``, each
    form-urlencoded) and the form body, answers ``answers[token]`` (default inactive), and counts
    requests. ``/redirect`` answers 302 and ``/slow`` holds the answer until ``stop()``.
    """

    PATH = "/introspect"

    def __init__(self, client_id: str, secret: str) -> None:
        self.client_id = client_id
        self.secret = secret
        self.answers: dict[str, Any] = {}
        self.status = 200
        self.raw: bytes | None = None  # a body to send instead of the JSON answer
        self.requests = 0
        self.bad_auth = 0
        self.forms: list[dict[str, list[str]]] = []
        self.accept: list[str | None] = []
        self.release = threading.Event()  # holds /slow until the test is done
        super().__init__(_introspection_handler(self))

    def authorized(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        decoded = base64.b64decode(header.removeprefix("Basic ")).decode("ascii")
        client_id, _, secret = decoded.partition(":")
        return unquote_plus(client_id) == self.client_id and unquote_plus(secret) == self.secret

    def stop(self) -> None:
        self.release.set()
        super().stop()


def _introspection_handler(endpoint: IntrospectionEndpoint) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length).decode("ascii")
            if self.path == "/redirect":
                self._send(302, b"", {"Location": endpoint.PATH})
                return
            if self.path == "/slow":
                endpoint.release.wait(5)
                self._send(200, b'{"active": true, "sub": "late"}')
                return
            if self.path != endpoint.PATH:
                self._send(404, b"")
                return
            endpoint.requests += 1
            if not endpoint.authorized(self.headers.get("Authorization")):
                endpoint.bad_auth += 1
                self._send(401, b'{"error": "invalid_client"}', {"WWW-Authenticate": "Basic"})
                return
            assert self.headers.get("Content-Type") == "application/x-www-form-urlencoded"
            form = parse_qs(body, strict_parsing=True)
            endpoint.forms.append(form)
            endpoint.accept.append(self.headers.get("Accept"))
            if endpoint.raw is not None:
                self._send(endpoint.status, endpoint.raw)
                return
            answer = endpoint.answers.get(form["token"][0], {"active": False})
            self._send(endpoint.status, json.dumps(answer).encode())

        def _send(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with contextlib.suppress(OSError):  # the client gave up (oversized body, timeout)
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


class ExplodingEngine:
    """A PolicyEngine with a bug: every decision raises."""

    def decide(self, identity: Identity, request: AuthRequest) -> PolicyResult:
        raise RuntimeError("engine bug")


def broken_runtime() -> Runtime:
    raise RuntimeError("no runtime")


def exploding_engine_runtime() -> Runtime:
    return Runtime(
        AuthPipeline(CredentialExtractor(CredentialSettings(), None), {}, ExplodingEngine()),
        HeaderSettings(),
    )


# Runtime sources a servicer must fail closed with, for pytest.mark.parametrize.
FAILING_RUNTIMES = (
    pytest.param(broken_runtime, id="runtime-raises"),
    pytest.param(exploding_engine_runtime, id="engine-raises"),
)
