"""Candidate rules for a request, so a decision does not evaluate every policy line.

The matcher's top-level ``&&`` conjuncts are read (with Python's ``ast``, after Casbin's own
``&&``/``||``/``!`` rewriting). Conjuncts of a few known shapes restrict which rules can match:

    r.x == p.y                      the rule's y equals the request's x
    g(r.x, p.y[, r.d])              the rule's y is x or a role x inherits (in domain d)
    hasPrincipal(r.x, p.y)          the rule's y is one of the request's principals
    methodMatch(r.x, p.y)           the rule's y is "*" or lists the request's method
    keyMatch*/pathMatch(r.x, p.y)   the rule's first path segment is the request's, or a pattern

Rules are indexed by the tuple of those keys. A lookup returns a SUPERSET of the rules whose
matcher can be true, in policy order; the enforcer still evaluates the full matcher on each
candidate, so decisions are exactly Casbin's. Anything not understood is simply not used to
narrow, and a matcher with no usable conjunct (or with ``||`` at the top, or ``eval()``) is not
indexed at all. Pure: no casbin import.
"""

from __future__ import annotations

import ast
import itertools
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass

__all__ = ["CandidateIndex", "IndexPlan", "plan_index", "PURE_FUNCTIONS"]

# Stands for "any value": rules whose key is a pattern, looked up by every request.
WILDCARD = object()
# A first path segment made only of these is a literal in every supported path function
# (no regex metacharacters, no ':' '{' '*' parameters).
_LITERAL_SEGMENT = re.compile(r"[A-Za-z0-9_~-]+")
_SEGMENT_FUNCTIONS = frozenset({"keyMatch", "keyMatch2", "keyMatch5", "pathMatch"})
# keyMatch2/keyMatch5 patterns are regular expressions once their parameters are rewritten: a
# "|" anywhere, or a "?" or "{" right after the first "/", could let them match another first
# segment ("/api/x|/admin", "/api/?x" matches "/apix"). Such patterns are not indexed.
_REGEX_FUNCTIONS = frozenset({"keyMatch2", "keyMatch5"})
# Functions whose result depends only on their arguments: decisions using only these may be
# cached. (A time-window function, say, must not be.)
PURE_FUNCTIONS = frozenset(
    {
        "keyMatch",
        "keyMatch2",
        "keyMatch3",
        "keyMatch4",
        "keyMatch5",
        "regexMatch",
        "globMatch",
        "ipMatch",
        "pathMatch",
        "methodMatch",
        "queryMatch",
        "condMatch",
        "hasPrincipal",
    }
)

RoleExpander = Callable[[str, object, object], Iterable[str]]  # (g name, name, domain) -> roles


@dataclass(frozen=True, slots=True)
class Component:
    kind: str  # "eq", "role", "member", "segment", "method"
    p_index: int
    r_index: int
    role_function: str = ""
    domain_r_index: int = -1
    function: str = ""  # the matcher function of a segment component


@dataclass(frozen=True, slots=True)
class IndexPlan:
    components: tuple[Component, ...]
    functions: frozenset[str]  # every function the matcher calls
    # (function, p index) for every call fn(r.x, p.y): the rule values it reads as patterns.
    pattern_calls: tuple[tuple[str, int], ...] = ()


def _to_python(matcher: str) -> str:
    # The same rewriting Casbin applies before evaluating a matcher.
    return re.sub(r"!(?!=)", "not ", matcher.replace("&&", " and ").replace("||", " or "))


def _token(node: ast.expr, prefix: str, tokens: Sequence[str]) -> int:
    if isinstance(node, ast.Name) and node.id.startswith(prefix) and node.id in tokens:
        return tokens.index(node.id)
    return -1


def _component(
    node: ast.expr,
    r_tokens: Sequence[str],
    p_tokens: Sequence[str],
    role_functions: Collection[str],
) -> Component | None:
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.Eq):
        left, right = node.left, node.comparators[0]
        for a, b in ((left, right), (right, left)):
            r_index, p_index = _token(a, "r_", r_tokens), _token(b, "p_", p_tokens)
            if r_index >= 0 and p_index >= 0:
                return Component("eq", p_index, r_index)
        return None
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)) or node.keywords:
        return None
    name, args = node.func.id, node.args
    if len(args) < 2:
        return None
    r_index, p_index = _token(args[0], "r_", r_tokens), _token(args[1], "p_", p_tokens)
    if r_index < 0 or p_index < 0:
        return None
    if name in role_functions and len(args) in (2, 3):
        domain = _token(args[2], "r_", r_tokens) if len(args) == 3 else -1
        if len(args) == 3 and domain < 0:
            return None  # a domain taken from the rule: roles cannot be expanded up front
        return Component("role", p_index, r_index, name, domain)
    if len(args) != 2:
        return None
    kinds = {"hasPrincipal": "member", "methodMatch": "method"}
    if name in kinds:
        return Component(kinds[name], p_index, r_index)
    if name in _SEGMENT_FUNCTIONS:
        return Component("segment", p_index, r_index, function=name)
    return None


