"""RedisStore and the failover against a real redis-server (started per test on a free port):
atomic buckets shared by replicas, Redis's own clock, blocks seen by every replica, NOSCRIPT,
and Redis stopped mid-run in both configured behaviours."""

from __future__ import annotations

import json
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import pytest
from redis_server import RedisServer

from ext_authz.errors import BlockedError, ConfigError, RateLimitUnavailableError
from ext_authz.models import ANONYMOUS, AuthRequest
from ext_authz.ratelimit import FailoverStore, LocalStore
from ext_authz.ratelimit.bucket import interval_us
from ext_authz.ratelimit.redis_store import RedisStore
from ext_authz.settings import BlockSettings, RedisSettings
from ext_authz.signals.blocklist import Blocklist
from ext_authz.signals.events import KeyType

HOUR = interval_us(1, 3600)  # no refill within a test


def redis_settings(url: str, **more: object) -> RedisSettings:
    return RedisSettings.model_validate_json(json.dumps({"url": url, "timeout": 1.0, **more}))


def replica(url: str) -> RedisStore:
    """A store with its own connection pool, as another replica would have."""
    return RedisStore(redis_settings(url), max_blocks=1000)


def test_the_burst_passes_then_refusals_then_refill(redis_server: RedisServer) -> None:
    store = replica(redis_server.url)
    interval = interval_us(10, 1)  # a token every 100 ms
    answers = [store.take("limit:t:k", interval, 3) for _ in range(4)]
    assert [(a.allowed, a.remaining) for a in answers] == [
        (True, 2),
        (True, 1),
        (True, 0),
        (False, 0),
    ]
    assert 0 < answers[3].retry_after_us <= 100_000
    time.sleep(answers[3].retry_after_us / 1_000_000 + 0.02)
    assert store.take("limit:t:k", interval, 3).allowed


def test_a_refilled_bucket_expires_from_redis(redis_server: RedisServer) -> None:
    store = replica(redis_server.url)
    store.take("limit:t:short", interval_us(20, 1), 2)
    client = redis_server.client()
    assert 0 < client.pttl("ext-authz:limit:t:short") <= 50
    time.sleep(0.1)
    assert client.exists("ext-authz:limit:t:short") == 0


def _hammer(url: str, count: int) -> int:
    store = replica(url)
    return sum(store.take("limit:t:shared", HOUR, 40).allowed for _ in range(count))


def test_concurrent_replicas_never_exceed_the_limit(redis_server: RedisServer) -> None:
    url = redis_server.url
    with ThreadPoolExecutor(8) as threads:
        from_threads = sum(threads.map(_hammer, [url] * 8, [15] * 8))
    with ProcessPoolExecutor(3) as processes:
        from_processes = sum(processes.map(_hammer, [url] * 3, [15] * 3))
    assert from_threads + from_processes == 40  # 165 tries, one bucket of 40


def test_the_script_is_loaded_again_after_a_script_flush(redis_server: RedisServer) -> None:
    store = replica(redis_server.url)
    assert store.take("limit:t:a", HOUR, 2).allowed
    redis_server.client().script_flush()
    assert store.take("limit:t:a", HOUR, 2).allowed  # EVALSHA -> NOSCRIPT -> loaded again
    assert not store.take("limit:t:a", HOUR, 2).allowed


def test_a_block_made_by_one_replica_holds_on_another(redis_server: RedisServer) -> None:
    block = BlockSettings(enabled=True, ttl=60)
    one = Blocklist(block, 100, store=replica(redis_server.url))
    two = Blocklist(block, 100, store=replica(redis_server.url))
    assert one.block(KeyType.ADDRESS, "198.51.100.7", "credential_stuffing") == 60
    with pytest.raises(BlockedError) as caught:
        two.check(ANONYMOUS, AuthRequest("GET", "/", source_address="198.51.100.7"))
    assert 59 <= caught.value.retry_after <= 60
    two.check(ANONYMOUS, AuthRequest("GET", "/", source_address="198.51.100.8"))
    [seen] = two.current_blocks()
    assert (seen.key_type, seen.key, seen.reason) == (
        KeyType.ADDRESS,
        "198.51.100.7",
        "credential_stuffing",
    )


def test_redis_stopped_fails_closed_fast_then_recovers(redis_server: RedisServer) -> None:
    failover = FailoverStore(replica(redis_server.url), LocalStore(100), "fail_closed", 0.5)
    assert failover.take("limit:t:x", HOUR, 5).allowed
    redis_server.stop()
    with pytest.raises(RateLimitUnavailableError):
        failover.take("limit:t:x", HOUR, 5)
    started = time.monotonic()
    for _ in range(100):  # the breaker is open: no connection attempts
        with pytest.raises(RateLimitUnavailableError):
            failover.take("limit:t:x", HOUR, 5)
    assert time.monotonic() - started < 0.1
    assert failover.errors == 1
    redis_server.start()  # same port, empty: the bucket starts full again
    time.sleep(0.6)
    assert failover.take("limit:t:x", HOUR, 5).allowed
    assert failover.available


def test_redis_stopped_falls_back_to_local_buckets_when_so_configured(
    redis_server: RedisServer,
) -> None:
    failover = FailoverStore(replica(redis_server.url), LocalStore(100), "local", 5.0)
    redis_server.stop()
    answers = [failover.take("limit:t:y", HOUR, 3).allowed for _ in range(5)]
    assert answers == [True, True, True, False, False]  # still limited, by this replica


def test_an_unreachable_redis_at_start_is_a_failure_like_any_other(tmp_path) -> None:
    nowhere = RedisServer(tmp_path)  # a free port nobody listens on
    failover = FailoverStore(replica(nowhere.url), LocalStore(100), "fail_closed", 1.0)
    with pytest.raises(RateLimitUnavailableError) as caught:
        failover.take("limit:t:z", HOUR, 3)
    assert caught.value.code == "rate_limit_unavailable"
    assert "127.0.0.1" not in str(caught.value)


def test_a_password_protected_redis_is_used_with_the_password_file(tmp_path) -> None:
    server = RedisServer(tmp_path, "--requirepass", "s3cret-redis-password")
    server.start()
    try:
        secret = tmp_path / "redis-password"
        secret.write_text("s3cret-redis-password\n")
        with_password = RedisStore(redis_settings(server.url, password_file=str(secret)), 10)
        assert with_password.take("limit:t:p", HOUR, 1).allowed
        with pytest.raises(RateLimitUnavailableError) as caught:
            replica(server.url).take("limit:t:p", HOUR, 1)
        assert "s3cret" not in str(caught.value)
    finally:
        server.stop()


def test_a_missing_password_file_is_a_config_error_naming_it(tmp_path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError, match=f"{missing}: cannot read the Redis password"):
        RedisStore(redis_settings("redis://127.0.0.1:1/0", password_file=str(missing)), 10)
