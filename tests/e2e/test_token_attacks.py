"""The JWT attack suite, through the real Envoy.

Every attack token asks for a route it would need (admin claims on /admin/stats) and must end in
a 401 whose body names the reason, whose WWW-Authenticate carries error="invalid_token", which
never echoes the token, and which never reaches the upstream. Positive controls (a correctly made
token is accepted) keep a broken setup from making every refusal pass for the wrong reason.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import string
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from harness import (
    Reply,
    b64url,
    demo_claims,
    issuer_kid,
    json_bytes,
    load_issuer_key,
    make_jws,
    rs256_signature,
)
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ext_authz.demo.keys import rsa_public_jwk

pytestmark = pytest.mark.e2e

ADMIN = "/admin/stats"
MAX_TOKEN_BYTES = 8192  # the demo config's max_token_bytes
DAY = 86400
B64URL_ALPHABET = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"


@dataclass(frozen=True)
class Keys:
    issuer: rsa.RSAPrivateKey
    kid: str
    jwks_text: str  # jwks.json as published
    attacker: rsa.RSAPrivateKey
    attacker_jwk: dict[str, str]

    def header(self, **extra: object) -> dict[str, object]:
        """The header the demo issuer writes (plus ``extra``; a None value removes a member)."""
        header: dict[str, object] = {"alg": "RS256", "typ": "JWT", "kid": self.kid}
        for name, value in extra.items():
            if value is None:
                header.pop(name, None)
            else:
                header[name] = value
        return header

    def sign(self, header: dict[str, object] | bytes, claims: dict[str, object] | bytes) -> str:
        return make_jws(header, claims, self.issuer)

    def forge(self, header: dict[str, object], claims: dict[str, object] | bytes) -> str:
        """Signed with the attacker's own key."""
        return make_jws(header, claims, self.attacker)


@pytest.fixture(scope="module")
def keys(stack) -> Keys:
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return Keys(
        issuer=load_issuer_key(stack.state_dir),
        kid=issuer_kid(stack.state_dir),
        jwks_text=(stack.state_dir / "jwks.json").read_text(),
        attacker=attacker,
        attacker_jwk=rsa_public_jwk(attacker.public_key()),
    )


def admin_claims(**overrides: object) -> dict[str, object]:
    return demo_claims("mallory", ["admin"], **overrides)


def assert_rejected(
    stack,
    client,
    token: str | None,
    *,
    path: str = ADMIN,
    reason: str = "invalid_token",
    headers: Sequence[tuple[str, str]] = (),
) -> Reply:
    """401 with ``reason``, the RFC 6750 header, no token echoed, and nothing upstream."""
    before = stack.upstream_requests
    reply = client.get(path, token=token, headers=headers)
    assert reply.status == 401, (reply.status, reply.body[:300])
    assert stack.upstream_requests == before, "a refused request reached the upstream"
    body = reply.body.decode()
    assert reply.json()["reason"] == reason, body
    challenges = reply.headers.get_all("www-authenticate") or []
    assert len(challenges) == 1, challenges
    assert challenges[0].startswith("Bearer ")
    if reason == "missing_credential":
        assert "error=" not in challenges[0]  # RFC 6750 3.1: no error code without a credential
    else:
        assert 'error="invalid_token"' in challenges[0], challenges[0]
    secrets = [token or ""] + [value for _, value in headers]
    for secret in secrets:
        # Neither the token nor any of its parts (header, claims, signature) is echoed back.
        for part in [secret, *secret.replace(",", ".").replace(" ", ".").split(".")]:
            if len(part) >= 16:
                assert part not in body, "the credential was echoed in the body"
                assert part not in challenges[0], "the credential was echoed in WWW-Authenticate"
    return reply


def assert_allowed(client, token: str, path: str = ADMIN) -> Reply:
    reply = client.get(path, token=token)
    assert reply.status == 200, (reply.status, reply.body[:300])
    return reply


# --- positive controls ------------------------------------------------------------------------


def test_valid_admin_token_in_the_authorization_header_is_accepted(client, token_for) -> None:
    seen = assert_allowed(client, token_for("ada", "admin")).upstream_headers
    assert seen["x-auth-subject"] == "ada"
    assert seen["x-auth-roles"] == "admin"


