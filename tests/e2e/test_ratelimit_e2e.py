"""Rate limits through the real Envoy: a burst over the limit is answered 429 with Retry-After
and the RateLimit headers and never reaches the upstream; the bucket refills; two service
replicas sharing Redis enforce one limit (and one blocklist) together; Redis stopped mid-run
fails closed or falls back to local buckets, as configured.

Each test plays its client from its own loopback address (127.0.0.x), so buckets are separate.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator

import pytest
from harness import Client, Reply, start_stack
from redis_server import RedisServer

from ext_authz.demo.issuer import mint_demo_token
from ext_authz.demo.stack import DemoStack

pytestmark = pytest.mark.e2e

# Only /public/** is limited here: 3 at once, then one request every 2 s.
REFILLING = {"name": "public", "per": "address", "routes": ["/public/**"], "rate": 1, "period": 2}
# The shared stacks refill slowly (one every 30 s), so a test's requests are never topped up.
SLOW = {"name": "public", "per": "address", "routes": ["/public/**"], "rate": 1, "period": 30}


def limits(rule: dict[str, object], **more: object) -> dict[str, object]:
    return {"rate_limits": {"headers_on_allow": True, "rules": [{**rule, "burst": 3}], **more}}


def served(*stacks: DemoStack) -> int:
    return sum(stack.upstream_requests for stack in stacks)


def assert_limited(reply: Reply, policy: str = '"public";q=3;w=6') -> None:
    assert reply.status == 429, reply.body
    assert reply.json()["reason"] == "rate_limited"
    retry_after = int(reply.headers["retry-after"])
    assert retry_after >= 1
    assert reply.headers["ratelimit-policy"] == policy
    assert reply.headers["ratelimit"] == f'"public";r=0;t={retry_after}'


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStack]:
    running = start_stack(tmp_path_factory.mktemp("ratelimit"), limits(REFILLING))
    yield running
    running.stop()


def test_a_burst_over_the_limit_is_refused_before_the_upstream(local_stack: DemoStack) -> None:
    client = Client(local_stack.state_dir, local_stack.ports.https, source="127.0.0.2")
    before = served(local_stack)
    replies = [client.get("/public/hello") for _ in range(5)]
    assert [reply.status for reply in replies] == [200, 200, 200, 429, 429]
    assert served(local_stack) == before + 3  # the refused two never reached it
    # Allowed responses tell the client what is left.
    assert [reply.headers["ratelimit"] for reply in replies[:3]] == [
        '"public";r=2;t=2',
        '"public";r=1;t=4',
        '"public";r=0;t=6',
    ]
    assert replies[0].headers["ratelimit-policy"] == '"public";q=3;w=6'
    for reply in replies[3:]:
        assert_limited(reply)
    # Another address, and routes without a limit, are not affected.
    assert (
        Client(local_stack.state_dir, local_stack.ports.https, source="127.0.0.3")
        .get("/public/hello")
        .status
        == 200
    )
    healthz = client.get("/healthz")
    assert healthz.status == 200 and "ratelimit" not in healthz.headers


def test_the_limit_refills_over_time(local_stack: DemoStack) -> None:
    client = Client(local_stack.state_dir, local_stack.ports.https, source="127.0.0.4")
    while (reply := client.get("/public/hello")).status == 200:
        pass
    assert_limited(reply)
    time.sleep(int(reply.headers["retry-after"]) + 0.1)
    assert client.get("/public/hello").status == 200
    assert_limited(client.get("/public/hello"))  # one token came back, not the burst


# -- two replicas sharing Redis ----------------------------------------------------------------


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


def shared(redis: RedisServer, on_error: str) -> dict[str, object]:
    backend = {
        "backend": "redis",
        "on_backend_error": on_error,
        "redis": {"url": redis.url, "timeout": 0.5, "retry_interval": 1},
    }
    return limits(SLOW, **backend)


@pytest.fixture(scope="module")
def replicas(
    redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[DemoStack, DemoStack]]:
    """Two complete stacks (Envoy + ext-authz + upstream) whose services share one Redis: the
    first fails closed when Redis is down, the second falls back to its own buckets."""
    first = start_stack(tmp_path_factory.mktemp("replica1"), shared(redis, "fail_closed"))
    try:
        second = start_stack(tmp_path_factory.mktemp("replica2"), shared(redis, "local"))
    except BaseException:
        first.stop()
        raise
    yield first, second
    second.stop()
    first.stop()


def clients(stacks: tuple[DemoStack, ...], source: str) -> list[Client]:
    return [Client(stack.state_dir, stack.ports.https, source=source) for stack in stacks]


def test_two_replicas_sharing_redis_enforce_one_limit(
    replicas: tuple[DemoStack, DemoStack],
) -> None:
    one, two = clients(replicas, "127.0.0.10")
    before = served(*replicas)
    statuses = [client.get("/public/hello").status for _ in range(3) for client in (one, two)]
    assert statuses == [200, 200, 200, 429, 429, 429]  # 3 in all, not 3 each
    assert served(*replicas) == before + 3
    assert_limited(one.get("/public/hello"), '"public";q=3;w=90')


def test_a_block_made_by_one_replica_holds_on_the_other(
    replicas: tuple[DemoStack, DemoStack],
) -> None:
    one, two = clients(replicas, "127.0.0.11")
    for index in range(10):  # the demo blocks an address after 10 bad tokens in 30 s
        assert one.get("/api/books", token=f"stuffed-{index}").status == 401
    deadline = time.monotonic() + 5
    while (reply := two.get("/public/hello")).status == 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert reply.status == 429
    assert reply.json()["reason"] == "blocked"


def test_redis_stopped_mid_run_behaves_as_configured(
    redis: RedisServer, replicas: tuple[DemoStack, DemoStack]
) -> None:
    closed, local = replicas
    closed_client = clients((closed,), "127.0.0.12")[0]
    local_client = clients((local,), "127.0.0.13")[0]
    assert closed_client.get("/public/hello").status == 200
    redis.stop()
    try:
        before = served(*replicas)
        # fail_closed: a limited route is refused (503), never let through uncounted...
        for _ in range(3):
            reply = closed_client.get("/public/hello")
            assert reply.status == 503
            assert reply.json()["reason"] == "rate_limit_unavailable"
        assert served(*replicas) == before
        # ...while a route without a limit still works (blocks are checked locally).
        assert closed_client.get("/healthz").status == 200
        # local: this replica's own buckets keep the limit.
        statuses = [local_client.get("/public/hello").status for _ in range(5)]
        assert statuses == [200, 200, 200, 429, 429]
    finally:
        redis.start()
    deadline = time.monotonic() + 5  # the breaker tries Redis again after retry_interval
    while (reply := closed_client.get("/public/hello")).status == 503:
        assert time.monotonic() < deadline, "the fail-closed replica never used Redis again"
        time.sleep(0.2)
    assert reply.status == 200


def test_metrics_count_the_redis_errors(replicas: tuple[DemoStack, DemoStack]) -> None:
    url = f"http://127.0.0.1:{replicas[0].ports.metrics}/metrics"
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    assert 'ext_authz_rate_limit_backend_up{backend="redis"} 1.0' in text
    assert "ext_authz_rate_limit_backend_errors_total" in text


def test_the_demo_limits_writes_as_the_readme_says(tmp_path) -> None:
    """The demo's own limits (no overrides): an editor's sixth quick POST is refused, while
    their reads count against the roomier per-user limit."""
    demo = start_stack(tmp_path)
    try:
        client = Client(demo.state_dir, demo.ports.https)
        editor = mint_demo_token(demo.state_dir, "erin", ["editor"])
        replies = [client.send("POST", "/api/books", token=editor) for _ in range(7)]
        assert [reply.status for reply in replies] == [200] * 5 + [429] * 2
        assert replies[0].headers["ratelimit-policy"] == '"writes";q=5;w=10'
        assert replies[-1].json()["reason"] == "rate_limited"
        read = client.get("/api/books", token=editor)
        assert read.status == 200
        assert read.headers["ratelimit-policy"] == '"users";q=40;w=2'
    finally:
        demo.stop()
