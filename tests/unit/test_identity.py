"""identity/jwt.py and identity/jwks.py: every token refusal, with its specific error class."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from fakes import StaticKeys
from hypothesis import given, settings
from hypothesis import strategies as st
from jose import jwk, jwt
from pydantic import ValidationError

from ext_authz.errors import ConfigError, ExpiredTokenError, InvalidTokenError
from ext_authz.identity.jwks import load_jwks_file
from ext_authz.identity.jwt import JwtVerifier, sign_token
from ext_authz.models import Identity
from ext_authz.settings import ProviderSettings, load_settings

NOW = 1_700_000_000
ISSUER = "https://issuer.test"

# --- helpers --------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@functools.cache
def load_private_key(private_pem: str) -> Any:
    return serialization.load_pem_private_key(private_pem.encode(), password=None)


def sign_raw(header: bytes, payload: bytes, private_pem: str) -> str:
    """RS256 over exactly these header and payload bytes (for JSON jose would never write)."""
    key = load_private_key(private_pem)
    signing_input = f"{b64(header)}.{b64(payload)}".encode()
    signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input.decode()}.{b64(signature)}"


def claims_json(**overrides: Any) -> dict[str, Any]:
    claims = {"iss": ISSUER, "aud": "api", "sub": "alice", "iat": NOW, "exp": NOW + 300}
    claims.update(overrides)
    return claims


def at(now: float) -> Callable[[], float]:
    return lambda: now


@pytest.fixture
def jwks(jwks_file: Path) -> tuple[Any, ...]:
    return load_jwks_file(jwks_file)


@pytest.fixture
def make_verifier(provider_settings: ProviderSettings, jwks) -> Callable[..., JwtVerifier]:
    """``make_verifier(clock=..., keys=[...], **provider_overrides)``."""

    def make(*, clock: float = NOW, keys: Any = None, **overrides: Any) -> JwtVerifier:
        provider = provider_settings.model_copy(update=overrides)
        return JwtVerifier(
            [(provider, StaticKeys(jwks if keys is None else keys))], clock=at(clock)
        )

    return make


@pytest.fixture
def verifier(make_verifier) -> JwtVerifier:
    return make_verifier()


@pytest.fixture
def token(make_token) -> Callable[..., str]:
    """A valid token issued at NOW unless claims or headers say otherwise."""

    def make(**kwargs: Any) -> str:
        return make_token(now=NOW, **kwargs)

    return make


def refused(verifier: JwtVerifier, token: str) -> InvalidTokenError:
    with pytest.raises(InvalidTokenError) as caught:
        verifier.authenticate(token)
    return caught.value


def refused_not_expired(verifier: JwtVerifier, token: str) -> InvalidTokenError:
    error = refused(verifier, token)
    assert not isinstance(error, ExpiredTokenError)
    return error


# --- accepted tokens ----------------------------------------------------------------------------


def test_valid_token_gives_its_identity(verifier, token) -> None:
    identity = verifier.authenticate(
        token(sub="alice", roles=["viewer", "editor"], email="a@x.test")
    )

    assert isinstance(identity, Identity)
    assert identity.subject == "alice"
    assert identity.roles == ("viewer", "editor")
    assert identity.authenticated is True
    assert identity.issuer == ISSUER
    assert identity.claims["email"] == "a@x.test"


def test_token_without_roles_has_no_roles(verifier, token) -> None:
    assert verifier.authenticate(token()).roles == ()


def test_space_separated_roles_string_is_split(verifier, token) -> None:
    assert verifier.authenticate(token(roles="viewer editor")).roles == ("viewer", "editor")


def test_roles_come_from_a_configured_nested_claim_path(make_verifier, token) -> None:
    verifier = make_verifier(roles_claim="realm_access.roles")

    identity = verifier.authenticate(token(realm_access={"roles": ["admin"]}, roles=["ignored"]))

    assert identity.roles == ("admin",)


@pytest.mark.parametrize(
    ("path", "claims"),
    [
        ("https://example.com/roles", {"https://example.com/roles": ["admin"]}),  # Auth0
        ("resource_access.b.api.roles", {"resource_access": {"b.api": {"roles": ["admin"]}}}),
        ("a.b", {"a.b": ["admin"], "a": {"b": ["other"]}}),  # the longest key wins
    ],
)
def test_roles_claim_names_may_contain_dots(make_verifier, token, path, claims) -> None:
    verifier = make_verifier(roles_claim=path)

    assert verifier.authenticate(token(**claims)).roles == ("admin",)


def test_missing_nested_roles_claim_means_no_roles(make_verifier, token) -> None:
    verifier = make_verifier(roles_claim="realm_access.roles")

    assert verifier.authenticate(token(realm_access="not-a-mapping")).roles == ()


def test_subject_comes_from_a_configured_claim(make_verifier, token) -> None:
    verifier = make_verifier(subject_claim="preferred_username")

    assert verifier.authenticate(token(preferred_username="bob")).subject == "bob"


def test_audience_list_containing_the_configured_audience_is_accepted(verifier, token) -> None:
    assert verifier.authenticate(token(aud=["other", "api"])).subject == "alice"


def test_token_without_kid_is_accepted_when_the_issuer_has_one_key(verifier, token) -> None:
    assert verifier.authenticate(token(headers={"kid": None})).subject == "alice"


def test_fractional_numeric_dates_are_accepted(verifier, token) -> None:
    assert verifier.authenticate(token(iat=NOW - 0.5, exp=NOW + 299.5)).subject == "alice"


def test_token_signed_by_sign_token_verifies(verifier, rsa_keypair) -> None:
    signed = sign_token(claims_json(sub="carol"), rsa_keypair.private_pem, rsa_keypair.kid)

    assert verifier.authenticate(signed).subject == "carol"


def test_hmac_issuer_accepts_its_hs256_tokens_only(provider_settings) -> None:
    secret = b"0123456789abcdef0123456789abcdef"
    oct_key = {"kty": "oct", "k": b64(secret), "kid": "h1"}
    provider = provider_settings.model_copy(update={"algorithms": ("HS256",)})
    verifier = JwtVerifier([(provider, StaticKeys([oct_key]))], clock=at(NOW))
    good = jwt.encode(claims_json(), secret.decode(), algorithm="HS256", headers={"kid": "h1"})
    forged = jwt.encode(claims_json(), "wrong-secret", algorithm="HS256", headers={"kid": "h1"})

    assert verifier.authenticate(good).subject == "alice"
    refused(verifier, forged)


# --- time claims --------------------------------------------------------------------------------


def test_expired_token_is_refused_as_expired(verifier, token) -> None:
    with pytest.raises(ExpiredTokenError):
        verifier.authenticate(token(iat=NOW - 600, exp=NOW - 31))


def test_token_expired_within_the_clock_skew_is_accepted(verifier, token) -> None:
    assert verifier.authenticate(token(iat=NOW - 600, exp=NOW - 29)).subject == "alice"


def test_clock_skew_is_configurable(make_verifier, token) -> None:
    strict = make_verifier(clock_skew=0)

    with pytest.raises(ExpiredTokenError):
        strict.authenticate(token(iat=NOW - 600, exp=NOW - 1))


def test_the_clock_decides_expiry(make_verifier, token) -> None:
    issued = token(iat=NOW, exp=NOW + 60)

    assert make_verifier(clock=NOW + 60).authenticate(issued).subject == "alice"
    with pytest.raises(ExpiredTokenError):
        make_verifier(clock=NOW + 91).authenticate(issued)


def test_token_without_exp_is_refused(verifier, token) -> None:
    error = refused_not_expired(verifier, token(exp=None))
    assert "exp" in str(error)


@pytest.mark.parametrize(
    "exp",
    [str(NOW + 300), True, False, [NOW + 300], {"t": NOW + 300}, f"{NOW + 300}.0"],
    ids=repr,
)
def test_non_numeric_exp_is_refused(verifier, token, exp: Any) -> None:
    refused_not_expired(verifier, token(exp=exp))


@pytest.mark.parametrize("literal", [b"null", b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_null_or_non_finite_exp_is_refused(verifier, rsa_keypair, literal: bytes) -> None:
    header = json.dumps({"alg": "RS256", "kid": rsa_keypair.kid}).encode()
    payload = json.dumps(claims_json(exp="EXP")).encode().replace(b'"EXP"', literal)

    refused_not_expired(verifier, sign_raw(header, payload, rsa_keypair.private_pem))


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
def test_numeric_date_beyond_float_range_is_refused_as_invalid(verifier, token, claim) -> None:
    refused_not_expired(verifier, token(**{claim: 10**400}))


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_time_claim_in_the_future_beyond_the_skew_is_refused(verifier, token, claim) -> None:
    refused_not_expired(verifier, token(**{claim: NOW + 31}))


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_time_claim_in_the_future_within_the_skew_is_accepted(verifier, token, claim) -> None:
    assert verifier.authenticate(token(**{claim: NOW + 29})).subject == "alice"


@pytest.mark.parametrize("claim", ["nbf", "iat"])
@pytest.mark.parametrize("value", ["1700000000", True, None])
def test_non_numeric_nbf_or_iat_is_refused(verifier, rsa_keypair, claim, value) -> None:
    header = json.dumps({"alg": "RS256", "kid": rsa_keypair.kid}).encode()
    payload = json.dumps(claims_json(**{claim: value})).encode()
    signed = sign_raw(header, payload, rsa_keypair.private_pem)

    if value is None:  # null is the same as absent
        assert verifier.authenticate(signed).subject == "alice"
    else:
        refused_not_expired(verifier, signed)


def test_lifetime_over_the_default_maximum_is_refused(verifier, token) -> None:
    refused_not_expired(verifier, token(iat=NOW, exp=NOW + 86_400 + 1))


def test_lifetime_at_the_configured_maximum_is_accepted(make_verifier, token) -> None:
    verifier = make_verifier(max_lifetime=600)

    assert verifier.authenticate(token(iat=NOW, exp=NOW + 600)).subject == "alice"
    refused_not_expired(verifier, token(iat=NOW, exp=NOW + 601))


def test_lifetime_without_iat_is_measured_from_now(make_verifier, token) -> None:
    verifier = make_verifier(max_lifetime=600)

    refused_not_expired(verifier, token(iat=None, exp=NOW + 601))
    assert verifier.authenticate(token(iat=None, exp=NOW + 599)).subject == "alice"


def test_backdated_iat_counts_against_the_lifetime(make_verifier, token) -> None:
    verifier = make_verifier(max_lifetime=600)

    refused_not_expired(verifier, token(iat=NOW - 3600, exp=NOW + 60))


# --- issuer and audience ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "iss",
    [
        None,
        "https://evil.test",
        "https://issuer.test/",
        "HTTPS://ISSUER.TEST",
        1,
        ["https://issuer.test"],
    ],
    ids=repr,
)
def test_missing_or_wrong_issuer_is_refused(verifier, token, iss) -> None:
    refused_not_expired(verifier, token(iss=iss))


@pytest.mark.parametrize(
    "aud",
    [None, "other", "API", ["other"], [], ["api", 1], 1, {"api": True}, ""],
    ids=repr,
)
def test_missing_or_wrong_audience_is_refused(verifier, token, aud) -> None:
    refused_not_expired(verifier, token(aud=aud))


def test_audience_claim_client_id_for_access_tokens_without_aud(make_verifier, token) -> None:
    """Amazon Cognito access tokens carry the app client id in client_id and have no aud."""
    verifier = make_verifier(audience_claim="client_id", audiences=("app-client-1",))

    assert verifier.authenticate(token(aud=None, client_id="app-client-1")).subject == "alice"
    for wrong in ({"client_id": "app-client-2"}, {"client_id": None}, {"client_id": ["x"]}):
        error = refused_not_expired(verifier, token(aud="app-client-1", **wrong))
        assert "'client_id'" in str(error)  # the configured claim decides; aud is no fallback


# --- header: algorithm, key selection, forbidden parameters ----------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE", "", None])
@pytest.mark.parametrize("with_signature", [False, True])
def test_alg_none_is_refused(verifier, rsa_keypair, alg, with_signature) -> None:
    header = {"alg": alg, "kid": rsa_keypair.kid, "typ": "JWT"}
    payload = json.dumps(claims_json()).encode()
    signed = sign_raw(json.dumps(header).encode(), payload, rsa_keypair.private_pem)
    unsigned = signed.rsplit(".", 1)[0] + "."

    refused_not_expired(verifier, signed if with_signature else unsigned)


def test_token_without_alg_is_refused(verifier, rsa_keypair) -> None:
    header = json.dumps({"kid": rsa_keypair.kid}).encode()
    signed = sign_raw(header, json.dumps(claims_json()).encode(), rsa_keypair.private_pem)

    refused_not_expired(verifier, signed)


@pytest.mark.parametrize("alg", ["RS384", "RS512"])
def test_algorithm_outside_the_issuers_list_is_refused(verifier, token, alg) -> None:
    refused_not_expired(verifier, token(algorithm=alg))


@pytest.mark.parametrize("alg", ["ES256", "HS256"])
def test_token_of_another_algorithm_family_is_refused(verifier, token, alg) -> None:
    if alg == "ES256":
        key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        signing_key = key.decode()
    else:
        signing_key = "a-shared-secret-of-some-length!!"

    refused_not_expired(verifier, token(algorithm=alg, key=signing_key))


def test_hs256_signed_with_the_public_key_pem_is_refused(verifier, rsa_keypair) -> None:
    """Key confusion: the RSA public key (which anyone has) used as an HMAC secret."""
    header = b64(json.dumps({"alg": "HS256", "kid": rsa_keypair.kid, "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims_json(roles=["admin"])).encode())
    for secret in (rsa_keypair.public_pem, rsa_keypair.public_pem.strip()):
        mac = hmac.new(secret.encode(), f"{header}.{payload}".encode(), hashlib.sha256)
        refused_not_expired(verifier, f"{header}.{payload}.{b64(mac.digest())}")


def test_unknown_kid_is_refused(verifier, token) -> None:
    refused_not_expired(verifier, token(headers={"kid": "someone-elses-key"}))


@pytest.mark.parametrize("kid", [1, ["test-key-1"], {"k": 1}, True])
def test_non_string_kid_is_refused(verifier, rsa_keypair, kid) -> None:
    header = json.dumps({"alg": "RS256", "kid": kid}).encode()
    signed = sign_raw(header, json.dumps(claims_json()).encode(), rsa_keypair.private_pem)

    refused_not_expired(verifier, signed)


def test_token_signed_by_an_unconfigured_key_is_refused(
    verifier, make_token, second_rsa_keypair
) -> None:
    forged = make_token(now=NOW, key=second_rsa_keypair.private_pem)  # claims our kid

    refused_not_expired(verifier, forged)


def test_token_without_kid_is_refused_when_the_issuer_has_several_keys(
    make_verifier, token, rsa_keypair, second_rsa_keypair
) -> None:
    verifier = make_verifier(keys=[rsa_keypair.public_jwk, second_rsa_keypair.public_jwk])

    refused_not_expired(verifier, token(headers={"kid": None}))
    assert verifier.authenticate(token()).subject == "alice"


def test_kid_selects_the_key_when_the_issuer_has_several(
    make_verifier, make_token, rsa_keypair, second_rsa_keypair
) -> None:
    verifier = make_verifier(keys=[rsa_keypair.public_jwk, second_rsa_keypair.public_jwk])
    second = make_token(
        now=NOW, key=second_rsa_keypair.private_pem, headers={"kid": second_rsa_keypair.kid}
    )
    mislabelled = make_token(now=NOW, key=second_rsa_keypair.private_pem)  # kid of the first

    assert verifier.authenticate(second).subject == "alice"
    refused_not_expired(verifier, mislabelled)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("jku", "https://evil.test/jwks.json"),
        ("x5u", "https://evil.test/cert.pem"),
        ("jwk", {"kty": "RSA", "n": "AQAB", "e": "AQAB"}),
        ("x5c", ["MIIB"]),
        ("crit", ["exp"]),
        ("crit", []),
        ("zip", "DEF"),
    ],
)
def test_header_parameter_that_chooses_keys_or_processing_is_refused(
    verifier, token, name, value
) -> None:
    refused_not_expired(verifier, token(headers={name: value}))


def test_embedded_jwk_is_never_used_as_the_key(verifier, make_token, second_rsa_keypair) -> None:
    forged = make_token(
        now=NOW,
        key=second_rsa_keypair.private_pem,
        headers={"jwk": second_rsa_keypair.public_jwk, "kid": None},
    )

    refused_not_expired(verifier, forged)


@pytest.mark.parametrize("cty", ["JWT", "jwt", "Jwt"])
def test_nested_token_content_type_is_refused(verifier, token, cty) -> None:
    refused_not_expired(verifier, token(headers={"cty": cty}))


# --- encoding and structure --------------------------------------------------------------------


def test_duplicate_member_in_the_header_is_refused(verifier, rsa_keypair) -> None:
    header = f'{{"alg":"none","alg":"RS256","kid":"{rsa_keypair.kid}"}}'.encode()
    signed = sign_raw(header, json.dumps(claims_json()).encode(), rsa_keypair.private_pem)

    refused_not_expired(verifier, signed)


def test_duplicate_member_in_the_payload_is_refused(verifier, rsa_keypair) -> None:
    header = json.dumps({"alg": "RS256", "kid": rsa_keypair.kid}).encode()
    payload = json.dumps(claims_json()).encode()[:-1] + b',"sub":"admin"}'
    signed = sign_raw(header, payload, rsa_keypair.private_pem)

    refused_not_expired(verifier, signed)


def flip_unused_bits(segment: str) -> str:
    """Same decoded bytes, another spelling: change the unused low bits of the last character."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    unused = {2: 4, 3: 2}[len(segment) % 4]  # trailing characters -> unused bits in the last
    last = alphabet.index(segment[-1])
    flipped = alphabet[last ^ ((1 << unused) - 1)]
    assert base64.urlsafe_b64decode(segment + "==") == base64.urlsafe_b64decode(
        segment[:-1] + flipped + "=="
    )
    return segment[:-1] + flipped


