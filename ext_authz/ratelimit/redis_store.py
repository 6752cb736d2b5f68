"""RedisStore: buckets and blocks shared by every replica (the only module importing redis).

Each operation is one round trip. Taking a token is one Lua script, executed atomically by
Redis (EVALSHA, loading the script again on NOSCRIPT), so concurrent replicas never let more
through than the bucket holds; it reads the time with TIME inside the script, so the replicas'
clocks do not matter. A bucket key expires when its bucket is full again. Blocks are keys with
a TTL plus a sorted set (by expiry) that lists them for the live view.

Any failure (refused connection, timeout, an error reply) raises RateLimitUnavailableError:
this store never guesses; failover.py decides what a failure means. Single Redis or a primary
with replicas only: the block script touches two keys, which Redis Cluster would refuse.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ext_authz.errors import ConfigError, RateLimitUnavailableError, describe_error
from ext_authz.ratelimit.bucket import Taken
from ext_authz.ratelimit.store import StoredBlock
from ext_authz.settings import RedisSettings

__all__ = ["RedisStore"]

# KEYS[1] bucket; ARGV: interval (µs), burst. Returns {allowed, remaining, retry_after_us,
# reset_after_us}: the steps of bucket.take, with Redis's clock.
_TAKE = """
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local interval = tonumber(ARGV[1])
local capacity = interval * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local new_tat = tat + interval
if new_tat - now > capacity then
  return {0, 0, new_tat - now - capacity, tat - now}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX',
           math.ceil((new_tat - now) / 1000))
return {1, math.floor((capacity - (new_tat - now)) / interval), 0, new_tat - now}
"""

# KEYS[1] block, KEYS[2] index; ARGV: ttl (ms), reason, index bound.
_BLOCK = """
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[1]), KEYS[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local extra = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[3])
if extra > 0 then redis.call('ZREMRANGEBYRANK', KEYS[2], 0, extra - 1) end
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 1
"""

# KEYS[1] index; ARGV: how many. Returns key, reason, remaining ms for each block in force.
_LIST = """
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local out = {}
for _, key in ipairs(redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)) do
  local reason = redis.call('GET', key)
  local left = redis.call('PTTL', key)
  if reason and left > 0 then
    table.insert(out, key)
    table.insert(out, reason)
    table.insert(out, left)
  end
end
return out
"""


class RedisStore:
    """A Store on one Redis server; ``max_blocks`` bounds the list of blocks (not the blocks)."""

    def __init__(self, settings: RedisSettings, max_blocks: int) -> None:
        self._client = redis.Redis.from_url(
            settings.url,
            password=_password(settings.password_file),
            socket_timeout=settings.timeout,
            socket_connect_timeout=settings.timeout,
            retry=Retry(NoBackoff(), 0),  # a failure is reported at once; failover.py decides
            health_check_interval=0,
        )
        self._prefix = settings.key_prefix
        self._max_blocks = max_blocks
        self._take = self._client.register_script(_TAKE)  # EVALSHA, then SCRIPT LOAD on NOSCRIPT
        self._block = self._client.register_script(_BLOCK)
        self._list = self._client.register_script(_LIST)

    def take(self, key: str, interval_us: int, burst: int) -> Taken:
        reply = self._call(self._take, [self._prefix + key], [interval_us, burst])
        allowed, remaining, retry_after, reset_after = (int(value) for value in reply)
        return Taken(bool(allowed), remaining, retry_after, reset_after)

    def block(self, key: str, ttl_s: int, reason: str) -> None:
        keys = [self._prefix + key, self._prefix + "blocks"]
        self._call(self._block, keys, [ttl_s * 1000, reason, self._max_blocks])

    def blocked(self, keys: Sequence[str]) -> list[float | None]:
        try:
            with self._client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.pttl(self._prefix + key)
                replies = pipe.execute()
        except redis.RedisError as exc:
            raise _unavailable(exc) from exc
        return [int(ms) / 1000 if int(ms) > 0 else None for ms in replies]

    def blocks(self) -> list[StoredBlock]:
        reply = self._call(self._list, [self._prefix + "blocks"], [self._max_blocks])
        prefix = len(self._prefix)
        return [
            StoredBlock(key.decode()[prefix:], reason.decode(), int(left) / 1000)
            for key, reason, left in zip(reply[0::3], reply[1::3], reply[2::3], strict=True)
        ]

    def _call(
        self, script: redis.commands.core.Script, keys: list[str], args: list[int | str]
    ) -> list[Any]:  # integers and bytes, as the script returns them
        try:
            reply = script(keys=keys, args=args)
        except redis.RedisError as exc:
            raise _unavailable(exc) from exc
        return list(reply) if isinstance(reply, list) else [reply]


def _password(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        password = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{path}: cannot read the Redis password ({describe_error(exc)})"
        ) from None
    if not password:
        raise ConfigError(f"{path}: the Redis password file is empty")
    return password


def _unavailable(exc: redis.RedisError) -> RateLimitUnavailableError:
    # The type only: a reply or connection message could name hosts or carry data.
    return RateLimitUnavailableError(f"the rate-limit store (Redis) failed: {type(exc).__name__}")
