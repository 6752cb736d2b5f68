"""Capture real CheckRequests from the real Envoy into tests/fixtures/ (for request.py's tests).

    python scripts/capture_check_requests.py

Runs the shipped Envoy config (rendered onto free loopback ports) in front of a recording Check
service that allows everything, sends the requests below over HTTPS, and writes each
CheckRequest Envoy sent as JSON. Re-run it after an Envoy upgrade to see what changed.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import yaml
from google.protobuf import json_format
from google.rpc import code_pb2, status_pb2

from ext_authz._proto.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from ext_authz.assets import bundled_path
from ext_authz.demo.envoy_config import DemoPorts, load_envoy_config, render_demo_config
from ext_authz.demo.keys import ensure_demo_keys
from ext_authz.demo.stack import find_envoy
from ext_authz.demo.upstream import EchoUpstream

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"

# name -> (method, raw target, extra headers)
REQUESTS: dict[str, tuple[str, str, list[tuple[str, str]]]] = {
    "simple_get": ("GET", "/public/hello", []),
    "query_and_bearer": (
        "GET",
        "/api/books?include=drafts&page=2",
        [("Authorization", "Bearer aaa.bbb.ccc")],
    ),
    "duplicate_authorization": (
        "GET",
        "/api/books",
        [("Authorization", "Bearer one"), ("Authorization", "Bearer two")],
    ),
    "spoofed_identity_headers": (
        "GET",
        "/api/books",
        [("X-Auth-Subject", "admin"), ("x-auth-roles", "admin")],
    ),
    "dot_segments_normalized": ("GET", "/public/%2e%2e/admin/stats", []),
    "encoded_semicolon": ("GET", "/public/%2e%2e%3b/admin", []),
    "double_encoded_dot": ("GET", "/public/%252e%252e/admin", []),
    "post_with_body": ("POST", "/api/books", [("Content-Type", "application/json")]),
}


class Recorder(external_auth_pb2_grpc.AuthorizationServicer):
    def __init__(self) -> None:
        self.requests: list[external_auth_pb2.CheckRequest] = []

    def Check(self, request, context):  # noqa: ANN001, ANN201
        self.requests.append(request)
        return external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=code_pb2.OK),
            ok_response=external_auth_pb2.OkHttpResponse(),
        )


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def main() -> int:
    https, http_, grpc_port, admin = _free_ports(4)
    upstream = EchoUpstream()
    ports = DemoPorts(https, http_, grpc_port, admin, upstream.port)
    recorder = Recorder()
    server = grpc.server(ThreadPoolExecutor(4))
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(recorder, server)
    server.add_insecure_port(f"127.0.0.1:{grpc_port}")
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        keys = ensure_demo_keys(state)
        config = render_demo_config(
            load_envoy_config(bundled_path("envoy") / "envoy.yaml"), ports, state
        )
        (state / "envoy.yaml").write_text(yaml.safe_dump(config))
        server.start()
        upstream.start()
        envoy = subprocess.Popen(  # noqa: S603
            [
                str(find_envoy()),
                "-c",
                str(state / "envoy.yaml"),
                "--disable-hot-restart",
                "--log-level",
                "error",
            ],
        )
        try:
            tls = ssl.create_default_context(cafile=str(keys.tls_cert))
            time.sleep(2)
            FIXTURES.mkdir(parents=True, exist_ok=True)
            for name, (method, target, headers) in REQUESTS.items():
                before = len(recorder.requests)
                connection = http.client.HTTPSConnection("127.0.0.1", https, context=tls)
                connection.putrequest(method, target)
                for header, value in headers:
                    connection.putheader(header, value)
                body = b'{"title":"x"}' if method == "POST" else b""
                connection.putheader("Content-Length", str(len(body)))
                connection.endheaders(body)
                status = connection.getresponse().status
                connection.close()
                captured = recorder.requests[before:]
                if len(captured) != 1:
                    print(f"{name}: Envoy answered {status} without calling Check", file=sys.stderr)
                    continue
                document = json_format.MessageToDict(captured[0])
                path = FIXTURES / f"check_request_{name}.json"
                path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
                print(f"wrote {path.relative_to(FIXTURES.parent.parent)}")
        finally:
            envoy.terminate()
            envoy.wait()
            upstream.stop()
            server.stop(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