def test_non_canonical_base64url_signature_is_refused(verifier, token) -> None:
    header, payload, signature = token().split(".")
    assert len(signature) % 4 != 0  # 256 bytes -> 342 characters: the last one has spare bits

    refused_not_expired(verifier, f"{header}.{payload}.{flip_unused_bits(signature)}")


def test_non_canonical_base64url_payload_is_refused(verifier, rsa_keypair) -> None:
    header = json.dumps({"alg": "RS256", "kid": rsa_keypair.kid}).encode()
    payload = json.dumps(claims_json()).encode()
    while len(b64(payload)) % 4 == 0:
        payload += b" "
    h, p, s = sign_raw(header, payload, rsa_keypair.private_pem).split(".")

    refused_not_expired(verifier, f"{h}.{flip_unused_bits(p)}.{s}")


@pytest.mark.parametrize("part", [0, 1, 2])
def test_padded_or_standard_base64_segment_is_refused(verifier, token, part) -> None:
    parts = token().split(".")
    padded = list(parts)
    padded[part] += "=" * (-len(parts[part]) % 4 or 4)
    standard = list(parts)
    standard[part] = standard[part].replace("-", "+").replace("_", "/") + "+/"

    refused_not_expired(verifier, ".".join(padded))
    refused_not_expired(verifier, ".".join(standard))