def test_hand_made_admin_token_is_accepted(client, keys) -> None:
    """The attack tokens below are made the same way: only the attack makes them fail."""
    seen = assert_allowed(client, keys.sign(keys.header(), admin_claims())).upstream_headers
    assert seen["x-auth-subject"] == "mallory"
    assert seen["x-auth-roles"] == "admin"


def test_viewer_token_cannot_reach_the_admin_route(stack, client, keys) -> None:
    before = stack.upstream_requests
    token = keys.sign(keys.header(), demo_claims("vera", ["viewer"]))
    assert client.get(ADMIN, token=token).status == 403
    assert stack.upstream_requests == before


def test_audience_list_that_includes_ours_is_accepted(client, keys) -> None:
    assert_allowed(client, keys.sign(keys.header(), admin_claims(aud=["other-api", "demo-api"])))


def test_token_just_under_the_size_limit_is_accepted(client, keys) -> None:
    token = _padded_token(keys, MAX_TOKEN_BYTES - 60)
    assert MAX_TOKEN_BYTES - 120 < len(token) <= MAX_TOKEN_BYTES
    assert_allowed(client, token)


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param(lambda t: {"iat": t - 60, "nbf": t - 60, "exp": t - 10}, id="exp-within-skew"),
        pytest.param(lambda t: {"nbf": t + 10}, id="nbf-within-skew"),
        pytest.param(lambda t: {"iat": t + 10, "exp": t + 600}, id="iat-within-skew"),
        pytest.param(lambda t: {"iat": t, "exp": t + DAY}, id="lifetime-exactly-max"),
        pytest.param(lambda t: {"iat": None, "nbf": None}, id="no-iat-no-nbf"),
    ],
)  # fmt: skip
def test_times_within_the_clock_skew_and_lifetime_are_accepted(client, keys, overrides) -> None:
    """Controls for the time attacks below: the limits, not the claims themselves, refuse."""
    assert_allowed(client, keys.sign(keys.header(), admin_claims(**overrides(int(time.time())))))


# --- alg none, HMAC with the public key, signature games --------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
@pytest.mark.parametrize("signature", ["empty", "junk", "rs256-of-this-input"])
def test_alg_none_is_refused(stack, client, keys, alg, signature) -> None:
    signing_input = (
        f"{b64url(json_bytes(keys.header(alg=alg)))}.{b64url(json_bytes(admin_claims()))}"
    )
    sig = {
        "empty": "",
        "junk": b64url(b"not-a-signature"),
        "rs256-of-this-input": b64url(rs256_signature(signing_input.encode(), keys.issuer)),
    }[signature]
    assert_rejected(stack, client, f"{signing_input}.{sig}")


def _public_key_forms(keys: Keys) -> dict[str, bytes]:
    public = keys.issuer.public_key()
    jwk = json.loads(keys.jwks_text)["keys"][0]
    return {
        "pem-spki": public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "pem-pkcs1": public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
        ),
        "der-spki": public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "jwk-json": json.dumps(jwk).encode(),
        "jwk-json-compact": json.dumps(jwk, separators=(",", ":")).encode(),
        "jwks-file": keys.jwks_text.encode(),
    }


@pytest.mark.parametrize(
    "form", ["pem-spki", "pem-pkcs1", "der-spki", "jwk-json", "jwk-json-compact", "jwks-file"]
)
@pytest.mark.parametrize("with_kid", [True, False], ids=["kid", "no-kid"])
def test_hs256_signed_with_the_public_key_is_refused(stack, client, keys, form, with_kid) -> None:
    secret = _public_key_forms(keys)[form]
    header = keys.header(alg="HS256", kid=None if not with_kid else keys.kid)
    signing_input = f"{b64url(json_bytes(header))}.{b64url(json_bytes(admin_claims()))}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    assert_rejected(stack, client, f"{signing_input}.{b64url(mac)}")


@pytest.mark.parametrize("shape", ["trailing-dot", "two-parts"])
def test_stripped_signature_is_refused(stack, client, keys, shape) -> None:
    header, payload, _ = keys.sign(keys.header(), admin_claims()).split(".")
    token = f"{header}.{payload}." if shape == "trailing-dot" else f"{header}.{payload}"
    assert_rejected(stack, client, token)


