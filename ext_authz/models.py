"""The small immutable values that cross phase boundaries."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

__all__ = [
    "ANONYMOUS",
    "AuthRequest",
    "Decision",
    "Identity",
    "Outcome",
    "PolicyResult",
    "Quota",
]


def _empty() -> Mapping[str, str]:
    return MappingProxyType({})


class Outcome(StrEnum):
    """What the service answers; response.py maps each to one HTTP status."""

    ALLOW = "allow"
    INVALID_REQUEST = "invalid_request"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    LIMITED = "limited"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """A normalized request: what identity and policy phases see.

    ``path`` is percent-decoded and free of dot segments, empty segments and parameters;
    ``query`` holds the decoded (name, value) pairs in the order sent; ``headers`` has lowercase
    names and no pseudo-headers.
    """

    method: str
    path: str
    query: tuple[tuple[str, str], ...] = ()
    headers: Mapping[str, str] = field(default_factory=_empty)
    host: str = ""
    scheme: str = ""
    source_address: str = ""
    peer_principal: str = ""
    request_id: str = ""
    context_extensions: Mapping[str, str] = field(default_factory=_empty)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is calling. ``authenticated`` is False only for the anonymous identity.

    ``method`` says how: ``jwt``, ``introspection``, ``api_key``, ``mtls`` or ``anonymous``.
    """

    subject: str
    roles: tuple[str, ...] = ()
    authenticated: bool = True
    issuer: str = ""
    method: str = "jwt"
    scopes: tuple[str, ...] = ()
    claims: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))


ANONYMOUS = Identity(subject="anonymous", authenticated=False, method="anonymous")


@dataclass(frozen=True, slots=True)
class PolicyResult:
    """The authorization phase's answer; ``matched_rule`` is the policy line that decided."""

    allowed: bool
    matched_rule: str | None = None


@dataclass(frozen=True, slots=True)
class Quota:
    """The rate limit that applied to a request, as the RateLimit header fields tell it: the
    policy (``limit`` requests per ``window`` seconds), what is left and when it is full again."""

    policy: str
    limit: int
    window: int
    remaining: int
    reset: int  # seconds


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one Check, with the stable ``reason_code`` that labels logs and metrics."""

    outcome: Outcome
    reason_code: str
    decision_id: str
    identity: Identity = ANONYMOUS
    matched_rule: str | None = None
    message: str = ""
    request_id: str = ""
    retry_after: int | None = None  # seconds, for a LIMITED decision
    quota: Quota | None = None  # the rate limit that applied, when its headers are sent