def test_oversized_token_is_refused(verifier, token) -> None:
    big = token(padding="x" * 9000)
    assert len(big) > 8192

    error = refused_not_expired(verifier, big)
    assert "larger" in str(error)


def test_token_size_limit_is_configurable(make_verifier, token) -> None:
    small = make_verifier(max_token_bytes=700)

    assert small.authenticate(token(padding="x" * 10)).subject == "alice"
    refused_not_expired(small, token(padding="x" * 200))


def test_tampered_payload_is_refused(verifier, token) -> None:
    header, _, signature = token(roles=["viewer"]).split(".")
    forged = b64(json.dumps(claims_json(roles=["admin"])).encode())

    refused_not_expired(verifier, f"{header}.{forged}.{signature}")


def test_tampered_signature_is_refused(verifier, token) -> None:
    header, payload, signature = token().split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
    raw[0] ^= 1

    refused_not_expired(verifier, f"{header}.{payload}.{b64(bytes(raw))}")


def test_stripped_signature_is_refused(verifier, token) -> None:
    header, payload, _ = token().split(".")

    refused_not_expired(verifier, f"{header}.{payload}.")
    refused_not_expired(verifier, f"{header}.{payload}")


@pytest.mark.parametrize("count", [1, 2, 4, 5])
def test_token_with_wrong_number_of_parts_is_refused(verifier, token, count) -> None:
    parts = token().split(".")
    parts = (parts * 2)[:count]

    refused_not_expired(verifier, ".".join(parts))


