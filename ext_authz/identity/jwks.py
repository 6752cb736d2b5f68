"""JWKS key sources. A key set is read from configured files only, never from a token."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from ext_authz.errors import ConfigError

__all__ = ["load_jwks_file"]


def load_jwks_file(path: Path) -> tuple[Mapping[str, object], ...]:
    """Read a JWK Set file; raises ConfigError naming the file when it is unusable."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read JWKS file: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigError(f"{path}: JWKS file is not valid JSON: {exc}") from exc
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list) or not keys:
        raise ConfigError(f"{path}: expected a JSON object with a non-empty 'keys' list")
    for index, key in enumerate(keys):
        if not isinstance(key, dict) or not isinstance(key.get("kty"), str):
            raise ConfigError(f"{path}: keys[{index}] is not a JWK (no 'kty')")
        if key.get("use", "sig") != "sig":
            raise ConfigError(f"{path}: keys[{index}] has use={key['use']!r}; expected 'sig'")
    return tuple(keys)
