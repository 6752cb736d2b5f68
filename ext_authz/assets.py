"""Where the shipped top-level folders (``envoy/``, ``policies/``) are on this install."""

from __future__ import annotations

from pathlib import Path

from ext_authz.errors import ConfigError

__all__ = ["bundled_path"]

_PACKAGE_DIR = Path(__file__).resolve().parent


def bundled_path(name: str) -> Path:
    """Return the directory of the shipped folder ``name`` (``"envoy"`` or ``"policies"``).

    A wheel carries it as ``ext_authz/_bundled/<name>`` (pyproject force-include); a source or
    editable install finds it at the repository root instead.
    """
    # Only plain folder names: this is not a general path resolver.
    if not name or name in {".", ".."} or "/" in name or "\\" in name:
        raise ConfigError(f"invalid shipped folder name {name!r}")
    candidates = (_PACKAGE_DIR / "_bundled" / name, _PACKAGE_DIR.parent / name)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise ConfigError(f"shipped folder {name!r} not found (looked in {tried}); reinstall ext-authz")
