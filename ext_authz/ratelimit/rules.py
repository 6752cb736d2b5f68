"""Which limit applies to a request: rules compiled from the settings, in precedence order.

Exactly one rule applies to a request: the most specific of those that apply, by

1. a rule that names the caller (``subjects``, ``api_keys`` or ``addresses``) before one for
   every caller;
2. a route class (``routes`` or ``methods``) before a rule for every route;
3. a bucket per API key before one per subject before one per address;
4. earlier in the file before later.

Who a rule applies to: ``per: address`` to every caller (the anonymous ones included, and
callers whose credentials were refused); ``per: subject`` to authenticated callers only;
``per: api_key`` to callers authenticated by an API key only. So anonymous callers are limited
by address, and a request no rule applies to is not limited.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from ext_authz.models import AuthRequest, Identity, Quota
from ext_authz.policy.functions import compile_path_pattern
from ext_authz.ratelimit.bucket import interval_us
from ext_authz.settings import RateLimitRuleSettings

__all__ = ["LimitRule", "Rules", "compile_rules", "select"]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_KEY_RANK = {"api_key": 2, "subject": 1, "address": 0}
_API_KEY_ISSUER = "api-key:"  # identity/apikey.py names the key id in the issuer
_ADDRESSES_REMEMBERED = 4096  # per rule with ``addresses``: parsing one costs microseconds
_QUOTAS_REMEMBERED = 1024  # per rule: a bucket has few states (remaining, seconds to full)


@dataclass(frozen=True, slots=True)
class LimitRule:
    """A rule ready to match: the settings plus what matching reads on every Check, computed
    once (sets, compiled route patterns, the key prefix, the RateLimit-Policy window)."""

    settings: RateLimitRuleSettings
    interval_us: int
    networks: tuple[_Network, ...]
    name: str
    per: str
    burst: int
    window: int  # the RateLimit-Policy ``w`` (see compile)
    prefix: str  # of every bucket key: ``limit:<name>:``
    restricted: bool  # names callers or a route class: the checks below apply
    subjects: frozenset[str]
    api_keys: frozenset[str]
    methods: frozenset[str]
    routes: tuple[re.Pattern[str], ...]
    # address -> within ``networks``: a pure function of the address, remembered (bounded)
    in_networks: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)
    # (remaining, reset) -> the Quota: immutable, so one object serves every Check alike
    quotas: dict[tuple[int, int], Quota] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def compile(cls, rule: RateLimitRuleSettings) -> LimitRule:
        # The draft's policy is `q` units per `w` seconds and `r` counts down from `q`. For a
        # token bucket that is the burst over the time an empty bucket takes to fill (rounded
        # up, so the advertised rate is never above the real one); `rate` per `period` would
        # let `r` exceed `q`.
        window = math.ceil(rule.burst * rule.period / rule.rate)
        return cls(
            rule,
            interval_us(rule.rate, rule.period),
            tuple(ipaddress.ip_network(a, strict=False) for a in rule.addresses),
            rule.name,
            rule.per,
            rule.burst,
            window,
            f"limit:{rule.name}:",
            bool(rule.subjects or rule.api_keys or rule.addresses or rule.methods or rule.routes),
            frozenset(rule.subjects),
            frozenset(rule.api_keys),
            frozenset(rule.methods),
            tuple(compile_path_pattern(route) for route in rule.routes),
        )

    def may_apply(self, authenticated: bool, has_api_key: bool) -> bool:
        """False when ``key`` is None for every caller of this kind (signed in or not, with an
        API key or not)."""
        if (self.per == "subject" or self.subjects) and not authenticated:
            return False
        return not ((self.per == "api_key" or self.api_keys) and not has_api_key)

    def quota(self, remaining: int, reset_s: int) -> Quota:
        """The Quota the RateLimit fields tell for this rule's bucket in that state."""
        quota = self.quotas.get((remaining, reset_s))
        if quota is None:
            quota = Quota(self.name, self.burst, self.window, remaining, reset_s)
            if len(self.quotas) >= _QUOTAS_REMEMBERED:
                self.quotas.clear()  # start again, stay bounded
            self.quotas[(remaining, reset_s)] = quota
        return quota

    def key(self, identity: Identity, request: AuthRequest, api_key: str | None) -> str | None:
        """This rule's bucket key for the request, or None when the rule does not apply;
        ``api_key`` is ``_api_key_id(identity)`` (select works it out once for every rule)."""
        per = self.per
        if per == "subject":
            if not identity.authenticated:
                return None
            value = identity.subject
        elif per == "api_key":
            if api_key is None:
                return None
            value = api_key
        else:
            value = request.source_address
        if self.restricted and not self._selects(identity, request, api_key):
            return None
        return self.prefix + value

    def _selects(self, identity: Identity, request: AuthRequest, api_key: str | None) -> bool:
        if self.subjects and not (identity.authenticated and identity.subject in self.subjects):
            return False
        if self.api_keys and api_key not in self.api_keys:
            return False
        if self.networks and not self._in_networks(request.source_address):
            return False
        if self.methods and request.method not in self.methods:
            return False
        return not self.routes or any(route.fullmatch(request.path) for route in self.routes)

    def _in_networks(self, address: str) -> bool:
        found = self.in_networks.get(address)
        if found is None:
            found = _in(address, self.networks)
            if len(self.in_networks) >= _ADDRESSES_REMEMBERED:
                self.in_networks.clear()  # a flood of addresses: start again, stay bounded
            self.in_networks[address] = found
        return found


def _api_key_id(identity: Identity) -> str | None:
    if identity.method != "api_key" or not identity.issuer.startswith(_API_KEY_ISSUER):
        return None
    return identity.issuer[len(_API_KEY_ISSUER) :]


def _in(address: str, networks: Sequence[_Network]) -> bool:
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(parsed in network for network in networks)


def _precedence(indexed: tuple[int, RateLimitRuleSettings]) -> tuple[int, int, int, int]:
    index, rule = indexed
    names_caller = bool(rule.subjects or rule.api_keys or rule.addresses)
    route_class = bool(rule.routes or rule.methods)
    return (-names_caller, -route_class, -_KEY_RANK[rule.per], index)


class Rules:
    """Compiled rules: ``ordered`` as they are tried, and for each kind of caller (signed in or
    not, with an API key or not) the ones that may apply to it, so a Check tries only those."""

    def __init__(self, ordered: tuple[LimitRule, ...]) -> None:
        self.ordered = ordered
        self.by_caller = {
            (authenticated, has_api_key): tuple(
                rule for rule in ordered if rule.may_apply(authenticated, has_api_key)
            )
            for authenticated in (False, True)
            for has_api_key in (False, True)
        }


def compile_rules(rules: Sequence[RateLimitRuleSettings]) -> Rules:
    """The rules in the order they are tried: the first that applies is the one."""
    ordered = sorted(enumerate(rules), key=_precedence)
    return Rules(tuple(LimitRule.compile(rule) for _, rule in ordered))


def select(rules: Rules, identity: Identity, request: AuthRequest) -> tuple[LimitRule, str] | None:
    """The rule that applies to the request and its bucket key; None when none applies."""
    api_key = _api_key_id(identity)
    for rule in rules.by_caller[identity.authenticated, api_key is not None]:
        key = rule.key(identity, request, api_key)
        if key is not None:
            return rule, key
    return None
