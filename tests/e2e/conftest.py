"""End-to-end fixtures: one demo stack (Envoy + service + echo upstream) for the session."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from harness import Client, start_stack

from ext_authz.demo.issuer import mint_demo_token
from ext_authz.demo.stack import DemoStack

# The demo's settings, but no automatic blocking and no rate limits: the suites send many bad
# credentials and requests from 127.0.0.1, which the demo would block or limit (test_signals.py
# and test_ratelimit_e2e.py run their own stacks to test those).
SESSION_SETTINGS = {"security": {"block": {"enabled": False}}, "rate_limits": {"rules": []}}


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStack]:
    running = start_stack(tmp_path_factory.mktemp("demo"), SESSION_SETTINGS)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def client(stack: DemoStack) -> Client:
    return Client(stack.state_dir, stack.ports.https)


@pytest.fixture(scope="session")
def token_for(stack: DemoStack) -> Callable[..., str]:
    def mint(subject: str, *roles: str, ttl: int = 600) -> str:
        return mint_demo_token(stack.state_dir, subject, roles, ttl)

    return mint
