"""The demo's non-JWT credentials: one API key (its hash in api-keys.yaml, the key itself in
demo-api-key for curl) and an empty denylist to try revocation with. Created once, then kept."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from ext_authz.identity.apikey import hash_api_key, new_api_key

__all__ = ["DEMO_API_KEY_OWNER", "DemoCredentials", "ensure_demo_credentials"]

DEMO_API_KEY_ID = "demo-ci"
DEMO_API_KEY_OWNER = "ci-bot"
DEMO_API_KEY_ROLES = ("editor",)


@dataclass(frozen=True, slots=True)
class DemoCredentials:
    api_keys: Path  # hashes only
    api_key: Path  # the demo key itself, 0600, development only
    denylist: Path


def _write_private(path: Path, text: str) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)


def ensure_demo_credentials(state_dir: Path) -> DemoCredentials:
    credentials = DemoCredentials(
        state_dir / "api-keys.yaml", state_dir / "demo-api-key", state_dir / "denylist.yaml"
    )
    if not (credentials.api_keys.is_file() and credentials.api_key.is_file()):
        key = new_api_key()
        entry = {
            "id": DEMO_API_KEY_ID,
            "hash": hash_api_key(key),
            "owner": DEMO_API_KEY_OWNER,
            "roles": list(DEMO_API_KEY_ROLES),
        }
        _write_private(credentials.api_key, key + "\n")
        credentials.api_keys.write_text(yaml.safe_dump({"keys": [entry]}, sort_keys=False))
    if not credentials.denylist.is_file():
        credentials.denylist.write_text(
            "# Revoked token ids (jti) and subjects; ext-authz re-reads this file on change.\n"
            "jti: []\nsubjects: []\n"
        )
    return credentials
