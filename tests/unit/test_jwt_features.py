"""identity/jwt.py features: typ, required claims, scopes, key rotation, and the token cache."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from fakes import FakeClock, StaticKeys

from ext_authz.errors import ExpiredTokenError, InvalidTokenError, KeysUnavailableError
from ext_authz.identity.cache import TokenCache
from ext_authz.identity.jwks import KeySet
from ext_authz.identity.jwt import JwtVerifier
from ext_authz.settings import ProviderSettings

NOW = 1_700_000_000
ISSUER = "https://issuer.test"  # what the provider_settings fixture configures
AUDIENCE = "api"
KeyPair = Any  # conftest's KeyPair: private_pem, public_jwk, kid


class SwappableKeys:
    """A KeySource whose key set a test replaces, as a JWKS refresh would (new version)."""

    def __init__(self, keys: Sequence[Mapping[str, Any]]) -> None:
        self._keyset: KeySet | None = KeySet(tuple(keys), fetched_at=0.0, version=1)
        self.refresh_requests = 0
        self.unavailable = False
        self.on_refetch: Sequence[Mapping[str, Any]] | None = None  # what the IdP now publishes

    def swap(self, keys: Sequence[Mapping[str, Any]]) -> None:
        version = self._keyset.version + 1 if self._keyset else 1
        self._keyset = KeySet(tuple(keys), fetched_at=0.0, version=version)

    def current(self) -> KeySet:
        if self.unavailable or self._keyset is None:
            raise KeysUnavailableError("keys for provider 'test' are not loaded yet")
        return self._keyset

    def await_refetch(self, timeout: float) -> bool:
        self.refresh_requests += 1
        if self.on_refetch is None:
            return False
        self.swap(self.on_refetch)
        return True


def provider(settings: ProviderSettings, **overrides: Any) -> ProviderSettings:
    return settings.model_copy(update=overrides)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_raw(header: Mapping[str, Any], claims: Mapping[str, Any], keypair: KeyPair) -> str:
    """RS256 with exactly this header (jose always writes ``typ: JWT``; this does not)."""
    key = serialization.load_pem_private_key(keypair.private_pem.encode(), password=None)
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr,call-arg]
    return f"{signing_input}.{b64(signature)}"


def claims(**overrides: Any) -> dict[str, Any]:
    return {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "iat": NOW,
        "exp": NOW + 300,
        **overrides,
    }


@pytest.fixture
def make_verifier(
    provider_settings: ProviderSettings, rsa_keypair: KeyPair
) -> Callable[..., JwtVerifier]:
    """``make_verifier(source=..., cache=..., clock=..., **provider_overrides)``."""

    def make(
        *,
        source: Any = None,
        cache: TokenCache | None = None,
        clock: Callable[[], float] | None = None,
        **overrides: Any,
    ) -> JwtVerifier:
        keys = source if source is not None else StaticKeys([rsa_keypair.public_jwk])
        settings = provider(provider_settings, **overrides)
        return JwtVerifier([(settings, keys)], cache, clock or FakeClock(NOW))

    return make


# --- typ --------------------------------------------------------------------------------------


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "AT+JWT", "Application/At+Jwt"])
def test_access_token_typ_is_accepted_when_configured(make_verifier, rsa_keypair, typ) -> None:
    token = sign_raw({"alg": "RS256", "kid": rsa_keypair.kid, "typ": typ}, claims(), rsa_keypair)
    assert make_verifier(typ="at+jwt").authenticate(token).subject == "alice"


def test_configured_typ_with_application_prefix_accepts_the_short_form(
    make_verifier, rsa_keypair
) -> None:
    token = sign_raw(
        {"alg": "RS256", "kid": rsa_keypair.kid, "typ": "at+jwt"}, claims(), rsa_keypair
    )
    assert make_verifier(typ="application/at+jwt").authenticate(token).subject == "alice"


@pytest.mark.parametrize("typ", ["JWT", "jwt", "application/jwt", "id+jwt", "at+jwt2", "", 1, None])
def test_other_or_missing_typ_is_refused_when_configured(make_verifier, rsa_keypair, typ) -> None:
    header: dict[str, Any] = {"alg": "RS256", "kid": rsa_keypair.kid}
    if typ is not None:
        header["typ"] = typ
    token = sign_raw(header, claims(), rsa_keypair)
    with pytest.raises(InvalidTokenError, match="'typ'"):
        make_verifier(typ="at+jwt").authenticate(token)


@pytest.mark.parametrize("typ", ["JWT", "at+jwt", "logout+jwt", None])
def test_any_typ_is_accepted_when_not_configured(make_verifier, rsa_keypair, typ) -> None:
    header: dict[str, Any] = {"alg": "RS256", "kid": rsa_keypair.kid}
    if typ is not None:
        header["typ"] = typ
    token = sign_raw(header, claims(), rsa_keypair)
    assert make_verifier().authenticate(token).subject == "alice"


# --- required claims --------------------------------------------------------------------------


def test_token_with_the_required_claims_is_accepted(make_verifier, make_token) -> None:
    token = make_token(now=NOW, jti="t-1", tenant="acme")
    verifier = make_verifier(required_claims=("jti", "tenant"))
    assert verifier.authenticate(token).claims["tenant"] == "acme"


@pytest.mark.parametrize(
    ("present", "missing"), [({"tenant": "acme"}, "jti"), ({"jti": "t"}, "tenant")]
)
def test_token_missing_a_required_claim_is_refused_naming_it(
    make_verifier, make_token, present, missing
) -> None:
    verifier = make_verifier(required_claims=("jti", "tenant"))
    with pytest.raises(InvalidTokenError, match=f"'{missing}'"):
        verifier.authenticate(make_token(now=NOW, **present))


def test_required_claim_with_a_null_value_is_refused(make_verifier, rsa_keypair) -> None:
    token = sign_raw({"alg": "RS256", "kid": rsa_keypair.kid}, claims(jti=None), rsa_keypair)
    with pytest.raises(InvalidTokenError, match="'jti'"):
        make_verifier(required_claims=("jti",)).authenticate(token)


# --- scopes -----------------------------------------------------------------------------------


def test_scopes_come_from_the_space_separated_scope_claim(make_verifier, make_token) -> None:
    identity = make_verifier().authenticate(make_token(now=NOW, scope="books:read  books:write"))
    assert identity.scopes == ("books:read", "books:write")


def test_scopes_come_from_the_scp_list(make_verifier, make_token) -> None:
    identity = make_verifier().authenticate(make_token(now=NOW, scp=["books:read", "admin"]))
    assert identity.scopes == ("books:read", "admin")


def test_scope_and_scp_are_united_without_duplicates(make_verifier, make_token) -> None:
    token = make_token(now=NOW, scope="a b a", scp=["b", "c", "c"])
    assert make_verifier().authenticate(token).scopes == ("a", "b", "c")


def test_token_without_scopes_has_none(make_verifier, make_token) -> None:
    assert make_verifier().authenticate(make_token(now=NOW)).scopes == ()


@pytest.mark.parametrize(
    "bad", [{"scope": 5}, {"scope": {"read": True}}, {"scp": True}, {"scp": 1.5}, {"scp": {"a": 1}}]
)
def test_scope_claim_that_is_not_a_scope_list_is_refused(make_verifier, make_token, bad) -> None:
    with pytest.raises(InvalidTokenError, match="scope list"):
        make_verifier().authenticate(make_token(now=NOW, **bad))


# --- kid and key rotation ---------------------------------------------------------------------


def test_unknown_kid_asks_the_source_for_a_refresh_and_is_refused(
    provider_settings, make_token, rsa_keypair
) -> None:
    keys = StaticKeys([rsa_keypair.public_jwk])
    verifier = JwtVerifier([(provider_settings, keys)], clock=FakeClock(NOW))
    with pytest.raises(InvalidTokenError, match="'kid'"):
        verifier.authenticate(make_token(now=NOW, headers={"kid": "rotated-in-later"}))
    assert keys.refresh_requests == 1
    verifier.authenticate(make_token(now=NOW))
    assert keys.refresh_requests == 1  # a known kid asks for nothing


def test_token_signed_with_a_new_key_is_accepted_once_the_source_has_it(
    make_verifier, make_token, rsa_keypair, second_rsa_keypair
) -> None:
    source = SwappableKeys([rsa_keypair.public_jwk])
    verifier = make_verifier(source=source)
    token = make_token(
        now=NOW, key=second_rsa_keypair.private_pem, headers={"kid": second_rsa_keypair.kid}
    )
    with pytest.raises(InvalidTokenError, match="'kid'"):
        verifier.authenticate(token)
    assert source.refresh_requests == 1

    source.swap([rsa_keypair.public_jwk, second_rsa_keypair.public_jwk])

    assert verifier.authenticate(token).subject == "alice"
    assert verifier.authenticate(make_token(now=NOW)).subject == "alice"  # old key still there


def test_first_token_of_a_key_the_refetch_brings_is_accepted_at_once(
    make_verifier, make_token, rsa_keypair, second_rsa_keypair
) -> None:
    """An IdP that signs with a new key as soon as it publishes it (oidc-provider, Keycloak):
    the request that meets the new kid waits for the refetch instead of being refused."""
    source = SwappableKeys([rsa_keypair.public_jwk])
    source.on_refetch = [second_rsa_keypair.public_jwk, rsa_keypair.public_jwk]
    cache = TokenCache(100)
    verifier = make_verifier(source=source, cache=cache)
    token = make_token(
        now=NOW, key=second_rsa_keypair.private_pem, headers={"kid": second_rsa_keypair.kid}
    )

    assert verifier.authenticate(token).subject == "alice"
    assert source.refresh_requests == 1
    source.on_refetch = None
    assert verifier.authenticate(token).subject == "alice"  # cached under the new key set
    assert source.refresh_requests == 1


@pytest.mark.parametrize("cached", [False, True], ids=["uncached", "cached"])
def test_token_of_a_removed_key_is_refused_after_rotation(
    make_verifier, make_token, rsa_keypair, second_rsa_keypair, cached: bool
) -> None:
    """A cached token too: its entry holds only for the key set version it was verified with."""
    source = SwappableKeys([rsa_keypair.public_jwk])
    cache = TokenCache(100) if cached else None
    verifier = make_verifier(source=source, cache=cache)
    token = make_token(now=NOW)
    verifier.authenticate(token)
    assert cache is None or len(cache) == 1
    source.swap([second_rsa_keypair.public_jwk])
    with pytest.raises(InvalidTokenError, match="'kid'"):
        verifier.authenticate(token)


def test_keys_unavailable_propagates_and_is_not_turned_into_a_401(
    make_verifier, make_token, rsa_keypair
) -> None:
    source = SwappableKeys([rsa_keypair.public_jwk])
    source.unavailable = True
    verifier = make_verifier(source=source)  # construction tolerates keys not loaded yet
    with pytest.raises(KeysUnavailableError) as caught:
        verifier.authenticate(make_token(now=NOW))
    assert not isinstance(caught.value, InvalidTokenError)
    assert caught.value.code == "keys_unavailable"


# --- the token cache --------------------------------------------------------------------------


def test_verified_token_is_served_from_the_cache(make_verifier, make_token, verify_calls) -> None:
    verifier = make_verifier(cache=TokenCache(100))
    token = make_token(now=NOW, roles=["viewer"])
    first = verifier.authenticate(token)
    second = verifier.authenticate(token)
    assert second == first
    assert len(verify_calls) == 1


def test_without_a_cache_every_authentication_verifies(
    make_verifier, make_token, verify_calls
) -> None:
    verifier = make_verifier()
    token = make_token(now=NOW)
    verifier.authenticate(token)
    verifier.authenticate(token)
    assert len(verify_calls) == 2


def test_cache_of_zero_entries_verifies_every_time(make_verifier, make_token, verify_calls) -> None:
    verifier = make_verifier(cache=TokenCache(0))
    token = make_token(now=NOW)
    verifier.authenticate(token)
    verifier.authenticate(token)
    assert len(verify_calls) == 2


def test_refused_token_is_not_cached(make_verifier, make_token, verify_calls) -> None:
    cache = TokenCache(100)
    verifier = make_verifier(cache=cache)
    token = make_token(now=NOW, aud="another-api")
    for _ in range(2):
        with pytest.raises(InvalidTokenError, match="audience"):
            verifier.authenticate(token)
    assert len(cache) == 0
    assert len(verify_calls) == 2


def test_cached_entry_is_dropped_at_exp(make_verifier, make_token, verify_calls) -> None:
    clock = FakeClock(NOW)
    verifier = make_verifier(cache=TokenCache(100), clock=clock)
    token = make_token(now=NOW, exp=NOW + 300)
    verifier.authenticate(token)
    clock.now = NOW + 299
    verifier.authenticate(token)
    assert len(verify_calls) == 1
    clock.now = NOW + 300  # exp: the entry goes; within the clock skew the token still verifies
    verifier.authenticate(token)
    assert len(verify_calls) == 2


def test_cached_token_is_refused_as_expired_after_exp(make_verifier, make_token) -> None:
    clock = FakeClock(NOW)
    verifier = make_verifier(cache=TokenCache(100), clock=clock, clock_skew=0)
    token = make_token(now=NOW, exp=NOW + 300)
    verifier.authenticate(token)
    clock.now = NOW + 301
    with pytest.raises(ExpiredTokenError):
        verifier.authenticate(token)


def test_key_set_version_change_forces_reverification(
    make_verifier, make_token, rsa_keypair, verify_calls
) -> None:
    source = SwappableKeys([rsa_keypair.public_jwk])
    verifier = make_verifier(source=source, cache=TokenCache(100))
    token = make_token(now=NOW)
    verifier.authenticate(token)
    verifier.authenticate(token)
    assert len(verify_calls) == 1
    source.swap([rsa_keypair.public_jwk, {**rsa_keypair.public_jwk, "kid": "same-key-new-kid"}])
    verifier.authenticate(token)
    assert len(verify_calls) == 2
    verifier.authenticate(token)  # cached again, against the new version
    assert len(verify_calls) == 2


def test_cached_token_is_refused_when_its_issuers_keys_become_unavailable(
    make_verifier, make_token, rsa_keypair
) -> None:
    source = SwappableKeys([rsa_keypair.public_jwk])
    verifier = make_verifier(source=source, cache=TokenCache(100))
    token = make_token(now=NOW)
    verifier.authenticate(token)
    source.unavailable = True  # e.g. beyond max_staleness
    with pytest.raises(KeysUnavailableError):
        verifier.authenticate(token)


def test_oversized_token_is_refused_before_the_cache_is_consulted(
    make_verifier, make_token
) -> None:
    cache = TokenCache(100)
    verifier = make_verifier(cache=cache)
    token = make_token(now=NOW, padding="x" * 9000)
    with pytest.raises(InvalidTokenError, match="larger than"):
        verifier.authenticate(token)
    assert len(cache) == 0
