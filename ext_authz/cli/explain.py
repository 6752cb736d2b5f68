"""`ext-authz explain`: one request decided offline, with the rule that decided and why."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import click
from pydantic import JsonValue, ValidationError

from ext_authz.cli.errors import config_errors_exit
from ext_authz.errors import AccessDeniedError, MissingCredentialError
from ext_authz.models import AuthRequest, Outcome
from ext_authz.policy.enforcer import PolicyRule
from ext_authz.policy.testing import (
    DEFAULT_HOST,
    DEFAULT_SOURCE,
    CaseIdentity,
    CaseRequest,
    CaseResult,
    PolicyCase,
    PolicyRunner,
    rule_text,
    short_location,
)
from ext_authz.settings import PolicySettings, load_settings, validation_errors

__all__ = ["Explanation", "explain"]

# The pipeline's reason codes when the policy, not an earlier phase, refused the request.
_POLICY_REFUSALS = frozenset({AccessDeniedError.code, MissingCredentialError.code})


def _timestamp(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    """An ISO 8601 date and time with its UTC offset (``Z`` or ``+01:00``)."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time with an offset")
    return parsed


@click.command()
@click.option(
    "--config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A serve config: its policy and header settings.",
)
@click.option(
    "--policies",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A policy folder holding model.conf and policy.csv.",
)
@click.argument("method")
@click.argument("target")
@click.option("--sub", "subject", help="The caller's subject; without it the caller is anonymous.")
@click.option("--role", "roles", multiple=True, help="A role of the caller; repeat for several.")
@click.option(
    "--claim",
    "claims",
    multiple=True,
    metavar="NAME=VALUE",
    help="A token claim; VALUE is parsed as JSON when it is JSON.",
)
@click.option("--header", "headers", multiple=True, metavar="NAME=VALUE", help="A request header.")
@click.option("--source", default=DEFAULT_SOURCE, show_default=True, help="Client IP address.")
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="The :authority.")
@click.option(
    "--time",
    "at",
    callback=_timestamp,
    help="When the request is made, e.g. 2026-03-02T09:30:00+01:00 (default: now).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def explain(
    config: Path | None,
    policies: Path | None,
    method: str,
    target: str,
    subject: str | None,
    roles: tuple[str, ...],
    claims: tuple[str, ...],
    headers: tuple[str, ...],
    source: str,
    host: str,
    at: datetime | None,
    as_json: bool,
) -> None:
    """Decide METHOD TARGET (e.g. GET '/api/books?page=2') as `serve` would, and say why."""
    case = _case(method, target, subject, roles, claims, headers, source, host, at)
    with config_errors_exit():
        runner = _runner(config, policies)
        result = runner.run(case)
    report = Explanation.of(runner, result)
    click.echo(json.dumps(report.as_json(), indent=2) if as_json else report.as_text())


