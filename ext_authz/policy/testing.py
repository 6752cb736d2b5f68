"""Policy test cases: a request, an identity and the expected answer, decided by the serve path.

Each case becomes a CheckRequest shaped like the one Envoy sends (raw ``:path`` with its query,
pseudo headers, host, source address) and goes through ``to_auth_request`` -> ``AuthPipeline`` ->
``to_check_response``: the functions `serve` calls, with the real policy engine. Only the identity
phase is synthetic: a case's identity travels as an opaque bearer token that the real
CredentialExtractor finds and a case authenticator turns back into that Identity.

A cases file (YAML; duplicate keys and unknown fields are refused, naming the file and case)::

    policy: {model: model.conf, policy: policy.csv}  # or `config: serve.yaml`; relative to the file
    cases:
      - name: viewer reads books
        request: {method: GET, path: "/api/books?page=2", headers: {x-env: prod},
                  source: 10.1.2.3, time: "2026-03-02T09:30:00+01:00"}  # time: optional
        identity: {sub: alice, roles: [viewer], claims: {tenant: acme}}  # omitted: anonymous
        expect: allow                                    # allow | deny (401/403) | a status
"""

from __future__ import annotations

import ipaddress
import itertools
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Literal
from urllib.parse import urlencode

import yaml
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    field_validator,
    model_validator,
)

from ext_authz._proto.envoy.config.core.v3 import base_pb2
from ext_authz._proto.envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2
from ext_authz.credentials import CredentialExtractor, CredentialKind
from ext_authz.errors import ConfigError, InvalidRequestError, InvalidTokenError
from ext_authz.identity.claims import scopes_of
from ext_authz.models import AuthRequest, Decision, Identity, Outcome
from ext_authz.pipeline import AuthPipeline, new_decision_id, refusal
from ext_authz.policy.enforcer import PolicyEnforcer, PolicyRule
from ext_authz.policy.engine import CasbinPolicyEngine, principals_of
from ext_authz.request import request_id_of, to_auth_request
from ext_authz.response import OUTCOME_STATUS, to_check_response
from ext_authz.settings import (
    ConfigPath,
    CredentialSettings,
    HeaderSettings,
    Location,
    PolicySettings,
    load_settings,
    validate_strictly,
    validation_errors,
)

__all__ = [
    "CaseIdentity",
    "CaseRequest",
    "CaseResult",
    "CasesFile",
    "PolicyCase",
    "PolicyRunner",
    "SuiteResult",
    "check_request_of",
    "evaluate_check",
    "find_case_files",
    "load_cases",
    "rule_text",
    "run_suites",
    "short_location",
    "unexercised_rules",
]

CASES_GLOB = "*cases*.yaml"
DEFAULT_HOST = "localhost"
# A documentation address (RFC 5737): it matches no internal CIDR rule by accident.
DEFAULT_SOURCE = "192.0.2.1"

_ALLOW_STATUS = OUTCOME_STATUS[Outcome.ALLOW][0]
_DENY_STATUSES = frozenset(
    OUTCOME_STATUS[outcome][0] for outcome in (Outcome.UNAUTHENTICATED, Outcome.FORBIDDEN)
)
_KNOWN_STATUSES = frozenset(status for status, _, _ in OUTCOME_STATUS.values())
_HEADER_NAME = re.compile(r"[a-z0-9-]+")
_METHOD = re.compile(r"[A-Z]+")
# Claims the identity's own fields set, as a real token's claims would hold them.
_FIELD_CLAIMS = ("sub", "roles")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class CaseRequest(_Strict):
    """The request as Envoy hands it to the service: ``path`` is the raw ``:path`` (after
    Envoy's own normalize_path), query included."""

    method: str
    path: str = Field(min_length=1)
    query: dict[str, str] = Field(default_factory=dict)  # appended, URL-encoded, to ``path``
    host: str = Field(default=DEFAULT_HOST, min_length=1)
    scheme: Literal["http", "https"] = "https"
    headers: dict[str, str] = Field(default_factory=dict)
    source: str = DEFAULT_SOURCE
    # When the request is made (ISO 8601 with an offset): pins the clock of time-window
    # conditions so they are testable. Unset: the real clock, as in serve.
    time: AwareDatetime | None = None

    @field_validator("method")
    @classmethod
    def _upper_case(cls, method: str) -> str:
        if not _METHOD.fullmatch(method):
            # Envoy refuses a lower-case method before it calls the service.
            raise ValueError(f"{method!r} is not an upper-case HTTP method such as GET")
        return method

    @field_validator("headers")
    @classmethod
    def _plain_distinct_names(cls, headers: dict[str, str]) -> dict[str, str]:
        lowered = {name.lower(): value for name, value in headers.items()}
        if len(lowered) != len(headers):
            raise ValueError("a header is given twice (header names ignore case)")
        for name in lowered:
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(
                    f"{name!r} is not a header name (pseudo headers come from the "
                    "method, path, host and scheme)"
                )
        return lowered  # Envoy hands the service lower-case names

    @field_validator("source")
    @classmethod
    def _ip_address(cls, source: str) -> str:
        ipaddress.ip_address(source)  # its ValueError names the bad address
        return source

    @property
    def target(self) -> str:
        if not self.query:
            return self.path
        return f"{self.path}{'&' if '?' in self.path else '?'}{urlencode(self.query)}"


