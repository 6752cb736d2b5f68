"""JWKS key sources: a file, a URL, or OIDC discovery from the issuer; never the token.

A KeyStore owns one provider's keys. Its background thread loads and refreshes them; the request
path only reads ``current()``, one reference to an immutable KeySet, so it never waits on I/O.
A failed load is logged and the last good set stays in force (for URL sources, up to
``keys.max_staleness``).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ext_authz.errors import ConfigError, KeysUnavailableError, describe_error
from ext_authz.identity.http import fetch_url, is_https_or_loopback
from ext_authz.settings import KeyRefreshSettings, ProviderSettings
from ext_authz.watch import file_signature

__all__ = [
    "FILE_POLL_INTERVAL",
    "MAX_REFETCH_WAITERS",
    "PRIVATE_JWK_MEMBERS",
    "Fetcher",
    "KeySet",
    "KeyStore",
    "discovery_url",
    "load_jwks_file",
    "parse_jwks",
    "refresh_delay",
]

log = logging.getLogger(__name__)

Jwks = tuple[Mapping[str, object], ...]
# fetch(url, timeout) -> (body, lower-cased response headers); raises OSError (or any error).
Fetcher = Callable[[str, float], tuple[bytes, Mapping[str, str]]]

FILE_POLL_INTERVAL = 1.0  # seconds between stat() checks of a JWKS file
_FIRST_RETRY = 2.0  # seconds; doubled after each consecutive failure, up to refresh_interval
_MAX_WAIT = 60.0  # the thread re-reads the clock at least this often (clock steps, fake clocks)
# Requests that may wait at once for an unknown-kid refetch; more are refused at once, so a flood
# of unknown kids against a slow IdP cannot tie up the server's worker threads.
MAX_REFETCH_WAITERS = 4
PRIVATE_JWK_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth")  # what only a private JWK has


# --- parsing ----------------------------------------------------------------------------------


def parse_jwks(document: object, where: str, *, remote: bool = False) -> Jwks:
    """Validate a decoded JWK Set; raises ConfigError naming ``where``.

    ``remote`` is for documents an IdP publishes: keys for another ``use`` (e.g. ``enc``, which
    Keycloak and Entra list beside signing keys) are skipped rather than refused, and symmetric
    (``oct``) keys are refused: a secret served from a URL is no longer a secret.
    """
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list) or not keys:
        raise ConfigError(f"{where}: expected a JSON object with a non-empty 'keys' list")
    accepted: list[Mapping[str, object]] = []
    for index, key in enumerate(keys):
        at = f"{where}: keys[{index}]"
        if not isinstance(key, dict) or not isinstance(key.get("kty"), str):
            raise ConfigError(f"{at} is not a JWK (no 'kty')")
        if key.get("use", "sig") != "sig":
            if remote:
                continue
            raise ConfigError(f"{at} has use={key['use']!r}; expected 'sig'")
        _check_jwk(key, at, remote)
        accepted.append(key)
    if not accepted:
        raise ConfigError(f"{where}: no signing keys (every key has a 'use' other than 'sig')")
    return tuple(accepted)


def _check_jwk(key: Mapping[str, object], at: str, remote: bool) -> None:
    if key["kty"] == "oct":
        if remote:
            raise ConfigError(
                f"{at} is a symmetric ('oct') key; a JWKS URL must not publish secrets"
            )
    elif any(member in key for member in PRIVATE_JWK_MEMBERS):
        raise ConfigError(f"{at} holds private key material; publish public keys only")
    if "kid" in key and not isinstance(key["kid"], str):
        raise ConfigError(f"{at}: 'kid' must be a string")


def _json(data: bytes, where: str) -> object:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise ConfigError(f"{where} is not valid JSON: {exc}") from exc


def load_jwks_file(path: Path) -> Jwks:
    """Read a JWK Set file; raises ConfigError naming the file when it is unusable."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read JWKS file: {exc.strerror}") from exc
    return parse_jwks(_json(data, f"{path}: JWKS file"), str(path))


# --- discovery --------------------------------------------------------------------------------


def discovery_url(issuer: str) -> str:
    return f"{issuer.rstrip('/')}/.well-known/openid-configuration"


# --- scheduling -------------------------------------------------------------------------------


def _directives(cache_control: str) -> dict[str, str]:
    directives: dict[str, str] = {}
    for part in cache_control.split(","):
        name, _, argument = part.partition("=")
        directives.setdefault(name.strip().lower(), argument.strip().strip('"'))
    return directives


