"""PolicyEnforcer: Casbin model + policy file; the only module that imports casbin.

The policy file is read here, not by Casbin's file adapter, so every rule keeps its file and line:
load errors name them, and a decision names the line that decided it.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import logging
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import casbin
from casbin.constant.constants import ALLOW_AND_DENY_EFFECT
from casbin.effect import Effector, effect_to_bool
from casbin.persist.adapter import Adapter
from casbin.util import (
    generate_g_function,
    ip_match,
    key_match2,
    key_match3,
    key_match4,
    key_match5,
    regex_match,
)

from ext_authz.errors import PolicyLoadError
from ext_authz.policy import functions
from ext_authz.policy.matcher_index import PURE_FUNCTIONS, CandidateIndex, IndexPlan, plan_index

__all__ = ["PolicyEnforcer", "PolicyRule", "RuleValidator"]

log = logging.getLogger(__name__)
# pycasbin logs every decision's request values at WARNING/INFO; they can hold secrets.
logging.getLogger("casbin").disabled = True
logging.getLogger("casbin.enforcer").disabled = True

# Registered on every enforcer so any model can use them in its matcher.
MATCHER_FUNCTIONS: dict[str, Callable[..., bool]] = {
    "pathMatch": functions.path_match,
    "methodMatch": functions.method_match,
    "queryMatch": functions.query_match,
    "condMatch": functions.cond_match,
    "hasPrincipal": functions.has_principal,
}


class _DenyFirstEffector(Effector):  # type: ignore[misc]
    """Allow-and-deny (a matching deny wins, else a matching allow) that stops at the deciding
    rule, so the decision can name it. Correct because every deny rule is loaded before any
    allow rule: the first allow reached means no deny matched. Stock pycasbin scans every rule
    and names none for an allow."""

    def intermediate_effect(self, effects: set[int]) -> int:
        if Effector.DENY in effects:
            return int(Effector.DENY)
        return int(Effector.ALLOW if Effector.ALLOW in effects else Effector.INDETERMINATE)

    def final_effect(self, effects: set[int]) -> int:
        allowed = Effector.ALLOW in effects and Effector.DENY not in effects
        return int(Effector.ALLOW if allowed else Effector.DENY)


@dataclass(frozen=True, slots=True)
class PolicyRule:
    """One line of a policy file: ``ptype`` is ``p``, ``g``... and ``values`` its fields."""

    source: str
    line: int
    ptype: str
    values: tuple[str, ...]

    @property
    def location(self) -> str:
        return f"{self.source}:{self.line}"


# Checks one rule's fields against the model's column names; raises ValueError when wrong.
RuleValidator = Callable[[Sequence[str], Sequence[str]], None]


def _split_fields(line: str) -> list[str]:
    """Split like Casbin's file adapter: commas inside () or [] do not separate fields."""
    fields, depth, current = [], 0, ""
    for char in line:
        if char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
        if char == "," and depth == 0:
            fields.append(current.strip())
            current = ""
        else:
            current += char
    fields.append(current.strip())
    return fields


