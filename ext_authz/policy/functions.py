"""Matcher functions for the shipped Casbin model (pure; registered by the enforcer).

Path patterns are anchored and segment-based: a literal segment, ``{name}`` (one segment, named),
``*`` (one segment) or a final ``**`` (zero or more segments). Query conditions are ``*`` (any) or
``&``-joined terms: ``name`` (present), ``!name`` (absent), ``name=value`` (some value equals),
``name!=value`` (no value equals). Values compare case-insensitively and comma-separated lists are
split, because upstreams commonly accept ``include=Drafts`` or ``include=a,drafts`` too; names
compare case-insensitively as well (some frameworks read ``Include`` as ``include``).
Conditions (``*`` or terms over the caller, path parameters, claims, headers, host, source and
time) are described in conditions.py.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from functools import lru_cache

from ext_authz.policy.conditions import RequestContext, parse_condition

__all__ = [
    "compile_path_pattern",
    "cond_match",
    "has_principal",
    "method_match",
    "parse_query_condition",
    "path_match",
    "path_params",
    "query_match",
    "validate_method",
]

Query = tuple[tuple[str, str], ...]
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_METHOD = re.compile(r"[A-Z]+")


@lru_cache(maxsize=4096)
def compile_path_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a path pattern; raises ValueError naming what is wrong."""
    if not pattern.startswith("/"):
        raise ValueError(f"path pattern {pattern!r} must start with '/'")
    segments = pattern.split("/")[1:]
    parts: list[str] = []
    for index, segment in enumerate(segments):
        if segment == "**":
            if index != len(segments) - 1:
                raise ValueError(f"path pattern {pattern!r}: '**' is only allowed at the end")
            parts.append("(?:/[^/]*)*" if parts else "(?:/[^/]*)*/?")
            break
        if segment.startswith("{") and segment.endswith("}"):
            name = segment[1:-1]
            if not _NAME.fullmatch(name):
                raise ValueError(f"path pattern {pattern!r}: bad parameter name {name!r}")
            parts.append(f"/(?P<{name}>[^/]+)")
        elif segment == "*":
            parts.append("/[^/]+")
        elif any(ch in segment for ch in "{}*"):
            raise ValueError(f"path pattern {pattern!r}: '{{', '}}' and '*' must be whole segments")
        else:
            parts.append("/" + re.escape(segment))
    try:
        return re.compile("".join(parts))
    except re.error as exc:  # e.g. the same parameter name twice
        raise ValueError(f"path pattern {pattern!r}: {exc}") from exc


def path_match(path: str, pattern: str) -> bool:
    return compile_path_pattern(pattern).fullmatch(path) is not None


def path_params(path: str, pattern: str) -> dict[str, str]:
    """The ``{name}`` segments of ``path`` under ``pattern``; empty when it does not match."""
    match = compile_path_pattern(pattern).fullmatch(path)
    return match.groupdict() if match else {}


def method_match(method: str, allowed: str) -> bool:
    """``*`` or ``GET|PUT``: exact, case-sensitive (HTTP methods are)."""
    return allowed == "*" or method in allowed.split("|")


def has_principal(principals: Collection[str], principal: str) -> bool:
    return principal in principals


def cond_match(
    subject: str, path: str, context: RequestContext, pattern: str, condition: str
) -> bool:
    """``*`` or a condition over the caller (``subject`` is "" for anonymous), the parameters
    of ``pattern`` in ``path``, and what the request context holds."""
    if condition == "*":
        return True
    parsed = parse_condition(condition)
    params = path_params(path, pattern) if parsed.path_params else {}
    return parsed.holds(subject, params, context)


@dataclass(frozen=True, slots=True)
class _Term:
    name: str
    op: str  # "present", "absent", "eq", "ne"
    value: str = ""


@lru_cache(maxsize=4096)
def parse_query_condition(condition: str) -> tuple[_Term, ...]:
    """Parse a query condition; raises ValueError naming what is wrong."""
    if condition == "*":
        return ()
    terms = []
    for text in condition.split("&"):
        if text.startswith("!"):
            name, op, value = text[1:], "absent", ""
        elif "!=" in text:
            name, _, value = text.partition("!=")
            op = "ne"
        elif "=" in text:
            name, _, value = text.partition("=")
            op = "eq"
        else:
            name, op, value = text, "present", ""
        if not name or any(ch in name for ch in "=!&"):
            raise ValueError(f"query condition {condition!r}: bad term {text!r}")
        terms.append(_Term(name.casefold(), op, value.casefold()))
    return tuple(terms)


def _items(query: Query, name: str) -> list[str] | None:
    values = [value for key, value in query if key.casefold() == name]
    if not values:
        return None
    return [item.strip().casefold() for value in values for item in value.split(",")]


def query_match(query: Query, condition: str) -> bool:
    for term in parse_query_condition(condition):
        items = _items(query, term.name)
        if term.op == "present" and items is None:
            return False
        if term.op == "absent" and items is not None:
            return False
        if term.op == "eq" and (items is None or term.value not in items):
            return False
        if term.op == "ne" and items is not None and term.value in items:
            return False
    return True


def validate_method(allowed: str) -> None:
    """Raise ValueError unless ``allowed`` is ``*`` or ``|``-joined upper-case methods."""
    if allowed != "*" and not all(_METHOD.fullmatch(m) for m in allowed.split("|")):
        raise ValueError(f"method {allowed!r} must be '*' or upper-case methods joined by '|'")