@pytest.mark.parametrize("change", ["roles", "sub", "exp"])
def test_tampered_payload_with_the_original_signature_is_refused(
    stack, client, keys, change
) -> None:
    claims = demo_claims("vera", ["viewer"])
    header, _, signature = keys.sign(keys.header(), claims).split(".")
    tampered = dict(claims)
    if change == "roles":
        tampered["roles"] = ["admin"]
    elif change == "sub":
        tampered.update(sub="ada", roles=["admin"])
    else:
        tampered.update(exp=int(str(claims["exp"])) + 60, roles=["admin"])
    assert_rejected(stack, client, f"{header}.{b64url(json_bytes(tampered))}.{signature}")


@pytest.mark.parametrize("with_kid", [True, False], ids=["kid", "no-kid"])
@pytest.mark.parametrize("alg", ["ES256", "ES384", "ES512"])
def test_ecdsa_with_zero_signature_is_refused(stack, client, keys, with_kid, alg) -> None:
    """The 'psychic signature' (r = s = 0); ECDSA is not even allowed for this issuer."""
    size = {"ES256": 64, "ES384": 96, "ES512": 132}[alg]
    header = keys.header(alg=alg, kid=keys.kid if with_kid else None)
    token = (
        f"{b64url(json_bytes(header))}.{b64url(json_bytes(admin_claims()))}.{b64url(bytes(size))}"
    )
    assert_rejected(stack, client, token)


@pytest.mark.parametrize("alg", ["PS256", "RS384", "RS512"])
def test_other_rsa_algorithms_with_the_issuer_key_are_refused(stack, client, keys, alg) -> None:
    """Correctly signed with the real key, but outside the issuer's algorithm list (RS256)."""
    signing_input = (
        f"{b64url(json_bytes(keys.header(alg=alg)))}.{b64url(json_bytes(admin_claims()))}"
    )
    if alg == "PS256":
        pss = padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH)
        signature = keys.issuer.sign(signing_input.encode(), pss, hashes.SHA256())
    else:
        digest = hashes.SHA384() if alg == "RS384" else hashes.SHA512()
        signature = keys.issuer.sign(signing_input.encode(), padding.PKCS1v15(), digest)
    assert_rejected(stack, client, f"{signing_input}.{b64url(signature)}")


# --- time and lifetime claims -----------------------------------------------------------------


def _time_cases() -> list[tuple[str, Callable[[int], dict[str, object]], str]]:
    bad, expired = "invalid_token", "expired_token"
    return [
        (
            "expired-beyond-skew",
            lambda t: {"iat": t - 720, "nbf": t - 720, "exp": t - 120},
            expired,
        ),
        ("expired-long-ago", lambda t: {"iat": 1000, "nbf": 1000, "exp": 2000}, expired),
        ("nbf-10-min-ahead", lambda t: {"nbf": t + 600, "exp": t + 1200}, bad),
        ("iat-10-min-ahead", lambda t: {"iat": t + 600, "exp": t + 1200}, bad),
        ("lifetime-2-days", lambda t: {"iat": t, "exp": t + 2 * DAY}, bad),
        ("lifetime-2-days-no-iat", lambda t: {"iat": None, "exp": t + 2 * DAY}, bad),
        ("missing-exp", lambda t: {"exp": None}, bad),
        ("string-exp-far", lambda t: {"exp": "9999999999"}, bad),
        ("string-exp-near", lambda t: {"exp": str(t + 600)}, bad),
        ("bool-exp", lambda t: {"exp": True}, bad),
        ("list-exp", lambda t: {"exp": [t + 600]}, bad),
        ("huge-exp", lambda t: {"iat": None, "exp": 10**30}, bad),
        ("string-nbf", lambda t: {"nbf": str(t)}, bad),
        ("string-iat", lambda t: {"iat": str(t)}, bad),
    ]


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [pytest.param(make, reason, id=name) for name, make, reason in _time_cases()],
)
def test_bad_time_claims_are_refused(stack, client, keys, overrides, reason) -> None:
    token = keys.sign(keys.header(), admin_claims(**overrides(int(time.time()))))
    assert_rejected(stack, client, token, reason=reason)


