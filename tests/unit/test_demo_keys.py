"""Demo key material: generated once, reused, private keys private, JWKS matching issuer.key,
a client certificate that chains to the client CA."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import json
import os
import stat
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ext_authz.demo.keys import DEMO_CLIENT_URI, DemoKeys, ensure_demo_keys, jwk_thumbprint
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


def files(keys: DemoKeys) -> list[Path]:
    return [
        keys.tls_cert,
        keys.tls_key,
        keys.issuer_key,
        keys.jwks,
        keys.client_ca_cert,
        keys.client_ca_key,
        keys.client_cert,
        keys.client_key,
    ]


def all_bytes(keys: DemoKeys) -> list[bytes]:
    return [p.read_bytes() for p in files(keys)]


def certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


ExtensionT = TypeVar("ExtensionT", bound=x509.ExtensionType)


def cert_extension(cert: x509.Certificate, kind: type[ExtensionT]) -> x509.Extension[ExtensionT]:
    return cert.extensions.get_extension_for_class(kind)


def test_first_call_creates_the_eight_files_in_a_private_state_dir(keys: DemoKeys) -> None:
    state_dir = keys.tls_cert.parent
    assert mode(state_dir) == 0o700
    names = {p.name for p in state_dir.iterdir()}
    assert names == {
        "tls.crt",
        "tls.key",
        "issuer.key",
        "jwks.json",
        "client-ca.crt",
        "client-ca.key",
        "client.crt",
        "client.key",
    }  # no temp files left
    assert {p.parent for p in files(keys)} == {state_dir}


def test_private_keys_are_readable_by_the_owner_only(keys: DemoKeys) -> None:
    for private in (keys.tls_key, keys.issuer_key, keys.client_ca_key, keys.client_key):
        assert mode(private) == 0o600, private.name
    for public in (keys.tls_cert, keys.jwks, keys.client_ca_cert, keys.client_cert):
        assert mode(public) == 0o644, public.name


def test_keys_are_reused_on_second_call(keys: DemoKeys) -> None:
    before = all_bytes(keys)
    again = ensure_demo_keys(keys.tls_cert.parent)
    assert again == keys
    assert all_bytes(again) == before


def test_loose_permissions_on_a_reused_key_are_tightened(keys: DemoKeys) -> None:
    for private in (keys.issuer_key, keys.client_ca_key, keys.client_key):
        private.chmod(0o644)
    ensure_demo_keys(keys.tls_cert.parent)
    for private in (keys.issuer_key, keys.client_ca_key, keys.client_key):
        assert mode(private) == 0o600, private.name


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


# --- the mTLS client CA and client certificate ----------------------------------------------


def test_client_ca_may_sign_end_entity_certificates_only(keys: DemoKeys) -> None:
    ca = certificate(keys.client_ca_cert)
    assert ca.subject == ca.issuer
    constraints = cert_extension(ca, x509.BasicConstraints)
    assert (constraints.value.ca, constraints.value.path_length) == (True, 0)
    assert constraints.critical
    usage = cert_extension(ca, x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    key = serialization.load_pem_private_key(keys.client_ca_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert ca.public_key() == key.public_key()


def test_client_certificate_names_the_demo_client_by_uri_san_for_client_auth(
    keys: DemoKeys,
) -> None:
    cert = certificate(keys.client_cert)
    san = cert_extension(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [DEMO_CLIENT_URI]
    assert DEMO_CLIENT_URI == "spiffe://demo.ext-authz.local/client/demo-client"
    assert list(cert_extension(cert, x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    assert cert_extension(cert, x509.BasicConstraints).value.ca is False
    assert cert_extension(cert, x509.KeyUsage).value.digital_signature


def test_client_certificate_is_signed_by_the_client_ca_and_matches_its_key(
    keys: DemoKeys,
) -> None:
    cert = certificate(keys.client_cert)
    ca = certificate(keys.client_ca_cert)
    cert.verify_directly_issued_by(ca)
    aki = cert_extension(cert, x509.AuthorityKeyIdentifier).value
    ski = cert_extension(ca, x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    key = serialization.load_pem_private_key(keys.client_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert cert.public_key() == key.public_key()


def test_client_certificate_does_not_outlive_its_ca(keys: DemoKeys) -> None:
    cert = certificate(keys.client_cert)
    assert cert.not_valid_after_utc <= certificate(keys.client_ca_cert).not_valid_after_utc
    assert cert.not_valid_before_utc <= dt.datetime.now(dt.UTC)


def test_missing_client_certificate_is_reissued_by_the_same_ca(keys: DemoKeys) -> None:
    ca_before = keys.client_ca_cert.read_bytes(), keys.client_ca_key.read_bytes()
    old_key = keys.client_key.read_bytes()
    keys.client_cert.unlink()
    again = ensure_demo_keys(keys.tls_cert.parent)
    assert (again.client_ca_cert.read_bytes(), again.client_ca_key.read_bytes()) == ca_before
    assert again.client_key.read_bytes() != old_key
    certificate(again.client_cert).verify_directly_issued_by(certificate(again.client_ca_cert))


def test_missing_client_ca_key_regenerates_the_ca_and_the_client_certificate(
    keys: DemoKeys,
) -> None:
    old_ca, old_client = keys.client_ca_cert.read_bytes(), keys.client_cert.read_bytes()
    keys.client_ca_key.unlink()
    again = ensure_demo_keys(keys.tls_cert.parent)
    assert again.client_ca_cert.read_bytes() != old_ca
    assert again.client_cert.read_bytes() != old_client
    certificate(again.client_cert).verify_directly_issued_by(certificate(again.client_ca_cert))


def test_a_crash_while_replacing_the_client_ca_never_leaves_a_client_cert_of_the_old_ca(
    keys: DemoKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_replace = os.replace

    def crash_on_ca_cert(src: str, dst: str) -> None:
        if Path(dst).name == "client-ca.crt":
            raise OSError("disk full")
        real_replace(src, dst)

    keys.client_ca_cert.unlink()
    monkeypatch.setattr(os, "replace", crash_on_ca_cert)
    with pytest.raises(OSError, match="disk full"):
        ensure_demo_keys(keys.tls_cert.parent)
    monkeypatch.undo()
    assert not keys.client_cert.exists() and not keys.client_key.exists()
    again = ensure_demo_keys(keys.tls_cert.parent)
    certificate(again.client_cert).verify_directly_issued_by(certificate(again.client_ca_cert))


def test_a_client_certificate_from_another_ca_is_a_config_error(
    keys: DemoKeys, tmp_path: Path
) -> None:
    other = ensure_demo_keys(tmp_path / "other")
    keys.client_cert.write_bytes(other.client_cert.read_bytes())
    keys.client_key.write_bytes(other.client_key.read_bytes())
    with pytest.raises(ConfigError, match="not signed by"):
        ensure_demo_keys(keys.tls_cert.parent)


def test_a_client_key_that_does_not_match_the_certificate_is_a_config_error(
    keys: DemoKeys, tmp_path: Path
) -> None:
    other = ensure_demo_keys(tmp_path / "other")
    keys.client_key.write_bytes(other.client_key.read_bytes())
    with pytest.raises(ConfigError, match="does not match"):
        ensure_demo_keys(keys.tls_cert.parent)


def test_an_unreadable_client_certificate_is_a_config_error_naming_the_file(
    keys: DemoKeys,
) -> None:
    keys.client_cert.write_text("not a certificate", encoding="utf-8")
    with pytest.raises(ConfigError, match=str(keys.client_cert)):
        ensure_demo_keys(keys.tls_cert.parent)


def test_a_client_ca_key_that_does_not_match_its_certificate_is_a_config_error(
    keys: DemoKeys, tmp_path: Path
) -> None:
    other = ensure_demo_keys(tmp_path / "other")
    keys.client_ca_key.write_bytes(other.client_ca_key.read_bytes())
    keys.client_cert.unlink()  # so the client pair is reissued with the mismatched CA key
    with pytest.raises(ConfigError, match="does not match"):
        ensure_demo_keys(keys.tls_cert.parent)