def _read_rules(path: Path) -> list[PolicyRule]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyLoadError(f"{path}: cannot read policy file: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise PolicyLoadError(f"{path}: policy file is not UTF-8 text") from exc
    rules = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if '"' in line:
            raise PolicyLoadError(f"{path}:{number}: quoted fields are not supported")
        ptype, *values = _split_fields(line)
        rules.append(PolicyRule(str(path), number, ptype, tuple(values)))
    return rules


# Calls that read a rule value as a pattern, and fail on a bad one (the request side is a dummy).
_PATTERN_CHECKS: dict[str, Callable[[str], object]] = {
    "keyMatch2": lambda pattern: key_match2("/", pattern),
    "keyMatch3": lambda pattern: key_match3("/", pattern),
    "keyMatch4": lambda pattern: key_match4("/", pattern),
    "keyMatch5": lambda pattern: key_match5("/", pattern),
    "regexMatch": lambda pattern: regex_match("", pattern),
    "ipMatch": lambda pattern: ip_match("127.0.0.1", pattern),
    "pathMatch": lambda pattern: functions.path_match("/", pattern),
}
_IMMUTABLE_SCALARS = (
    str,
    int,
    float,
    bool,
    bytes,
    type(None),
    ipaddress.IPv4Address,
    ipaddress.IPv6Address,
)


def _immutable(value: object) -> bool:
    """True for values whose equality can never change: scalars, and tuples, frozensets and
    frozen dataclasses of them."""
    if isinstance(value, _IMMUTABLE_SCALARS):
        return True
    if isinstance(value, tuple | frozenset):
        return all(map(_immutable, value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        params = getattr(value, "__dataclass_params__", None)
        return bool(params and params.frozen) and all(
            _immutable(getattr(value, field.name)) for field in dataclasses.fields(value)
        )
    return False


class _RulesAdapter(Adapter):  # type: ignore[misc]
    """Hands Casbin rules we already read and checked; Casbin then sorts them and builds role
    links exactly as it does for its own file adapter."""

    def __init__(self, rules: Sequence[PolicyRule]) -> None:
        self._rules = rules

    def load_policy(self, model: Any) -> None:
        for rule in self._rules:
            model.model[rule.ptype[:1]][rule.ptype].policy.append(list(rule.values))


class PolicyEnforcer:
    """Casbin's decisions for a model and a policy file, without scanning every rule.

    Candidate rules come from an index over the matcher's conjuncts (see matcher_index.py); the
    matcher itself is then evaluated on each candidate, in policy order, with Casbin's evaluator
    and effect rules, so a decision is exactly stock Casbin's. A matcher the index cannot use is
    scanned in full (and the log says why). Decisions over pure matchers are cached per policy
    version: a reload builds a new enforcer, and with it a new cache.
    """

    def __init__(
        self,
        model_path: Path,
        policy_path: Path,
        validate: RuleValidator | None = None,
        cache_size: int = 10000,
    ) -> None:
        try:
            self._enforcer = casbin.Enforcer(str(model_path))
        except Exception as exc:  # casbin raises many types for a bad model; name the file
            raise PolicyLoadError(f"{model_path}: invalid Casbin model: {exc}") from exc
        for name, function in MATCHER_FUNCTIONS.items():
            self._enforcer.add_function(name, function)
        self.rules = tuple(_read_rules(policy_path))
        self._locations: dict[tuple[str, ...], str] = {}
        for rule in self.rules:
            self._check(rule, model_path, validate)
            self._locations.setdefault(rule.values, rule.location)
        self._enforcer.set_adapter(_RulesAdapter(self._load_order()))
        try:
            self._enforcer.load_policy()
        except Exception as exc:  # e.g. a role link casbin refuses
            raise PolicyLoadError(f"{policy_path}: {exc}") from exc
        self._prepare(str(model_path))
        self._decide: Callable[..., tuple[bool, int]] = self._decide_uncached
        if cache_size > 0 and self._cacheable:
            self._decide = functools.lru_cache(maxsize=cache_size)(self._decide_uncached)
        log.info("policy loaded: %s rules from %s", len(self.rules), policy_path)

    def _check(self, rule: PolicyRule, model_path: Path, validate: RuleValidator | None) -> None:
        section = rule.ptype[:1]
        assertion = self._enforcer.model.model.get(section, {}).get(rule.ptype)
        if section not in ("p", "g") or assertion is None:
            raise PolicyLoadError(f"{rule.location}: {model_path} defines no {rule.ptype!r}")
        if section == "g":
            expected = assertion.value.count("_")  # "_, _" for a plain role link
            if len(rule.values) != expected:
                raise PolicyLoadError(f"{rule.location}: expected {expected} fields")
            return
        tokens = [token.split("_", 1)[1] for token in assertion.tokens]
        if len(rule.values) != len(tokens):
            raise PolicyLoadError(
                f"{rule.location}: expected {len(tokens)} fields ({', '.join(tokens)}),"
                f" got {len(rule.values)}"
            )
        if validate is not None:
            try:
                validate(tokens, rule.values)
            except ValueError as exc:
                raise PolicyLoadError(f"{rule.location}: {exc}") from exc

    def _load_order(self) -> tuple[PolicyRule, ...]:
        """Deny rules first where the model is allow-and-deny (see _DenyFirstEffector)."""
        model = self._enforcer.model.model
        tokens = model["p"]["p"].tokens if "p" in model.get("p", {}) else []
        if (
            model["e"]["e"].value != ALLOW_AND_DENY_EFFECT
            or "p_eft" not in tokens
            or "p_priority" in tokens  # Casbin would re-sort by priority
        ):
            return self.rules
        self._enforcer.set_effector(_DenyFirstEffector())
        eft = tokens.index("p_eft")

        def is_allow(rule: PolicyRule) -> bool:
            return not (rule.ptype == "p" and rule.values[eft : eft + 1] == ("deny",))

        return tuple(sorted(self.rules, key=is_allow))

    def _prepare(self, model_name: str) -> None:
        model = self._enforcer.model.model
        self._matcher = model["m"]["m"].value
        self._r_tokens = model["r"]["r"].tokens
        p_tokens = model["p"]["p"].tokens
        self._policy = model["p"]["p"].policy
        self._p_parameters = [dict(zip(p_tokens, values, strict=False)) for values in self._policy]
        self._eft_key = "p_eft" if "p_eft" in p_tokens else None
        self._functions = dict(self._enforcer.fm.get_functions())
        for name, assertion in model.get("g", {}).items():
            self._functions[name] = generate_g_function(assertion.rm)
        self._local = threading.local()  # casbin's evaluator keeps per-call state
        plan = plan_index(self._matcher, self._r_tokens, p_tokens, set(model.get("g", {})))
        unsupported = self._why_full_scan(plan)
        self._index: CandidateIndex | None = None
        self._cacheable = False
        if unsupported:
            log.info("policy %s: every rule is evaluated per decision: %s", model_name, unsupported)
            return
        assert isinstance(plan, IndexPlan)  # noqa: S101 - _why_full_scan returned None
        self._check_patterns(plan)
        self._index = CandidateIndex(plan, self._policy, self._roles)
        roles = set(model.get("g", {}))
        self._cacheable = plan.functions <= PURE_FUNCTIONS | roles

    def _check_patterns(self, plan: IndexPlan) -> None:
        """A rule value that a matcher function cannot read as a pattern (a bad regex or CIDR)
        is refused at load: stock Casbin raises on it per request, and an index that skips the
        rule would answer instead."""
        for name, p_index in plan.pattern_calls:
            check = _PATTERN_CHECKS.get(name)
            if check is None:
                continue
            for values in self._policy:
                try:
                    check(values[p_index])
                except (re.error, ValueError) as exc:
                    location = self._locations.get(tuple(values), "policy")
                    raise PolicyLoadError(
                        f"{location}: {values[p_index]!r} is not a valid {name} pattern ({exc})"
                    ) from exc

    def _why_full_scan(self, plan: IndexPlan | str) -> str | None:
        if isinstance(plan, str):
            return plan
        if self._enforcer.cond_rm_map:
            return "conditional role links"
        if not self._policy:
            return "the policy has no rules"
        return None

    def _roles(self, role_function: str, name: object, domain: object) -> list[str]:
        """Every role ``name`` reaches through ``role_function`` links (breadth first)."""
        manager = self._enforcer.model.model["g"][role_function].rm
        args = () if domain is None else (str(domain),)
        seen: list[str] = []
        queue = [str(name)]
        while queue:
            for role in manager.get_roles(queue.pop(), *args):
                if role not in seen:
                    seen.append(role)
                    queue.append(role)
        return seen

    def _expression(self) -> Any:
        expression = getattr(self._local, "expression", None)
        if expression is None:
            expression = casbin.Enforcer._get_expression(self._matcher, self._functions)
            self._local.expression = expression
        return expression

    def _decide_uncached(self, *rvals: object) -> tuple[bool, int]:
        """Casbin's enforce loop over the candidate rules; returns (allowed, deciding rule)."""
        if len(rvals) != len(self._r_tokens):
            raise RuntimeError("invalid request size")
        if self._index is None:
            allowed, explain = self._enforcer.enforce_ex(*rvals)
            return bool(allowed), self._position(explain)
        candidates = self._index.candidates(rvals)
        positions = range(len(self._policy)) if candidates is None else candidates
        expression = self._expression()
        r_parameters = dict(zip(self._r_tokens, rvals, strict=True))
        effects: set[int] = set()
        effector = self._enforcer.eft
        deciding = -1
        for position in positions:
            result = expression.eval({**r_parameters, **self._p_parameters[position]})
            if isinstance(result, bool):
                matched = result
            elif isinstance(result, float):
                matched = result != 0
            else:
                raise RuntimeError("matcher result should be bool, int or float")
            if not matched:
                effects.add(Effector.INDETERMINATE)
                continue
            effects.add(self._effect(self._p_parameters[position]))
            if effector.intermediate_effect(effects) != Effector.INDETERMINATE:
                deciding = position
                break
        return bool(effect_to_bool(effector.final_effect(effects))), deciding

    def _effect(self, parameters: dict[str, str]) -> int:
        if self._eft_key is None or self._eft_key not in parameters:
            return int(Effector.ALLOW)
        eft = parameters[self._eft_key]
        if eft == "allow":
            return int(Effector.ALLOW)
        return int(Effector.DENY if eft == "deny" else Effector.INDETERMINATE)

    def _position(self, explain: Sequence[str]) -> int:
        if not explain:
            return -1
        try:
            return int(self._policy.index(list(explain)))
        except ValueError:
            return -1

    @property
    def cacheable(self) -> bool:
        """Whether the matcher calls only pure functions: equal requests, equal decisions."""
        return self._cacheable

    def enforce(self, *rvals: object) -> bool:
        return self.enforce_ex(*rvals)[0]

    def enforce_ex(self, *rvals: object) -> tuple[bool, str | None]:
        """Decide, and name the policy line (``file:line``) that decided, if any."""
        # Only immutable request values are cache keys: an object's attributes could change.
        decide = self._decide if all(map(_immutable, rvals)) else self._decide_uncached
        allowed, position = decide(*rvals)
        if position < 0:
            return allowed, None
        return allowed, self._locations.get(tuple(self._policy[position]))

    def expand_roles(self, names: Iterable[str]) -> frozenset[str]:
        """The names plus every role they inherit through ``g`` rules."""
        expanded = set(names)
        for name in list(expanded):
            expanded.update(self._enforcer.get_implicit_roles_for_user(name))
        return frozenset(expanded)
