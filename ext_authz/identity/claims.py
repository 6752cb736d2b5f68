"""Claims to Identity, one rule for both token paths (a verified JWT, an introspection answer).

Every function raises InvalidTokenError with a message that names the claim, never its value:
messages reach the client in ``WWW-Authenticate``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from ext_authz.errors import InvalidTokenError
from ext_authz.identity.values import header_safety_problem

__all__ = ["claim_at", "load_json_strictly", "numeric_date", "roles_of", "scopes_of", "subject_of"]

# NumericDate bounds: 0 .. 9999-12-31; anything else is not a date (and 10**400 overflows float).
_MAX_NUMERIC_DATE = 253402300799


def _refuse_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            # Two "alg" or two "active" members: which one a parser keeps is what attacks play on.
            raise ValueError(f"duplicate member {key!r}")
        result[key] = value
    return result


def _refuse_constant(name: str) -> object:
    raise ValueError(f"non-JSON number {name}")


def load_json_strictly(data: bytes) -> object:
    """Decode a JSON document that claims are read from (a JWT header or payload, an
    introspection answer); raises ValueError for invalid JSON, a duplicate member or NaN and
    Infinity, and RecursionError for absurd nesting."""
    return json.loads(data, object_pairs_hook=_refuse_duplicates, parse_constant=_refuse_constant)


def claim_at(claims: Mapping[str, object], path: str) -> object:
    """The value at a dotted ``path`` (e.g. ``realm_access.roles``), or None where it stops.

    At each level the longest key that matches wins, so a claim whose name holds dots is found:
    Auth0's namespaced ``https://example.com/roles``, Keycloak's ``resource_access.my.api.roles``
    for a client named ``my.api``.
    """
    value: object = claims
    parts = path.split(".")
    while parts:
        if not isinstance(value, Mapping):
            return None
        for size in range(len(parts), 0, -1):
            key = ".".join(parts[:size])
            if key in value:
                value, parts = value[key], parts[size:]
                break
        else:
            return None
    return value


def numeric_date(claims: Mapping[str, object], name: str) -> float | None:
    """The NumericDate claim ``name`` (seconds since 1970), or None when absent."""
    value = claims.get(name)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 <= value <= _MAX_NUMERIC_DATE
    ):
        raise InvalidTokenError(f"token claim '{name}' is not a valid date (seconds since 1970)")
    return float(value)


def scopes_of(claims: Mapping[str, object]) -> tuple[str, ...]:
    """OAuth scopes from ``scope`` (space-separated, RFC 8693) and/or ``scp`` (a list)."""
    scopes: list[str] = []
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            scopes.extend(value.split())
        elif isinstance(value, list):
            scopes.extend(item for item in value if isinstance(item, str))
        elif value is not None:
            raise InvalidTokenError(f"token claim '{name}' is not a scope list")
    return tuple(dict.fromkeys(scopes))


def subject_of(claims: Mapping[str, object], claim: str) -> str:
    """The subject at claim path ``claim``; it goes upstream in a header, so it must be safe."""
    subject = claim_at(claims, claim)
    if not isinstance(subject, str) or header_safety_problem(subject):
        raise InvalidTokenError(f"token has no usable '{claim}' (subject) claim")
    return subject


def roles_of(claims: Mapping[str, object], path: str) -> tuple[str, ...]:
    """Roles at claim ``path``: absent (none), a space-separated string, or a list of strings;
    each must be safe to send upstream in the comma-joined roles header."""
    raw = claim_at(claims, path)
    if raw is None:
        roles: tuple[str, ...] = ()
    elif isinstance(raw, str):
        roles = tuple(raw.split())
    elif isinstance(raw, list) and all(isinstance(role, str) for role in raw):
        roles = tuple(raw)
    else:
        raise InvalidTokenError(f"token claim '{path}' is not a list of roles")
    if any(header_safety_problem(role) for role in roles):
        raise InvalidTokenError(f"token claim '{path}' has an unusable role")
    return roles
