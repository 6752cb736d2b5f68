"""The denylist: revoked token ids (``jti``) and subjects, checked on every request."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from ext_authz.errors import ConfigError, RevokedTokenError
from ext_authz.models import Identity

__all__ = ["Denylist", "load_denylist"]

_FIELDS = ("jti", "subjects")


@dataclass(frozen=True, slots=True)
class Denylist:
    jtis: frozenset[str] = frozenset()
    subjects: frozenset[str] = frozenset()

    def check(self, identity: Identity) -> None:
        """Raise RevokedTokenError when the identity's subject or token id is revoked."""
        if identity.subject in self.subjects:
            raise RevokedTokenError("this subject's access has been revoked")
        jti = identity.claims.get("jti")
        if isinstance(jti, str) and jti in self.jtis:
            raise RevokedTokenError("this token has been revoked")


def _strings(document: dict[str, object], field: str, path: Path) -> frozenset[str]:
    values = document.get(field) or []
    if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
        raise ConfigError(f"{path}: {field}: expected a list of non-empty strings")
    return frozenset(values)


def load_denylist(path: Path) -> Denylist:
    """Read ``{jti: [...], subjects: [...]}``; raises ConfigError naming the file."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read denylist: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: denylist is not valid YAML: {exc}") from exc
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected a mapping with 'jti' and 'subjects' lists")
    unknown = sorted(set(map(str, document)) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"{path}: {unknown[0]}: unknown key (expected 'jti' or 'subjects')")
    return Denylist(_strings(document, "jti", path), _strings(document, "subjects", path))
