"""Rule conditions (the ``cond`` column of the shipped model): parsing and evaluation.

A condition is ``*`` (always) or terms joined by `` and `` (all must hold)::

    A == B      A != B      A in [x|y|z]      A not in [x|y]
    source in <cidr>[|<cidr>...]              source not in <cidr>[|<cidr>...]
    time in HH:MM-HH:MM [on Mon-Fri|Sat] [tz Area/City]

The left operand ``A`` is an attribute; ``B`` is an attribute or a literal
(``[A-Za-z0-9_.:@/*-]+``, compared exactly; ``*`` is not a wildcard). Attributes:

    subject             the caller's subject (absent for anonymous callers)
    path.<param>        a ``{param}`` of the rule's path pattern
    claim.<a.b>         a token claim; nested objects by dots (a key containing dots, such as a
                        namespaced ``https://example.com/tenant``, is found too)
    header.<name>       a request header (name in lower case; duplicates arrive comma-joined)
    host                the request host, lower-cased, without port, trailing dot or the
                        brackets of an IPv6 address
    host.<n>            the n-th DNS label of the host, 0 = leftmost (absent for an IP address)

Every attribute is a set of strings: one string, or for a list claim its elements. Strings are
as sent; numbers render canonically (``7``, ``2.5``; ``2.0`` is ``2``); booleans as ``true`` and
``false``. Any other claim value (an object, a list holding one) is absent. ``A == B`` holds when
the sets share an element, ``A in [..]`` when A has an element in the list (so a list claim
``groups`` satisfies ``claim.groups in [ops|sre]`` when any group is listed), and ``!=`` /
``not in`` are their negations. A term whose attribute is absent is FALSE whatever the operator:
a condition on something the request lacks never holds. (In a deny rule it therefore never
denies: state denials as positive facts, and requirements as conditions of allow rules.)

``source`` is Envoy's downstream address (after its own X-Forwarded-For handling), and is only
tested against networks (an IPv4-mapped IPv6 address counts as IPv4). ``time`` uses minutes in
the given zone (default UTC); a window is start-inclusive, end-exclusive, may end at ``24:00``,
and wraps midnight when its end is before its start, in which case ``on`` names the day the
window starts (``22:00-06:00 on Fri`` is Friday night into Saturday morning).

Evaluation reads a RequestContext: a small hashable value holding only what the loaded policy's
conditions read (ContextNeeds), so that decisions stay cacheable. The current minute is part of
it when any condition reads the time, which keeps evaluation a pure function of its inputs.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo

from ext_authz.identity.claims import claim_at

__all__ = [
    "Clock",
    "Condition",
    "ContextNeeds",
    "RequestContext",
    "combine",
    "parse_condition",
    "utc_now",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Values = frozenset[str]
Clock = Callable[[], datetime]

_OPERAND = r"[A-Za-z0-9_.:@/*-]+"
_LITERAL = re.compile(_OPERAND)
_COMPARE = re.compile(rf"(?P<left>{_OPERAND})\s*(?P<op>==|!=)\s*(?P<right>{_OPERAND})")
_MEMBER = re.compile(rf"(?P<left>{_OPERAND})\s+(?P<op>in|not\s+in)\s+\[(?P<items>[^\]]*)\]")
_SOURCE = re.compile(r"source\s+(?P<op>in|not\s+in)\s+(?P<networks>[^\s\[\]]+)")
_PARAM = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # as in path patterns' {name}
_HEADER = re.compile(r"[a-z0-9_.-]+")
_CLAIM_PART = re.compile(r"[A-Za-z0-9_:@/*-]+")
_WINDOW = re.compile(r"(\d\d):(\d\d)-(\d\d):(\d\d)")
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_MINUTES = 24 * 60
_ATTRIBUTES = "subject, path.<param>, claim.<name>, header.<name>, host or host.<n>"


def utc_now() -> datetime:
    return datetime.now(UTC)


# --- the request side ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What the conditions of one policy can read from a request: hashable, and holding nothing
    they do not read (None also stands for absent)."""

    claims: tuple[tuple[str, Values | None], ...] = ()
    headers: tuple[tuple[str, str | None], ...] = ()
    host: str | None = None
    source: IPAddress | None = None
    minute: int | None = None  # UTC minutes since the epoch


