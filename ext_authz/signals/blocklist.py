"""Blocklist: addresses and subjects refused for a while after a security event (a Guard).

Blocks expire after the configured TTL; the allowlist (CIDRs for addresses, exact subjects) is
never blocked. A blocked request is answered 429 with Retry-After, or 403 when so configured.
Blocks are kept in a rate-limit Store (ext_authz/ratelimit/): in this process by default (at
most ``max_entries``, the one closest to expiry goes first), or in Redis when the rate limits
use Redis, so a block one replica makes holds on every replica.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from ext_authz.errors import BlockedError
from ext_authz.models import AuthRequest, Identity
from ext_authz.ratelimit.store import LocalStore, Store
from ext_authz.settings import BlockSettings
from ext_authz.signals.events import KeyType

__all__ = ["Block", "Blocklist"]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Block:
    """One block in force: what is blocked, why (the event kind) and for how much longer."""

    key_type: KeyType
    key: str
    reason: str
    remaining_s: float


def _split_allowlist(allowlist: tuple[str, ...]) -> tuple[tuple[_Network, ...], frozenset[str]]:
    """CIDRs (a bare address is a /32 or /128) and, for every other entry, subjects."""
    networks: list[_Network] = []
    subjects: set[str] = set()
    for entry in allowlist:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            subjects.add(entry)
    return tuple(networks), frozenset(subjects)


def _store_key(key_type: KeyType, key: str) -> str:
    return f"block:{key_type.value}:{key}"


class Blocklist:
    """Blocks keyed by (KeyType.ADDRESS, address) or (KeyType.SUBJECT, subject), in ``store``
    (default: a LocalStore of ``max_entries`` blocks)."""

    def __init__(
        self,
        settings: BlockSettings,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
        store: Store | None = None,
    ) -> None:
        self._settings = settings
        self._store = store if store is not None else LocalStore(max_entries, clock=clock)
        self._networks, self._subjects = _split_allowlist(settings.allowlist)

    @property
    def enabled(self) -> bool:
        return self._settings.enabled

    def allowlisted(self, key_type: KeyType, key: str) -> bool:
        if key_type is KeyType.SUBJECT:
            return key in self._subjects
        try:
            address = ipaddress.ip_address(key)
        except ValueError:
            return False
        return any(address in network for network in self._networks)

    def block(self, key_type: KeyType, key: str, reason: str) -> int | None:
        """Block ``key`` for the TTL; the TTL in seconds, or None when blocking is off or the
        key is allowlisted (or is not an address or subject)."""
        if (
            not self.enabled
            or key_type not in (KeyType.ADDRESS, KeyType.SUBJECT)
            or self.allowlisted(key_type, key)
        ):
            return None
        self._store.block(_store_key(key_type, key), self._settings.ttl, reason)
        return self._settings.ttl

    def check(self, identity: Identity, request: AuthRequest) -> None:
        """The Guard: raises BlockedError while the address or the (authenticated) subject is
        blocked."""
        if not self.enabled:  # nothing is ever blocked: no store to ask
            return
        keys = [_store_key(KeyType.ADDRESS, request.source_address)]
        if identity.authenticated:
            keys.append(_store_key(KeyType.SUBJECT, identity.subject))
        found = self._store.blocked(keys)
        for what, remaining in zip(("address", "identity"), found, strict=False):
            if remaining is not None:
                seconds = max(1, math.ceil(remaining))
                raise BlockedError(
                    f"this {what} is blocked after suspicious activity; retry in {seconds} seconds",
                    retry_after=seconds,
                    forbid=self._settings.status == 403,
                )

    def current_blocks(self) -> list[Block]:
        """The blocks in force, the one expiring first first (for the live view)."""
        blocks = []
        for stored in self._store.blocks():
            _, key_type, key = stored.key.split(":", 2)
            blocks.append(Block(KeyType(key_type), key, stored.reason, stored.remaining_s))
        return blocks
