"""Interoperability with a real OpenID Connect provider, end to end.

oidc-provider (npm, OpenID Certified; tests/idp/) issues the tokens; every request goes through the
real Envoy to the real service and, when allowed, to the echo upstream. The service knows only the
provider's issuer URL and finds its keys through discovery.

- Tokens come from the client-credentials grant with RFC 8707 resource indicators: the JWT
  resource (our API) gets RFC 9068 JWT access tokens (``typ: at+jwt``, ``sub`` = client id,
  ``scope``, and the Keycloak-style ``realm_access.roles`` claim the provider adds), the opaque
  resource gets opaque tokens checked by RFC 7662 introspection, and a third resource is someone
  else's API.
- Key rotation is a provider restart on the same issuer with another key set: oidc-provider
  publishes every key it is given and signs with the first one of the algorithm, so [new, old]
  signs with new while old still verifies, and then [new] withdraws old.
- Timings are small (keys refetched every 3 s at most stale after 6 s, unknown kids refetched at
  most once a second, introspection answers cached for 3 s) so the module runs in well under a
  minute.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from harness import Client, Reply, eventually, make_jws, start_stack
from oidc_idp import OidcProvider, SigningKey

from ext_authz.demo.stack import DemoStack

pytestmark = pytest.mark.e2e

API = "https://books.example/api"  # our API: JWT access tokens
REPORTS = "https://reports.example/api"  # our other API: opaque tokens, introspected
OTHER = "https://other.example/api"  # someone else's API (JWT)
OTHER_OPAQUE = "https://ledger.example/api"  # someone else's API (opaque)
SHORT = "https://reports.example/short"  # our API's short-lived opaque tokens

EDITOR = "books-editor"  # a service with the editor role
READER = "books-reader"  # a service with no role, only scopes
EXT_AUTHZ = "ext-authz"  # our service's own client, for introspection

CLIENTS = [
    {
        "client_id": client_id,
        "client_secret": secrets.token_urlsafe(24),
        "grant_types": ["client_credentials"],
        "redirect_uris": [],
        "response_types": [],
        "token_endpoint_auth_method": "client_secret_basic",
        **extra,
    }
    for client_id, extra in (
        (EDITOR, {"scope": "books:read books:write reports:read other:read"}),
        (READER, {"scope": "books:read reports:read"}),
        (EXT_AUTHZ, {}),
    )
]
RESOURCES = {
    API: {"format": "jwt", "scope": "books:read books:write", "ttl": 300},
    REPORTS: {"format": "opaque", "scope": "reports:read", "ttl": 300},
    OTHER: {"format": "jwt", "scope": "other:read", "ttl": 300},
    OTHER_OPAQUE: {"format": "opaque", "scope": "reports:read", "ttl": 300},
    SHORT: {"format": "opaque", "scope": "reports:read", "ttl": 2},
}
ROLES_CLAIM = "realm_access.roles"
CLAIMS = {EDITOR: {"realm_access": {"roles": ["editor"]}}}

KEYS = {
    "refresh_interval": 3,
    "min_refresh_interval": 1,
    "unknown_kid_interval": 1,
    "max_staleness": 6,
    "timeout": 1,
    "initial_wait": 10,
}
MAX_CACHE_TTL = 3

# Beside the demo's public routes: roles decide books, scopes decide reads and reports.
POLICY = """\
p, everyone, GET, /healthz, *, *, allow
p, everyone, GET, /public/**, *, *, allow
p, role:editor, GET|POST, /api/books, *, *, allow
p, scope:books:read, GET, /api/books, *, *, allow
p, scope:reports:read, GET, /api/reports, *, *, allow
"""


def _settings(idp: OidcProvider, state: Path, **introspection: Any) -> dict[str, Any]:
    """Settings overrides: the provider by issuer URL alone (discovery) and introspection."""
    state.mkdir(parents=True, exist_ok=True)
    (state / "interop-policy.csv").write_text(POLICY)
    secret = state / "introspection-secret"
    secret.write_text(introspection.pop("secret", idp.secrets[EXT_AUTHZ]) + "\n")
    return {
        "providers": [
            {
                "name": "oidc-provider",
                "issuer": idp.issuer,
                "discovery": True,
                "audiences": [API],
                "algorithms": ["RS256"],
                "typ": "at+jwt",
                "roles_claim": ROLES_CLAIM,
                "keys": KEYS,
            }
        ],
        "credentials": {
            "introspection": {
                "url": f"{idp.issuer}/token/introspection",
                "client_id": EXT_AUTHZ,
                "client_secret_file": str(secret),
                "issuer": idp.issuer,
                "audiences": [REPORTS, SHORT],
                "subject_claim": "client_id",  # client-credentials tokens have no sub here
                "roles_claim": ROLES_CLAIM,
                "max_cache_ttl": MAX_CACHE_TTL,
                **introspection,
            }
        },
        "policy": {"policy": str(state / "interop-policy.csv")},
        # The flood comes from 127.0.0.1: neither blocked nor rate limited here.
        "security": {"block": {"enabled": False}},
        "rate_limits": {"rules": []},
    }


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    provider = OidcProvider(
        tmp_path_factory.mktemp("idp"), clients=CLIENTS, resources=RESOURCES, claims=CLAIMS
    )
    provider.start([SigningKey()])
    yield provider
    provider.stop()


def _stack(tmp_path_factory: pytest.TempPathFactory, idp: OidcProvider, **introspection: Any):
    state = tmp_path_factory.mktemp("interop")
    return start_stack(state, _settings(idp, state, **introspection))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, idp: OidcProvider) -> Iterator[DemoStack]:
    running = _stack(tmp_path_factory, idp)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(stack: DemoStack) -> Client:
    return Client(stack.state_dir, stack.ports.https)


def assert_invalid_token(stack: DemoStack, reply: Reply, before: int) -> None:
    assert reply.status == 401, (reply.status, reply.body[:300])
    assert 'error="invalid_token"' in reply.headers["www-authenticate"]
    assert stack.upstream_requests == before, "a refused request reached the upstream"


def fresh_token_accepted(idp: OidcProvider, client: Client) -> str:
    """A new token from the provider, once the service accepts it (after an outage the keys
    come back with the next refetch)."""
    token = idp.token(EDITOR, API, "books:read")
    eventually(lambda: client.get("/api/books", token=token), lambda r: r.status == 200, 10)
    return token


# --- discovery, JWT access tokens, claims ---------------------------------------------------------


def test_discovery_finds_the_keys_and_a_client_credentials_jwt_is_accepted(
    idp: OidcProvider, stack: DemoStack, client: Client
) -> None:
    token = idp.token(EDITOR, API, "books:read books:write")
    reply = client.send("POST", "/api/books", token=token)
    assert reply.status == 200, reply.body
    seen = reply.upstream_headers
    assert seen["x-auth-subject"] == EDITOR  # oidc-provider: sub = client_id for this grant
    assert seen["x-auth-roles"] == "editor"  # from realm_access.roles
    assert "authorization" in seen  # the token itself goes on to the API
    counts = idp.counts()
    assert counts.get("/.well-known/openid-configuration", 0) >= 1
    assert counts.get("/jwks", 0) >= 1


def test_scopes_are_mapped_and_decide_where_no_role_does(
    idp: OidcProvider, stack: DemoStack, client: Client
) -> None:
    reader = idp.token(READER, API, "books:read")
    reply = client.get("/api/books", token=reader)
    assert reply.status == 200, reply.body
    assert reply.upstream_headers["x-auth-subject"] == READER
    assert "x-auth-roles" not in reply.upstream_headers  # no roles claim: no roles
    before = stack.upstream_requests
    reply = client.send("POST", "/api/books", token=reader)  # books:read does not write
    assert reply.status == 403, reply.body
    assert reply.json()["reason"] == "access_denied"
    assert stack.upstream_requests == before
    no_scope = idp.token(READER, API)
    assert client.get("/api/books", token=no_scope).status == 403


def test_a_token_for_another_resource_is_401_invalid_token(
    idp: OidcProvider, stack: DemoStack, client: Client
) -> None:
    before = stack.upstream_requests
    other = idp.token(EDITOR, OTHER, "other:read")  # same issuer, same keys, other audience
    reply = client.get("/api/books", token=other)
    assert_invalid_token(stack, reply, before)
    assert "audience" in reply.headers["www-authenticate"]
    # An opaque token for someone else's API: introspection says active, but not for us.
    ledger = idp.token(EDITOR, OTHER_OPAQUE, "reports:read")
    assert_invalid_token(stack, client.get("/api/reports", token=ledger), before)


# --- key rotation ---------------------------------------------------------------------------------


class Traffic(threading.Thread):
    """Sends one token over and over until stopped; records every status."""

    def __init__(self, client: Client, token: str) -> None:
        super().__init__(daemon=True)
        self.client, self.token = client, token
        self.statuses: list[int] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.statuses.append(self.client.get("/api/books", token=self.token).status)
            time.sleep(0.02)

    def stop(self) -> list[int]:
        self._halt.set()
        self.join(10)
        return self.statuses


def test_signing_key_rotation_while_traffic_flows(
    idp: OidcProvider, stack: DemoStack, client: Client
) -> None:
    old_token = fresh_token_accepted(idp, client)
    traffic = Traffic(client, old_token)
    traffic.start()
    # An unknown-kid refetch (e.g. the flood test's) within the last unknown_kid_interval would
    # rate-limit the one the new key needs, and its first token would be refused: wait it out.
    time.sleep(KEYS["unknown_kid_interval"])
    try:
        # 1. The provider publishes a new key and signs with it; the old one still verifies.
        new = SigningKey()
        idp.start([new, *idp.keys])
        # Its first token is accepted at once: that request waits for the unknown-kid refetch.
        new_token = idp.token(EDITOR, API, "books:read")
        reply = client.get("/api/books", token=new_token)
        assert reply.status == 200, reply.body
        assert reply.upstream_headers["x-auth-subject"] == EDITOR
        assert client.get("/api/books", token=old_token).status == 200
        during_overlap = list(traffic.statuses)

        # 2. The old key is withdrawn: its tokens are refused once the keys are refetched,
        # the cached one included; the new key's tokens go on working.
        idp.start([new])
        eventually(lambda: client.get("/api/books", token=old_token), lambda r: r.status != 200, 8)
        before = stack.upstream_requests
        assert_invalid_token(stack, client.get("/api/books", token=old_token), before)
        assert client.get("/api/books", token=new_token).status == 200
    finally:
        statuses = traffic.stop()
    assert set(during_overlap) == {200}, during_overlap
    # The old key's traffic: allowed, then refused for good once the key is gone; never a 5xx.
    assert set(statuses) <= {200, 401}, statuses
    first_refusal = statuses.index(401)
    assert set(statuses[first_refusal:]) == {401}, statuses
    assert len(statuses) > 20


def _ok(reply: Reply) -> bool:
    return reply.status == 200


def test_a_flood_of_unknown_kids_refetches_keys_at_the_configured_rate(
    idp: OidcProvider, stack: DemoStack, client: Client
) -> None:
    token = fresh_token_accepted(idp, client)
    claims = _claims_of(token)
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    before = idp.counts().get("/jwks", 0)
    started = time.monotonic()
    statuses = set()
    sent = 0
    while time.monotonic() - started < 4:
        header = {"alg": "RS256", "typ": "at+jwt", "kid": secrets.token_urlsafe(16)}
        statuses.add(client.get("/api/books", token=make_jws(header, claims, attacker)).status)
        sent += 1
    elapsed = time.monotonic() - started
    fetches = idp.counts().get("/jwks", 0) - before
    assert statuses == {401}
    # At most one refetch per unknown_kid_interval, plus the regular refreshes.
    bound = elapsed / KEYS["unknown_kid_interval"] + elapsed / KEYS["max_staleness"] * 2 + 2
    assert 1 <= fetches <= bound, (fetches, bound, sent)
    assert sent > 5 * bound
    assert client.get("/api/books", token=token).status == 200


def _claims_of(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


# --- provider outage ------------------------------------------------------------------------------


def test_provider_outage_keeps_known_keys_until_max_staleness_then_refuses(
    idp: OidcProvider, stack: DemoStack, client: Client
) -> None:
    token = fresh_token_accepted(idp, client)
    keys = idp.keys
    idp.stop()
    stopped = time.monotonic()
    try:
        statuses: list[tuple[float, Reply]] = []
        while time.monotonic() - stopped < KEYS["max_staleness"] + 3:
            statuses.append((time.monotonic() - stopped, client.get("/api/books", token=token)))
            time.sleep(0.1)
    finally:
        idp.start(keys)
    codes = [reply.status for _, reply in statuses]
    assert codes[0] == 200, codes
    assert set(codes) == {200, 503}, codes
    first_503 = codes.index(503)
    assert set(codes[first_503:]) == {503}, codes  # never allowed again once stale
    assert statuses[first_503][0] <= KEYS["max_staleness"] + 1
    assert statuses[first_503][1].json()["reason"] == "keys_unavailable"
    # The provider is back: the keys are refetched and the same token works again.
    eventually(lambda: client.get("/api/books", token=token), _ok, 8)


# --- opaque tokens: introspection -----------------------------------------------------------------


def test_opaque_token_is_introspected_once_then_cached_and_refused_after_revocation(
    idp: OidcProvider, stack: DemoStack, client: Client
) -> None:
    token = idp.token(EDITOR, REPORTS, "reports:read")
    assert token.count(".") == 0  # opaque, not a JWT
    introspections = idp.counts().get("/token/introspection", 0)
    reply = client.get("/api/reports", token=token)
    assert reply.status == 200, reply.body
    assert reply.upstream_headers["x-auth-subject"] == EDITOR
    assert reply.upstream_headers["x-auth-roles"] == "editor"
    for _ in range(5):
        assert client.get("/api/reports", token=token).status == 200
    assert idp.counts()["/token/introspection"] == introspections + 1  # the answer was cached

    idp.revoke(EDITOR, token)
    revoked = time.monotonic()
    eventually(lambda: client.get("/api/reports", token=token), lambda r: r.status != 200, 10)
    assert time.monotonic() - revoked <= MAX_CACHE_TTL + 1  # the cache entry's bound
    before = stack.upstream_requests
    reply = client.get("/api/reports", token=token)
    assert_invalid_token(stack, reply, before)
    assert reply.json()["reason"] == "invalid_token"


def test_an_introspection_answer_is_cached_no_longer_than_the_token_lives(
    idp: OidcProvider, stack: DemoStack, client: Client
) -> None:
    # The token lives 2 s, less than max_cache_ttl (3 s): once it expires it is refused, although
    # a cache bounded only by max_cache_ttl would still hold it.
    issued = time.monotonic()
    token = idp.token(READER, SHORT, "reports:read")
    assert client.get("/api/reports", token=token).status == 200
    time.sleep(max(0.0, issued + RESOURCES[SHORT]["ttl"] + 0.3 - time.monotonic()))
    assert time.monotonic() - issued < MAX_CACHE_TTL
    before = stack.upstream_requests
    assert_invalid_token(stack, client.get("/api/reports", token=token), before)


def test_without_caching_a_revoked_opaque_token_is_refused_at_once(
    tmp_path_factory: pytest.TempPathFactory, idp: OidcProvider
) -> None:
    running = _stack(tmp_path_factory, idp, max_cache_ttl=0)
    try:
        uncached = Client(running.state_dir, running.ports.https)
        token = idp.token(READER, REPORTS, "reports:read")
        introspections = idp.counts().get("/token/introspection", 0)
        for _ in range(3):
            reply = uncached.get("/api/reports", token=token)
            assert reply.status == 200, reply.body
            assert reply.upstream_headers["x-auth-subject"] == READER
        assert idp.counts()["/token/introspection"] == introspections + 3
        idp.revoke(READER, token)
        before = running.upstream_requests
        assert_invalid_token(running, uncached.get("/api/reports", token=token), before)
    finally:
        running.stop()


def test_introspection_with_credentials_the_provider_refuses_never_allows(
    tmp_path_factory: pytest.TempPathFactory, idp: OidcProvider
) -> None:
    # Our client secret was rotated at the provider: no opaque token can be checked, so none is
    # accepted, and the caller is not blamed (503, not 401). JWTs are unaffected.
    running = _stack(tmp_path_factory, idp, secret="not-the-secret")
    try:
        wrong = Client(running.state_dir, running.ports.https)
        token = idp.token(EDITOR, REPORTS, "reports:read")
        before = running.upstream_requests
        reply = wrong.get("/api/reports", token=token)
        assert reply.status == 503, reply.body
        assert reply.json()["reason"] == "introspection_unavailable"
        assert running.upstream_requests == before
        assert wrong.get("/api/books", token=idp.token(EDITOR, API, "books:read")).status == 200
    finally:
        running.stop()