# --- issuer and audience ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"iss": "https://attacker.example"}, id="wrong-iss"),
        pytest.param({"iss": "https://demo.ext-authz.local/"}, id="iss-trailing-slash"),
        pytest.param({"iss": "HTTPS://DEMO.EXT-AUTHZ.LOCAL"}, id="iss-other-case"),
        pytest.param({"iss": ["https://demo.ext-authz.local"]}, id="iss-list"),
        pytest.param({"iss": None}, id="missing-iss"),
        pytest.param({"aud": "other-api"}, id="wrong-aud"),
        pytest.param({"aud": "demo-api "}, id="aud-trailing-space"),
        pytest.param({"aud": None}, id="missing-aud"),
        pytest.param({"aud": ["other-api", "another-api"]}, id="aud-list-without-ours"),
        pytest.param({"aud": []}, id="aud-empty-list"),
        pytest.param({"aud": {"demo-api": True}}, id="aud-object"),
    ],
)
def test_wrong_or_missing_issuer_and_audience_are_refused(stack, client, keys, overrides) -> None:
    assert_rejected(stack, client, keys.sign(keys.header(), admin_claims(**overrides)))


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"roles": ["viewer,admin"]}, id="comma-in-role"),
        pytest.param({"roles": ["viewer\r\nx-auth-roles: admin"]}, id="crlf-in-role"),
        pytest.param({"roles": [["admin"]]}, id="nested-role-list"),
        pytest.param({"roles": {"admin": True}}, id="role-object"),
        pytest.param({"sub": "ada\r\nx-auth-roles: admin"}, id="crlf-in-sub"),
        pytest.param({"sub": "ada,admin"}, id="comma-in-sub"),
        pytest.param({"sub": " ada"}, id="leading-space-in-sub"),
        pytest.param({"sub": ""}, id="empty-sub"),
        pytest.param({"sub": None}, id="missing-sub"),
        pytest.param({"sub": 42}, id="numeric-sub"),
    ],
)
def test_identity_values_that_cannot_be_forwarded_faithfully_are_refused(
    stack, client, keys, overrides
) -> None:
    """Correctly signed, but the subject or roles would be mangled (or split) in the upstream
    identity headers (x-auth-roles is comma-joined): refused, never passed on."""
    assert_rejected(stack, client, keys.sign(keys.header(), admin_claims(**overrides)))


@pytest.mark.parametrize(
    ("member", "spelled"),
    [("sub", b'"sub":"ada\\ud800"'), ("roles", b'"roles":["admin","\\udc00"]')],
    ids=["sub", "role"],
)
def test_lone_surrogates_in_identity_values_are_401_not_an_internal_error(
    stack, client, keys, member, spelled
) -> None:
    claims = json_bytes(admin_claims(**{member: None}))
    assert_rejected(stack, client, keys.sign(keys.header(), claims[:-1] + b"," + spelled + b"}"))


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(lambda c: c[:-1] + b',"x":NaN}', id="NaN"),
        pytest.param(lambda c: c[:-1] + b',"x":Infinity}', id="Infinity"),
        pytest.param(lambda c: c.replace(b'"exp":', b'"exp":1e400,"was":'), id="exp-1e400"),
        pytest.param(lambda c: c.replace(b'"sub":"mallory"', b'"sub":"ad\xff"'), id="bad-utf8"),
        pytest.param(lambda c: c + b"x", id="trailing-garbage"),
        pytest.param(lambda c: c + c, id="two-objects"),
        pytest.param(lambda c: b"[" + c + b"]", id="array"),
        pytest.param(lambda c: b"null", id="null"),
        pytest.param(lambda c: c[:-1] + b',"n":' + b"9" * 5000 + b"}", id="5000-digit-int"),
        pytest.param(
            lambda c: c[:-1] + b',"deep":' + b"[" * 2500 + b"]" * 2500 + b"}", id="deep-nesting"
        ),
    ],
)
def test_malformed_json_payloads_are_refused_even_when_signed(stack, client, keys, payload) -> None:
    assert_rejected(stack, client, keys.sign(keys.header(), payload(json_bytes(admin_claims()))))


# --- keys chosen by the token -----------------------------------------------------------------


def _attacker_certificate(keys: Keys) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "demo.ext-authz.local")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(keys.attacker.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(keys.attacker, hashes.SHA256())
    )
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


