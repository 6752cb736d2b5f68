"""SecuritySignals: the detectors as a DecisionObserver, the Blocklist guard and the sinks.

What each detector counts (decisions refused by the blocklist itself count nowhere):

- ``credential_stuffing``: 401s for a bad credential (not a missing one), per source address;
- ``token_guessing``: 401s for a credential of a known subject, per subject. The subject is known
  when the refusal came after the token's signature was verified: an expired token (the signature
  is checked before the expiry) or a revoked one (the denylist runs on a verified identity). A
  forged token names no subject, so a forger cannot get someone else's subject blocked. (Only
  a JWT in the Authorization header is read this way: the pipeline's refusals carry no identity,
  so cookie or query tokens and API-key owners are not attributed yet);
- ``deny_spike``: the 401/403 rate over the spike window against the baseline before it;
- ``token_theft``: distinct source addresses per subject, whatever the decision;
- ``path_scanning``: distinct 401/403 paths per source address.

``observe`` runs on the check threads after the response is built: a few dictionary updates under
a per-detector lock. Events go to the ``ext_authz.security`` log, to every subscriber, and to the
webhook queue when one is configured; blocking (when enabled) happens before they go out.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

from ext_authz.credentials import extract_bearer_token
from ext_authz.errors import (
    BlockedError,
    ExpiredTokenError,
    InvalidTokenError,
    MissingCredentialError,
    RevokedTokenError,
)
from ext_authz.identity.claims import load_json_strictly, subject_of
from ext_authz.models import AuthRequest, Decision, Outcome
from ext_authz.ratelimit.store import Store
from ext_authz.settings import SecuritySettings
from ext_authz.signals.blocklist import Blocklist
from ext_authz.signals.detectors import CountDetector, Crossing, DistinctDetector, SpikeDetector
from ext_authz.signals.events import SecurityEvent, SignalKind, log_event
from ext_authz.signals.webhook import WebhookSink

__all__ = ["EventCallback", "SecuritySignals"]

log = logging.getLogger(__name__)

EventCallback = Callable[[SecurityEvent], None]

_DENIED = frozenset({Outcome.UNAUTHENTICATED, Outcome.FORBIDDEN})
_BLOCKED = BlockedError.code
_ALLOW = Outcome.ALLOW  # a local name: looking a member up on its Enum class is slow
# Refusals that come after the credential was verified: the subject the token names is authentic.
_VERIFIED_REFUSALS = frozenset({ExpiredTokenError.code, RevokedTokenError.code})


def _verified_token_subject(request: AuthRequest, subject_claims: Mapping[str, str]) -> str | None:
    """The subject of the Authorization bearer JWT, read from its payload. Only for a token
    the identity phase verified and then refused (see _VERIFIED_REFUSALS)."""
    try:
        token = extract_bearer_token(request)
    except InvalidTokenError:
        return None
    parts = token.split(".") if token else []
    if len(parts) != 3:
        return None
    try:
        claims = load_json_strictly(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, RecursionError):  # binascii.Error is a ValueError
        return None
    if not isinstance(claims, dict):
        return None
    issuer = claims.get("iss")
    claim = subject_claims.get(issuer) if isinstance(issuer, str) else None
    if claim is None:
        return None
    try:
        return subject_of(claims, claim)
    except InvalidTokenError:
        return None


class SecuritySignals:
    """Sliding-window security detectors over decisions (a DecisionObserver).

    ``subject_claims`` maps each token issuer to its subject claim, so that refused but verified
    tokens (expired, revoked) are attributed to the subject the identity phase would have named.
    ``blocklist`` is the Guard to put in the pipeline, keeping its blocks in ``store`` (the rate
    limits' store; default: its own LocalStore); ``start``/``stop`` run the webhook worker.
    """

    def __init__(
        self,
        settings: SecuritySettings,
        clock: Callable[[], float] = time.monotonic,
        *,
        subject_claims: Mapping[str, str] | None = None,
        store: Store | None = None,
    ) -> None:
        keys = settings.max_tracked_keys
        self._clock = clock
        self._subject_claims = dict(subject_claims or {})
        self._stuffing = CountDetector(settings.auth_failures_per_source, keys)
        self._guessing = CountDetector(settings.auth_failures_per_subject, keys)
        self._spike = SpikeDetector(settings.deny_spike, clock())
        self._theft = DistinctDetector(settings.addresses_per_subject, keys)
        self._scanning = DistinctDetector(settings.denied_paths_per_source, keys)
        self.blocklist = Blocklist(settings.block, keys, clock, store)
        self.webhook = WebhookSink(settings.webhook) if settings.webhook is not None else None
        self._callbacks: tuple[EventCallback, ...] = ()
        self._subscribe_lock = threading.Lock()

    def subscribe(self, callback: EventCallback) -> None:
        """Call ``callback(event)`` for every event (on the check thread: keep it cheap). An
        exception it raises is logged and goes no further."""
        with self._subscribe_lock:
            self._callbacks = (*self._callbacks, callback)

    def start(self) -> None:
        if self.webhook is not None:
            self.webhook.start()

    def stop(self) -> None:
        if self.webhook is not None:
            self.webhook.stop()

    def observe(self, decision: Decision, request: AuthRequest | None, latency_s: float) -> None:
        if request is None or decision.reason_code == _BLOCKED:
            return  # an unparsed request names no address; a blocked one is dealt with
        address = request.source_address
        if decision.outcome is _ALLOW:
            # The common case: only token theft counts it, and only for a signed-in caller.
            identity = decision.identity
            if identity.authenticated and identity.subject and address:
                now = self._clock()
                crossing = self._theft.record(identity.subject, address, now, decision.request_id)
                if crossing is not None:
                    self._emit(SignalKind.TOKEN_THEFT, crossing, now)
            return
        now = self._clock()
        request_id = decision.request_id
        subject = self._subject(decision, request)
        found: list[tuple[SignalKind, Crossing | None]] = []
        if decision.outcome in _DENIED:
            found.append((SignalKind.DENY_SPIKE, self._spike.record(now, request_id)))
            if address:
                crossing = self._scanning.record(address, request.path, now, request_id)
                found.append((SignalKind.PATH_SCANNING, crossing))
        if (
            decision.outcome is Outcome.UNAUTHENTICATED
            and decision.reason_code != MissingCredentialError.code
        ):
            if address:
                crossing = self._stuffing.record(address, now, request_id)
                found.append((SignalKind.CREDENTIAL_STUFFING, crossing))
            if subject:
                crossing = self._guessing.record(subject, now, request_id)
                found.append((SignalKind.TOKEN_GUESSING, crossing))
        if subject and address:
            crossing = self._theft.record(subject, address, now, request_id)
            found.append((SignalKind.TOKEN_THEFT, crossing))
        for kind, crossing in found:
            if crossing is not None:
                self._emit(kind, crossing, now)

    def _subject(self, decision: Decision, request: AuthRequest) -> str | None:
        if decision.identity.authenticated:
            return decision.identity.subject
        if decision.reason_code in _VERIFIED_REFUSALS:
            return _verified_token_subject(request, self._subject_claims)
        return None

    def _emit(self, kind: SignalKind, crossing: Crossing, now: float) -> None:
        to_wall = time.time() - now  # detector clock -> seconds since 1970
        event = SecurityEvent(
            kind,
            crossing.key,
            crossing.count,
            crossing.window,
            crossing.first_seen + to_wall,
            crossing.last_seen + to_wall,
            crossing.request_ids,
            crossing.baseline_rate,
        )
        blocked_for = self.blocklist.block(event.key_type, event.key, kind.value)
        if blocked_for is not None:
            event = replace(event, blocked_for=blocked_for)
        log_event(event)
        for callback in self._callbacks:
            try:
                callback(event)
            except Exception:  # a subscriber's bug must not reach the check
                log.exception("security event subscriber %r failed", callback)
        if self.webhook is not None:
            self.webhook.submit(event)