@dataclass(frozen=True, slots=True)
class ContextNeeds:
    """Which claims, headers and request attributes a policy's conditions read."""

    claims: frozenset[str] = frozenset()
    headers: frozenset[str] = frozenset()
    host: bool = False
    source: bool = False
    time: bool = False

    def __or__(self, other: ContextNeeds) -> ContextNeeds:
        return ContextNeeds(
            self.claims | other.claims,
            self.headers | other.headers,
            self.host or other.host,
            self.source or other.source,
            self.time or other.time,
        )

    def context(
        self,
        *,
        claims: Mapping[str, object],
        headers: Mapping[str, str],
        host: str,
        source: str,
        clock: Clock = utc_now,
    ) -> RequestContext:
        return RequestContext(
            claims=tuple((path, _claim_values(claims, path)) for path in sorted(self.claims)),
            headers=tuple((name, headers.get(name)) for name in sorted(self.headers)),
            host=_normalize_host(host) if self.host else None,
            source=_parse_source(source) if self.source else None,
            minute=int(clock().timestamp() // 60) if self.time else None,
        )


def combine(needs: Iterable[ContextNeeds]) -> ContextNeeds:
    combined = ContextNeeds()
    for item in needs:
        combined |= item
    return combined


def _render(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):  # before int: bool is an int
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value.is_integer() else repr(value)
    return None


def _as_values(value: object) -> Values | None:
    if isinstance(value, list | tuple):
        rendered = [text for text in map(_render, value) if text is not None]
        return frozenset(rendered) if len(rendered) == len(value) else None
    single = _render(value)
    return None if single is None else frozenset({single})


def _claim_values(claims: Mapping[str, object], path: str) -> Values | None:
    """Resolve ``a.b.c`` as the identity mapping does (the longest key first at each level)."""
    return _as_values(claim_at(claims, path))


def _normalize_host(host: str) -> str | None:
    host = host.strip().lower()
    if not host or "," in host:  # two Host headers arrive comma-joined: neither is trusted
        return None
    if host.startswith("["):  # [v6]:port
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".") or None