@pytest.mark.parametrize(
    "raw",
    [b"[]", b'"x"', b"1", b"null", b"{", b"\xff\xfe", b'{"a":' * 5000 + b"1" + b"}" * 5000],
    ids=["array", "string", "number", "null", "truncated", "not-utf8", "deep"],
)
def test_header_or_payload_that_is_not_a_json_object_is_refused(verifier, rsa_keypair, raw) -> None:
    good_header = json.dumps({"alg": "RS256", "kid": rsa_keypair.kid}).encode()
    good_payload = json.dumps(claims_json()).encode()

    refused_not_expired(verifier, sign_raw(raw, good_payload, rsa_keypair.private_pem))
    refused_not_expired(verifier, sign_raw(good_header, raw, rsa_keypair.private_pem))


def test_deeply_nested_header_is_refused_as_invalid_token_at_every_depth(
    verifier, rsa_keypair
) -> None:
    payload = b64(json.dumps(claims_json()).encode())
    for depth in range(500, sys.getrecursionlimit() + 1):
        nested = "[" * depth + "]" * depth
        header = b64(f'{{"alg":"RS256","kid":"{rsa_keypair.kid}","x":{nested}}}'.encode())
        refused_not_expired(verifier, f"{header}.{payload}.{b64(bytes(256))}")


