"""Shared fixtures: one RSA key, its JWKS, tokens signed with it, Envoy-shaped CheckRequests, and
a count of signature checks."""

from __future__ import annotations

import os

# The tests start processes (Envoy, the service, redis-server) from a process that also makes
# gRPC calls; gRPC's fork handlers then can hang Popen in fork() for good (grpc/grpc#37259; here
# a loop of health checks and Popen with preexec_fn hung within ~250 rounds, and never with
# this off). Every fork here is followed by exec and needs no fork support: off, before any
# grpc import.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import json  # noqa: E402
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwk, jwt
from redis_server import RedisServer

from ext_authz._proto.envoy.config.core.v3 import base_pb2
from ext_authz._proto.envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2
from ext_authz.identity import jwt as jwt_module
from ext_authz.policy.engine import CasbinPolicyEngine
from ext_authz.settings import ProviderSettings

REPO_ROOT = Path(__file__).resolve().parent.parent
POLICIES = REPO_ROOT / "policies"
ISSUER = "https://issuer.test"
AUDIENCE = "api"
KID = "test-key-1"


@dataclass(frozen=True)
class KeyPair:
    private_pem: str
    public_pem: str
    public_jwk: dict[str, Any]  # RS256 public JWK with "kid"
    kid: str


def new_rsa_keypair(kid: str) -> KeyPair:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    public_jwk = {**jwk.construct(public_pem, "RS256").to_dict(), "kid": kid, "use": "sig"}
    return KeyPair(private_pem, public_pem, public_jwk, kid)


@pytest.fixture(scope="session")
def rsa_keypair() -> KeyPair:
    return new_rsa_keypair(KID)


@pytest.fixture(scope="session")
def second_rsa_keypair() -> KeyPair:
    """Another key, for "unknown kid" and "several keys" cases."""
    return new_rsa_keypair("test-key-2")


@pytest.fixture(scope="session")
def jwks_file(rsa_keypair: KeyPair, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("jwks") / "jwks.json"
    path.write_text(json.dumps({"keys": [rsa_keypair.public_jwk]}), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def provider_settings(jwks_file: Path) -> ProviderSettings:
    return ProviderSettings(name="test", issuer=ISSUER, audiences=(AUDIENCE,), jwks_file=jwks_file)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server of the test's own on a free loopback port, stopped afterwards."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def verify_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every call jwt.py makes to jose's signature check (the work the token cache saves)."""
    calls: list[str] = []
    real_verify = jwt_module.jws.verify

    def counting_verify(token: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(token)
        return real_verify(token, *args, **kwargs)

    monkeypatch.setattr(jwt_module.jws, "verify", counting_verify)
    return calls


def default_claims(now: float | None = None) -> dict[str, Any]:
    now = int(time.time() if now is None else now)
    return {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 300}


@pytest.fixture(scope="session")
def make_token(rsa_keypair: KeyPair) -> Callable[..., str]:
    """``make_token(sub="bob", exp=None, headers={"kid": None}, now=..., key=..., algorithm=...)``.

    Claims default to a valid token for ISSUER/AUDIENCE; a claim or header given as None is
    deleted. jose always writes ``alg`` and ``typ``; a header value overrides them.
    """

    def make(
        *,
        headers: Mapping[str, Any] | None = None,
        key: str | None = None,
        algorithm: str = "RS256",
        now: float | None = None,
        **claims: Any,
    ) -> str:
        payload = {**default_claims(now), **claims}
        payload = {name: value for name, value in payload.items() if value is not None}
        header = {"kid": rsa_keypair.kid, **(headers or {})}
        header = {name: value for name, value in header.items() if value is not None}
        signing_key = rsa_keypair.private_pem if key is None else key
        return str(jwt.encode(payload, signing_key, algorithm=algorithm, headers=header))

    return make


def check_request(
    method: str = "GET",
    path: str = "/",
    headers: Mapping[str, str] | None = None,
    source: str = "10.0.0.1",
    *,
    host: str = "api.test",
    scheme: str = "https",
    request_id: str = "req-1",
    principal: str = "",
    context_extensions: Mapping[str, str] | None = None,
    header_map: Sequence[tuple[str, str]] | None = None,
) -> external_auth_pb2.CheckRequest:
    """A CheckRequest as Envoy sends it: raw ``:path`` (query included) and pseudo headers.

    With ``header_map`` the headers go there instead (Envoy's ``encode_raw_headers``).
    """
    pseudo = {":path": path, ":method": method, ":authority": host, ":scheme": scheme}
    all_headers = {**pseudo, **(headers or {})}
    http = attribute_context_pb2.AttributeContext.HttpRequest(
        id=request_id, method=method, path=path, host=host, scheme=scheme, protocol="HTTP/2"
    )
    if header_map is None:
        http.headers.update(all_headers)
    else:
        http.header_map.headers.extend(
            base_pb2.HeaderValue(key=name, raw_value=value.encode())
            for name, value in [*pseudo.items(), *header_map]
        )
    source_peer = attribute_context_pb2.AttributeContext.Peer(
        address=base_pb2.Address(
            socket_address=base_pb2.SocketAddress(address=source, port_value=51000)
        ),
        principal=principal,
    )
    attributes = attribute_context_pb2.AttributeContext(
        source=source_peer,
        request=attribute_context_pb2.AttributeContext.Request(http=http),
        context_extensions=dict(context_extensions or {}),
    )
    return external_auth_pb2.CheckRequest(attributes=attributes)


@pytest.fixture(scope="session")
def make_check_request() -> Callable[..., external_auth_pb2.CheckRequest]:
    return check_request


@pytest.fixture(scope="session")
def demo_engine() -> CasbinPolicyEngine:
    return CasbinPolicyEngine.from_files(POLICIES / "model.conf", POLICIES / "policy.csv")