def plan_index(
    matcher: str, r_tokens: Sequence[str], p_tokens: Sequence[str], role_functions: Collection[str]
) -> IndexPlan | str:
    """An IndexPlan, or the reason the matcher cannot be indexed (it is then fully scanned)."""
    if re.search(r"\beval\s*\(", matcher):
        return "the matcher uses eval()"
    if re.search(r"\br_\w+\s*\.", matcher):
        # r.sub.Age: the rule can depend on (and raise on) attributes no index can see.
        return "the matcher reads attributes of request values"
    try:
        tree = ast.parse(_to_python(matcher), mode="eval").body
    except SyntaxError as exc:
        return f"the matcher could not be parsed ({exc.msg})"
    calls = [
        (node.func.id, node.args)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    ]
    pattern_calls = tuple(
        sorted(
            {
                (name, _token(args[1], "p_", p_tokens))
                for name, args in calls
                if len(args) == 2 and _token(args[1], "p_", p_tokens) >= 0
            }
        )
    )
    conjuncts = (
        tree.values if isinstance(tree, ast.BoolOp) and isinstance(tree.op, ast.And) else [tree]
    )
    components = tuple(
        c for c in (_component(n, r_tokens, p_tokens, role_functions) for n in conjuncts) if c
    )
    if not components:
        return "no conjunct of the matcher narrows the rules (e.g. '||' at the top level)"
    return IndexPlan(components, frozenset(name for name, _ in calls), pattern_calls)


def _first_segment(value: str) -> str:
    return re.split(r"[/?]", value[1:], maxsplit=1)[0] if value.startswith("/") else ""


def _literal_first_segment(pattern: str, regex: bool) -> str | None:
    """The first path segment every match must have, or None when there is no such literal."""
    if not pattern.startswith("/"):
        return None
    segment, sep, rest = pattern[1:].partition("/")
    if not _LITERAL_SEGMENT.fullmatch(segment):
        return None
    if regex and ("|" in pattern or rest[:1] in ("?", "{")):
        return None
    # "/api" or "/api/...": only requests whose first segment is "api" can match.
    return segment


def _rule_keys(component: Component, value: str) -> tuple[object, ...]:
    if component.kind == "method":
        return (WILDCARD,) if value == "*" else tuple(value.split("|"))
    if component.kind == "segment":
        segment = _literal_first_segment(value, component.function in _REGEX_FUNCTIONS)
        return (WILDCARD,) if segment is None else (segment,)
    return (value,)


class CandidateIndex:
    """Rule positions by composite key; ``candidates`` narrows a request to a few of them."""

    def __init__(
        self, plan: IndexPlan, rules: Sequence[Sequence[str]], expand_roles: RoleExpander
    ) -> None:
        self._plan = plan
        self._expand_roles = expand_roles
        self._table: dict[tuple[object, ...], list[int]] = {}
        for position, rule in enumerate(rules):
            keys = [_rule_keys(c, rule[c.p_index]) for c in plan.components]
            for combination in itertools.product(*keys):
                self._table.setdefault(combination, []).append(position)

    def _request_keys(
        self, component: Component, rvals: Sequence[object]
    ) -> tuple[object, ...] | None:
        """The keys a request looks up for one component; None when it cannot narrow."""
        value = rvals[component.r_index]
        if component.kind == "eq":
            return (value,)
        if component.kind == "role":
            if not isinstance(value, str):
                return None
            domain = rvals[component.domain_r_index] if component.domain_r_index >= 0 else None
            return (value, *self._expand_roles(component.role_function, value, domain))
        if component.kind == "member":
            # A string would be a substring test, not membership: do not narrow on it.
            if isinstance(value, str) or not isinstance(value, Collection):
                return None
            return tuple(value)
        if component.kind == "method":
            return (value, WILDCARD)
        if not isinstance(value, str):
            return None
        # A regex "$" also matches before one trailing newline: "/books" matches "/books\n".
        return (_first_segment(value), _first_segment(value.removesuffix("\n")), WILDCARD)

    def candidates(self, rvals: Sequence[object]) -> list[int] | None:
        """Positions of every rule that could match, in policy order; None means all rules.

        A request value a component cannot narrow on (an int where a path is expected, a string
        where a collection is) makes the whole request a full scan: the matcher then fails, or
        not, exactly as it would in stock Casbin.
        """
        keys = []
        for component in self._plan.components:
            component_keys = self._request_keys(component, rvals)
            if component_keys is None:
                return None
            keys.append(component_keys)
        found: set[int] = set()
        for combination in itertools.product(*keys):
            try:
                found.update(self._table.get(combination, ()))
            except TypeError:  # an unhashable request value equals no (string) rule value
                continue
        return sorted(found)