# --- identity claims ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sub",
    [
        None,
        "",
        "alice\n",
        "alice\r\nx-auth-roles: admin",
        "a\x00",
        "a\x7f",
        "alice,admin",
        7,
        ["a"],
    ],
    ids=repr,
)
def test_unusable_subject_is_refused(verifier, token, sub) -> None:
    refused_not_expired(verifier, token(sub=sub))


@pytest.mark.parametrize(
    "roles",
    [5, {"admin": True}, [1, 2], ["viewer", None], ["a,admin"], ["a\n"], [""], True],
    ids=repr,
)
def test_roles_claim_that_is_not_a_list_of_usable_roles_is_refused(verifier, token, roles) -> None:
    refused_not_expired(verifier, token(roles=roles))


def as_upstream_reads_it(identity: Identity) -> tuple[str, tuple[str, ...]]:
    """x-auth-subject / x-auth-roles after an HTTP parser trims OWS and splits on commas."""
    header = ",".join(identity.roles)
    roles = tuple(role.strip(" ") for role in header.split(",")) if header else ()
    return identity.subject.strip(" "), roles


@pytest.mark.parametrize(
    ("sub", "roles"),
    [("alice", ["viewer", " admin"]), ("alice", ["admin "]), ("bob ", ["viewer"]), (" bob", [])],
    ids=repr,
)
def test_identity_reads_the_same_upstream_as_in_policy(verifier, token, sub, roles) -> None:
    try:
        identity = verifier.authenticate(token(sub=sub, roles=roles))
    except InvalidTokenError:
        return
    assert as_upstream_reads_it(identity) == (identity.subject, identity.roles)


