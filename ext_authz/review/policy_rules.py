"""Review rules for a Casbin model and policy in the shipped model's shape.

The pair is loaded as `serve` loads it (a file it refuses raises PolicyLoadError). Rules read the
``p`` columns principal, method, path, query, cond and eft (policies/README.md) and the ``g`` role
links; a model without principal, method and path columns gets the default-deny check only.

Name-based judgements use the constants below: a path is public when its first segment is in
PUBLIC_SEGMENTS, an admin path when it is in ADMIN_SEGMENTS, and a role (or an OAuth ``scope:``)
is admin-like when its name matches ADMIN_ROLE. ``user:`` principals name one caller and are never
judged by name.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ext_authz.errors import PolicyLoadError
from ext_authz.policy.conditions import Condition, ContextNeeds, parse_condition
from ext_authz.policy.enforcer import PolicyEnforcer, PolicyRule
from ext_authz.policy.engine import validate_rule
from ext_authz.policy.functions import parse_query_condition
from ext_authz.review.findings import Finding, Location, Severity

__all__ = [
    "ADMIN_ROLE",
    "ADMIN_SEGMENTS",
    "PUBLIC_SEGMENTS",
    "SAFE_METHODS",
    "review_policy",
]

# First path segments anonymous callers may read: static content, health probes, well-known
# documents; "" is the landing page `/` itself.
PUBLIC_SEGMENTS = frozenset(
    {
        "",
        "public",
        "static",
        "assets",
        "healthz",
        "health",
        "livez",
        "readyz",
        "ping",
        ".well-known",
        "favicon.ico",
        "robots.txt",
    }
)
SAFE_METHODS = frozenset({"GET", "HEAD"})
# First path segments of administrative and internal endpoints.
ADMIN_SEGMENTS = frozenset({"admin", "internal", "actuator", "debug"})
# Role names meant to hold administrative access: *admin* (sysadmin, tenant-admin...), root,
# superuser, and break-glass (emergency full access by design).
ADMIN_ROLE = re.compile(r"admin|^root$|^superuser$|break[-_]?glass", re.IGNORECASE)

_ANONYMOUS = ("everyone", "anonymous")  # what a caller without credentials holds
_BUILT_IN = frozenset({*_ANONYMOUS, "authenticated"})
_PREFIXES = ("user:", "role:", "scope:")  # what tokens, keys and certificates give
_GROUPS = ("role:", "scope:")  # principals many callers may hold, judged by name
_WILDCARD_SEGMENTS = frozenset({"*", "**"})


@dataclass(frozen=True, slots=True)
class _Grant:
    """A ``p`` rule read in the shipped model's terms."""

    rule: PolicyRule
    principal: str
    methods: frozenset[str] | None  # None: any method
    path: str
    segments: tuple[str, ...]
    query: frozenset[object]  # terms, all of which must hold
    cond: Condition
    allow: bool

    @property
    def location(self) -> Location:
        return Location(self.rule.source, "", self.rule.line)

    @property
    def text(self) -> str:
        return ", ".join(self.rule.values)


def review_policy(model: Path, policy: Path) -> list[Finding]:
    """Findings for a Casbin model and policy; raises PolicyLoadError for files serve refuses."""
    columns: list[Sequence[str]] = []

    def validate(names: Sequence[str], values: Sequence[str]) -> None:
        validate_rule(names, values)
        columns[:] = [names]

    enforcer = PolicyEnforcer(model, policy, validate=validate)
    findings = list(_default_deny(enforcer, model))
    names = columns[0] if columns else ()  # () when there is no p rule
    if names and not {"principal", "method", "path"} <= set(names):
        findings.append(
            Finding(
                "policy.not_reviewed",
                Severity.INFO,
                "policy rules not reviewed: not the shipped model's columns",
                Location(str(model), "policy_definition.p"),
                "The rules are read as principal, method, path, query, cond, eft; this model's"
                f" p is {', '.join(names)}.",
                "Review these rules by hand, or use the shipped model (policies/model.conf).",
            )
        )
        return findings
    grants = [_grant(names, rule) for rule in enforcer.rules if rule.ptype == "p"]
    links = [rule for rule in enforcer.rules if rule.ptype == "g"]
    review = _Review(enforcer, grants, links)
    findings += review.anonymous_and_wildcards()
    findings += review.admin_paths()
    findings += review.shadowed()
    findings += review.principals()
    return findings


