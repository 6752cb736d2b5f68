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
from collections.abc import Sequence
from dataclasses import dataclass

from ext_authz.models import AuthRequest, Identity
from ext_authz.policy.functions import path_match
from ext_authz.ratelimit.bucket import interval_us
from ext_authz.settings import RateLimitRuleSettings

__all__ = ["LimitRule", "compile_rules", "select"]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_KEY_RANK = {"api_key": 2, "subject": 1, "address": 0}
_API_KEY_ISSUER = "api-key:"  # identity/apikey.py names the key id in the issuer


@dataclass(frozen=True, slots=True)
class LimitRule:
    """A rule ready to match: the settings plus its bucket interval and parsed networks."""

    settings: RateLimitRuleSettings
    interval_us: int
    networks: tuple[_Network, ...]

    @property
    def name(self) -> str:
        return self.settings.name

    def key(self, identity: Identity, request: AuthRequest) -> str | None:
        """This rule's bucket key for the request, or None when the rule does not apply."""
        rule = self.settings
        api_key = _api_key_id(identity)
        if rule.per == "subject" and not identity.authenticated:
            return None
        if rule.per == "api_key" and api_key is None:
            return None
        if rule.subjects and not (identity.authenticated and identity.subject in rule.subjects):
            return None
        if rule.api_keys and api_key not in rule.api_keys:
            return None
        if rule.addresses and not _in(request.source_address, self.networks):
            return None
        if rule.methods and request.method not in rule.methods:
            return None
        if rule.routes and not any(path_match(request.path, route) for route in rule.routes):
            return None
        if rule.per == "subject":
            return f"limit:{rule.name}:{identity.subject}"
        if rule.per == "api_key":
            return f"limit:{rule.name}:{api_key}"
        return f"limit:{rule.name}:{request.source_address}"


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


def compile_rules(rules: Sequence[RateLimitRuleSettings]) -> tuple[LimitRule, ...]:
    """The rules in the order they are tried: the first that applies is the one."""
    ordered = sorted(enumerate(rules), key=_precedence)
    return tuple(
        LimitRule(
            rule,
            interval_us(rule.rate, rule.period),
            tuple(ipaddress.ip_network(a, strict=False) for a in rule.addresses),
        )
        for _, rule in ordered
    )


def select(
    rules: Sequence[LimitRule], identity: Identity, request: AuthRequest
) -> tuple[LimitRule, str] | None:
    """The rule that applies to the request and its bucket key; None when none applies."""
    for rule in rules:
        key = rule.key(identity, request)
        if key is not None:
            return rule, key
    return None