@dataclass(frozen=True, slots=True)
class Explanation:
    """What decided one request; ``principals`` is None when an earlier phase refused it."""

    result: CaseResult
    rule: PolicyRule | None
    principals: tuple[str, ...] | None

    @classmethod
    def of(cls, runner: PolicyRunner, result: CaseResult) -> Explanation:
        decision = result.decision
        principals = None
        if decision.outcome is Outcome.ALLOW or decision.reason_code in _POLICY_REFUSALS:
            principals = tuple(sorted(runner.principals(decision.identity)))
        return cls(result, runner.rule_at(decision.matched_rule), principals)

    @property
    def decision(self) -> str:
        return "allow" if self.result.decision.outcome is Outcome.ALLOW else "deny"

    def as_json(self) -> dict[str, object]:
        decision, request = self.result.decision, self.result.request
        identity = decision.identity
        return {
            "decision": self.decision,
            "status": self.result.status,
            "reason": decision.reason_code,
            "message": decision.message,
            "rule": None if self.rule is None else _rule_json(self.rule),
            "identity": {"sub": identity.subject, "roles": list(identity.roles)},
            "principals": None if self.principals is None else list(self.principals),
            "request": None if request is None else _request_json(request),
        }

    def as_text(self) -> str:
        decision, request = self.result.decision, self.result.request
        identity = decision.identity
        lines = [
            f"decision:   {self.decision} ({self.result.status} {decision.reason_code})",
            f"message:    {decision.message or '-'}",
            f"rule:       {self._rule_text()}",
            f"identity:   {identity.subject}"
            + (f" (roles: {', '.join(identity.roles)})" if identity.roles else ""),
        ]
        if self.principals is not None:
            lines.append(f"principals: {', '.join(self.principals)}")
        if request is None:
            lines.append("request:    refused before the policy: it cannot be normalized")
            return "\n".join(lines)
        query = "&".join(f"{name}={value}" for name, value in request.query)
        lines += [
            f"request:    {request.method} {request.path}",
            f"query:      {query or '-'}  (decoded)",
            f"host:       {request.host}  source: {request.source_address}",
        ]
        return "\n".join(lines)

    def _rule_text(self) -> str:
        if self.rule is not None:
            return f"{short_location(self.rule.location)}  {rule_text(self.rule)}"
        if self.principals is not None and self.decision == "deny":
            return "none matched: default deny"
        return "-"


def _rule_json(rule: PolicyRule) -> dict[str, object]:
    return {"location": rule.location, "text": rule_text(rule)}


def _request_json(request: AuthRequest) -> dict[str, object]:
    return {
        "method": request.method,
        "path": request.path,
        "query": [list(pair) for pair in request.query],
        "host": request.host,
        "source": request.source_address,
    }


def _case(
    method: str,
    target: str,
    subject: str | None,
    roles: tuple[str, ...],
    claims: tuple[str, ...],
    headers: tuple[str, ...],
    source: str,
    host: str,
    at: datetime | None,
) -> PolicyCase:
    try:
        request = CaseRequest(
            method=method.upper(),  # what Envoy would have refused is not worth explaining
            path=target,
            host=host,
            headers=dict(_pairs(headers, "--header")),
            source=source,
            time=at,
        )
        identity = _identity(subject, roles, claims)
        # Only the answer is shown: the expectation is a placeholder.
        return PolicyCase(name="explain", request=request, identity=identity, expect="allow")
    except ValidationError as exc:
        errors = validation_errors(exc)
        raise click.UsageError(
            "; ".join(f"{'.'.join(map(str, loc)) or 'request'}: {text}" for loc, text in errors)
        ) from None


def _identity(
    subject: str | None, roles: tuple[str, ...], claims: tuple[str, ...]
) -> CaseIdentity | None:
    if subject is None:
        if roles or claims:
            raise click.UsageError("--role and --claim describe a signed-in caller: add --sub")
        return None
    values = {name: _json_or_text(raw) for name, raw in _pairs(claims, "--claim")}
    return CaseIdentity(sub=subject, roles=roles, claims=values)


def _pairs(values: tuple[str, ...], option: str) -> list[tuple[str, str]]:
    pairs = []
    for pair in values:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint=option)
        pairs.append((name, value))
    return pairs


def _json_or_text(raw: str) -> JsonValue:
    try:
        value: JsonValue = json.loads(raw)  # numbers, booleans, lists and objects as JSON
    except ValueError:
        return raw
    return value


def _runner(config: Path | None, policies: Path | None) -> PolicyRunner:
    if (config is None) == (policies is None):
        raise click.UsageError("give exactly one of --config FILE or --policies DIR")
    if config is not None:
        settings = load_settings(config)
        return PolicyRunner(settings.policy, settings.headers)
    assert policies is not None  # noqa: S101 - checked above
    return PolicyRunner(
        PolicySettings(model=policies / "model.conf", policy=policies / "policy.csv")
    )