def _grant(columns: Sequence[str], rule: PolicyRule) -> _Grant:
    fields = dict(zip(columns, rule.values, strict=True))
    methods = fields["method"]
    return _Grant(
        rule=rule,
        principal=fields["principal"],
        methods=None if methods == "*" else frozenset(methods.split("|")),
        path=fields["path"],
        segments=tuple(fields["path"].split("/")[1:]),
        query=frozenset(parse_query_condition(fields.get("query", "*"))),
        cond=parse_condition(fields.get("cond", "*")),
        allow=fields.get("eft", "allow") == "allow",
    )


def _default_deny(enforcer: PolicyEnforcer, model: Path) -> Iterator[Finding]:
    """A caller holding no principal matches no rule of the shipped model: its request gets the
    model's answer for "no rule matched", which must be a denial."""
    context = ContextNeeds().context(claims={}, headers={}, host="", source="")
    try:
        allowed = enforcer.enforce("", frozenset(), "GET", "/", (), context)
    except Exception as exc:  # whatever Casbin raises: name the model file, as serve does
        raise PolicyLoadError(
            f"{model}: the model must take r = sub, principals, method, path, query, ctx: {exc}"
        ) from exc
    if allowed:
        yield Finding(
            "policy.no_default_deny",
            Severity.CRITICAL,
            "a request no rule matches is allowed",
            Location(str(model), "policy_effect.e", _effect_line(model)),
            "A caller holding no principal at all was allowed, so the model lets through what"
            " no rule grants: every path, method and caller nobody wrote a rule for, new"
            " endpoints included, is open to anyone.",
            "Use e = some(where (p.eft == allow)) && !some(where (p.eft == deny)), as the"
            " shipped model does, and grant access with allow rules.",
        )


