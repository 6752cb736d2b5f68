"""Blocklist: addresses and subjects refused for a while after a security event (a Guard).

Blocks expire after the configured TTL; the allowlist (CIDRs for addresses, exact subjects) is
never blocked; at most ``max_entries`` blocks are held (the one closest to expiry goes first).
A blocked request is answered 429 with Retry-After, or 403 when so configured.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ext_authz.errors import BlockedError
from ext_authz.models import AuthRequest, Identity
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


class Blocklist:
    """Blocks keyed by (KeyType.ADDRESS, address) or (KeyType.SUBJECT, subject)."""

    def __init__(
        self,
        settings: BlockSettings,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._max_entries = max_entries
        self._clock = clock
        self._networks, self._subjects = _split_allowlist(settings.allowlist)
        # (key type, key) -> (expires at, reason); every block has the same TTL, so insertion
        # order (a renewed block moves to the end) is expiry order.
        self._blocks: OrderedDict[tuple[KeyType, str], tuple[float, str]] = OrderedDict()
        self._lock = threading.Lock()

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
        now = self._clock()
        with self._lock:
            self._prune(now)
            self._blocks[(key_type, key)] = (now + self._settings.ttl, reason)
            self._blocks.move_to_end((key_type, key))
            if len(self._blocks) > self._max_entries:
                self._blocks.popitem(last=False)
        return self._settings.ttl

    def check(self, identity: Identity, request: AuthRequest) -> None:
        """The Guard: raises BlockedError while the address or the (authenticated) subject is
        blocked."""
        if not self._blocks:  # the common case, without taking the lock
            return
        now = self._clock()
        with self._lock:
            self._prune(now)
            remaining = self._remaining((KeyType.ADDRESS, request.source_address), now)
            what = "address"
            if remaining is None and identity.authenticated:
                remaining = self._remaining((KeyType.SUBJECT, identity.subject), now)
                what = "identity"
        if remaining is not None:
            seconds = max(1, math.ceil(remaining))
            raise BlockedError(
                f"this {what} is blocked after suspicious activity; retry in {seconds} seconds",
                retry_after=seconds,
                forbid=self._settings.status == 403,
            )

    def current_blocks(self) -> list[Block]:
        """The blocks in force, the one expiring first first (for the live view)."""
        now = self._clock()
        with self._lock:
            self._prune(now)
            return [
                Block(key_type, key, reason, expires - now)
                for (key_type, key), (expires, reason) in self._blocks.items()
            ]

    def _remaining(self, key: tuple[KeyType, str], now: float) -> float | None:
        entry = self._blocks.get(key)
        return None if entry is None else entry[0] - now

    def _prune(self, now: float) -> None:
        while self._blocks and next(iter(self._blocks.values()))[0] <= now:
            self._blocks.popitem(last=False)
