"""Service settings: one YAML file, validated strictly at start.

An unknown key, a wrong type or a missing file is a ConfigError that names the file and the key.
Relative paths in the file are resolved against the file's own directory.
"""

from __future__ import annotations

import ipaddress
import json
from datetime import date
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ext_authz.errors import ConfigError
from ext_authz.identity.http import is_https_or_loopback
from ext_authz.policy.functions import compile_path_pattern
from ext_authz.yaml_strict import load_yaml

__all__ = [
    "AdminSettings",
    "ApiKeySettings",
    "BlockSettings",
    "BearerSettings",
    "CredentialSettings",
    "DecisionLogSettings",
    "HeaderSettings",
    "IntrospectionSettings",
    "KeyRefreshSettings",
    "MtlsIdentitySettings",
    "MtlsSettings",
    "PolicySettings",
    "ProviderSettings",
    "RateLimitRuleSettings",
    "RateLimitSettings",
    "RedisSettings",
    "SecuritySettings",
    "Settings",
    "ShadowPolicySettings",
    "SpikeSettings",
    "ThresholdSettings",
    "TokenCacheSettings",
    "WebhookSettings",
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


class KeyRefreshSettings(_Section):
    """How a provider's JWKS is kept fresh (URL and discovery sources; files are re-read on
    change). All values are seconds."""

    refresh_interval: int = Field(default=300, ge=1)  # when the response has no Cache-Control
    min_refresh_interval: int = Field(default=60, ge=1)  # lower bound on Cache-Control max-age
    max_refresh_interval: int = Field(default=3600, ge=1)  # upper bound on Cache-Control max-age
    unknown_kid_interval: int = Field(default=30, ge=1)  # at most one refetch per interval
    # How long a request with an unknown kid waits for the refetch it triggered (0: not at all).
    unknown_kid_wait: float = Field(default=0.5, ge=0, le=5)
    max_staleness: int = Field(default=86400, ge=1)  # keys older than this are not used
    timeout: float = Field(default=5.0, gt=0, le=60)  # per HTTP request
    initial_wait: float = Field(default=30.0, ge=0)  # start-up wait for the first key set

    @model_validator(mode="after")
    def _ordered(self) -> KeyRefreshSettings:
        if self.min_refresh_interval > self.max_refresh_interval:
            raise ValueError("min_refresh_interval is larger than max_refresh_interval")
        return self


class ProviderSettings(_Section):
    """One token issuer whose JWTs are accepted."""

    name: str = Field(min_length=1)
    issuer: str = Field(min_length=1)
    audiences: tuple[str, ...] = Field(min_length=1)
    # The claim that must name one of the audiences: "aud", or "client_id" for an IdP whose access
    # tokens have no aud (Amazon Cognito); never optional.
    audience_claim: Literal["aud", "client_id", "azp"] = "aud"
    # Exactly one key source: a JWKS file, a JWKS URL, or OIDC discovery from the issuer.
    jwks_file: ConfigPath | None = None
    jwks_url: str | None = None
    discovery: bool = False
    keys: KeyRefreshSettings = KeyRefreshSettings()
    algorithms: tuple[str, ...] = Field(default=("RS256",), min_length=1)
    clock_skew: int = Field(default=30, ge=0, le=300)
    max_lifetime: int = Field(default=86400, gt=0)
    max_token_bytes: int = Field(default=8192, ge=256)
    required_claims: tuple[str, ...] = ()
    typ: str | None = None  # e.g. "at+jwt" (RFC 9068); compared case-insensitively
    subject_claim: str = "sub"
    roles_claim: str = "roles"  # a dotted path, e.g. realm_access.roles

    @model_validator(mode="after")
    def _one_key_source(self) -> ProviderSettings:
        sources = [self.jwks_file is not None, self.jwks_url is not None, self.discovery]
        if sum(sources) != 1:
            raise ValueError("set exactly one key source: jwks_file, jwks_url or discovery: true")
        for url in filter(None, (self.jwks_url, self.issuer if self.discovery else None)):
            if not is_https_or_loopback(url):
                raise ValueError(f"{url!r}: keys are fetched over https only (http for loopback)")
        return self

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


class BearerSettings(_Section):
    """Where bearer tokens are read from. A token in more than one place is refused."""

    header: bool = True  # Authorization: Bearer
    cookie: str | None = None  # a cookie name
    query_parameter: str | None = None  # off by default: URLs end up in logs and Referer


class ApiKeySettings(_Section):
    """API keys: a file of key hashes (never the keys), read from one header."""

    file: ConfigPath
    header: str = Field(default="x-api-key", pattern=_HEADER_NAME)

    @field_validator("header")
    @classmethod
    def _lowercase(cls, name: str) -> str:
        return name.lower()


class MtlsIdentitySettings(_Section):
    """Roles for peers whose principal matches ``principal`` (``*`` matches within a segment,
    ``**`` across segments)."""

    principal: str = Field(min_length=1)
    roles: tuple[str, ...] = ()


class MtlsSettings(_Section):
    """Identity from the client certificate Envoy verified."""

    # Read x-forwarded-client-cert only when the Envoy in front sanitizes or sets it.
    trust_forwarded_client_cert: bool = False
    identities: tuple[MtlsIdentitySettings, ...] = ()


class IntrospectionSettings(_Section):
    """RFC 7662 token introspection for opaque (non-JWT) bearer tokens."""

    url: str = Field(min_length=1)
    client_id: str = Field(min_length=1)
    client_secret_file: ConfigPath  # the secret is never inline in the settings file
    issuer: str | None = None  # when set, the response's iss must equal it
    audiences: tuple[str, ...] = ()  # when set, the response's aud must name one of them
    timeout: float = Field(default=2.0, gt=0, le=30)
    cache_max_entries: int = Field(default=10000, ge=0)
    # Results are cached for the token's remaining life, but never longer than this: it bounds
    # how long a token revoked at the provider keeps working.
    max_cache_ttl: int = Field(default=60, ge=0)
    subject_claim: str = "sub"
    roles_claim: str = "roles"

    @field_validator("url")
    @classmethod
    def _secure_url(cls, url: str) -> str:
        if not is_https_or_loopback(url):
            raise ValueError(f"{url!r}: introspection is https only (http for loopback)")
        return url


class CredentialSettings(_Section):
    bearer: BearerSettings = BearerSettings()
    introspection: IntrospectionSettings | None = None
    api_keys: ApiKeySettings | None = None
    mtls: MtlsSettings | None = None


class TokenCacheSettings(_Section):
    """Verified tokens are cached by hash until they expire, up to ``max_entries``."""

    max_entries: int = Field(default=10000, ge=0)  # 0 turns the cache off


class ShadowPolicySettings(_Section):
    """A candidate policy decided beside the live one, logged where they differ, never enforced."""

    model: ConfigPath
    policy: ConfigPath


class PolicySettings(_Section):
    """The Casbin model and policy files, watched and reloaded when they change (and on SIGHUP)."""

    model: ConfigPath
    policy: ConfigPath
    reload_interval: float = Field(default=1.0, gt=0, le=3600)  # seconds between file checks
    shadow: ShadowPolicySettings | None = None


class HeaderSettings(_Section):
    """Headers the service owns: it sets them on allow and strips every client copy."""

    subject: str = Field(default="x-auth-subject", pattern=_HEADER_NAME)
    roles: str = Field(default="x-auth-roles", pattern=_HEADER_NAME)
    owned_prefix: str = Field(default="x-auth-", min_length=2, pattern=_HEADER_NAME)

    @field_validator("subject", "roles", "owned_prefix")
    @classmethod
    def _lowercase(cls, name: str) -> str:
        return name.lower()  # Envoy hands us lower-case names; compare like with like


class AdminSettings(_Section):
    """The admin HTTP port: Prometheus /metrics and the live view. Never the gRPC port."""

    listen: str | None = None  # e.g. "127.0.0.1:9902"; off unless set (the demo sets it)


class DecisionLogSettings(_Section):
    """Denials are always logged; allowed decisions are logged at this rate (0..1)."""

    allow_sample_rate: float = Field(default=1.0, ge=0, le=1)


class ThresholdSettings(_Section):
    """An event when ``threshold`` occurrences fall within ``window`` seconds."""

    threshold: int = Field(ge=1)
    window: float = Field(gt=0, le=86400)


class SpikeSettings(_Section):
    """An event when the deny rate over ``window`` exceeds ``factor`` x the rate over the
    preceding ``baseline`` seconds (and at least ``min_denials`` denials fell in the window)."""

    window: float = Field(default=10, gt=0)
    baseline: float = Field(default=300, gt=0)
    factor: float = Field(default=5, gt=1)
    min_denials: int = Field(default=30, ge=1)


class WebhookSettings(_Section):
    """Security events POSTed as JSON; a bounded queue, retried with backoff, never blocking."""

    url: str = Field(min_length=1)
    timeout: float = Field(default=2.0, gt=0, le=30)
    retries: int = Field(default=3, ge=0, le=10)
    queue_size: int = Field(default=1000, ge=1)

    @field_validator("url")
    @classmethod
    def _secure_url(cls, url: str) -> str:
        if not is_https_or_loopback(url):
            raise ValueError("events are sent over https only (http for loopback)")
        return url


class BlockSettings(_Section):
    """Automatic blocking of the address or subject an event names, for ``ttl`` seconds."""

    enabled: bool = False
    ttl: int = Field(default=600, ge=1)
    status: Literal[429, 403] = 429
    allowlist: tuple[str, ...] = ()  # CIDRs and subjects that are never blocked


class SecuritySettings(_Section):
    """Sliding-window detectors over decisions; each raises a security event."""

    auth_failures_per_source: ThresholdSettings = ThresholdSettings(threshold=20, window=60)
    auth_failures_per_subject: ThresholdSettings = ThresholdSettings(threshold=10, window=60)
    deny_spike: SpikeSettings = SpikeSettings()
    addresses_per_subject: ThresholdSettings = ThresholdSettings(threshold=5, window=300)
    denied_paths_per_source: ThresholdSettings = ThresholdSettings(threshold=20, window=60)
    max_tracked_keys: int = Field(default=10000, ge=100)  # per detector; oldest evicted
    block: BlockSettings = BlockSettings()
    webhook: WebhookSettings | None = None


# -- rate limits (ext_authz/ratelimit/) ---------------------------------------------------------

_LIMIT_NAME = r"^[a-z][a-z0-9_]{0,63}$"  # a metric label and a RateLimit header policy name


class RateLimitRuleSettings(_Section):
    """One limit: ``rate`` requests per ``period`` seconds, ``burst`` at once, one bucket per
    value of ``per``; ``routes``/``methods`` make it a route class, ``subjects``/``api_keys``/
    ``addresses`` restrict it to those callers (ext_authz/ratelimit/rules.py has the precedence)."""

    name: str = Field(pattern=_LIMIT_NAME)
    per: Literal["subject", "api_key", "address"]
    rate: int = Field(ge=1)
    period: int = Field(default=1, ge=1, le=86400)
    burst: int = Field(ge=1, le=1_000_000)
    routes: tuple[str, ...] = ()  # policy path patterns; none = every path
    methods: tuple[str, ...] = ()  # none = every method
    subjects: tuple[str, ...] = ()
    api_keys: tuple[str, ...] = ()  # API key ids
    addresses: tuple[str, ...] = ()  # CIDRs

    @field_validator("routes")
    @classmethod
    def _patterns(cls, routes: tuple[str, ...]) -> tuple[str, ...]:
        for route in routes:
            compile_path_pattern(route)  # raises ValueError naming the pattern
        return routes

    @field_validator("methods")
    @classmethod
    def _methods(cls, methods: tuple[str, ...]) -> tuple[str, ...]:
        bad = [m for m in methods if not m.isascii() or not m.isalpha() or not m.isupper()]
        if bad:
            raise ValueError(f"{bad[0]!r} is not an upper-case HTTP method")
        return methods

    @field_validator("addresses")
    @classmethod
    def _networks(cls, addresses: tuple[str, ...]) -> tuple[str, ...]:
        for address in addresses:
            try:
                ipaddress.ip_network(address, strict=False)
            except ValueError as exc:
                raise ValueError(f"{address!r} is not an address or CIDR") from exc
        return addresses

    @model_validator(mode="after")
    def _selectors_fit(self) -> RateLimitRuleSettings:
        if self.api_keys and self.per == "address":
            raise ValueError("api_keys selects API-key callers: use per: api_key or subject")
        return self


class RedisSettings(_Section):
    """The shared rate-limit and block store of a fleet of replicas."""

    url: str = Field(pattern=r"^(redis|rediss|unix)://")  # no password: use password_file
    password_file: ConfigPath | None = None
    timeout: float = Field(default=0.1, gt=0, le=5)  # seconds per command
    retry_interval: float = Field(default=1.0, gt=0, le=300)  # after a failure, Redis rests
    key_prefix: str = Field(default="ext-authz:", max_length=64)

    @field_validator("url")
    @classmethod
    def _no_inline_secret(cls, url: str) -> str:
        if "@" in url.partition("://")[2].split("/", 1)[0]:
            raise ValueError("the URL holds credentials: put the password in password_file")
        return url


class RateLimitSettings(_Section):
    """Token-bucket limits checked between identity and authorization; also where the
    security blocks are kept (``backend``)."""

    backend: Literal["local", "redis"] = "local"
    max_keys: int = Field(default=100_000, ge=100)  # local buckets kept (least recently used go)
    headers_on_allow: bool = False  # RateLimit headers on allowed responses too (429s always)
    on_backend_error: Literal["fail_closed", "local"] = "fail_closed"
    redis: RedisSettings | None = None
    rules: tuple[RateLimitRuleSettings, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> RateLimitSettings:
        if self.backend == "redis" and self.redis is None:
            raise ValueError("backend: redis needs a redis section (url)")
        names = [rule.name for rule in self.rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"rule name {duplicates[0]!r} is used more than once")
        return self


class Settings(_Section):
    """Everything `ext-authz serve` needs."""

    listen: str = "127.0.0.1:9191"
    grace_period: float = Field(default=10.0, ge=0)
    threads: int = Field(default=16, ge=1, le=1024)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    providers: tuple[ProviderSettings, ...] = ()
    credentials: CredentialSettings = CredentialSettings()
    token_cache: TokenCacheSettings = TokenCacheSettings()
    denylist_file: ConfigPath | None = None  # revoked jti values and subjects; re-read on change
    policy: PolicySettings
    headers: HeaderSettings = HeaderSettings()
    admin: AdminSettings = AdminSettings()
    decision_log: DecisionLogSettings = DecisionLogSettings()
    security: SecuritySettings = SecuritySettings()
    rate_limits: RateLimitSettings = RateLimitSettings()

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


Location = tuple[int | str, ...]
M = TypeVar("M", bound=BaseModel)


def validation_errors(error: ValidationError) -> list[tuple[Location, str]]:
    """Each error's location and a message fit for people."""
    return [
        (
            item["loc"],
            "unknown key"
            if item["type"] == "extra_forbidden"
            else item["msg"].removeprefix("Value error, "),
        )
        for item in error.errors()
    ]


def _iso_timestamp(value: object) -> str:
    """YAML reads an unquoted timestamp as a date or datetime: back to ISO text for pydantic."""
    if isinstance(value, date):
        return value.isoformat()
    raise TypeError(f"{value!r} is not a JSON value")


def validate_strictly(model: type[M], data: object, path: Path, *, timestamps: bool = False) -> M:
    """Validate YAML data against ``model``; relative paths resolve against ``path``'s folder.

    Through JSON, so strict mode accepts YAML lists for tuples but not "30" for an int.
    ``timestamps`` turns YAML dates back into ISO text (for fields that hold times).
    Raises ValidationError, or ConfigError for a value JSON cannot hold.
    """
    try:
        document = json.dumps(data, default=_iso_timestamp if timestamps else None)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: unsupported YAML value ({exc})") from exc
    return model.model_validate_json(document, context={"base_dir": path.resolve().parent})


def _location(loc: Location) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def load_settings(path: Path) -> Settings:
    """Read and validate a settings file; raises ConfigError naming the file and key."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read settings file: {exc.strerror}") from exc
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    try:
        return validate_strictly(Settings, data, path)
    except ValidationError as exc:
        lines = [f"{path}: {_location(loc)}: {message}" for loc, message in validation_errors(exc)]
        raise ConfigError("\n".join(lines)) from exc