def refresh_delay(cache_control: str | None, settings: KeyRefreshSettings) -> float:
    """Seconds until the next refresh after a successful fetch with this Cache-Control."""
    delay = float(settings.refresh_interval)
    directives = _directives(cache_control or "")
    if "no-store" in directives or "no-cache" in directives:
        delay = settings.min_refresh_interval
    elif directives.get("max-age", "").isdigit():
        max_age = int(directives["max-age"])
        delay = min(max(max_age, settings.min_refresh_interval), settings.max_refresh_interval)
    # Refresh well before the keys go stale, whatever the IdP or the intervals say.
    return min(delay, max(settings.max_staleness / 2, 1.0))


def _retry_delay(failures: int, settings: KeyRefreshSettings) -> float:
    return min(_FIRST_RETRY * 2.0 ** min(failures - 1, 30), float(settings.refresh_interval))


# --- the store --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeySet:
    keys: Jwks  # the JWKs
    fetched_at: float  # clock() time of the last successful load
    version: int  # +1 each time the key content changes (not on an identical refetch)


class KeyStore:
    """One provider's keys, loaded and refreshed in the background, never on the request path.

    A ``jwks_file`` is loaded now (a bad file is a ConfigError) and re-read when it changes; it
    never goes stale (it is configuration: the last good version stays in force). URL and
    discovery stores load nothing until ``refresh()`` or the thread runs; their keys are refused
    once older than ``keys.max_staleness``.
    """

    def __init__(
        self,
        settings: ProviderSettings,
        clock: Callable[[], float] = time.time,
        fetch: Fetcher | None = None,
    ) -> None:
        self.name = settings.name
        self._settings = settings
        self._timing = settings.keys
        self._clock = clock
        self._fetch = fetch or fetch_url
        self._file = settings.jwks_file
        self.source = str(self._file or settings.jwks_url or discovery_url(settings.issuer))
        self.jwks_uri: str | None = settings.jwks_url  # for discovery: the last one discovered
        self._keyset: KeySet | None = None
        self._ready = threading.Event()
        self._load_lock = threading.Lock()  # one load at a time; never taken by current()
        self._cond = threading.Condition()  # guards the fields below and wakes the thread
        self._woken = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._last_wake = -math.inf
        self._requested = 0  # unknown-kid refetches requested so far (each wake counts one)
        self._answered = 0  # of those, how many a finished load (good or failed) has answered
        self._waiters = 0
        self._failures = 0  # consecutive: reset by a successful load
        self._refresh_failures = 0  # all failed loads since start
        self._file_signature: tuple[int, int, int] | None = None
        self._next_due = clock()
        if self._file is not None:
            self._file_signature = file_signature(self._file)
            self._install(load_jwks_file(self._file), None)

    # -- the request path ----------------------------------------------------------------------

    def current(self) -> KeySet:
        """The key set in force; raises KeysUnavailableError if never loaded or too old."""
        keyset = self._keyset
        if keyset is None:
            raise KeysUnavailableError(f"keys for provider {self.name!r} are not loaded yet")
        age = self._clock() - keyset.fetched_at
        if self._file is None and age > self._timing.max_staleness:
            raise KeysUnavailableError(
                f"keys for provider {self.name!r} are {age:.0f} s old, beyond max_staleness "
                f"({self._timing.max_staleness} s): {self.source} has not answered"
            )
        return keyset

    def request_refresh(self) -> None:
        """An unknown kid was seen: wake the thread to refetch, at most once per
        ``keys.unknown_kid_interval`` however often it is called. Never waits on I/O."""
        if self._file is not None:
            return  # a file is re-read when it changes; refetching cannot produce a new kid
        now = self._clock()
        with self._cond:
            if now - self._last_wake < self._timing.unknown_kid_interval:
                return
            self._last_wake = now
            self._woken = True
            self._requested += 1
            self._cond.notify_all()

    def await_refetch(self, timeout: float) -> bool:
        """An unknown kid was seen: request a refetch (rate limited, as ``request_refresh``) and
        wait up to ``timeout`` seconds for the requested refetch to finish. True when it did, so
        the caller looks the kid up again: an IdP that signs with a new key at once (Keycloak,
        oidc-provider) has its first tokens accepted, not refused until the next request.

        Returns False at once when no refetch is pending (rate limited and already answered) or
        ``MAX_REFETCH_WAITERS`` requests wait already."""
        self.request_refresh()
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._requested
            if self._answered >= target or self._waiters >= MAX_REFETCH_WAITERS:
                return False
            self._waiters += 1
            try:
                while self._answered < target and not self._stopping:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._cond.wait(remaining)
                return self._answered >= target
            finally:
                self._waiters -= 1

    # -- loading -------------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Load now; on failure log it and keep the last good set. True on success."""
        with self._load_lock:
            try:
                keys, headers = self._load()
            except Exception as error:  # a refresh must never take the caller (or thread) down
                self._failed(error)
                return False
            self._install(keys, headers)
            return True

    def poll(self) -> bool:
        """What the thread does when it wakes: re-read a changed file, or refetch when due or
        requested. True when keys were loaded."""
        if self._file is not None:
            self._next_due = self._clock() + FILE_POLL_INTERVAL
            if file_signature(self._file) == self._file_signature:
                return False
            return self.refresh()
        with self._cond:
            requested, self._woken = self._woken, False
            generation = self._requested
        if not (requested or self._clock() >= self._next_due):
            return False
        loaded = self.refresh()
        with self._cond:  # answers every unknown-kid request made before this load began
            self._answered = max(self._answered, generation)
            self._cond.notify_all()
        return loaded

    def age(self) -> float | None:
        """Seconds since the last successful load (also beyond ``max_staleness``, when
        ``current()`` refuses the keys); None before the first one."""
        keyset = self._keyset
        return None if keyset is None else self._clock() - keyset.fetched_at

    @property
    def refresh_failures(self) -> int:
        """Failed loads since start (a counter: never reset by a later success)."""
        return self._refresh_failures

    def next_refresh_at(self) -> float:
        """clock() time at which the thread next polls (or refetches, for URL sources)."""
        return self._next_due

    def wait_ready(self, timeout: float) -> bool:
        """True once a key set is loaded (at once for a file source)."""
        return self._ready.wait(timeout)

    def _load(self) -> tuple[Jwks, Mapping[str, str] | None]:
        if self._file is not None:
            # Taken before reading, so a write during the read is seen by the next poll.
            self._file_signature = file_signature(self._file)
            return load_jwks_file(self._file), None
        url = self._settings.jwks_url or self._discover()
        body, headers = self._fetch(url, self._timing.timeout)
        return parse_jwks(_json(body, url), url, remote=True), headers

    def _discover(self) -> str:
        url = discovery_url(self._settings.issuer)
        body, _ = self._fetch(url, self._timing.timeout)
        document = _json(body, url)
        if not isinstance(document, dict):
            raise ConfigError(f"{url}: expected a JSON object")
        if document.get("issuer") != self._settings.issuer:
            # OIDC Discovery 4.3: exact match, or one IdP could speak for another.
            raise ConfigError(
                f"{url}: 'issuer' is {str(document.get('issuer'))[:200]!r}, "
                f"not exactly the configured {self._settings.issuer!r}"
            )
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not is_https_or_loopback(jwks_uri):
            raise ConfigError(f"{url}: 'jwks_uri' must be an https URL (http only on loopback)")
        self.jwks_uri = jwks_uri
        return jwks_uri

    def _install(self, keys: Jwks, headers: Mapping[str, str] | None) -> None:
        now = self._clock()
        previous = self._keyset
        changed = previous is None or previous.keys != keys
        version = 1 if previous is None else previous.version + int(changed)
        self._keyset = KeySet(keys, now, version)  # one reference swap: readers see old or new
        self._failures = 0
        if self._file is None:
            cache_control = (headers or {}).get("cache-control")
            self._next_due = now + refresh_delay(cache_control, self._timing)
        self._ready.set()
        if changed:
            kids = [key.get("kid") for key in keys]
            log.info(
                "provider %r: loaded key set version %d from %s (kids %s)",
                self.name,
                version,
                self.source,
                kids,
            )

    def _failed(self, error: Exception) -> None:
        self._failures += 1
        self._refresh_failures += 1
        if self._file is None:
            self._next_due = self._clock() + _retry_delay(self._failures, self._timing)
        keyset = self._keyset
        kept = f"keeping version {keyset.version}" if keyset else "no keys loaded yet"
        log.error(
            "provider %r: cannot load keys from %s (%s); %s",
            self.name,
            self.source,
            describe_error(error),
            kept,
        )

    # -- the background thread -----------------------------------------------------------------

    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name=f"keys:{self.name}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            thread, self._thread = self._thread, None
            self._cond.notify_all()
        if thread is not None:
            # A fetch in flight is bounded by the timeout (discovery makes two).
            thread.join(2 * self._timing.timeout + 1)
            if thread.is_alive():
                log.warning("provider %r: key refresh thread did not stop in time", self.name)

    def _run(self) -> None:
        while self._wait_until_due():
            self.poll()

    def _wait_until_due(self) -> bool:
        with self._cond:
            while not self._stopping and not self._woken:
                remaining = self._next_due - self._clock()
                if remaining <= 0:
                    break
                self._cond.wait(min(remaining, _MAX_WAIT))
            return not self._stopping