class CaseIdentity(_Strict):
    """Who calls: what a verified token would have proved."""

    sub: str = Field(min_length=1)
    roles: tuple[str, ...] = ()
    claims: dict[str, JsonValue] = Field(default_factory=dict)

    @field_validator("claims")
    @classmethod
    def _no_field_claims(cls, claims: dict[str, JsonValue]) -> dict[str, JsonValue]:
        for name in _FIELD_CLAIMS:
            if name in claims:
                raise ValueError(f"claim {name!r} is set by the identity's {name!r} field")
        return claims

    def to_identity(self) -> Identity:
        claims: dict[str, object] = {"sub": self.sub, "roles": list(self.roles), **self.claims}
        issuer = claims.get("iss")
        return Identity(
            subject=self.sub,
            roles=self.roles,
            issuer=issuer if isinstance(issuer, str) else "",
            method="jwt",
            scopes=scopes_of(claims),
            claims=MappingProxyType(claims),
        )


class PolicyCase(_Strict):
    name: str = Field(min_length=1)
    request: CaseRequest
    identity: CaseIdentity | None = None  # None: anonymous
    expect: Literal["allow", "deny"] | int

    @field_validator("expect", mode="before")
    @classmethod
    def _known_expectation(cls, expect: object) -> object:
        # Before the union is tried: one clear message instead of one per union member.
        if expect in ("allow", "deny") or (
            type(expect) is int and expect in _KNOWN_STATUSES  # bool is an int: not a status
        ):
            return expect
        raise ValueError(
            f"{expect!r} is not allow, deny or a status the service answers with"
            f" ({', '.join(map(str, sorted(_KNOWN_STATUSES)))})"
        )

    @model_validator(mode="after")
    def _one_credential(self) -> PolicyCase:
        if self.identity is not None and "authorization" in self.request.headers:
            raise ValueError("give an identity or an authorization header, not both")
        return self

    def accepts(self, status: int) -> bool:
        if self.expect == "allow":
            return status == _ALLOW_STATUS
        if self.expect == "deny":
            return status in _DENY_STATUSES
        return status == self.expect

    @property
    def expected(self) -> str:
        if self.expect == "deny":
            return "deny (" + "/".join(map(str, sorted(_DENY_STATUSES))) + ")"
        return str(self.expect)


class _CasesDocument(_Strict):
    policy: PolicySettings | None = None
    config: ConfigPath | None = None  # a serve config: its policy and header settings
    cases: tuple[PolicyCase, ...]

    @model_validator(mode="after")
    def _complete(self) -> _CasesDocument:
        if (self.policy is None) == (self.config is None):
            raise ValueError("set exactly one of policy: {model, policy} or config: FILE")
        if not self.cases:
            raise ValueError("cases: the list is empty")
        return self


@dataclass(frozen=True, slots=True)
class CasesFile:
    path: Path
    policy: PolicySettings
    headers: HeaderSettings
    cases: tuple[PolicyCase, ...]


def find_case_files(path: Path) -> list[Path]:
    """``path`` itself, or every ``*cases*.yaml`` beneath a directory, sorted."""
    if not path.is_dir():
        return [path]
    found = sorted(file for file in path.rglob(CASES_GLOB) if file.is_file())
    if not found:
        raise ConfigError(f"{path}: no {CASES_GLOB} file beneath it")
    return found


def load_cases(path: Path) -> CasesFile:
    """Read and validate a cases file; raises ConfigError naming the file and the case."""
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
        # safe_load keeps the last of duplicate keys: find them on the node tree instead.
        duplicate = _first_duplicate_key(yaml.compose(text, Loader=yaml.SafeLoader), ())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read cases file: {exc.strerror}") from exc
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if duplicate is not None:
        raise ConfigError(f"{_where(path, data, duplicate)}: duplicate key")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with `cases:` at the top level")
    document = _validate(path, data)
    if document.config is not None:
        settings = load_settings(document.config)
        policy, headers = settings.policy, settings.headers
    else:
        assert document.policy is not None  # noqa: S101 - _complete checked it
        policy, headers = document.policy, HeaderSettings()
    _refuse_duplicate_names(path, document.cases)
    return CasesFile(path, policy, headers, document.cases)


