"""A real OpenID Connect provider for the interoperability tests: oidc-provider (npm, OpenID
Certified) run by Node from tests/idp/ (`make idp` installs it from the lock file).

``OidcProvider`` starts ``tests/idp/server.mjs`` on a free loopback port with a JSON config
(clients, resources, extra claims) and a private JWK Set, restarts it on the same port with other
keys (key rotation), stops it (outage), gets tokens with the client-credentials grant, revokes
them, and reads its per-path request counts.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from cryptography.hazmat.primitives.asymmetric import rsa
from harness import free_ports

from ext_authz.demo.keys import rsa_public_jwk

IDP_DIR = Path(__file__).resolve().parents[1] / "idp"
SERVER = IDP_DIR / "server.mjs"
START_TIMEOUT = 15.0


def require_idp() -> str:
    """The node binary, or a failure that says how to install the provider (never a skip)."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("Node.js is needed for the OpenID Connect interop tests: install node")
    if not (IDP_DIR / "node_modules" / "oidc-provider").is_dir():
        raise RuntimeError(
            f"oidc-provider is not installed in {IDP_DIR}: run `make idp` "
            "(npm ci --prefix tests/idp)"
        )
    return node


def _b64url_uint(value: int) -> str:
    data = value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class SigningKey:
    """An RSA key with its private JWK (for the provider) and public JWK (``kid`` = thumbprint)."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_jwk = rsa_public_jwk(self.key.public_key())
        self.kid = self.public_jwk["kid"]
        numbers = self.key.private_numbers()
        private = {
            "d": numbers.d,
            "p": numbers.p,
            "q": numbers.q,
            "dp": numbers.dmp1,
            "dq": numbers.dmq1,
            "qi": numbers.iqmp,
        }
        self.private_jwk = {
            **self.public_jwk,
            **{name: _b64url_uint(v) for name, v in private.items()},
        }


def _request(
    url: str, data: Mapping[str, str] | None = None, auth: tuple[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    headers = {"Accept": "application/json"}
    if auth is not None:
        pair = f"{urllib.parse.quote_plus(auth[0])}:{urllib.parse.quote_plus(auth[1])}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    body = None if data is None else urllib.parse.urlencode(data).encode()
    request = urllib.request.Request(url, data=body, headers=headers)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=5) as reply:
            raw = reply.read()
            return reply.status, json.loads(raw) if raw else {}
    except urllib.error.HTTPError as error:
        raw = error.read()
        error.close()
        return error.code, json.loads(raw) if raw else {}


class OidcProvider:
    """One oidc-provider process at a fixed issuer (``http://127.0.0.1:<port>``) across restarts."""

    def __init__(
        self,
        workdir: Path,
        *,
        clients: Sequence[Mapping[str, object]],
        resources: Mapping[str, Mapping[str, object]],
        claims: Mapping[str, Mapping[str, object]],
    ) -> None:
        self.node = require_idp()
        self.workdir = workdir
        self.port = free_ports(1)[0]
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.secrets = {str(c["client_id"]): str(c["client_secret"]) for c in clients}
        self._config = {
            "port": self.port,
            "jwks_file": str(workdir / "idp-keys.json"),
            "clients": list(clients),
            "resources": dict(resources),
            "claims": dict(claims),
        }
        self.keys: list[SigningKey] = []  # the key set in force; the first one signs
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "idp.log"

    def start(self, keys: Sequence[SigningKey]) -> None:
        """Start with ``keys`` (the first one signs); returns once discovery answers."""
        self.stop()
        self.keys = list(keys)
        (self.workdir / "idp-keys.json").write_text(
            json.dumps({"keys": [key.private_jwk for key in keys]})
        )
        config = self.workdir / "idp-config.json"
        config.write_text(json.dumps(self._config))
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [self.node, str(SERVER), str(config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=IDP_DIR,
            env={**os.environ, "NODE_ENV": "test"},
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._process.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"oidc-provider exited ({self._process.returncode}):\n{tail}")
            try:
                status, document = _request(f"{self.issuer}/.well-known/openid-configuration")
                if status == 200 and document.get("issuer") == self.issuer:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"oidc-provider did not answer; see {self.log_path}")
            time.sleep(0.05)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def counts(self) -> dict[str, int]:
        """Requests per path since this process started (JWKS fetches, introspection calls)."""
        status, counts = _request(f"{self.issuer}/__test/counts")
        assert status == 200, counts
        return {str(path): int(n) for path, n in counts.items()}

    def token(self, client_id: str, resource: str, scope: str = "") -> str:
        """A token for ``resource`` by the client-credentials grant (client_secret_basic)."""
        form = {"grant_type": "client_credentials", "resource": resource}
        if scope:
            form["scope"] = scope
        status, reply = _request(f"{self.issuer}/token", form, (client_id, self.secrets[client_id]))
        assert status == 200, reply
        return str(reply["access_token"])

    def revoke(self, client_id: str, token: str) -> None:
        """RFC 7009 revocation at the provider, authenticated as the client the token was for."""
        form = {"token": token, "token_type_hint": "access_token"}
        status, reply = _request(
            f"{self.issuer}/token/revocation", form, (client_id, self.secrets[client_id])
        )
        assert status == 200, reply