ATTACKER_JWKS = "https://attacker.example/.well-known/jwks.json"
KEY_ATTACKS: dict[str, Callable[[Keys], str]] = {
    "unknown-kid-real-key": lambda k: k.sign(k.header(kid="no-such-key"), admin_claims()),
    "attacker-key-and-kid": lambda k: k.forge(k.header(kid=k.attacker_jwk["kid"]), admin_claims()),
    "attacker-key-real-kid": lambda k: k.forge(k.header(), admin_claims()),
    "attacker-key-no-kid": lambda k: k.forge(k.header(kid=None), admin_claims()),
    "kid-not-a-string": lambda k: k.sign(k.header(kid=7), admin_claims()),
    "jku-attacker": lambda k: k.forge(
        k.header(kid=k.attacker_jwk["kid"], jku=ATTACKER_JWKS), admin_claims()
    ),
    "jku-real-signature": lambda k: k.sign(k.header(jku=ATTACKER_JWKS), admin_claims()),
    "jwk-attacker": lambda k: k.forge(
        k.header(kid=k.attacker_jwk["kid"], jwk=k.attacker_jwk), admin_claims()
    ),
    "jwk-attacker-no-kid": lambda k: k.forge(
        k.header(kid=None, jwk=k.attacker_jwk), admin_claims()
    ),
    "jwk-real-signature": lambda k: k.sign(
        k.header(jwk=json.loads(k.jwks_text)["keys"][0]), admin_claims()
    ),
    "x5u-attacker": lambda k: k.forge(
        k.header(kid=k.attacker_jwk["kid"], x5u="https://attacker.example/cert.pem"),
        admin_claims(),
    ),
    "x5u-real-signature": lambda k: k.sign(
        k.header(x5u="https://attacker.example/cert.pem"), admin_claims()
    ),
    "x5c-attacker": lambda k: k.forge(
        k.header(kid=None, x5c=[_attacker_certificate(k)]), admin_claims()
    ),
    "x5c-real-signature": lambda k: k.sign(
        k.header(x5c=[_attacker_certificate(k)]), admin_claims()
    ),
    "crit-exp": lambda k: k.sign(k.header(crit=["exp"]), admin_claims()),
    "crit-b64": lambda k: k.sign(k.header(crit=["b64"], b64=True), admin_claims()),
    "cty-JWT": lambda k: k.sign(k.header(cty="JWT"), admin_claims()),
    "cty-jwt": lambda k: k.sign(k.header(cty="jwt"), admin_claims()),
    "zip-DEF": lambda k: k.sign(k.header(zip="DEF"), admin_claims()),
}


@pytest.mark.parametrize("attack", list(KEY_ATTACKS))
def test_keys_and_processing_rules_chosen_by_the_token_are_refused(
    stack, client, keys, attack
) -> None:
    assert_rejected(stack, client, KEY_ATTACKS[attack](keys))


# --- size, duplicate members, encodings -------------------------------------------------------


