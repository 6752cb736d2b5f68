"""identity/introspection.py and identity/bearer.py: opaque tokens through RFC 7662 introspection.

A local fake endpoint on 127.0.0.1 (tests/fakes.py IntrospectionEndpoint) plays the provider: it
checks HTTP Basic client authentication and the form body, answers what a test configures, and
counts requests. Cache lifetimes are checked with an injected clock.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeClock, IntrospectionEndpoint

from ext_authz.errors import (
    ConfigError,
    ExpiredTokenError,
    ExtAuthzError,
    IntrospectionUnavailableError,
    InvalidTokenError,
)
from ext_authz.identity.bearer import BearerAuthenticator
from ext_authz.identity.http import MAX_BODY_BYTES
from ext_authz.identity.introspection import MAX_TOKEN_BYTES, TokenIntrospector
from ext_authz.models import Identity
from ext_authz.settings import IntrospectionSettings

T0 = 1_700_000_000.0
CLIENT_ID = "ext-authz"
# ':' '+' ' ' and non-ASCII: only correct form-urlencoding before base64 gets this through.
SECRET = "s3cr:et+/ wörd"
TOKEN = "opaque-Zq8xW2mK7pLr4Tn9vB3c~"
PATH = IntrospectionEndpoint.PATH


@pytest.fixture
def endpoint() -> Iterator[IntrospectionEndpoint]:
    with IntrospectionEndpoint(CLIENT_ID, SECRET) as server:
        yield server


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "client-secret"
    path.write_text(SECRET + "\n", encoding="utf-8")  # as `echo` or a Kubernetes Secret leaves it
    return path


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


def make(
    endpoint: IntrospectionEndpoint,
    secret_file: Path,
    clock: FakeClock,
    path: str = PATH,
    **overrides: Any,
) -> TokenIntrospector:
    settings = IntrospectionSettings(
        url=endpoint.url + path,
        client_id=CLIENT_ID,
        client_secret_file=secret_file,
        **overrides,
    )
    return TokenIntrospector(settings, clock=clock)


def failing(
    error_for: Callable[[bytes], Exception], secret_file: Path, clock: FakeClock
) -> TokenIntrospector:
    """An introspector whose injected post raises ``error_for(request body)``."""

    def post(
        url: str, body: bytes, headers: Mapping[str, str], timeout: float
    ) -> tuple[int, bytes]:
        raise error_for(body)

    settings = IntrospectionSettings(
        url="https://idp.test/introspect", client_id=CLIENT_ID, client_secret_file=secret_file
    )
    return TokenIntrospector(settings, clock=clock, post=post)


def active(**claims: Any) -> dict[str, Any]:
    return {"active": True, "sub": "alice", "exp": T0 + 3600, **claims}


# --- accepted tokens ---------------------------------------------------------------------------


def test_an_active_token_becomes_an_identity_with_subject_roles_and_scopes(
    endpoint: IntrospectionEndpoint, secret_file: Path, clock: FakeClock
) -> None:
    endpoint.answers[TOKEN] = active(
        scope="books:read books:write",
        realm_access={"roles": ["viewer", "editor"]},
        client_id="web",
    )
    introspector = make(endpoint, secret_file, clock, roles_claim="realm_access.roles")

    identity = introspector.authenticate(TOKEN)

    assert identity.subject == "alice"
    assert identity.roles == ("viewer", "editor")
    assert identity.scopes == ("books:read", "books:write")
    assert identity.method == "introspection"
    assert identity.authenticated
    assert identity.issuer == endpoint.url + PATH  # no issuer configured: the endpoint names it
    assert identity.claims["client_id"] == "web"
    assert endpoint.forms == [{"token": [TOKEN], "token_type_hint": ["access_token"]}]
    assert endpoint.accept == ["application/json"]


def test_the_configured_issuer_names_the_identity_and_must_match_iss(
    endpoint: IntrospectionEndpoint, secret_file: Path, clock: FakeClock
) -> None:
    endpoint.answers[TOKEN] = active(iss="https://idp.test")
    endpoint.answers["other-issuer"] = active(iss="https://evil.test")
    endpoint.answers["no-issuer"] = active()
    introspector = make(endpoint, secret_file, clock, issuer="https://idp.test")

    assert introspector.authenticate(TOKEN).issuer == "https://idp.test"
    for token in ("other-issuer", "no-issuer"):
        with pytest.raises(InvalidTokenError, match="issuer"):
            introspector.authenticate(token)


def test_a_configured_audience_must_be_named_by_aud_as_a_string_or_in_a_list(
    endpoint: IntrospectionEndpoint, secret_file: Path, clock: FakeClock
) -> None:
    endpoint.answers["string"] = active(aud="books-api")
    endpoint.answers["list"] = active(aud=["other-api", "books-api"])
    endpoint.answers["wrong"] = active(aud=["other-api"])
    endpoint.answers["missing"] = active()
    endpoint.answers["not-a-string"] = active(aud=[["books-api"]])
    introspector = make(endpoint, secret_file, clock, audiences=("books-api",))

    assert introspector.authenticate("string").subject == "alice"
    assert introspector.authenticate("list").subject == "alice"
    for token in ("wrong", "missing", "not-a-string"):
        with pytest.raises(InvalidTokenError, match="audience"):
            introspector.authenticate(token)


# --- refused tokens ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        {"active": False},
        {"sub": "alice"},  # no "active" at all
        {"active": "true", "sub": "alice"},  # a string is not the JSON boolean
        {"active": 1, "sub": "alice"},
        {"active": [True], "sub": "alice"},
    ],
    ids=["inactive", "missing", "string-true", "one", "list"],
)
def test_only_active_exactly_true_is_accepted(
    endpoint: IntrospectionEndpoint, secret_file: Path, clock: FakeClock, answer: dict[str, Any]
) -> None:
    endpoint.answers[TOKEN] = answer
    with pytest.raises(InvalidTokenError, match="not active"):
        make(endpoint, secret_file, clock).authenticate(TOKEN)


def test_an_expired_token_is_refused_even_when_the_provider_says_active(
    endpoint: IntrospectionEndpoint, secret_file: Path, clock: FakeClock
) -> None:
    endpoint.answers[TOKEN] = active(exp=T0 - 1)
    with pytest.raises(ExpiredTokenError):
        make(endpoint, secret_file, clock).authenticate(TOKEN)


@pytest.mark.parametrize(
    ("claims", "match"),
    [
        # Bad dates, a future nbf, refresh tokens: "active" is not the last word.
        ({"exp": "tomorrow"}, "'exp' is not a valid date"),
        ({"exp": True}, "'exp' is not a valid date"),
        ({"nbf": T0 + 3600}, "not valid yet"),
        ({"token_type": "refresh_token"}, "refresh token"),
        ({"token_use": "refresh_token"}, "refresh token"),
        # Values that cannot go upstream in a header.
        ({"sub": "alice,admin"}, "subject"),
        ({"sub": "alice\r\nx-auth-roles: admin"}, "subject"),
        ({"sub": 42}, "subject"),
        ({"roles": ["viewer", "admin,root"]}, "unusable role"),
        ({"roles": {"admin": True}}, "not a list of roles"),
        ({"scope": 7}, "not a scope list"),
    ],
)
def test_an_active_answer_with_unusable_claims_is_refused(
    endpoint: IntrospectionEndpoint,
    secret_file: Path,
    clock: FakeClock,
    claims: dict[str, Any],
    match: str,
) -> None:
    endpoint.answers[TOKEN] = active(**claims)
    with pytest.raises(InvalidTokenError, match=match):
        make(endpoint, secret_file, clock).authenticate(TOKEN)


def test_a_missing_sub_does_not_fall_back_to_username_unless_configured(
    endpoint: IntrospectionEndpoint, secret_file: Path, clock: FakeClock
) -> None:
    endpoint.answers[TOKEN] = {"active": True, "username": "alice", "exp": T0 + 60}

    with pytest.raises(InvalidTokenError, match="'sub'"):
        make(endpoint, secret_file, clock).authenticate(TOKEN)
    configured = make(endpoint, secret_file, clock, subject_claim="username")
    assert configured.authenticate(TOKEN).subject == "alice"


@pytest.mark.parametrize(
    "token",
    ["a" * (MAX_TOKEN_BYTES + 1), "", "has space", "tok\u00e9n", "x\r\ny", "a=b", "tok,en"],
    ids=["oversized", "empty", "space", "non-ascii", "crlf", "inner-equals", "comma"],
)
def test_tokens_outside_rfc6750_size_or_alphabet_are_refused_without_a_request(
    endpoint: IntrospectionEndpoint, secret_file: Path, clock: FakeClock, token: str
) -> None:
    with pytest.raises(InvalidTokenError):
        make(endpoint, secret_file, clock).authenticate(token)
    assert endpoint.requests == 0


def test_the_largest_allowed_token_is_sent(
    endpoint: IntrospectionEndpoint, secret_file: Path, clock: FakeClock
) -> None:
    token = "a" * (MAX_TOKEN_BYTES - 2) + "=="
    endpoint.answers[token] = active()
    assert make(endpoint, secret_file, clock).authenticate(token).subject == "alice"


# --- caching and revocation ---------------------------------------------------------------------


def test_a_cache_hit_does_not_ask_the_endpoint_again(
    endpoint: IntrospectionEndpoint, secret_file: Path, clock: FakeClock
) -> None:
    endpoint.answers[TOKEN] = active()
    introspector = make(endpoint, secret_file, clock)

    first = introspector.authenticate(TOKEN)
    clock.advance(30)
    assert introspector.authenticate(TOKEN) == first
    assert endpoint.requests == 1


@pytest.mark.parametrize(
    ("exp_in", "max_cache_ttl", "lifetime"),
    [(3600, 60, 60), (20, 60, 20)],
    ids=["bounded-by-max-cache-ttl", "bounded-by-exp"],
)
def test_a_cache_entry_expires_at_the_earlier_of_exp_and_max_cache_ttl(
    endpoint: IntrospectionEndpoint,
    secret_file: Path,
    clock: FakeClock,
    exp_in: int,
    max_cache_ttl: int,
    lifetime: int,
) -> None:
    endpoint.answers[TOKEN] = active(exp=T0 + exp_in)
    introspector = make(endpoint, secret_file, clock, max_cache_ttl=max_cache_ttl)
    introspector.authenticate(TOKEN)

    clock.now = T0 + lifetime - 0.5
    introspector.authenticate(TOKEN)
    assert endpoint.requests == 1
    clock.now = T0 + lifetime
    if lifetime < exp_in:
        introspector.authenticate(TOKEN)  # the entry is gone; the endpoint is asked again
    else:
        with pytest.raises(ExpiredTokenError):  # the token itself has expired
            introspector.authenticate(TOKEN)
    assert endpoint.requests == 2


def test_a_token_without_exp_is_cached_for_max_cache_ttl(
    endpoint: IntrospectionEndpoint, secret_file: Path, clock: FakeClock
) -> None:
    endpoint.answers[TOKEN] = {"active": True, "sub": "alice"}
    introspector = make(endpoint, secret_file, clock, max_cache_ttl=10)
    introspector.authenticate(TOKEN)
    clock.advance(9.9)
    introspector.authenticate(TOKEN)
    clock.advance(0.1)
    introspector.authenticate(TOKEN)
    assert endpoint.requests == 2


def test_a_revoked_token_is_refused_once_its_cache_entry_expires(
    endpoint: IntrospectionEndpoint, secret_file: Path, clock: FakeClock
) -> None:
    endpoint.answers[TOKEN] = active()
    introspector = make(endpoint, secret_file, clock, max_cache_ttl=30)
    introspector.authenticate(TOKEN)

    endpoint.answers[TOKEN] = {"active": False}  # revoked at the provider
    clock.advance(29)
    assert introspector.authenticate(TOKEN).subject == "alice"  # the bound max_cache_ttl accepts
    clock.advance(1)
    with pytest.raises(InvalidTokenError, match="not active"):
        introspector.authenticate(TOKEN)


def test_max_cache_ttl_zero_introspects_every_request(
    endpoint: IntrospectionEndpoint, secret_file: Path, clock: FakeClock
) -> None:
    endpoint.answers[TOKEN] = active()
    introspector = make(endpoint, secret_file, clock, max_cache_ttl=0)
    for _ in range(3):
        introspector.authenticate(TOKEN)
    assert endpoint.requests == 3

    endpoint.answers[TOKEN] = {"active": False}
    with pytest.raises(InvalidTokenError):  # revocation is immediate
        introspector.authenticate(TOKEN)


def test_refusals_are_not_cached(
    endpoint: IntrospectionEndpoint, secret_file: Path, clock: FakeClock
) -> None:
    introspector = make(endpoint, secret_file, clock)
    for _ in range(2):
        with pytest.raises(InvalidTokenError):
            introspector.authenticate(TOKEN)
    assert endpoint.requests == 2

    endpoint.answers[TOKEN] = active()  # e.g. the provider had not stored it yet
    assert introspector.authenticate(TOKEN).subject == "alice"


def test_the_cache_holds_at_most_cache_max_entries_tokens(
    endpoint: IntrospectionEndpoint, secret_file: Path, clock: FakeClock
) -> None:
    tokens = [f"token-{index}" for index in range(3)]
    for token in tokens:
        endpoint.answers[token] = active()
    introspector = make(endpoint, secret_file, clock, cache_max_entries=2)
    for token in tokens:
        introspector.authenticate(token)

    introspector.authenticate(tokens[2])  # recent: cached
    assert endpoint.requests == 3
    introspector.authenticate(tokens[0])  # evicted by the third: asked again
    assert endpoint.requests == 4


# --- endpoint failures: 503, never an identity, never a 401 --------------------------------------


def unavailable(introspector: TokenIntrospector, token: str = TOKEN) -> str:
    with pytest.raises(IntrospectionUnavailableError) as caught:
        introspector.authenticate(token)
    assert not isinstance(caught.value, InvalidTokenError)  # the client is not to blame
    assert caught.value.code == "introspection_unavailable"
    return str(caught.value)


def test_refused_client_credentials_are_an_outage_logged_loudly(
    endpoint: IntrospectionEndpoint,
    tmp_path: Path,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wrong = tmp_path / "wrong-secret"
    wrong.write_text("not-the-secret\n", encoding="utf-8")
    endpoint.answers[TOKEN] = active()

    message = unavailable(make(endpoint, wrong, clock))

    assert "client credentials" in message
    assert endpoint.bad_auth == 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors and CLIENT_ID in errors[0].getMessage() and str(wrong) in errors[0].getMessage()


@pytest.mark.parametrize(
    ("status", "raw", "match"),
    [
        (500, b'{"error": "server_error"}', "HTTP 500"),
        (200, b"<html>maintenance</html>", "not valid JSON"),
        (200, b'[{"active": true}]', "not a JSON object"),
        (200, b'{"active": false, "active": true, "sub": "alice"}', "duplicate"),
        (200, b'{"active": true, "sub": "alice", "exp": NaN}', "not valid JSON"),
    ],
    ids=["500", "html", "array", "duplicate-active", "nan"],
)
def test_an_unusable_endpoint_answer_is_unavailable(
    endpoint: IntrospectionEndpoint,
    secret_file: Path,
    clock: FakeClock,
    status: int,
    raw: bytes,
    match: str,
) -> None:
    endpoint.status, endpoint.raw = status, raw
    assert match in unavailable(make(endpoint, secret_file, clock))


def test_an_endpoint_that_is_down_is_unavailable(secret_file: Path, clock: FakeClock) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = IntrospectionSettings(
        url=f"http://127.0.0.1:{port}{PATH}", client_id=CLIENT_ID, client_secret_file=secret_file
    )
    assert "no answer" in unavailable(TokenIntrospector(settings, clock=clock))


def test_an_endpoint_slower_than_the_timeout_is_unavailable(
    endpoint: IntrospectionEndpoint, secret_file: Path, clock: FakeClock
) -> None:
    introspector = make(endpoint, secret_file, clock, path="/slow", timeout=0.2)
    assert "no answer" in unavailable(introspector)


def test_redirects_are_not_followed(
    endpoint: IntrospectionEndpoint, secret_file: Path, clock: FakeClock
) -> None:
    endpoint.answers[TOKEN] = active()
    message = unavailable(make(endpoint, secret_file, clock, path="/redirect"))
    assert "HTTP 302" in message
    assert endpoint.requests == 0  # the credentials never went to the redirect target


def test_an_oversized_response_is_refused(
    endpoint: IntrospectionEndpoint, secret_file: Path, clock: FakeClock
) -> None:
    endpoint.raw = b'{"active": true, "sub": "alice", "pad": "' + b"x" * MAX_BODY_BYTES + b'"}'
    assert "exceeds" in unavailable(make(endpoint, secret_file, clock))


def test_any_failure_of_an_injected_post_is_unavailable(
    secret_file: Path, clock: FakeClock
) -> None:
    # A message that would leak the token.
    message = unavailable(failing(lambda body: RuntimeError(body.decode()), secret_file, clock))
    assert TOKEN not in message and "RuntimeError" in message


# --- the client secret file ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "content", [None, "", "\n", b"\xff\xfe"], ids=["missing", "empty", "newline", "binary"]
)
def test_an_unusable_secret_file_is_a_config_error_naming_it(
    tmp_path: Path, content: str | bytes | None
) -> None:
    path = tmp_path / "secret"
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    elif isinstance(content, bytes):
        path.write_bytes(content)
    settings = IntrospectionSettings(
        url="https://idp.test/introspect", client_id=CLIENT_ID, client_secret_file=path
    )
    with pytest.raises(ConfigError, match=str(path)):
        TokenIntrospector(settings)


# --- secrets never leak -------------------------------------------------------------------------


def test_neither_token_nor_secret_appears_in_errors_or_logs(
    endpoint: IntrospectionEndpoint,
    secret_file: Path,
    tmp_path: Path,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = tmp_path / "wrong"
    wrong.write_text("wrong-" + SECRET, encoding="utf-8")
    good = make(endpoint, secret_file, clock)
    scenarios: list[tuple[TokenIntrospector, Any]] = [
        (good, {"active": False}),
        (good, active(exp=T0 - 1)),
        (good, active(sub="bad,subject")),
        (good, 500),
        (good, b"not json " + TOKEN.encode()),
        (make(endpoint, wrong, clock), active()),
        (make(endpoint, secret_file, clock, path="/redirect"), active()),
        (good, active()),
    ]
    messages: list[str] = [repr(good)]
    for introspector, answer in scenarios:
        endpoint.status, endpoint.raw = 200, None
        if isinstance(answer, int):
            endpoint.status = answer
        elif isinstance(answer, bytes):
            endpoint.raw = answer
        else:
            endpoint.answers[TOKEN] = answer
        try:
            identity = introspector.authenticate(TOKEN)
            messages.append(repr(identity.claims) + identity.subject)
        except ExtAuthzError as error:
            messages.append(f"{error!r} {error.__cause__!r} {error.__context__!r}")
    messages += [record.getMessage() for record in caplog.records]
    messages += [record.exc_text or "" for record in caplog.records]

    secret_forms = (TOKEN, SECRET, "wrong-" + SECRET, "s3cr%3Aet")
    for text in messages:
        for secret in secret_forms:
            assert secret not in text
    assert any(r.levelno >= logging.WARNING for r in caplog.records)  # failures were logged


# --- BearerAuthenticator ------------------------------------------------------------------------


class Recorder:
    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: list[str] = []

    def authenticate(self, value: str) -> Identity:
        self.seen.append(value)
        return Identity(subject=self.name, method=self.name)


def test_bearer_routes_jws_shaped_tokens_to_jwt_and_the_rest_to_introspection() -> None:
    jwt, introspection = Recorder("jwt"), Recorder("introspection")
    bearer = BearerAuthenticator(jwt, introspection)

    assert bearer.authenticate("a.b.c").method == "jwt"
    assert bearer.authenticate("opaque-token").method == "introspection"
    assert bearer.authenticate("a.b").method == "introspection"
    assert bearer.authenticate("a.b.c.d.e").method == "introspection"  # JWE shape: not a JWS
    assert jwt.seen == ["a.b.c"]
    assert introspection.seen == ["opaque-token", "a.b", "a.b.c.d.e"]


def test_bearer_refuses_a_kind_of_token_nothing_is_configured_for() -> None:
    with pytest.raises(InvalidTokenError, match="no JWT issuers configured"):
        BearerAuthenticator(None, Recorder("introspection")).authenticate("a.b.c")
    with pytest.raises(InvalidTokenError, match="opaque tokens are not accepted"):
        BearerAuthenticator(Recorder("jwt"), None).authenticate("opaque")


def test_bearer_passes_introspection_outages_through_unchanged(
    secret_file: Path, clock: FakeClock
) -> None:
    introspector = failing(lambda _: TimeoutError("timed out"), secret_file, clock)
    bearer = BearerAuthenticator(None, introspector)
    with pytest.raises(IntrospectionUnavailableError):
        bearer.authenticate(TOKEN)
