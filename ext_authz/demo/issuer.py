"""The demo issuer: its identifiers, the service settings that trust it, and token minting."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from ext_authz.demo.keys import ensure_demo_keys
from ext_authz.identity.jwt import sign_token

__all__ = ["DEMO_AUDIENCE", "DEMO_ISSUER", "mint_demo_token", "service_settings"]

DEMO_ISSUER = "https://demo.ext-authz.local"
DEMO_AUDIENCE = "demo-api"
# Set by the minting flags; --claim may not override them.
REGISTERED_CLAIMS = frozenset({"iss", "aud", "sub", "iat", "nbf", "exp", "roles"})


def mint_demo_token(
    state_dir: Path,
    subject: str,
    roles: Sequence[str] = (),
    ttl: int = 3600,
    extra_claims: Mapping[str, object] | None = None,
) -> str:
    """A token for the demo issuer, signed with the state dir's issuer key (development only)."""
    keys = ensure_demo_keys(state_dir)
    now = int(time.time())
    claims: dict[str, object] = dict(extra_claims or {})
    claims.update(
        iss=DEMO_ISSUER,
        aud=DEMO_AUDIENCE,
        sub=subject,
        iat=now,
        nbf=now,
        exp=now + ttl,
        roles=list(roles),
    )
    return sign_token(claims, keys.issuer_key.read_text(encoding="ascii"), keys.kid)


def service_settings(state_dir: Path, policies: Path, grpc_port: int) -> dict[str, object]:
    """The `serve` settings the demo runs with, as written to ``state_dir/config.yaml``."""
    return {
        "listen": f"127.0.0.1:{grpc_port}",
        "grace_period": 5,
        "providers": [
            {
                "name": "demo",
                "issuer": DEMO_ISSUER,
                "audiences": [DEMO_AUDIENCE],
                "jwks_file": str(state_dir.resolve() / "jwks.json"),
                "algorithms": ["RS256"],
            }
        ],
        "policy": {
            "model": str(policies / "model.conf"),
            "policy": str(policies / "policy.csv"),
        },
    }