# --- properties ---------------------------------------------------------------------------------

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
CLAIM_NAMES = ("iss", "aud", "sub", "iat", "nbf", "exp", "roles")
# Near-valid claims: a few claims replaced by arbitrary JSON or deleted, so that most examples
# get past the issuer check and exercise the time, audience and identity checks.
NEAR_VALID_CLAIMS = st.builds(
    lambda changed, deleted: {
        name: value
        for name, value in {**claims_json(nbf=NOW, roles=["viewer"]), **changed}.items()
        if name not in deleted
    },
    st.dictionaries(st.sampled_from(CLAIM_NAMES), JSON_VALUES, max_size=2),
    st.sets(st.sampled_from(CLAIM_NAMES), max_size=1),
)
PROPERTY_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    database=None,
)


def property_verifier(rsa_keypair) -> JwtVerifier:
    provider = ProviderSettings(
        name="p", issuer=ISSUER, audiences=("api",), jwks_file=Path("/unused/jwks.json")
    )
    return JwtVerifier([(provider, StaticKeys([rsa_keypair.public_jwk]))], clock=at(NOW))


def verify_or_refuse(verifier: JwtVerifier, candidate: str) -> None:
    try:
        identity = verifier.authenticate(candidate)
    except InvalidTokenError:
        return
    assert isinstance(identity, Identity)
    assert identity.authenticated


SEGMENTS = st.one_of(
    st.text(
        alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/.", max_size=60
    ),
    st.builds(b64, st.binary(max_size=40)),
    st.builds(lambda v: b64(json.dumps(v).encode()), JSON_VALUES),
)


