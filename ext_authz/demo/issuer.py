"""The demo issuer: its identifiers, the service settings that trust it, and token minting."""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from ext_authz.demo.credentials import DEMO_API_KEY_OWNER
from ext_authz.demo.keys import ensure_demo_keys
from ext_authz.identity.jwt import sign_token

__all__ = [
    "DEMO_AUDIENCE",
    "DEMO_ISSUER",
    "DEMO_RATE_LIMITS",
    "DEMO_SECURITY",
    "mint_demo_token",
    "service_settings",
]

DEMO_ISSUER = "https://demo.ext-authz.local"
DEMO_AUDIENCE = "demo-api"
# Client certificates the demo's client CA issues; they get the viewer role.
DEMO_CLIENT_PRINCIPALS = "spiffe://demo.ext-authz.local/client/*"
# Security signals with thresholds a short scripted attack reaches, and blocking on: ten bad
# tokens from one address within 30 s block it (127.0.0.1 too: the demo shows the block) for a
# minute. The CI bot's API key is used from many runners, so its owner is never blocked.
DEMO_SECURITY: dict[str, object] = {
    "auth_failures_per_source": {"threshold": 10, "window": 30},
    "auth_failures_per_subject": {"threshold": 5, "window": 30},
    "deny_spike": {"window": 10, "baseline": 120, "factor": 5, "min_denials": 30},
    "addresses_per_subject": {"threshold": 5, "window": 300},
    "denied_paths_per_source": {"threshold": 15, "window": 30},
    "block": {"enabled": True, "ttl": 60, "status": 429, "allowlist": [DEMO_API_KEY_OWNER]},
}
# Rate limits a person trying the demo never meets by accident, but a loop of curls does: every
# anonymous address (and every caller whose credentials are refused) 10/s with bursts of 30, each
# signed-in user 20/s (40), each API key 50/s (100), and writes to the API 30 a minute with bursts
# of 5 per user. Allowed responses show what is left (RateLimit headers).
DEMO_RATE_LIMITS: dict[str, object] = {
    "headers_on_allow": True,
    "rules": [
        {"name": "anonymous", "per": "address", "rate": 10, "burst": 30},
        {"name": "users", "per": "subject", "rate": 20, "burst": 40},
        {"name": "api_keys", "per": "api_key", "rate": 50, "burst": 100},
        {
            "name": "writes",
            "per": "subject",
            "routes": ["/api/**"],
            "methods": ["POST", "PUT", "PATCH", "DELETE"],
            "rate": 30,
            "period": 60,
            "burst": 5,
        },
    ],
}
# Set by the minting flags; --claim may not override them.
REGISTERED_CLAIMS = frozenset({"iss", "aud", "sub", "iat", "nbf", "exp", "roles", "jti"})


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
        jti=secrets.token_urlsafe(12),  # lets the denylist revoke one token
    )
    return sign_token(claims, keys.issuer_key.read_text(encoding="ascii"), keys.kid)


def service_settings(
    state_dir: Path, policies: Path, grpc_port: int, admin_port: int
) -> dict[str, object]:
    """The `serve` settings the demo runs with, as written to ``state_dir/config.yaml``."""
    state = state_dir.resolve()
    return {
        "listen": f"127.0.0.1:{grpc_port}",
        "admin": {"listen": f"127.0.0.1:{admin_port}"},
        "grace_period": 5,
        "providers": [
            {
                "name": "demo",
                "issuer": DEMO_ISSUER,
                "audiences": [DEMO_AUDIENCE],
                "jwks_file": str(state / "jwks.json"),
                "algorithms": ["RS256"],
            }
        ],
        "credentials": {
            "api_keys": {"file": str(state / "api-keys.yaml")},
            "mtls": {"identities": [{"principal": DEMO_CLIENT_PRINCIPALS, "roles": ["viewer"]}]},
        },
        "denylist_file": str(state / "denylist.yaml"),
        "policy": {
            "model": str(policies / "model.conf"),
            "policy": str(policies / "policy.csv"),
        },
        "security": DEMO_SECURITY,
        "rate_limits": DEMO_RATE_LIMITS,
    }