def _parse_source(source: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(source)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _lookup(pairs: tuple[tuple[str, object], ...], key: str) -> object:
    for name, value in pairs:
        if name == key:
            return value
    return None


# --- operands and terms ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Request:
    """What one evaluation reads: the context, plus the caller and the rule's path parameters."""

    subject: str
    params: Mapping[str, str]
    context: RequestContext


@dataclass(frozen=True, slots=True)
class _Operand:
    kind: str  # "literal" (a set of them), "subject", "path", "claim", "header", "host", "label"
    name: str = ""
    index: int = 0
    literals: Values = frozenset()

    def values(self, request: _Request) -> Values | None:
        if self.kind == "literal":
            return self.literals
        ctx = request.context
        if self.kind == "claim":
            found = _lookup(ctx.claims, self.name)
            return found if isinstance(found, frozenset) else None
        if self.kind == "subject":
            single: object = request.subject or None
        elif self.kind == "path":
            single = request.params.get(self.name)
        elif self.kind == "header":
            single = _lookup(ctx.headers, self.name)
        elif self.kind == "host":
            single = ctx.host
        else:
            single = _label(ctx.host, self.index)
        return frozenset({single}) if isinstance(single, str) else None

    @property
    def needs(self) -> ContextNeeds:
        if self.kind == "claim":
            return ContextNeeds(claims=frozenset({self.name}))
        if self.kind == "header":
            return ContextNeeds(headers=frozenset({self.name}))
        return ContextNeeds(host=self.kind in ("host", "label"))


def _label(host: str | None, index: int) -> str | None:
    if host is None or ":" in host or host.replace(".", "").isdigit():  # an IP address
        return None
    labels = host.split(".")
    return labels[index] if index < len(labels) else None


@dataclass(frozen=True, slots=True)
class _Match:
    """``==``/``in`` (some element shared) or, negated, ``!=``/``not in`` (none shared)."""

    left: _Operand
    right: _Operand
    negated: bool

    def holds(self, request: _Request) -> bool:
        left, right = self.left.values(request), self.right.values(request)
        if left is None or right is None:
            return False
        return left.isdisjoint(right) is self.negated

    @property
    def needs(self) -> ContextNeeds:
        return self.left.needs | self.right.needs


@dataclass(frozen=True, slots=True)
class _Source:
    networks: tuple[IPNetwork, ...]
    negated: bool

    def holds(self, request: _Request) -> bool:
        source = request.context.source
        if source is None:
            return False
        return any(source in network for network in self.networks) is not self.negated

    @property
    def needs(self) -> ContextNeeds:
        return ContextNeeds(source=True)


@dataclass(frozen=True, slots=True)
class _Time:
    start: int  # minutes after midnight
    end: int
    days: frozenset[int] | None  # datetime.weekday() numbers of the day a window starts
    zone: tzinfo

    def holds(self, request: _Request) -> bool:
        minute = request.context.minute
        if minute is None:
            return False
        local = datetime.fromtimestamp(minute * 60, self.zone)
        now, day = local.hour * 60 + local.minute, local.weekday()
        if self.start < self.end:
            inside = self.start <= now < self.end
        elif now >= self.start:
            inside = True
        else:  # after midnight in a window that began the day before
            inside, day = now < self.end, (day - 1) % 7
        return inside and (self.days is None or day in self.days)

    @property
    def needs(self) -> ContextNeeds:
        return ContextNeeds(time=True)


_Term = _Match | _Source | _Time


@dataclass(frozen=True, slots=True)
class Condition:
    """A parsed ``cond`` field: what it reads, and whether it holds for a request."""

    terms: tuple[_Term, ...]
    needs: ContextNeeds
    path_params: frozenset[str]

    def holds(self, subject: str, params: Mapping[str, str], context: RequestContext) -> bool:
        request = _Request(subject, params, context)
        return all(term.holds(request) for term in self.terms)


# --- parsing -----------------------------------------------------------------------------------

_ALWAYS = Condition((), ContextNeeds(), frozenset())
_FORMS = {
    "subject": "subject",
    "host": "host or host.<n> (a label number)",
    "path": "path.<param>",
    "claim": "claim.<name>[.<name>...]",
    "header": "header.<name> in lower case",
}


_TESTED_ALONE = {
    "source": "source [not] in <cidr>[|<cidr>...]",
    "time": "time in HH:MM-HH:MM [on DAYS] [tz ZONE]",
}


@lru_cache(maxsize=4096)
def parse_condition(text: str) -> Condition:
    """Parse a ``cond`` field; raises ValueError naming what is wrong."""
    if text == "*":
        return _ALWAYS
    if not text.strip():
        raise ValueError("empty condition: write '*' for none")
    terms: list[_Term] = []
    for part in re.split(r"\s+and\s+", text.strip()):
        try:
            terms.append(_parse_term(part))
        except ValueError as exc:
            raise ValueError(f"condition {text!r}: {exc}") from None
    matches = [term for term in terms if isinstance(term, _Match)]
    params = {op.name for term in matches for op in (term.left, term.right) if op.kind == "path"}
    return Condition(tuple(terms), combine(term.needs for term in terms), frozenset(params))


def _parse_term(text: str) -> _Term:
    if text == "*":
        raise ValueError("'*' must stand alone")
    if text.split()[0] == "time":
        return _parse_time(text)
    if match := _SOURCE.fullmatch(text):
        return _Source(_parse_networks(match["networks"]), match["op"] != "in")
    if match := _MEMBER.fullmatch(text):
        items = _Operand("literal", literals=_parse_items(match["items"]))
        return _match(_attribute(match["left"]), items, match["op"] != "in")
    if match := _COMPARE.fullmatch(text):
        literal = _Operand("literal", literals=frozenset({match["right"]}))
        right = _operand(match["right"]) or literal
        return _match(_attribute(match["left"]), right, match["op"] == "!=")
    raise ValueError(
        f"cannot read {text!r}: expected A == B, A != B, A in [x|y], A not in [x|y],"
        " source in <cidr>|..., or time in HH:MM-HH:MM [on DAYS] [tz ZONE]"
    )


def _match(left: _Operand, right: _Operand, negated: bool) -> _Match:
    if left.kind in ("host", "label") and any(value != value.lower() for value in right.literals):
        raise ValueError("the host is compared in lower case: write its literals in lower case")
    return _Match(left, right, negated)


def _operand(token: str) -> _Operand | None:
    """The attribute a token names, or None for a literal; raises ValueError for a bad one."""
    head, dot, rest = token.partition(".")
    if head in _TESTED_ALONE:
        raise ValueError(f"{head} is only tested as '{_TESTED_ALONE[head]}'")
    if head not in _FORMS:
        return None
    if not dot and head in ("subject", "host"):
        return _Operand(head)
    if head == "path" and _PARAM.fullmatch(rest):
        return _Operand("path", rest)
    if head == "claim" and all(_CLAIM_PART.fullmatch(part) for part in rest.split(".")):
        return _Operand("claim", rest)
    if head == "header" and _HEADER.fullmatch(rest):
        return _Operand("header", rest)
    if head == "host" and rest.isdigit():
        return _Operand("label", index=int(rest))
    raise ValueError(f"bad attribute {token!r}: expected {_FORMS[head]}")


def _attribute(token: str) -> _Operand:
    operand = _operand(token)
    if operand is None:
        raise ValueError(f"unknown operand {token!r}: the left side is one of {_ATTRIBUTES}")
    return operand


def _parse_items(text: str) -> Values:
    items = [item.strip() for item in text.split("|")]
    for item in items:
        if not _LITERAL.fullmatch(item):
            raise ValueError(f"bad list item {item!r} in [{text}]")
        if _operand(item) is not None:
            raise ValueError(f"list items are literals, not attributes such as {item!r}")
    return frozenset(items)


def _parse_networks(text: str) -> tuple[IPNetwork, ...]:
    networks = []
    for item in text.split("|"):
        try:
            networks.append(ipaddress.ip_network(item))
        except ValueError as exc:
            raise ValueError(f"bad network {item!r}: {exc}") from None
    return tuple(networks)


def _parse_time(text: str) -> _Time:
    words = text.split()
    if len(words) < 3 or words[1] != "in" or len(words) % 2 == 0:
        raise ValueError(f"cannot read {text!r}: expected time in HH:MM-HH:MM [on DAYS] [tz ZONE]")
    options = dict(zip(words[3::2], words[4::2], strict=True))
    if len(options) != len(words[3:]) // 2 or not set(options) <= {"on", "tz"}:
        raise ValueError(f"cannot read {text!r}: after the window come 'on DAYS' and 'tz ZONE'")
    start, end = _parse_window(words[2])
    days = _parse_days(options["on"]) if "on" in options else None
    return _Time(start, end, days, _parse_zone(options.get("tz")))


def _parse_window(text: str) -> tuple[int, int]:
    match = _WINDOW.fullmatch(text)
    if match is None:
        raise ValueError(f"bad time window {text!r}: expected HH:MM-HH:MM")
    start_h, start_m, end_h, end_m = (int(group) for group in match.groups())
    start, end = start_h * 60 + start_m, end_h * 60 + end_m
    if start_h > 23 or start_m > 59 or end_m > 59 or end > _DAY_MINUTES:
        raise ValueError(f"bad time window {text!r}: times run from 00:00 to 24:00")
    if start == end:
        raise ValueError(f"bad time window {text!r}: it starts where it ends")
    return start, end


def _parse_days(text: str) -> frozenset[int]:
    days: set[int] = set()
    for item in text.split("|"):
        first, dash, last = item.partition("-")
        start = _day(first)
        stop = _day(last) if dash else start
        days.update((start + offset) % 7 for offset in range((stop - start) % 7 + 1))
    return frozenset(days)


def _day(name: str) -> int:
    try:
        return _DAYS.index(name.lower())
    except ValueError:
        raise ValueError(f"unknown day {name!r}: use Mon, Tue, Wed, Thu, Fri, Sat, Sun") from None


def _parse_zone(name: str | None) -> tzinfo:
    if name is None:
        return UTC
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError, OSError):  # not found, not a zone file, not a key
        raise ValueError(f"unknown time zone {name!r}: expected e.g. Europe/Berlin") from None
