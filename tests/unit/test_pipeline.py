"""pipeline.py: credentials -> identity -> authorization, each failure mapped to one outcome."""

from __future__ import annotations

from types import MappingProxyType

import pytest
from fakes import ExplodingEngine

from ext_authz.credentials import CredentialExtractor, CredentialKind
from ext_authz.errors import (
    AccessDeniedError,
    BlockedError,
    ExpiredTokenError,
    InvalidRequestError,
    InvalidTokenError,
    MissingCredentialError,
)
from ext_authz.models import ANONYMOUS, AuthRequest, Identity, Outcome, PolicyResult
from ext_authz.pipeline import AuthPipeline, refusal
from ext_authz.settings import CredentialSettings

GOOD_TOKEN = "good.token.sig"


def make_pipeline(verifier, engine) -> AuthPipeline:
    """Bearer tokens from the Authorization header only, verified by ``verifier``."""
    extractor = CredentialExtractor(CredentialSettings(), None)
    authenticators = {} if verifier is None else {CredentialKind.BEARER: verifier}
    return AuthPipeline(extractor, authenticators, engine)


class FakeVerifier:
    """Accepts GOOD_TOKEN as bob (role viewer); raises the configured error for anything else."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error or InvalidTokenError("token signature verification failed")
        self.seen: list[str] = []

    def authenticate(self, token: str) -> Identity:
        self.seen.append(token)
        if token == GOOD_TOKEN:
            return Identity("bob", ("viewer",), issuer="https://issuer.test")
        raise self.error


class FakeEngine:
    """Allows what ``allow(identity, request)`` says; records every call."""

    def __init__(self, allow=lambda identity, request: False, rule: str | None = "policy.csv:3"):
        self.allow = allow
        self.rule = rule
        self.calls: list[tuple[Identity, AuthRequest]] = []

    def decide(self, identity: Identity, request: AuthRequest) -> PolicyResult:
        self.calls.append((identity, request))
        return PolicyResult(allowed=bool(self.allow(identity, request)), matched_rule=self.rule)


def request(authorization: str | None = None, path: str = "/api/books") -> AuthRequest:
    headers = {} if authorization is None else {"authorization": authorization}
    return AuthRequest("GET", path, headers=MappingProxyType(headers))


def test_allowed_request_is_allowed_with_the_identity_and_rule() -> None:
    engine = FakeEngine(allow=lambda identity, r: identity.subject == "bob")

    decision = make_pipeline(FakeVerifier(), engine).evaluate(request(f"Bearer {GOOD_TOKEN}"))

    assert decision.outcome is Outcome.ALLOW
    assert decision.reason_code == "allowed"
    assert decision.identity.subject == "bob"
    assert decision.matched_rule == "policy.csv:3"
    assert engine.calls[0][0].roles == ("viewer",)


def test_anonymous_request_is_decided_as_anonymous() -> None:
    engine = FakeEngine(allow=lambda identity, r: not identity.authenticated)
    verifier = FakeVerifier()

    decision = make_pipeline(verifier, engine).evaluate(request())

    assert decision.outcome is Outcome.ALLOW
    assert decision.identity is ANONYMOUS
    assert verifier.seen == []


def test_no_token_and_denied_is_unauthenticated_missing_credential() -> None:
    decision = make_pipeline(FakeVerifier(), FakeEngine()).evaluate(request())

    assert decision.outcome is Outcome.UNAUTHENTICATED
    assert decision.reason_code == "missing_credential"
    assert decision.identity is ANONYMOUS


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidTokenError("bad signature"), "invalid_token"),
        (ExpiredTokenError("token has expired"), "expired_token"),
    ],
)
def test_bad_token_is_unauthenticated_and_the_engine_is_not_consulted(error, code) -> None:
    engine = FakeEngine(allow=lambda identity, r: True)  # would allow even anonymous

    decision = make_pipeline(FakeVerifier(error), engine).evaluate(request("Bearer bad.token.x"))

    assert decision.outcome is Outcome.UNAUTHENTICATED
    assert decision.reason_code == code
    assert decision.identity is ANONYMOUS
    assert engine.calls == []


@pytest.mark.parametrize(
    "authorization",
    [
        f"Bearer a,Bearer {GOOD_TOKEN}",
        f"Bearer {GOOD_TOKEN},Bearer {GOOD_TOKEN}",
        "Basic dXNlcg==",
        "",
    ],
)
def test_malformed_or_duplicated_authorization_is_unauthenticated(authorization: str) -> None:
    engine = FakeEngine(allow=lambda identity, r: True)
    verifier = FakeVerifier()

    decision = make_pipeline(verifier, engine).evaluate(request(authorization))

    assert decision.outcome is Outcome.UNAUTHENTICATED
    assert decision.reason_code == "invalid_token"
    assert engine.calls == []
    assert verifier.seen == []


def test_token_without_configured_issuers_is_unauthenticated() -> None:
    engine = FakeEngine(allow=lambda identity, r: True)

    decision = make_pipeline(None, engine).evaluate(request(f"Bearer {GOOD_TOKEN}"))

    assert decision.outcome is Outcome.UNAUTHENTICATED
    assert decision.reason_code == "invalid_token"
    assert engine.calls == []


def test_known_identity_denied_is_forbidden_access_denied() -> None:
    decision = make_pipeline(FakeVerifier(), FakeEngine()).evaluate(request(f"Bearer {GOOD_TOKEN}"))

    assert decision.outcome is Outcome.FORBIDDEN
    assert decision.reason_code == "access_denied"
    assert decision.identity.subject == "bob"


def test_unexpected_engine_exception_propagates_to_the_servicer() -> None:
    pipeline = make_pipeline(FakeVerifier(), ExplodingEngine())

    with pytest.raises(RuntimeError, match="engine bug"):
        pipeline.evaluate(request(f"Bearer {GOOD_TOKEN}"))


def test_unexpected_verifier_exception_propagates_to_the_servicer() -> None:
    pipeline = make_pipeline(FakeVerifier(KeyError("bug")), FakeEngine())

    with pytest.raises(KeyError):
        pipeline.evaluate(request("Bearer other.token.x"))


def test_every_decision_gets_its_own_id() -> None:
    pipeline = make_pipeline(FakeVerifier(), FakeEngine())

    ids = {pipeline.evaluate(request()).decision_id for _ in range(20)}

    assert len(ids) == 20
    assert all(ids)


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (InvalidRequestError("x"), Outcome.INVALID_REQUEST),
        (MissingCredentialError("x"), Outcome.UNAUTHENTICATED),
        (InvalidTokenError("x"), Outcome.UNAUTHENTICATED),
        (ExpiredTokenError("x"), Outcome.UNAUTHENTICATED),
        (AccessDeniedError("x"), Outcome.FORBIDDEN),
    ],
)
def test_each_error_class_maps_to_exactly_one_outcome(error, outcome) -> None:
    decision = refusal(error, "d1", "rid-1")

    assert decision.outcome is outcome
    assert decision.reason_code == error.code
    assert decision.message == "x"
    assert decision.request_id == "rid-1"


class AddressBlock:
    """Blocks one source address, whoever the caller is."""

    def check(self, identity: Identity, request: AuthRequest) -> None:
        if request.source_address == "203.0.113.7":
            raise BlockedError("blocked", retry_after=42)


def test_a_blocked_address_gets_429_even_when_its_credentials_are_bad() -> None:
    extractor = CredentialExtractor(CredentialSettings(), None)
    pipeline = AuthPipeline(
        extractor, {CredentialKind.BEARER: FakeVerifier()}, FakeEngine(), guards=[AddressBlock()]
    )
    blocked = AuthRequest(
        "GET",
        "/api/books",
        headers=MappingProxyType({"authorization": "Bearer bad.token.sig"}),
        source_address="203.0.113.7",
    )
    other = AuthRequest(
        "GET",
        "/api/books",
        headers=MappingProxyType({"authorization": "Bearer bad.token.sig"}),
        source_address="198.51.100.1",
    )

    decision = pipeline.evaluate(blocked)

    assert (decision.outcome, decision.reason_code, decision.retry_after) == (
        Outcome.LIMITED,
        "blocked",
        42,
    )
    assert pipeline.evaluate(other).outcome is Outcome.UNAUTHENTICATED
