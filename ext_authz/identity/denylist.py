"""The denylist: revoked token ids (``jti``) and subjects, checked on every request."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from ext_authz.errors import ConfigError, RevokedTokenError
from ext_authz.models import Identity
from ext_authz.yaml_strict import load_yaml

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
    values = document.get(field)
    if values is None:
        return frozenset()  # left out, or `jti:` with every entry removed
    # Nothing else falsy means empty: `jti: {}` or `jti: false` is a mistake, not "revoke none".
    if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
        raise ConfigError(f"{path}: {field}: expected a list of non-empty strings")
    return frozenset(values)


def load_denylist(path: Path) -> Denylist:
    """Read ``{jti: [...], subjects: [...]}``; raises ConfigError naming the file.

    Any mistake is refused rather than read as "nothing revoked": on reload the last good
    denylist then stays in force instead of every revocation being lifted.
    """
    try:
        document = load_yaml(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read denylist: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: denylist is not UTF-8: {exc.reason}") from exc
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: a date such as 2024-13-01
        raise ConfigError(f"{path}: denylist is not valid YAML: {exc}") from exc
    if document is None:
        # More likely a half-written file than a decision to revoke nothing.
        raise ConfigError(f"{path}: denylist is empty; to revoke nothing, write 'jti: []'")
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected a mapping with 'jti' and 'subjects' lists")
    unknown = sorted(set(map(str, document)) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"{path}: {unknown[0]}: unknown key (expected 'jti' or 'subjects')")
    return Denylist(_strings(document, "jti", path), _strings(document, "subjects", path))