def _padded_token(keys: Keys, size: int) -> str:
    """A correctly signed admin token of about ``size`` characters (a big claim fills it)."""
    base = len(keys.sign(keys.header(), admin_claims(pad="")))
    pad = max(0, (size - base) * 3 // 4)
    return keys.sign(keys.header(), admin_claims(pad="x" * pad))


@pytest.mark.parametrize("size", [MAX_TOKEN_BYTES + 100, 3 * MAX_TOKEN_BYTES])
def test_oversized_token_is_refused(stack, client, keys, size) -> None:
    token = _padded_token(keys, size)
    assert len(token) > MAX_TOKEN_BYTES
    assert_rejected(stack, client, token)


def _raw_claims(extra_members: str, **overrides: object) -> bytes:
    """Admin claims as JSON text with ``extra_members`` spliced in (duplicates included)."""
    claims = json_bytes(admin_claims(**overrides))
    return claims[:-1] + b"," + extra_members.encode() + b"}"


DUPLICATES: dict[str, Callable[[Keys], str]] = {
    "claims-roles": lambda k: k.sign(
        k.header(), _raw_claims('"roles":["viewer"],"roles":["admin"]', roles=None)
    ),
    "claims-sub": lambda k: k.sign(k.header(), _raw_claims('"sub":"ada"')),
    "claims-exp": lambda k: k.sign(k.header(), _raw_claims(f'"exp":{int(time.time()) + 300}')),
    "claims-aud": lambda k: k.sign(k.header(), _raw_claims('"aud":"demo-api"', aud="other-api")),
    "claims-iss": lambda k: k.sign(
        k.header(), _raw_claims('"iss":"https://demo.ext-authz.local"', iss="https://evil.example")
    ),
    "header-alg": lambda k: k.sign(
        json_bytes(k.header(alg="none"))[:-1] + b',"alg":"RS256"}', admin_claims()
    ),
    "header-kid": lambda k: k.sign(
        json_bytes(k.header(kid="other"))[:-1] + f',"kid":"{k.kid}"}}'.encode(), admin_claims()
    ),
}


@pytest.mark.parametrize("where", list(DUPLICATES))
def test_duplicate_json_members_are_refused(stack, client, keys, where) -> None:
    """Correctly signed, but two parsers could read two different tokens."""
    assert_rejected(stack, client, DUPLICATES[where](keys))


def _noncanonical(segment: str) -> str:
    """The same bytes, spelled differently: set an unused trailing bit of the last character."""
    assert len(segment) % 4 in (2, 3), "the last character must carry unused bits"
    index = B64URL_ALPHABET.index(segment[-1])
    assert index & 0b1 == 0
    other = segment[:-1] + B64URL_ALPHABET[index | 0b1]

    # Both spellings decode to the same bytes.
    def decode(text: str) -> bytes:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))

    assert decode(other) == decode(segment) and other != segment
    return other


def _json_with_unused_bits(value: dict[str, object]) -> bytes:
    """JSON whose base64url has unused trailing bits (insignificant spaces adjust the length)."""
    raw = json_bytes(value)
    while len(raw) % 3 == 0:
        raw += b" "
    return raw


@pytest.mark.parametrize("segment", ["signature", "payload", "header"])
def test_noncanonical_base64url_is_refused(stack, client, keys, segment) -> None:
    token = keys.sign(_json_with_unused_bits(keys.header()), _json_with_unused_bits(admin_claims()))
    assert_allowed(client, token)  # the canonical spelling (with padding spaces) is fine
    parts = token.split(".")
    parts[["header", "payload", "signature"].index(segment)] = _noncanonical(
        parts[["header", "payload", "signature"].index(segment)]
    )
    assert_rejected(stack, client, ".".join(parts))


@pytest.mark.parametrize("segment", ["signature", "payload"])
def test_padded_base64url_is_refused(stack, client, keys, segment) -> None:
    """RFC 7515 2: base64url without '=' padding; a padded spelling is another token."""
    parts = keys.sign(keys.header(), _json_with_unused_bits(admin_claims())).split(".")
    index = 2 if segment == "signature" else 1
    parts[index] += "=" * (-len(parts[index]) % 4)
    assert parts[index].endswith("=")
    assert_rejected(stack, client, ".".join(parts))


# --- where the token comes from ---------------------------------------------------------------


def test_two_authorization_headers_with_valid_tokens_are_refused(stack, client, token_for) -> None:
    admin, viewer = token_for("ada", "admin"), token_for("vera", "viewer")
    headers = [("Authorization", f"Bearer {viewer}"), ("Authorization", f"Bearer {admin}")]
    assert_rejected(stack, client, None, headers=headers)


@pytest.mark.parametrize("separator", [",", ", ", " "])
def test_two_bearer_tokens_in_one_header_are_refused(stack, client, token_for, separator) -> None:
    admin, viewer = token_for("ada", "admin"), token_for("vera", "viewer")
    value = f"Bearer {viewer}{separator}Bearer {admin}"
    assert_rejected(stack, client, None, headers=[("Authorization", value)])


def test_two_tokens_after_one_bearer_are_refused(stack, client, token_for) -> None:
    admin, viewer = token_for("ada", "admin"), token_for("vera", "viewer")
    for value in (f"Bearer {viewer},{admin}", f"Bearer {viewer} {admin}"):
        assert_rejected(stack, client, None, headers=[("Authorization", value)])


