"""Non-JWT credentials, revocation and key rotation, through the real Envoy.

API keys (owner and roles from the hashed keys file, the key itself never forwarded), mTLS
identities from the certificate Envoy verified (never from a client-sent header), the denylist
(applies to cached tokens too) and JWKS rotation without a restart.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import ssl
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa
from forged_certs import forge_client_certificate
from harness import (
    Client,
    Reply,
    demo_claims,
    eventually,
    issuer_kid,
    load_issuer_key,
    make_jws,
)

from ext_authz.demo.issuer import mint_demo_token
from ext_authz.demo.keys import DEMO_CLIENT_URI, rsa_public_jwk
from ext_authz.identity.apikey import hash_api_key, new_api_key

pytestmark = pytest.mark.e2e

RELOAD_TIMEOUT = 5.0  # files are re-read within ~1 s


def refused(stack, client: Client, status: int, method: str, path: str, **kwargs) -> Reply:
    before = stack.upstream_requests
    reply = client.send(method, path, **kwargs)
    assert reply.status == status, (reply.status, reply.body[:300])
    assert stack.upstream_requests == before, f"{method} {path} reached the upstream"
    return reply


def atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def unverified_claims(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


# --- API keys ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api_key(stack) -> str:
    return (stack.state_dir / "demo-api-key").read_text().strip()


def test_demo_api_key_is_an_editor_and_is_not_forwarded(client, api_key) -> None:
    reply = client.send("POST", "/api/books", headers=[("x-api-key", api_key)], body=b"{}")
    assert reply.status == 200, reply.body
    seen = reply.upstream_headers
    assert seen["x-auth-subject"] == "ci-bot"
    assert seen["x-auth-roles"] == "editor"
    assert "x-api-key" not in seen
    assert api_key not in reply.body.decode()


def test_unknown_api_key_is_401_invalid_api_key(stack, client) -> None:
    unknown = "eak_" + secrets.token_urlsafe(32)
    reply = refused(stack, client, 401, "GET", "/api/books", headers=[("x-api-key", unknown)])
    assert reply.json()["reason"] == "invalid_api_key"
    assert 'error="invalid_token"' in reply.headers["www-authenticate"]
    assert unknown not in reply.body.decode()
    assert unknown not in reply.headers["www-authenticate"]


def test_unknown_api_key_is_not_downgraded_to_anonymous(stack, client) -> None:
    headers = [("x-api-key", "eak_" + secrets.token_urlsafe(32))]
    reply = refused(stack, client, 401, "GET", "/public/hello", headers=headers)
    assert reply.json()["reason"] == "invalid_api_key"


def test_api_key_and_bearer_token_together_are_refused(stack, client, api_key, token_for) -> None:
    token = token_for("erin", "editor")
    reply = refused(
        stack, client, 401, "GET", "/api/books", headers=[("x-api-key", api_key)], token=token
    )
    assert api_key not in reply.body.decode()
    assert token not in reply.body.decode()


def test_api_key_sent_twice_is_refused(stack, client, api_key) -> None:
    headers = [("x-api-key", api_key), ("x-api-key", api_key)]
    reply = refused(stack, client, 401, "GET", "/api/books", headers=headers)
    assert api_key not in reply.body.decode()


def test_api_keys_file_is_reloaded_with_expiry_and_a_broken_file_keeps_the_last_keys(
    stack, client, api_key
) -> None:
    path = stack.state_dir / "api-keys.yaml"
    original = path.read_bytes()
    current, expired = new_api_key(), new_api_key()
    entries = yaml.safe_load(original)["keys"] + [
        {"id": "e2e-current", "hash": hash_api_key(current), "owner": "cora", "roles": ["viewer"],
         "expires": "2999-01-01T00:00:00Z"},
        {"id": "e2e-expired", "hash": hash_api_key(expired), "owner": "ed", "roles": ["admin"],
         "expires": "2020-01-01T00:00:00Z"},
    ]  # fmt: skip

    def books(key: str) -> Callable[[], Reply]:
        return lambda: client.get("/api/books", headers=[("x-api-key", key)])

    try:
        atomic_write(path, yaml.safe_dump({"keys": entries}, sort_keys=False).encode())
        reply = eventually(books(current), lambda r: r.status == 200)
        assert reply.upstream_headers["x-auth-subject"] == "cora"
        reply = refused(stack, client, 401, "GET", "/admin/stats", headers=[("x-api-key", expired)])
        assert reply.json()["reason"] == "invalid_api_key"

        for broken in (b"keys: [unclosed\n", b"", b"keys:\n  - id: x\n"):
            offset = _log_size(stack)
            atomic_write(path, broken)
            _wait_for_log(stack, offset, "reload failed, keeping the last good version")
            assert books(current)().status == 200, broken
            assert books(api_key)().status == 200, broken
    finally:
        atomic_write(path, original)
        eventually(books(current), lambda r: r.status == 401)
    assert books(api_key)().status == 200


# --- mTLS -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mtls_client(stack) -> Client:
    state = stack.state_dir
    return Client(state, stack.ports.mtls, client_cert=(state / "client.crt", state / "client.key"))


def test_client_certificate_identity_is_its_spiffe_id(client, mtls_client) -> None:
    reply = mtls_client.get("/api/books")
    assert reply.status == 200, reply.body
    seen = reply.upstream_headers
    assert seen["x-auth-subject"] == DEMO_CLIENT_URI
    assert seen["x-auth-roles"] == "viewer"
    assert "x-forwarded-client-cert" not in seen


def test_client_certificate_viewer_cannot_post(stack, mtls_client) -> None:
    reply = refused(stack, mtls_client, 403, "POST", "/api/books", body=b"{}")
    assert reply.json()["reason"] == "access_denied"


def test_mtls_listener_without_a_client_certificate_refuses_the_handshake(stack) -> None:
    before = stack.upstream_requests
    no_cert = Client(stack.state_dir, stack.ports.mtls)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        no_cert.get("/public/hello")
    assert stack.upstream_requests == before


def _untrusted_client_cert(tmp_path: Path, uri: str) -> tuple[Path, Path]:
    """A client certificate with ``uri`` from a CA that Envoy does not trust (same name)."""
    return forge_client_certificate(tmp_path, "attacker", uri, "ext-authz demo client CA")


def test_client_certificate_from_an_untrusted_ca_is_refused(stack, tmp_path) -> None:
    cert = _untrusted_client_cert(tmp_path, "spiffe://demo.ext-authz.local/client/admin")
    before = stack.upstream_requests
    attacker = Client(stack.state_dir, stack.ports.mtls, client_cert=cert)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        attacker.get("/api/books")
    assert stack.upstream_requests == before


XFCC_ADMIN = ("x-forwarded-client-cert", "URI=spiffe://demo.ext-authz.local/client/admin")


def test_client_sent_xfcc_header_gives_no_identity(stack, client) -> None:
    reply = refused(stack, client, 401, "GET", "/api/books", headers=[XFCC_ADMIN])
    assert reply.json()["reason"] == "missing_credential"


def test_client_sent_xfcc_header_does_not_override_the_certificate(stack, mtls_client) -> None:
    reply = mtls_client.get("/api/books", headers=[XFCC_ADMIN])
    assert reply.status == 200, reply.body
    assert reply.upstream_headers["x-auth-subject"] == DEMO_CLIENT_URI
    assert "x-forwarded-client-cert" not in reply.upstream_headers
    refused(stack, mtls_client, 403, "POST", "/api/books", headers=[XFCC_ADMIN], body=b"{}")


def test_bearer_token_on_the_mtls_listener_wins_over_the_certificate(
    mtls_client, token_for
) -> None:
    token = token_for("erin", "editor")
    reply = mtls_client.send("POST", "/api/books", token=token, body=b"{}")
    assert reply.status == 200, reply.body
    assert reply.upstream_headers["x-auth-subject"] == "erin"
    assert reply.upstream_headers["x-auth-roles"] == "editor"


def test_api_key_on_the_mtls_listener_wins_over_the_certificate(mtls_client, api_key) -> None:
    reply = mtls_client.send("POST", "/api/books", headers=[("x-api-key", api_key)], body=b"{}")
    assert reply.status == 200, reply.body
    assert reply.upstream_headers["x-auth-subject"] == "ci-bot"


def test_bad_token_on_the_mtls_listener_is_not_downgraded_to_the_certificate(
    stack, mtls_client, token_for
) -> None:
    expired = token_for("erin", "editor", ttl=-120)
    reply = refused(stack, mtls_client, 401, "GET", "/api/books", token=expired)
    assert reply.json()["reason"] == "expired_token"


# --- revocation -------------------------------------------------------------------------------


@contextlib.contextmanager
def denylist(stack, *, jti: Sequence[str] = (), subjects: Sequence[str] = ()) -> Iterator[None]:
    path = stack.state_dir / "denylist.yaml"
    original = path.read_bytes()
    text = f"jti: {json.dumps(list(jti))}\nsubjects: {json.dumps(list(subjects))}\n"
    atomic_write(path, text.encode())
    try:
        yield
    finally:
        atomic_write(path, original)


def _revocation_case(
    stack, send: Callable[[], Reply], secret: str, **revoked: Sequence[str]
) -> None:
    assert send().status == 200  # for a token: verified, and now in the token cache
    try:
        with denylist(stack, **revoked):
            reply = eventually(send, lambda r: r.status != 200)
            assert reply.status == 401, reply.body
            assert reply.json()["reason"] == "revoked_token"
            assert 'error="invalid_token"' in reply.headers["www-authenticate"]
            if secret:
                assert secret not in reply.body.decode()
            before = stack.upstream_requests
            assert send().status == 401
            assert stack.upstream_requests == before
    finally:
        # The file is restored; wait until the service has re-read it, so later tests see it.
        eventually(send, lambda r: r.status == 200)


def test_revoked_jti_applies_to_a_cached_token(stack, client) -> None:
    token = mint_demo_token(stack.state_dir, "rita", ["viewer"], 600)
    jti = unverified_claims(token)["jti"]
    assert isinstance(jti, str)
    _revocation_case(stack, lambda: client.get("/api/books", token=token), token, jti=[jti])


def test_revoked_subject_applies_to_a_cached_token(stack, client) -> None:
    subject = f"sam-{secrets.token_hex(4)}"
    token = mint_demo_token(stack.state_dir, subject, ["viewer"], 600)
    _revocation_case(
        stack, lambda: client.get("/api/books", token=token), token, subjects=[subject]
    )


def test_revoked_subject_applies_to_api_keys(stack, client, api_key) -> None:
    def send() -> Reply:
        return client.get("/api/books", headers=[("x-api-key", api_key)])

    _revocation_case(stack, send, api_key, subjects=["ci-bot"])


def test_revoked_subject_applies_to_client_certificates(stack, mtls_client) -> None:
    _revocation_case(stack, lambda: mtls_client.get("/api/books"), "", subjects=[DEMO_CLIENT_URI])


def _wait_for_log(stack, offset: int, text: str) -> str:
    """The service log written after ``offset``, once it contains ``text``."""
    log = stack.state_dir / "ext-authz.log"
    deadline = time.monotonic() + RELOAD_TIMEOUT
    while True:
        with log.open("rb") as handle:
            handle.seek(offset)
            written = handle.read().decode(errors="replace")
        if text in written:
            return written
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not logged within {RELOAD_TIMEOUT} s")
        time.sleep(0.1)


def _log_size(stack) -> int:
    return (stack.state_dir / "ext-authz.log").stat().st_size


def _broken_denylist_case(stack, client, broken: Sequence[bytes]) -> None:
    """Revoke a token, then write each broken denylist: the revocation must stay in force."""
    token = mint_demo_token(stack.state_dir, "rita", ["viewer"], 600)
    jti = unverified_claims(token)["jti"]
    path = stack.state_dir / "denylist.yaml"

    def books() -> Reply:
        return client.get("/api/books", token=token)

    try:
        with denylist(stack, jti=[str(jti)]):
            eventually(books, lambda r: r.status == 401)
            for text in broken:
                offset = _log_size(stack)
                atomic_write(path, text)
                # Logged either way: "reload failed, keeping ..." or "reloaded <path>".
                _wait_for_log(stack, offset, str(path))
                reply = books()
                assert reply.status == 401, (text, reply.status, reply.body)
                assert reply.json()["reason"] == "revoked_token"
    finally:
        eventually(books, lambda r: r.status == 200)


def test_a_broken_denylist_keeps_the_last_revocations_in_force(stack, client) -> None:
    broken = [
        b"jti: [unclosed\n",  # not YAML
        b"revoked: []\n",  # unknown key
        b"jti: [1]\nsubjects: []\n",  # not strings
        b"jti: {}\nsubjects: []\n",  # falsy, but not a list: a mistake, not "revoke none"
        b"[]\n",  # falsy top-level document
        b"",  # empty: more likely half-written than "revoke none"
    ]
    _broken_denylist_case(stack, client, broken)


def test_a_broken_jwks_file_keeps_the_last_good_keys(stack, client) -> None:
    jwks_path = stack.state_dir / "jwks.json"
    original = jwks_path.read_bytes()
    jwk = json.loads(original)["keys"][0]
    key, kid = load_issuer_key(stack.state_dir), issuer_kid(stack.state_dir)

    def books() -> Reply:
        # A token never seen before, so it is verified against the keys in force (not cached).
        header = {"alg": "RS256", "typ": "JWT", "kid": kid}
        return client.get("/api/books", token=make_jws(header, demo_claims("kim", ["viewer"]), key))

    private = {**jwk, "d": "AQAB"}  # private key material is never accepted
    broken_files = [b"{not json", _jwks(), _jwks(private), b'{"keys": [{"n": "x"}]}']
    try:
        for broken in broken_files:
            offset = _log_size(stack)
            atomic_write(jwks_path, broken)
            _wait_for_log(stack, offset, "cannot load keys")
            reply = books()
            assert reply.status == 200, (broken, reply.body)
    finally:
        atomic_write(jwks_path, original)
        eventually(books, lambda r: r.status == 200)


def test_credentials_never_appear_in_the_logs(stack, client, api_key, token_for) -> None:
    valid = token_for("lena", "viewer")
    expired = token_for("lena", "viewer", ttl=-120)
    forged = valid.rsplit(".", 1)[0] + "." + valid.rsplit(".", 1)[1][::-1]
    unknown_key = "eak_" + secrets.token_urlsafe(32)
    offset = _log_size(stack)
    marker = f"/public/log-marker-{secrets.token_hex(4)}"
    client.get("/api/books", token=valid)
    client.get("/api/books", token=expired)
    client.get("/api/books", token=forged)
    client.get("/api/books", headers=[("x-api-key", api_key)])
    client.get("/api/books", headers=[("x-api-key", unknown_key)])
    client.get(f"/admin/stats?access_token={valid}")
    client.get("/api/books", headers=[("Cookie", f"session={valid}")])
    client.get(marker)  # the last request: once it is logged, all the others are
    written = _wait_for_log(stack, offset, marker)
    envoy_log = (stack.state_dir / "envoy.log").read_text(errors="replace")
    for secret in (valid, expired, forged, api_key, unknown_key):
        for part in secret.split("."):
            if len(part) >= 16:
                assert part not in written, "a credential was written to the service log"
                assert part not in envoy_log, "a credential was written to the Envoy log"


# --- key rotation -----------------------------------------------------------------------------


def _jwks(*jwks: dict[str, object]) -> bytes:
    return (json.dumps({"keys": list(jwks)}, indent=2) + "\n").encode()


def test_key_rotation_without_restart(stack, client) -> None:
    state = stack.state_dir
    jwks_path = state / "jwks.json"
    original = jwks_path.read_bytes()
    old_jwk = json.loads(original)["keys"][0]
    old_key, old_kid = load_issuer_key(state), issuer_kid(state)
    new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    new_jwk = rsa_public_jwk(new_key.public_key())
    assert new_jwk["kid"] != old_kid

    def signed(key: rsa.RSAPrivateKey, kid: str, subject: str) -> str:
        header = {"alg": "RS256", "typ": "JWT", "kid": kid}
        return make_jws(header, demo_claims(subject, ["viewer"]), key)

    def books(token: str) -> Callable[[], Reply]:
        return lambda: client.get("/api/books", token=token)

    old_token = signed(old_key, old_kid, "olga")
    new_token = signed(new_key, new_jwk["kid"], "nina")
    assert books(old_token)().status == 200  # verified, and now in the token cache
    refused(stack, client, 401, "GET", "/api/books", token=new_token)  # kid not published yet
    try:
        # 1. The new key is published beside the old one: both work.
        atomic_write(jwks_path, _jwks(old_jwk, new_jwk))
        reply = eventually(books(new_token), lambda r: r.status == 200)
        assert reply.upstream_headers["x-auth-subject"] == "nina"
        assert books(old_token)().status == 200

        # 2. The old key is withdrawn: its tokens are refused, the cached one included.
        atomic_write(jwks_path, _jwks(new_jwk))
        eventually(books(old_token), lambda r: r.status != 200)
        reply = refused(stack, client, 401, "GET", "/api/books", token=old_token)
        assert reply.json()["reason"] == "invalid_token"
        assert 'error="invalid_token"' in reply.headers["www-authenticate"]
        fresh_old = signed(old_key, old_kid, "olga")
        refused(stack, client, 401, "GET", "/api/books", token=fresh_old)
        assert books(new_token)().status == 200
    finally:
        atomic_write(jwks_path, original)
        # Wait until the demo issuer's tokens work again, so later tests are unaffected.
        eventually(books(signed(old_key, old_kid, "olga")), lambda r: r.status == 200)
    assert books(mint_demo_token(state, "olga", ["viewer"], 600))().status == 200
    refused(stack, client, 401, "GET", "/api/books", token=new_token)