def _effect_line(model: Path) -> int | None:
    section = ""
    for number, raw in enumerate(model.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if line.startswith("["):
            section = line
        elif section == "[policy_effect]" and line.partition("=")[0].strip() == "e":
            return number
    return None


def _is_wildcard(segment: str) -> bool:
    return segment in _WILDCARD_SEGMENTS or (segment.startswith("{") and segment.endswith("}"))


def _segment_covers(broad: str, narrow: str) -> bool:
    if narrow == "**":
        return False
    if _is_wildcard(broad):
        return narrow != ""  # a wildcard segment is never empty
    return broad == narrow


def _path_covers(broad: Sequence[str], narrow: Sequence[str]) -> bool:
    """Whether every path ``narrow`` matches, ``broad`` matches too (patterns as segments)."""
    if broad[-1] == "**":
        fixed = broad[:-1]  # the rest matches any segments, ``**`` included
        if len(narrow) < len(fixed):
            return False
    elif len(narrow) != len(broad):
        return False
    else:
        fixed = broad
    return all(map(_segment_covers, fixed, narrow))


def _admin_role(principal: str) -> bool:
    return principal.startswith(_GROUPS) and bool(ADMIN_ROLE.search(principal.partition(":")[2]))


def _non_admin(principal: str) -> bool:
    """Principals an admin path should not be granted to: roles (and OAuth scopes) not named as
    admin ones, and every authenticated caller."""
    return principal == "authenticated" or (
        principal.startswith(_GROUPS) and not _admin_role(principal)
    )


def _methods(grant: _Grant) -> str:
    return "any method" if grant.methods is None else "|".join(sorted(grant.methods))


class _Review:
    def __init__(
        self, enforcer: PolicyEnforcer, grants: list[_Grant], links: list[PolicyRule]
    ) -> None:
        self._expand = enforcer.expand_roles
        self._grants = grants
        self._allows = [grant for grant in grants if grant.allow]
        self._links = links
        self._anonymous = enforcer.expand_roles(_ANONYMOUS)  # held without any credential

    def _inherits(self, principal: str) -> frozenset[str]:
        return self._expand([principal])

    def anonymous_and_wildcards(self) -> Iterator[Finding]:
        for grant in self._allows:
            if grant.principal in self._anonymous:
                yield from self._anonymous_grant(grant)
                continue
            severity = Severity.LOW if _admin_role(grant.principal) else Severity.MEDIUM
            if grant.methods is None:
                yield Finding(
                    "policy.wildcard_method",
                    severity,
                    f"{grant.principal} may use any method on {grant.path}",
                    grant.location,
                    "A wildcard method also grants DELETE, PATCH and whatever methods the upstream"
                    " adds later, beyond what the rule's author had in mind.",
                    "List the methods the principal needs (e.g. GET|POST).",
                )
            if all(map(_is_wildcard, grant.segments)):
                yield Finding(
                    "policy.wildcard_path",
                    severity,
                    f"{grant.principal} is granted every path ({grant.path})",
                    grant.location,
                    "A wildcard path grants every endpoint the upstream has or will have,"
                    " admin and internal ones included.",
                    "Grant the path prefixes the principal needs (e.g. /api/books/**).",
                )

    def _anonymous_grant(self, grant: _Grant) -> Iterator[Finding]:
        who = grant.principal
        if who not in _ANONYMOUS:
            who += " (held by anonymous callers through g rules)"
        if (
            grant.principal == "everyone"
            and grant.methods is None
            and _path_covers(grant.segments, ("**",))
            and not grant.query
            and not grant.cond.terms
        ):
            yield Finding(
                "policy.no_default_deny",
                Severity.CRITICAL,
                "everyone is allowed everything",
                grant.location,
                f"{grant.text} allows every request, so only deny rules protect anything: any"
                " path nobody wrote a deny rule for, including new endpoints, is open to anyone.",
                "Remove this rule and grant access with specific allow rules.",
            )
            return
        safe = grant.methods is not None and grant.methods <= SAFE_METHODS
        if safe and grant.segments[0] in PUBLIC_SEGMENTS:
            return
        yield Finding(
            "policy.anonymous_access",
            Severity.HIGH,
            f"anonymous callers may use {_methods(grant)} on {grant.path}",
            grant.location,
            f"The rule grants this to {who}, so no credential is needed: anyone who can reach"
            + (" the service reads what the path holds" if safe else " the service changes data")
            + ", and nothing ties the request to a caller.",
            "Grant it to authenticated callers or a role; keep anonymous rules to GET/HEAD on"
            f" public paths (first segment one of: {', '.join(sorted(PUBLIC_SEGMENTS - {''}))}).",
        )

    def admin_paths(self) -> Iterator[Finding]:
        """Admin paths granted to a non-admin principal, directly or by inheriting an admin
        role."""
        admin_grants: dict[str, _Grant] = {}  # admin role -> an admin path granted to it
        for grant in self._allows:
            if grant.segments[0] not in ADMIN_SEGMENTS:
                continue
            if _admin_role(grant.principal):
                admin_grants.setdefault(grant.principal, grant)
            elif _non_admin(grant.principal) and grant.principal not in self._anonymous:
                yield self._admin_finding(grant.principal, grant, grant.location)
        for link in self._links:
            child, parent = link.values[:2]
            if not (_admin_role(parent) and _non_admin(child)):
                continue
            inherited = sorted(set(admin_grants) & self._inherits(parent))
            if inherited:
                location = Location(link.source, "", link.line)
                grant = admin_grants[inherited[0]]
                yield self._admin_finding(f"{child} (inheriting {parent})", grant, location)

    def _admin_finding(self, who: str, grant: _Grant, location: Location) -> Finding:
        return Finding(
            "policy.admin_path",
            Severity.HIGH,
            f"admin path {grant.path} reachable by {who}",
            location,
            f"{grant.rule.location} grants {_methods(grant)} on {grant.path} to {grant.principal}:"
            " administrative endpoints are reachable by a principal that is not an admin role,"
            " so a compromised ordinary account reaches them too.",
            "Grant admin paths only to admin roles (a name matching"
            f" {ADMIN_ROLE.pattern!r}), or suppress this finding with the reason the grant is"
            " deliberate.",
        )

    def _covers(self, broad: _Grant, narrow: _Grant) -> bool:
        """Whether every request ``narrow`` allows, ``broad`` allows too (both allow rules)."""
        principal = (
            broad.principal in self._inherits(narrow.principal)
            or broad.principal == "everyone"
            or (
                broad.principal == "authenticated"
                and narrow.principal.startswith(_PREFIXES)
                and narrow.principal not in self._anonymous
            )
        )
        return (
            principal
            and (
                broad.methods is None
                or (narrow.methods is not None and narrow.methods <= broad.methods)
            )
            and _path_covers(broad.segments, narrow.segments)
            and broad.query <= narrow.query
            and set(broad.cond.terms) <= set(narrow.cond.terms)
            and (not broad.cond.path_params or broad.path == narrow.path)
        )

    def shadowed(self) -> Iterator[Finding]:
        """Allow rules that allow nothing another allow rule does not; of two equivalent rules,
        the later one."""
        for position, narrow in enumerate(self._allows):
            broader = next(
                (
                    broad
                    for index, broad in enumerate(self._allows)
                    if index != position
                    and self._covers(broad, narrow)
                    and (index < position or not self._covers(narrow, broad))
                ),
                None,
            )
            if broader is not None:
                yield Finding(
                    "policy.shadowed_rule",
                    Severity.LOW,
                    "rule allows nothing another rule does not",
                    narrow.location,
                    f"{broader.rule.location} ({broader.text}) already allows every request this"
                    " rule does: it has no effect, and a reader who tightens this one believes"
                    " access is narrower than it is.",
                    f"Remove this rule, or narrow {broader.rule.location}.",
                )

    def principals(self) -> Iterator[Finding]:
        """Principals no caller can hold, and roles that are assigned but grant nothing."""
        named = {name for link in self._links for name in link.values[:2]}
        reachable = self._expand(_BUILT_IN | {n for n in named if n.startswith(_PREFIXES)})
        for grant in self._grants:
            if not _holdable(grant.principal, reachable):
                yield _unreachable(grant.principal, grant.location, "this rule never applies")
        for link in self._links:
            if not _holdable(link.values[0], reachable):
                where = Location(link.source, "", link.line)
                yield _unreachable(link.values[0], where, "this role link never applies")
        granting = {grant.principal for grant in self._grants}
        reported: set[str] = set()
        for link in self._links:
            parent = link.values[1]
            if parent in reported or self._inherits(parent) & granting:
                continue
            reported.add(parent)
            yield Finding(
                "policy.role_grants_nothing",
                Severity.LOW,
                f"{parent} is inherited but grants nothing",
                Location(link.source, "", link.line),
                f"No rule names {parent} or anything it inherits: inheriting or assigning it has"
                " no effect, which usually means a misspelt name or rules that were removed.",
                "Add the rules the role should grant, fix the name, or remove the role.",
            )


def _holdable(principal: str, reachable: frozenset[str]) -> bool:
    return principal.startswith(_PREFIXES) or principal in reachable


def _unreachable(principal: str, location: Location, effect: str) -> Finding:
    return Finding(
        "policy.unknown_principal",
        Severity.LOW,
        f"no caller can hold {principal!r}",
        location,
        f"Principals are everyone, anonymous, authenticated, user:<sub>, role:<role> and"
        f" scope:<scope> (and the"
        f" roles these inherit); {principal!r} is none of them, so {effect}. `*` is not a"
        " wildcard here.",
        "Write the principal with its prefix (role:admin, user:alice), or everyone for all.",
    )
