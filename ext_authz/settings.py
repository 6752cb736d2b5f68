"""Service settings: one YAML file, validated strictly at start.

An unknown key, a wrong type or a missing file is a ConfigError that names the file and the key.
Relative paths in the file are resolved against the file's own directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from ext_authz.errors import ConfigError

__all__ = [
    "HeaderSettings",
    "PolicySettings",
    "ProviderSettings",
    "Settings",
    "load_settings",
]

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"}
)


_HEADER_NAME = r"^[A-Za-z0-9-]+$"


def _resolve_path(value: object, info: ValidationInfo) -> object:
    if not isinstance(value, str):
        return value  # strict validation then reports the wrong type
    path = Path(value).expanduser()
    base = info.context.get("base_dir") if info.context else None
    # A string again: strict JSON-mode validation then builds the Path.
    return str(path if path.is_absolute() or base is None else Path(base) / path)


ConfigPath = Annotated[Path, BeforeValidator(_resolve_path)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ProviderSettings(_Section):
    """One token issuer whose JWTs are accepted."""

    name: str = Field(min_length=1)
    issuer: str = Field(min_length=1)
    audiences: tuple[str, ...] = Field(min_length=1)
    jwks_file: ConfigPath
    algorithms: tuple[str, ...] = Field(default=("RS256",), min_length=1)
    clock_skew: int = Field(default=30, ge=0, le=300)
    max_lifetime: int = Field(default=86400, gt=0)
    max_token_bytes: int = Field(default=8192, ge=256)
    subject_claim: str = "sub"
    roles_claim: str = "roles"

    @field_validator("algorithms")
    @classmethod
    def _one_algorithm_family(cls, algorithms: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(algorithms) - HMAC_ALGORITHMS - ASYMMETRIC_ALGORITHMS)
        if unknown:
            raise ValueError(f"unsupported algorithm(s) {unknown}; 'none' is never accepted")
        if set(algorithms) & HMAC_ALGORITHMS and set(algorithms) & ASYMMETRIC_ALGORITHMS:
            # Mixing families lets a public key be used as an HMAC secret.
            raise ValueError("mixes HMAC (HS*) and asymmetric algorithms; list one family")
        return algorithms


class PolicySettings(_Section):
    """The Casbin model and policy files."""

    model: ConfigPath
    policy: ConfigPath


class HeaderSettings(_Section):
    """Headers the service owns: it sets them on allow and strips every client copy."""

    subject: str = Field(default="x-auth-subject", pattern=_HEADER_NAME)
    roles: str = Field(default="x-auth-roles", pattern=_HEADER_NAME)
    owned_prefix: str = Field(default="x-auth-", min_length=2, pattern=_HEADER_NAME)

    @field_validator("subject", "roles", "owned_prefix")
    @classmethod
    def _lowercase(cls, name: str) -> str:
        return name.lower()  # Envoy hands us lower-case names; compare like with like


class Settings(_Section):
    """Everything `ext-authz serve` needs."""

    listen: str = "127.0.0.1:9191"
    grace_period: float = Field(default=10.0, ge=0)
    threads: int = Field(default=16, ge=1, le=1024)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    providers: tuple[ProviderSettings, ...] = ()
    policy: PolicySettings
    headers: HeaderSettings = HeaderSettings()

    @field_validator("providers")
    @classmethod
    def _distinct_issuers(
        cls, providers: tuple[ProviderSettings, ...]
    ) -> tuple[ProviderSettings, ...]:
        issuers = [p.issuer for p in providers]
        duplicates = sorted({i for i in issuers if issuers.count(i) > 1})
        if duplicates:
            raise ValueError(f"issuer {duplicates[0]!r} is configured more than once")
        return providers


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of silently keeping the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[object, object]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (line {mark.line + 1})", mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _describe(error: ValidationError, source: Path) -> str:
    lines = []
    for item in error.errors():
        message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        lines.append(f"{source}: {_location(item['loc'])}: {message}")
    return "\n".join(lines)


def load_settings(path: Path) -> Settings:
    """Read and validate a settings file; raises ConfigError naming the file and key."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read settings file: {exc.strerror}") from exc
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    try:
        # Through JSON so strict mode accepts YAML lists for tuples but not "30" for an int.
        document = json.dumps(data)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: unsupported YAML value ({exc})") from exc
    try:
        return Settings.model_validate_json(document, context={"base_dir": path.resolve().parent})
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from exc
