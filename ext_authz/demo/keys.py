"""Demo key material: generated into the state dir on first start, reused afterwards.

- ``tls.crt`` / ``tls.key``: self-signed ECDSA P-256 server certificate for Envoy (localhost).
- ``issuer.key`` / ``jwks.json``: the demo issuer's RS256 signing key and its public JWKS.
- ``client-ca.crt`` / ``client-ca.key``: the CA that Envoy's mTLS listener trusts for clients.
- ``client.crt`` / ``client.key``: a client certificate signed by that CA, with the URI SAN
  ``spiffe://demo.ext-authz.local/client/demo-client`` (what ext-authz sees as the peer principal).

Each pair is generated together: if either file of a pair is missing, both are regenerated, so a
crash between two writes can never leave a key that does not match its certificate or JWKS. A new
client CA also means a new client certificate (the old one would no longer verify).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import ipaddress
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ext_authz.errors import ConfigError

__all__ = ["DEMO_CLIENT_URI", "DemoKeys", "ensure_demo_keys", "jwk_thumbprint", "rsa_public_jwk"]

TLS_CERT = "tls.crt"
TLS_KEY = "tls.key"
ISSUER_KEY = "issuer.key"
JWKS = "jwks.json"
CLIENT_CA_CERT = "client-ca.crt"
CLIENT_CA_KEY = "client-ca.key"
CLIENT_CERT = "client.crt"
CLIENT_KEY = "client.key"
# The demo client's identity: Envoy passes this URI SAN to ext-authz as source.principal.
DEMO_CLIENT_URI = "spiffe://demo.ext-authz.local/client/demo-client"

_PRIVATE_MODE = 0o600
_PUBLIC_MODE = 0o644
_CERT_DAYS = 365


@dataclass(frozen=True, slots=True)
class DemoKeys:
    """Paths of the demo's key files and the ``kid`` of the issuer key."""

    tls_cert: Path
    tls_key: Path
    issuer_key: Path
    jwks: Path
    kid: str
    client_ca_cert: Path
    client_ca_key: Path
    client_cert: Path
    client_key: Path


def ensure_demo_keys(state_dir: Path) -> DemoKeys:
    """Create missing demo keys in ``state_dir`` (made 0700 if new) and return their paths."""
    _ensure_private_dir(state_dir)
    tls_cert, tls_key = state_dir / TLS_CERT, state_dir / TLS_KEY
    issuer_key, jwks = state_dir / ISSUER_KEY, state_dir / JWKS
    ca_cert, ca_key = state_dir / CLIENT_CA_CERT, state_dir / CLIENT_CA_KEY
    client_cert, client_key = state_dir / CLIENT_CERT, state_dir / CLIENT_KEY
    if not (tls_cert.is_file() and tls_key.is_file()):
        _write_tls_pair(tls_cert, tls_key)
    if not (issuer_key.is_file() and jwks.is_file()):
        _write_issuer_pair(issuer_key, jwks)
    if not (ca_cert.is_file() and ca_key.is_file()):
        # Drop the old client pair first: a crash before the new one is written then leaves it
        # missing (so it is regenerated), never signed by a CA that no longer exists.
        for stale in (client_key, client_cert):
            stale.unlink(missing_ok=True)
        _write_client_ca_pair(ca_cert, ca_key)
    if not (client_cert.is_file() and client_key.is_file()):
        _write_client_pair(client_cert, client_key, ca_cert, ca_key)
    # Reused keys may have been copied in with loose permissions: a private key stays private.
    for private in (tls_key, issuer_key, ca_key, client_key):
        private.chmod(_PRIVATE_MODE)
    kid = _read_kid(jwks, issuer_key)
    _check_client_pair(client_cert, client_key, ca_cert)
    return DemoKeys(
        tls_cert=tls_cert,
        tls_key=tls_key,
        issuer_key=issuer_key,
        jwks=jwks,
        kid=kid,
        client_ca_cert=ca_cert,
        client_ca_key=ca_key,
        client_cert=client_cert,
        client_key=client_key,
    )


def rsa_public_jwk(public_key: rsa.RSAPublicKey) -> dict[str, str]:
    """Public RSA JWK (RFC 7517) for RS256 signatures, ``kid`` = RFC 7638 thumbprint."""
    numbers = public_key.public_numbers()
    jwk = {"kty": "RSA", "n": _b64url_uint(numbers.n), "e": _b64url_uint(numbers.e)}
    return {**jwk, "kid": jwk_thumbprint(jwk), "alg": "RS256", "use": "sig"}