def test_token_only_in_the_query_string_is_not_a_credential(stack, client, token_for) -> None:
    admin = token_for("ada", "admin")
    before = stack.upstream_requests
    reply = client.get(f"{ADMIN}?access_token={admin}")
    assert reply.status == 401
    assert stack.upstream_requests == before
    assert reply.json()["reason"] == "missing_credential"
    assert "error=" not in reply.headers["www-authenticate"]
    assert admin not in reply.body.decode()
    # The same token in the header is accepted: the query string alone is what was refused.
    assert_allowed(client, admin)


# --- property: arbitrary tokens ---------------------------------------------------------------

PROPERTY_SETTINGS = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
PRINTABLE = st.characters(min_codepoint=0x21, max_codepoint=0x7E)


def _assert_never_allowed(stack, client, token: str) -> None:
    before = stack.upstream_requests
    reply = client.get("/public/hello", token=token)
    # A public route: anything but 401 means a bad credential was downgraded or crashed us.
    assert reply.status == 401, (token, reply.status, reply.body[:300])
    assert stack.upstream_requests == before
    assert reply.json()["reason"] == "invalid_token"


@PROPERTY_SETTINGS
@given(token=st.text(PRINTABLE, min_size=1, max_size=300))
def test_arbitrary_printable_tokens_are_always_401(stack, client, token) -> None:
    _assert_never_allowed(stack, client, token)


_JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
_JSON = st.recursive(
    _JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_HEADER_NAMES = st.sampled_from(["alg", "kid", "typ", "cty", "jku", "jwk", "crit", "x5c", "b64"])
_ALGS = st.sampled_from(["RS256", "none", "HS256", "ES256", "PS256", "RS512", "", "rs256"])


@PROPERTY_SETTINGS
@given(
    alg=_ALGS,
    header_extra=st.dictionaries(_HEADER_NAMES, _JSON, max_size=3),
    claim_overrides=st.dictionaries(
        st.sampled_from(["iss", "aud", "sub", "exp", "nbf", "iat", "roles", "x"]),
        _JSON,
        max_size=3,
    ),
    signature=st.binary(max_size=300),
)
def test_jwt_shaped_tokens_with_random_headers_claims_and_signatures_are_always_401(
    stack, client, keys, alg, header_extra, claim_overrides, signature
) -> None:
    header = {**keys.header(), **header_extra, "alg": alg}
    claims = {**admin_claims(), **claim_overrides}
    token = ".".join([b64url(json_bytes(header)), b64url(json_bytes(claims)), b64url(signature)])
    _assert_never_allowed(stack, client, token)


_CLAIM_TEXT = st.text(max_size=12)  # any Unicode but lone surrogates (tested above)


@PROPERTY_SETTINGS
@given(
    subject=_CLAIM_TEXT,
    roles=st.lists(_CLAIM_TEXT, max_size=3) | _CLAIM_TEXT,
    claim_overrides=st.dictionaries(
        st.sampled_from(["iss", "aud", "sub", "exp", "nbf", "iat", "roles", "jti", "scope"]),
        _JSON_SCALARS | st.lists(_CLAIM_TEXT, max_size=3) | _CLAIM_TEXT,
        max_size=2,
    ),
)
def test_correctly_signed_arbitrary_claims_end_in_an_identity_or_a_401_never_an_error(
    stack, client, keys, subject, roles, claim_overrides
) -> None:
    """Whatever the issuer signed: a verified identity passed on faithfully, or a typed 401."""
    claims = {**demo_claims(subject), "roles": roles, **claim_overrides}
    token = keys.sign(keys.header(), claims)
    before = stack.upstream_requests
    reply = client.get("/public/hello", token=token)
    assert reply.status in (200, 401), (claims, reply.status, reply.body[:300])
    event(f"HTTP {reply.status}")  # both outcomes occur (see --hypothesis-show-statistics)
    if reply.status == 401:
        assert stack.upstream_requests == before
        assert reply.json()["reason"] in ("invalid_token", "expired_token")
        return
    # Allowed: the upstream sees exactly the signed subject (the echo server reads latin-1).
    seen = reply.upstream_headers
    assert seen["x-auth-subject"] == str(claims["sub"]).encode().decode("latin-1")
    roles = claims["roles"]
    expected = roles.split() if isinstance(roles, str) else roles
    if expected:
        assert seen["x-auth-roles"] == ",".join(expected).encode().decode("latin-1")
    else:
        assert "x-auth-roles" not in seen