def _validate(path: Path, data: dict[object, object]) -> _CasesDocument:
    try:
        return validate_strictly(_CasesDocument, data, path, timestamps=True)
    except ValidationError as exc:
        raise ConfigError(
            "\n".join(f"{_where(path, data, loc)}: {text}" for loc, text in validation_errors(exc))
        ) from exc


def _first_duplicate_key(node: yaml.Node | None, loc: Location) -> Location | None:
    if isinstance(node, yaml.SequenceNode):
        children: Iterable[tuple[int | str, yaml.Node]] = enumerate(node.value)
    elif isinstance(node, yaml.MappingNode):
        keys = [str(key.value) for key, _ in node.value]
        for position, key in enumerate(keys):
            if key in keys[:position]:
                return (*loc, key)
        children = zip(keys, (value for _, value in node.value), strict=True)
    else:
        return None
    for step, child in children:
        found = _first_duplicate_key(child, (*loc, step))
        if found is not None:
            return found
    return None


def _where(path: Path, data: object, loc: Location) -> str:
    """``file: case 'name' (cases[2]): request.method`` for a location in a cases document."""
    where = str(path)
    if len(loc) >= 2 and loc[0] == "cases" and isinstance(loc[1], int):
        name = _case_name(data, loc[1])
        where += f": case {name!r} (cases[{loc[1]}])" if name else f": cases[{loc[1]}]"
        loc = loc[2:]
    field = ""
    for part in loc:
        field += f"[{part}]" if isinstance(part, int) else (f".{part}" if field else str(part))
    return f"{where}: {field}" if field else where


def _case_name(data: object, index: int) -> str | None:
    cases = data.get("cases") if isinstance(data, dict) else None
    case = cases[index] if isinstance(cases, list) and index < len(cases) else None
    name = case.get("name") if isinstance(case, dict) else None
    return name if isinstance(name, str) else None


def _refuse_duplicate_names(path: Path, cases: Sequence[PolicyCase]) -> None:
    first: dict[str, int] = {}
    for index, case in enumerate(cases):
        if case.name in first:
            raise ConfigError(
                f"{path}: case {case.name!r} (cases[{index}]): name already used by"
                f" cases[{first[case.name]}]; results and JUnit reports need distinct names"
            )
        first[case.name] = index


def check_request_of(
    request: CaseRequest, token: str | None, request_id: str
) -> external_auth_pb2.CheckRequest:
    """The CheckRequest Envoy sends for this request (see tests/fixtures/check_request_*.json)."""
    target = request.target
    headers = {
        ":path": target,
        ":method": request.method,
        ":authority": request.host,
        ":scheme": request.scheme,
        "x-request-id": request_id,
        **request.headers,
    }
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    http = attribute_context_pb2.AttributeContext.HttpRequest(
        id=request_id,
        method=request.method,
        path=target,
        host=request.host,
        scheme=request.scheme,
        protocol="HTTP/1.1",
        headers=headers,
    )
    source = attribute_context_pb2.AttributeContext.Peer(
        address=base_pb2.Address(socket_address=base_pb2.SocketAddress(address=request.source))
    )
    attributes = attribute_context_pb2.AttributeContext(
        source=source, request=attribute_context_pb2.AttributeContext.Request(http=http)
    )
    if request.time is not None:
        attributes.request.time.FromDatetime(request.time)
    return external_auth_pb2.CheckRequest(attributes=attributes)


def evaluate_check(
    pipeline: AuthPipeline, check: external_auth_pb2.CheckRequest
) -> tuple[Decision, AuthRequest | None]:
    """What the servicer does before building its response: a request that cannot be
    normalized is refused (400) without reaching the pipeline."""
    try:
        request = to_auth_request(check)
    except InvalidRequestError as error:
        return refusal(error, new_decision_id(), request_id_of(check)), None
    return pipeline.evaluate(request), request


