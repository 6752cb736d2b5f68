"""Demo key material: generated once, reused, private keys private, JWKS matching issuer.key."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ext_authz.demo.keys import DemoKeys, ensure_demo_keys, jwk_thumbprint
from ext_authz.errors import ConfigError

# RFC 7638 section 3.1: the example RSA key and its SHA-256 thumbprint.
RFC7638_N = (
    "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECP"
    "ebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY"
    "368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM"
    "4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
)
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.fixture
def keys(tmp_path: Path) -> DemoKeys:
    return ensure_demo_keys(tmp_path / "state")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def b64url_uint(text: str) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), "big")


def only_jwk(keys: DemoKeys) -> dict[str, Any]:
    (jwk,) = json.loads(keys.jwks.read_text(encoding="utf-8"))["keys"]
    return jwk  # type: ignore[no-any-return]


def all_bytes(keys: DemoKeys) -> list[bytes]:
    return [p.read_bytes() for p in (keys.tls_cert, keys.tls_key, keys.issuer_key, keys.jwks)]


def test_first_call_creates_the_four_files_in_a_private_state_dir(keys: DemoKeys) -> None:
    state_dir = keys.tls_cert.parent
    assert mode(state_dir) == 0o700
    names = {p.name for p in state_dir.iterdir()}
    assert names == {"tls.crt", "tls.key", "issuer.key", "jwks.json"}  # no temp files left


def test_private_keys_are_readable_by_the_owner_only(keys: DemoKeys) -> None:
    assert mode(keys.tls_key) == 0o600
    assert mode(keys.issuer_key) == 0o600


def test_keys_are_reused_on_second_call(keys: DemoKeys) -> None:
    before = all_bytes(keys)
    again = ensure_demo_keys(keys.tls_cert.parent)
    assert again == keys
    assert all_bytes(again) == before


def test_loose_permissions_on_a_reused_key_are_tightened(keys: DemoKeys) -> None:
    keys.issuer_key.chmod(0o644)
    ensure_demo_keys(keys.tls_cert.parent)
    assert mode(keys.issuer_key) == 0o600


def test_jwks_public_key_verifies_a_signature_made_with_issuer_key(keys: DemoKeys) -> None:
    private = serialization.load_pem_private_key(keys.issuer_key.read_bytes(), password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    assert private.key_size == 2048
    jwk = only_jwk(keys)
    public = rsa.RSAPublicNumbers(b64url_uint(jwk["e"]), b64url_uint(jwk["n"])).public_key()
    message = b"header.payload"
    signature = private.sign(message, padding.PKCS1v15(), hashes.SHA256())
    public.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())


def test_jwks_is_a_public_rs256_signing_key_with_unpadded_base64url(keys: DemoKeys) -> None:
    jwk = only_jwk(keys)
    assert set(jwk) == {"kty", "n", "e", "kid", "alg", "use"}  # no private members
    assert (jwk["kty"], jwk["alg"], jwk["use"], jwk["e"]) == ("RSA", "RS256", "sig", "AQAB")
    assert "=" not in jwk["n"]
    assert not {"+", "/"} & set(jwk["n"])


def test_kid_is_the_rfc7638_thumbprint(keys: DemoKeys) -> None:
    jwk = only_jwk(keys)
    canonical = json.dumps({"e": jwk["e"], "kty": "RSA", "n": jwk["n"]}, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).digest()
    expected = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert keys.kid == jwk["kid"] == expected


def test_thumbprint_matches_the_rfc7638_example() -> None:
    assert jwk_thumbprint({"kty": "RSA", "n": RFC7638_N, "e": "AQAB"}) == RFC7638_THUMBPRINT


def test_tls_certificate_is_a_localhost_server_certificate(keys: DemoKeys) -> None:
    cert = x509.load_pem_x509_certificate(keys.tls_cert.read_bytes())
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "localhost"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.IPv4Address("127.0.0.1")]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    lifetime = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=364) < lifetime <= dt.timedelta(days=365)


def test_tls_key_is_p256_and_matches_the_certificate(keys: DemoKeys) -> None:
    cert = x509.load_pem_x509_certificate(keys.tls_cert.read_bytes())
    key = serialization.load_pem_private_key(keys.tls_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert cert.public_key() == key.public_key()
    assert keys.tls_key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS8


def test_missing_certificate_regenerates_the_whole_tls_pair(keys: DemoKeys) -> None:
    old_key = keys.tls_key.read_bytes()
    keys.tls_cert.unlink()
    again = ensure_demo_keys(keys.tls_cert.parent)
    cert = x509.load_pem_x509_certificate(again.tls_cert.read_bytes())
    key = serialization.load_pem_private_key(again.tls_key.read_bytes(), password=None)
    assert again.tls_key.read_bytes() != old_key
    assert cert.public_key() == key.public_key()


def test_missing_jwks_regenerates_the_issuer_key_and_kid(keys: DemoKeys) -> None:
    old_key = keys.issuer_key.read_bytes()
    keys.jwks.unlink()
    again = ensure_demo_keys(keys.tls_cert.parent)
    assert again.kid != keys.kid
    assert again.issuer_key.read_bytes() != old_key


def test_a_jwks_that_does_not_match_issuer_key_is_a_config_error(
    keys: DemoKeys, tmp_path: Path
) -> None:
    other = ensure_demo_keys(tmp_path / "other")
    keys.jwks.write_bytes(other.jwks.read_bytes())
    with pytest.raises(ConfigError, match="does not match"):
        ensure_demo_keys(keys.tls_cert.parent)


def test_an_unreadable_jwks_is_a_config_error_naming_the_file(keys: DemoKeys) -> None:
    keys.jwks.write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match=str(keys.jwks)):
        ensure_demo_keys(keys.tls_cert.parent)


def test_a_crash_while_writing_leaves_no_partial_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    state_dir = tmp_path / "state"
    with pytest.raises(OSError, match="disk full"):
        ensure_demo_keys(state_dir)
    assert list(state_dir.iterdir()) == []
