"""With the authorization service down, Envoy refuses everything and the upstream sees nothing."""

from __future__ import annotations

import pytest
from harness import Client, start_stack

from ext_authz.demo.issuer import mint_demo_token

pytestmark = pytest.mark.e2e


def test_service_down_fails_closed(tmp_path) -> None:
    stack = start_stack(tmp_path)
    try:
        client = Client(stack.state_dir, stack.ports.https)
        admin = mint_demo_token(stack.state_dir, "ada", ["admin"])
        assert client.get("/public/hello").status == 200
        stack.stop_service()
        before = stack.upstream_requests
        for path, token in [("/public/hello", None), ("/healthz", None), ("/admin/x", admin)]:
            reply = client.get(path, token=token)
            assert reply.status == 503, (path, reply.status)
        assert stack.upstream_requests == before
    finally:
        stack.stop()