class _CaseAuthenticator:
    """Turns the opaque tokens the runner issues back into the cases' identities."""

    def __init__(self) -> None:
        self._identities: dict[str, Identity] = {}
        self._serial = itertools.count(1)

    @contextmanager
    def issued(self, identity: CaseIdentity | None) -> Iterator[str | None]:
        if identity is None:
            yield None
            return
        token = f"case-{next(self._serial)}"
        self._identities[token] = identity.to_identity()
        try:
            yield token
        finally:
            del self._identities[token]

    def authenticate(self, value: str) -> Identity:
        identity = self._identities.get(value)
        if identity is None:  # e.g. a case's own Authorization header
            raise InvalidTokenError("the token is not one a policy test case issued")
        return identity


@dataclass(frozen=True, slots=True)
class CaseResult:
    case: PolicyCase
    status: int
    decision: Decision
    request: AuthRequest | None  # None: refused before normalization (400)

    @property
    def passed(self) -> bool:
        return self.case.accepts(self.status)


class PolicyRunner:
    """The serve pipeline over one policy, with case identities instead of token verification.

    Runs one case at a time (a case's identity and time are held while it runs)."""

    def __init__(self, policy: PolicySettings, headers: HeaderSettings | None = None) -> None:
        self.policy = policy
        self._headers = headers or HeaderSettings()
        self._now: datetime | None = None  # the running case's time, if it pins one
        engine = CasbinPolicyEngine.from_files(policy.model, policy.policy, clock=self._clock)
        # The engine keeps its enforcer private; a second load lists the rules and role links.
        self._inspector = PolicyEnforcer(policy.model, policy.policy)
        self._authenticator = _CaseAuthenticator()
        self._pipeline = AuthPipeline(
            CredentialExtractor(CredentialSettings(), None),
            {CredentialKind.BEARER: self._authenticator},
            engine,
        )
        self._serial = itertools.count(1)

    @property
    def rules(self) -> tuple[PolicyRule, ...]:
        """The policy's ``p`` rules (role links never decide a request on their own)."""
        return tuple(rule for rule in self._inspector.rules if rule.ptype.startswith("p"))

    def rule_at(self, location: str | None) -> PolicyRule | None:
        return next((rule for rule in self._inspector.rules if rule.location == location), None)

    def principals(self, identity: Identity) -> frozenset[str]:
        """Every principal a rule can name for this identity, inherited roles included."""
        return self._inspector.expand_roles(principals_of(identity))

    def run(self, case: PolicyCase) -> CaseResult:
        with self._authenticator.issued(case.identity) as token, self._at(case.request.time):
            check = check_request_of(case.request, token, f"policy-test-{next(self._serial)}")
            decision, request = evaluate_check(self._pipeline, check)
        response = to_check_response(decision, request, self._headers)
        return CaseResult(case, _http_status(response), decision, request)

    def _clock(self) -> datetime:
        return self._now or datetime.now(UTC)

    @contextmanager
    def _at(self, time: datetime | None) -> Iterator[None]:
        self._now = time
        try:
            yield
        finally:
            self._now = None


def _http_status(response: external_auth_pb2.CheckResponse) -> int:
    if response.WhichOneof("http_response") == "denied_response":
        return int(response.denied_response.status.code)
    return _ALLOW_STATUS


@dataclass(frozen=True, slots=True)
class SuiteResult:
    cases_file: CasesFile
    runner: PolicyRunner
    results: tuple[CaseResult, ...]


def run_suites(files: Iterable[CasesFile]) -> list[SuiteResult]:
    """Run every case; files naming the same policy share one runner (one policy load)."""
    runners: dict[tuple[PolicySettings, HeaderSettings], PolicyRunner] = {}
    suites = []
    for cases_file in files:
        key = (cases_file.policy, cases_file.headers)
        if key not in runners:
            runners[key] = PolicyRunner(cases_file.policy, cases_file.headers)
        runner = runners[key]
        results = tuple(runner.run(case) for case in cases_file.cases)
        suites.append(SuiteResult(cases_file, runner, results))
    return suites


def unexercised_rules(
    suites: Iterable[SuiteResult],
) -> Mapping[PolicyRunner, tuple[PolicyRule, ...]]:
    """Per policy, the ``p`` rules that decided no case (coverage of policy lines)."""
    decided: dict[PolicyRunner, set[str | None]] = {}
    for suite in suites:
        locations = decided.setdefault(suite.runner, set())
        locations.update(result.decision.matched_rule for result in suite.results)
    return {
        runner: tuple(rule for rule in runner.rules if rule.location not in locations)
        for runner, locations in decided.items()
    }


def rule_text(rule: PolicyRule) -> str:
    return ", ".join((rule.ptype, *rule.values))


def short_location(location: str) -> str:
    """``policy.csv:12`` for ``/abs/path/policy.csv:12``."""
    source, _, line = location.rpartition(":")
    return f"{Path(source).name}:{line}"
