"""SecurityEvent: what a detector raises, and the one JSON log line each event becomes.

An event names an address or a subject (never a credential), how many occurrences crossed the
threshold within the window, when the first and last of them happened (wall clock, seconds since
1970), and a few request ids to find the matching decision log lines by.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["KeyType", "SecurityEvent", "SignalKind", "log_event"]

log = logging.getLogger("ext_authz.security")


class SignalKind(StrEnum):
    CREDENTIAL_STUFFING = "credential_stuffing"  # bad credentials from one address
    TOKEN_GUESSING = "token_guessing"  # noqa: S105 - a name; refused credentials of one subject
    DENY_SPIKE = "deny_spike"  # the 401/403 rate against its recent baseline
    TOKEN_THEFT = "token_theft"  # noqa: S105 - a name; one subject from many addresses
    PATH_SCANNING = "path_scanning"  # one address walking many denied paths


class KeyType(StrEnum):
    ADDRESS = "address"
    SUBJECT = "subject"
    SERVICE = "service"  # the whole service (the deny spike)


_KEY_TYPES: dict[SignalKind, KeyType] = {
    SignalKind.CREDENTIAL_STUFFING: KeyType.ADDRESS,
    SignalKind.TOKEN_GUESSING: KeyType.SUBJECT,
    SignalKind.DENY_SPIKE: KeyType.SERVICE,
    SignalKind.TOKEN_THEFT: KeyType.SUBJECT,
    SignalKind.PATH_SCANNING: KeyType.ADDRESS,
}


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1000):03d}Z"


@dataclass(frozen=True, slots=True)
class SecurityEvent:
    """One crossing of a detector's threshold; ``blocked_for`` is the block it caused, if any."""

    kind: SignalKind
    key: str  # the address or subject; "*" for the whole service
    count: int  # occurrences (or distinct values) within the window
    window: float  # seconds
    first_seen: float  # seconds since 1970
    last_seen: float
    request_ids: tuple[str, ...] = ()  # a sample
    baseline_rate: float | None = None  # denials per second before a deny spike
    blocked_for: int | None = None  # seconds

    @property
    def key_type(self) -> KeyType:
        return _KEY_TYPES[self.kind]

    def as_dict(self) -> dict[str, object]:
        """The event as JSON-ready fields (the log line, the webhook body, the live view)."""
        fields: dict[str, object] = {
            "event": "security_event",
            "kind": self.kind.value,
            "key_type": self.key_type.value,
            "key": self.key,
            "count": self.count,
            "window_s": self.window,
            "first_seen": _iso(self.first_seen),
            "last_seen": _iso(self.last_seen),
            "request_ids": list(self.request_ids),
            "blocked_for_s": self.blocked_for,
        }
        if self.baseline_rate is not None:
            fields["baseline_rate"] = round(self.baseline_rate, 3)
        return fields


def log_event(event: SecurityEvent) -> None:
    """One JSON line on the ``ext_authz.security`` logger (warning level)."""
    log.warning(
        "security event %s: %s %s, %d in %gs%s",
        event.kind.value,
        event.key_type.value,
        event.key,
        event.count,
        event.window,
        f"; blocked for {event.blocked_for}s" if event.blocked_for else "",
        extra={"fields": event.as_dict()},
    )
