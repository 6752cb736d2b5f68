"""The one rule for identity values (subjects, roles, principals) that go upstream in headers."""

from __future__ import annotations

import unicodedata

__all__ = ["header_safety_problem"]

# Controls, invisible format characters (bidi overrides, zero-width) and line/paragraph
# separators would let a value read differently upstream than it did to the policy; lone
# surrogates, private-use and unassigned code points cannot be sent (or trusted) at all.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def header_safety_problem(value: str) -> str | None:
    """Why ``value`` cannot be an identity header value, or None when it can.

    Roles are sent comma-joined, so a comma would split one role into two; an upstream that
    trims would read " admin" as "admin".
    """
    if not value:
        return "is empty"
    if value != value.strip():
        return "has leading or trailing whitespace"
    if "," in value:
        return "contains a comma (roles are sent comma-separated)"
    if any(unicodedata.category(char) in _UNSAFE_CATEGORIES for char in value):
        return "contains control or invisible characters"
    return None
