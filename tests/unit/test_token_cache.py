"""identity/cache.py: a bounded LRU of verified tokens, keyed by hash, expiring at ``exp``."""

from __future__ import annotations

import secrets
import threading

import pytest

from ext_authz.identity.cache import CachedToken, TokenCache
from ext_authz.models import Identity

NOW = 1_700_000_000.0


def entry(subject: str = "alice", expires_at: float = NOW + 300, version: int = 1) -> CachedToken:
    return CachedToken(Identity(subject, issuer="https://issuer.test"), expires_at, version)


def random_token() -> str:
    return "eyJ" + secrets.token_urlsafe(24) + "." + secrets.token_urlsafe(24) + ".sig"


def test_cached_entry_is_returned_before_its_expiry() -> None:
    cache = TokenCache(10)
    cache.put("token-a", entry())
    assert cache.get("token-a", NOW) == entry()
    assert cache.get("token-a", NOW + 299.9) == entry()


def test_unknown_token_is_a_miss() -> None:
    cache = TokenCache(10)
    cache.put("token-a", entry())
    assert cache.get("token-b", NOW) is None


@pytest.mark.parametrize("later", [300.0, 300.5, 86400.0])
def test_entry_is_dropped_at_its_expiry(later: float) -> None:
    cache = TokenCache(10)
    cache.put("token-a", entry(expires_at=NOW + 300))
    assert cache.get("token-a", NOW + later) is None
    assert len(cache) == 0
    # Dropped, not just hidden: an earlier clock does not bring it back.
    assert cache.get("token-a", NOW) is None


def test_lru_bound_holds_under_a_flood_of_ten_times_max_distinct_tokens() -> None:
    max_entries = 50
    cache = TokenCache(max_entries)
    tokens = [random_token() for _ in range(10 * max_entries)]
    for token in tokens:
        cache.put(token, entry())
        assert len(cache) <= max_entries
    assert len(cache) == max_entries
    assert all(cache.get(token, NOW) is not None for token in tokens[-max_entries:])
    assert all(cache.get(token, NOW) is None for token in tokens[:-max_entries])


def test_bound_holds_when_threads_flood_the_cache_together() -> None:
    cache = TokenCache(64)

    def flood() -> None:
        for _ in range(640):
            token = random_token()
            cache.put(token, entry())
            cache.get(token, NOW)

    threads = [threading.Thread(target=flood) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(cache) == 64


def test_least_recently_used_entry_is_evicted_first() -> None:
    cache = TokenCache(3)
    for name in ("a", "b", "c"):
        cache.put(name, entry(name))
    assert cache.get("a", NOW) is not None  # "a" is now the most recently used
    cache.put("d", entry("d"))
    assert cache.get("b", NOW) is None
    assert [cache.get(n, NOW) is not None for n in ("a", "c", "d")] == [True, True, True]


def test_putting_the_same_token_again_replaces_its_entry() -> None:
    cache = TokenCache(10)
    cache.put("token-a", entry(version=1))
    cache.put("token-a", entry(version=2))
    assert len(cache) == 1
    assert cache.get("token-a", NOW).key_version == 2


def test_max_entries_zero_disables_the_cache() -> None:
    cache = TokenCache(0)
    cache.put("token-a", entry())
    assert cache.get("token-a", NOW) is None
    assert len(cache) == 0


def test_entries_are_keyed_by_a_hash_of_the_token_not_the_token() -> None:
    cache = TokenCache(10)
    token = random_token()
    cache.put(token, entry())
    keys = list(cache._entries)  # the only look inside: what the cache holds as keys
    assert len(keys) == 1
    assert isinstance(keys[0], bytes)
    assert len(keys[0]) == 32  # a SHA-256 digest
    assert token.encode() not in keys[0]
    assert token not in repr(cache._entries)


def test_tokens_differing_in_one_character_are_distinct_entries() -> None:
    cache = TokenCache(10)
    cache.put("aaaa.bbbb.cccc", entry("alice"))
    assert cache.get("aaaa.bbbb.cccd", NOW) is None
    cache.put("aaaa.bbbb.cccd", entry("bob"))
    assert cache.get("aaaa.bbbb.cccc", NOW).identity.subject == "alice"
    assert cache.get("aaaa.bbbb.cccd", NOW).identity.subject == "bob"