def jwk_thumbprint(jwk: dict[str, str]) -> str:
    """RFC 7638 thumbprint of an RSA JWK: SHA-256 over the canonical {e, kty, n} JSON."""
    canonical = json.dumps(
        {"e": jwk["e"], "kty": jwk["kty"], "n": jwk["n"]}, separators=(",", ":"), sort_keys=True
    )
    return _b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_uint(value: int) -> str:
    # RFC 7518 6.3.1: big-endian, minimal length (at least one octet).
    return _b64url(value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def _ensure_private_dir(state_dir: Path) -> None:
    if state_dir.is_dir():
        return
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    state_dir.chmod(0o700)  # mkdir's mode is filtered by the umask


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    """Write via a temp file in the same directory + rename, so readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _private_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_tls_pair(cert_path: Path, key_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _self_signed_certificate(key)
    # Key first: a crash before the cert leaves the pair incomplete, so both are regenerated.
    _atomic_write(key_path, _private_pem(key), _PRIVATE_MODE)
    _atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), _PUBLIC_MODE)


def _self_signed_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    san = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # tolerate small clock skew
        .not_valid_after(now + dt.timedelta(days=_CERT_DAYS))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(_server_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _server_key_usage() -> x509.KeyUsage:
    # ECDHE with an ECDSA certificate only needs signatures.
    return _key_usage(digital_signature=True)


def _key_usage(*, digital_signature: bool = False, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _write_client_ca_pair(cert_path: Path, key_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ext-authz demo client CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_CERT_DAYS))
        # path_length 0: it signs client certificates only, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _atomic_write(key_path, _private_pem(key), _PRIVATE_MODE)
    _atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), _PUBLIC_MODE)


def _write_client_pair(
    cert_path: Path, key_path: Path, ca_cert_path: Path, ca_key_path: Path
) -> None:
    ca_cert = _load_certificate(ca_cert_path)
    ca_key = _load_ec_key(ca_key_path, "demo client CA key")
    if ca_cert.public_key() != ca_key.public_key():
        raise ConfigError(
            f"{ca_key_path}: does not match {ca_cert_path}; delete both to generate a new pair"
        )
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "demo-client")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        # Never outlive the CA: a chain is only valid while every certificate in it is.
        .not_valid_after(min(now + dt.timedelta(days=_CERT_DAYS), ca_cert.not_valid_after_utc))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(DEMO_CLIENT_URI)]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_authority_key_identifier(ca_cert, ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _atomic_write(key_path, _private_pem(key), _PRIVATE_MODE)
    _atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), _PUBLIC_MODE)


def _authority_key_identifier(
    ca_cert: x509.Certificate, ca_public: ec.EllipticCurvePublicKey
) -> x509.AuthorityKeyIdentifier:
    # Copy the CA's own SKI where it has one: verifiers build the chain by matching the two.
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public)
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _check_client_pair(cert_path: Path, key_path: Path, ca_cert_path: Path) -> None:
    """A reused client pair must still belong together and chain to the current client CA."""
    cert = _load_certificate(cert_path)
    fix = f"delete {cert_path} and {key_path} to generate a new pair"
    try:
        cert.verify_directly_issued_by(_load_certificate(ca_cert_path))
    except (ValueError, TypeError, InvalidSignature) as exc:
        # Envoy would refuse it in the handshake with a far less helpful message.
        raise ConfigError(f"{cert_path}: not signed by {ca_cert_path}; {fix}") from exc
    if cert.public_key() != _load_ec_key(key_path, "demo client key").public_key():
        raise ConfigError(f"{key_path}: does not match {cert_path}; {fix}")


def _load_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot load demo certificate: {exc}") from exc


def _load_ec_key(path: Path, what: str) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        # The exception text describes the format problem, never the key bytes.
        raise ConfigError(f"{path}: cannot load {what}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{path}: {what} must be an EC private key")
    return key


def _write_issuer_pair(key_path: Path, jwks_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks = {"keys": [rsa_public_jwk(key.public_key())]}
    _atomic_write(key_path, _private_pem(key), _PRIVATE_MODE)
    _atomic_write(jwks_path, (json.dumps(jwks, indent=2) + "\n").encode(), _PUBLIC_MODE)


def _read_kid(jwks_path: Path, key_path: Path) -> str:
    """The kid of the JWKS key, checked to be the public half of ``issuer.key``."""
    jwk = _read_single_jwk(jwks_path)
    expected = rsa_public_jwk(_load_issuer_key(key_path).public_key())
    # A mismatched pair would make every demo token fail verification with a confusing error.
    if (jwk.get("n"), jwk.get("e")) != (expected["n"], expected["e"]):
        raise ConfigError(
            f"{jwks_path}: does not match {key_path}; delete both to generate a new pair"
        )
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid:
        raise ConfigError(f"{jwks_path}: the key has no 'kid'; delete it to regenerate")
    return kid


def _read_single_jwk(jwks_path: Path) -> dict[str, Any]:
    try:
        data = json.loads(jwks_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{jwks_path}: cannot read demo JWKS: {exc}") from exc
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, list) or len(keys) != 1 or not isinstance(keys[0], dict):
        raise ConfigError(f"{jwks_path}: expected {{'keys': [one JWK]}}; delete it to regenerate")
    return keys[0]


def _load_issuer_key(key_path: Path) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        # The exception text describes the format problem, never the key bytes.
        raise ConfigError(f"{key_path}: cannot load demo issuer key: {exc}") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(f"{key_path}: demo issuer key must be an RSA private key")
    return key
