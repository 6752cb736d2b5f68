"""PolicyEnforcer: Casbin model + policy file; the only module that imports casbin.

The policy file is read here, not by Casbin's file adapter, so every rule keeps its file and line:
load errors name them, and a decision names the line that decided it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import casbin
from casbin.constant.constants import ALLOW_AND_DENY_EFFECT
from casbin.effect import Effector

from ext_authz.errors import PolicyLoadError
from ext_authz.policy import functions

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
    "ownerMatch": functions.owner_match,
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


def _read_rules(path: Path) -> list[PolicyRule]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyLoadError(f"{path}: cannot read policy file: {exc.strerror}") from exc
    rules = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if '"' in line:
            raise PolicyLoadError(f"{path}:{number}: quoted fields are not supported")
        ptype, *values = (field.strip() for field in line.split(","))
        rules.append(PolicyRule(str(path), number, ptype, tuple(values)))
    return rules


class PolicyEnforcer:
    """A Casbin enforcer built once from a model and a policy file, evaluated in memory."""

    def __init__(
        self, model_path: Path, policy_path: Path, validate: RuleValidator | None = None
    ) -> None:
        try:
            self._enforcer = casbin.Enforcer(str(model_path))
        except Exception as exc:  # casbin raises many types for a bad model; name the file
            raise PolicyLoadError(f"{model_path}: invalid Casbin model: {exc}") from exc
        for name, function in MATCHER_FUNCTIONS.items():
            self._enforcer.add_function(name, function)
        self.rules = tuple(_read_rules(policy_path))
        self._locations: dict[tuple[str, ...], str] = {}
        for rule in self._load_order():
            self._add(rule, model_path, validate)
        log.info("policy loaded: %s rules from %s", len(self.rules), policy_path)

    def _load_order(self) -> tuple[PolicyRule, ...]:
        """Deny rules first where the model is allow-and-deny (see _DenyFirstEffector)."""
        model = self._enforcer.model.model
        tokens = model["p"]["p"].tokens if "p" in model.get("p", {}) else []
        if model["e"]["e"].value != ALLOW_AND_DENY_EFFECT or "p_eft" not in tokens:
            return self.rules
        self._enforcer.set_effector(_DenyFirstEffector())
        eft = tokens.index("p_eft")

        def is_allow(rule: PolicyRule) -> bool:
            return not (rule.ptype == "p" and rule.values[eft : eft + 1] == ("deny",))

        return tuple(sorted(self.rules, key=is_allow))

    def _add(self, rule: PolicyRule, model_path: Path, validate: RuleValidator | None) -> None:
        section = rule.ptype[:1]
        assertion = self._enforcer.model.model.get(section, {}).get(rule.ptype)
        if section not in ("p", "g") or assertion is None:
            raise PolicyLoadError(f"{rule.location}: {model_path} defines no {rule.ptype!r}")
        if section == "g":
            expected = assertion.value.count("_")  # "_, _" for a plain role link
            if len(rule.values) != expected:
                raise PolicyLoadError(f"{rule.location}: expected {expected} fields")
            self._enforcer.add_named_grouping_policy(rule.ptype, list(rule.values))
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
        self._enforcer.add_named_policy(rule.ptype, list(rule.values))
        self._locations[rule.values] = rule.location

    def enforce(self, *rvals: object) -> bool:
        return bool(self._enforcer.enforce(*rvals))

    def enforce_ex(self, *rvals: object) -> tuple[bool, str | None]:
        """Decide, and name the policy line (``file:line``) that decided, if any."""
        allowed, explain = self._enforcer.enforce_ex(*rvals)
        return bool(allowed), self._locations.get(tuple(explain)) if explain else None

    def expand_roles(self, names: Iterable[str]) -> frozenset[str]:
        """The names plus every role they inherit through ``g`` rules."""
        expanded = set(names)
        for name in list(expanded):
            expanded.update(self._enforcer.get_implicit_roles_for_user(name))
        return frozenset(expanded)