@PROPERTY_SETTINGS
@given(
    candidate=st.one_of(
        st.text(max_size=200),
        st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
        st.lists(SEGMENTS, min_size=1, max_size=5).map(".".join),
    )
)
def test_arbitrary_input_is_refused_as_invalid_token_or_verified(
    rsa_keypair, candidate: str
) -> None:
    verify_or_refuse(property_verifier(rsa_keypair), candidate)


@PROPERTY_SETTINGS
@given(
    claims=NEAR_VALID_CLAIMS,
    header_extra=st.dictionaries(
        st.sampled_from(["kid", "typ", "cty", "alg", "x"]), JSON_VALUES, max_size=2
    ),
)
def test_signed_token_with_arbitrary_claims_is_refused_as_invalid_token_or_verified(
    rsa_keypair, claims: dict[str, Any], header_extra: dict[str, Any]
) -> None:
    header = {"alg": "RS256", "kid": rsa_keypair.kid, **header_extra}
    signed = sign_raw(
        json.dumps(header).encode(), json.dumps(claims).encode(), rsa_keypair.private_pem
    )

    verify_or_refuse(property_verifier(rsa_keypair), signed)


# --- configuration: keys and algorithms --------------------------------------------------------


def test_jwks_with_private_key_material_is_a_config_error(provider_settings, rsa_keypair) -> None:
    private_jwk = {**jwk.construct(rsa_keypair.private_pem, "RS256").to_dict(), "kid": "k"}
    assert "d" in private_jwk

    with pytest.raises(ConfigError, match="private"):
        JwtVerifier([(provider_settings, StaticKeys([private_jwk]))])


def test_jwks_without_a_key_for_the_issuers_algorithms_is_a_config_error(
    provider_settings, rsa_keypair
) -> None:
    es_only = provider_settings.model_copy(update={"algorithms": ("ES256",)})
    rs512_key = {**rsa_keypair.public_jwk, "alg": "RS512"}

    with pytest.raises(ConfigError):
        JwtVerifier([(es_only, StaticKeys([rsa_keypair.public_jwk]))])
    with pytest.raises(ConfigError):
        JwtVerifier([(provider_settings, StaticKeys([rs512_key]))])


def test_hmac_issuer_never_uses_an_rsa_public_key_as_a_secret(
    provider_settings, rsa_keypair
) -> None:
    hmac_only = provider_settings.model_copy(update={"algorithms": ("HS256",)})

    with pytest.raises(ConfigError):
        JwtVerifier([(hmac_only, StaticKeys([rsa_keypair.public_jwk]))])


@pytest.mark.parametrize(
    "algorithms",
    [("HS256", "RS256"), ("RS256", "HS512"), ("ES256", "HS384"), ("none",), ("RS256", "none"), ()],
)
def test_mixed_unknown_or_empty_algorithm_list_is_refused(jwks_file, algorithms) -> None:
    with pytest.raises(ValidationError):
        ProviderSettings(
            name="p", issuer=ISSUER, audiences=("api",), jwks_file=jwks_file, algorithms=algorithms
        )


def test_mixed_algorithm_families_in_a_settings_file_are_a_config_error(
    tmp_path, jwks_file
) -> None:
    config = tmp_path / "ext-authz.yaml"
    config.write_text(
        f"""
policy: {{model: model.conf, policy: policy.csv}}
providers:
  - name: p
    issuer: {ISSUER}
    audiences: [api]
    jwks_file: {jwks_file}
    algorithms: [RS256, HS256]
""",
        encoding="utf-8",
    )

    with pytest.raises(ConfigError, match=r"providers\[0\]\.algorithms"):
        load_settings(config)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "cannot read"),
        ("{not json", "not valid JSON"),
        ('{"keys": []}', "non-empty"),
        ("[]", "non-empty"),
        ('{"keys": [{"n": "x"}]}', "kty"),
        ('{"keys": ["x"]}', "kty"),
        ('{"keys": [{"kty": "RSA", "use": "enc"}]}', "use"),
    ],
)
def test_unusable_jwks_file_is_a_config_error_naming_the_file(tmp_path, content, match) -> None:
    path = tmp_path / "jwks.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")

    with pytest.raises(ConfigError, match=match) as caught:
        load_jwks_file(path)
    assert str(path) in str(caught.value)
