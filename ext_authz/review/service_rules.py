"""Review rules for the service settings: how tokens and credentials are accepted, and what the
service exposes.

What settings validation already refuses (`none`, HMAC mixed with asymmetric algorithms, no
audience, key or introspection URLs over plain http to a non-loopback host) cannot reach these
rules, so they do not repeat it. Locations are the settings file and the key path
(``providers[0].algorithms``), with the key's line when the file still has that key.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from ext_authz.identity.apikey import KEY_PREFIX
from ext_authz.review.findings import Finding, Location, Severity
from ext_authz.settings import HMAC_ALGORITHMS, ApiKeySettings, ProviderSettings, Settings
from ext_authz.yaml_strict import StrictLoader

__all__ = [
    "MAX_CACHE_TTL",
    "MAX_CLOCK_SKEW",
    "MAX_LIFETIME",
    "review_settings",
]

HOUR = 3600
DAY = 24 * HOUR
# (limit in seconds, severity when exceeded), strictest last: the highest limit exceeded wins.
MAX_LIFETIME = ((DAY, Severity.MEDIUM), (7 * DAY, Severity.HIGH))
MAX_CLOCK_SKEW = ((60, Severity.LOW), (120, Severity.MEDIUM))
MAX_CACHE_TTL = 300  # seconds an introspection result may outlive a revocation
# A key as `ext-authz apikey` issues it (KEY_PREFIX + 43 URL-safe characters); 16 is enough to
# tell a key from prose that mentions the prefix.
_RAW_KEY = re.compile(rf"\b{re.escape(KEY_PREFIX)}[A-Za-z0-9_-]{{16,}}")

Where = Callable[[str], Location]


def review_settings(settings: Settings, source: Path) -> list[Finding]:
    """Findings for validated ``settings`` read from ``source``; reads the API keys file."""
    where = _locator(source)
    findings: list[Finding] = []
    for index, provider in enumerate(settings.providers):
        findings += _provider(provider, f"providers[{index}]", where)
    findings += _credentials(settings, where)
    findings += _exposure(settings, where)
    findings += _rate_limits(settings, where)
    return findings


def _locator(source: Path) -> Where:
    """Maps a key path to its Location; the line comes from the file's YAML node tree."""
    try:
        root = yaml.compose(source.read_text(encoding="utf-8"), Loader=StrictLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        root = None  # the file changed since it was loaded: paths without lines
    lines: dict[str, int] = {}

    def walk(node: yaml.Node | None, path: str) -> None:
        if isinstance(node, yaml.MappingNode):
            children = [
                (f"{path}.{key.value}" if path else str(key.value), key, value)
                for key, value in node.value
            ]
        elif isinstance(node, yaml.SequenceNode):
            children = [(f"{path}[{i}]", item, item) for i, item in enumerate(node.value)]
        else:
            return
        for child, marker, value in children:
            lines[child] = marker.start_mark.line + 1
            walk(value, child)

    walk(root, "")
    return lambda path: Location(str(source), path, lines.get(path))


def _over(value: float, limits: tuple[tuple[int, Severity], ...]) -> tuple[int, Severity] | None:
    """The highest (limit, severity) that ``value`` exceeds, if any."""
    exceeded = [limit for limit in limits if value > limit[0]]
    return exceeded[-1] if exceeded else None


def _duration(seconds: int) -> str:
    if seconds % DAY == 0:
        return f"{seconds // DAY} d"
    return f"{seconds // HOUR} h" if seconds % HOUR == 0 else f"{seconds} s"


def _plain_http(url: str, location: Location, what: str) -> Iterator[Finding]:
    """Settings allow http only to a loopback host: fine for tests, not for production."""
    if urlsplit(url).scheme == "http":
        yield Finding(
            "transport.plain_http",
            Severity.LOW,
            f"{what} over plain http",
            location,
            f"{url} is a loopback address, so this is fine for tests and a local sidecar; in a"
            " production deployment anyone on the host can read or answer this traffic.",
            "Use an https URL in production.",
        )


def _provider(provider: ProviderSettings, at: str, where: Where) -> Iterator[Finding]:
    if set(provider.algorithms) <= HMAC_ALGORITHMS:
        yield Finding(
            "token.hmac_only",
            Severity.MEDIUM,
            f"provider {provider.name!r} verifies tokens with a shared secret",
            where(f"{at}.algorithms"),
            "With HMAC (HS*) every service that verifies tokens holds the key that signs them:"
            " whoever reads it from any verifier, its config or its backups can mint tokens.",
            "Have the issuer sign with an asymmetric algorithm (RS256, PS256, ES256) and publish"
            " a JWKS; verifiers then hold only public keys.",
        )
    if provider.jwks_url is not None:
        yield from _plain_http(provider.jwks_url, where(f"{at}.jwks_url"), "JWKS fetched")
    if provider.discovery:
        yield from _plain_http(provider.issuer, where(f"{at}.issuer"), "OIDC discovery")
    lifetime = _over(provider.max_lifetime, MAX_LIFETIME)
    if lifetime is not None:
        yield Finding(
            "token.max_lifetime",
            lifetime[1],
            f"tokens of {provider.name!r} may live {_duration(provider.max_lifetime)}",
            where(f"{at}.max_lifetime"),
            "A stolen token works until it expires; a token living longer than"
            f" {_duration(lifetime[0])} gives a thief that long, and revocation lists must"
            " hold its id as long.",
            "Issue short-lived access tokens (minutes to an hour) with refresh tokens, and lower"
            " max_lifetime to match.",
        )
    skew = _over(provider.clock_skew, MAX_CLOCK_SKEW)
    if skew is not None:
        yield Finding(
            "token.clock_skew",
            skew[1],
            f"provider {provider.name!r} tolerates {provider.clock_skew} s of clock skew",
            where(f"{at}.clock_skew"),
            f"Expired tokens keep working, and future-dated ones work early, for up to"
            f" {provider.clock_skew} s; synchronized clocks need far less than {skew[0]} s.",
            "Run NTP on issuer and verifiers and set clock_skew to 30-60 s.",
        )


def _credentials(settings: Settings, where: Where) -> Iterator[Finding]:
    credentials = settings.credentials
    if credentials.bearer.query_parameter is not None:
        yield Finding(
            "token.query_string",
            Severity.MEDIUM,
            f"bearer tokens accepted from the query parameter"
            f" {credentials.bearer.query_parameter!r}",
            where("credentials.bearer.query_parameter"),
            "URLs are written to access logs, browser history and proxies, and leak to other"
            " sites in the Referer header: a token in one is readable by all of them.",
            "Send tokens in the Authorization header; remove query_parameter.",
        )
    if credentials.api_keys is not None:
        yield from _api_keys_file(credentials.api_keys, where("credentials.api_keys.file"))
    if credentials.mtls is not None and credentials.mtls.trust_forwarded_client_cert:
        yield Finding(
            "mtls.trust_forwarded_client_cert",
            Severity.MEDIUM,
            "client identity read from x-forwarded-client-cert",
            where("credentials.mtls.trust_forwarded_client_cert"),
            "The header is only as good as the Envoy in front: if it forwards a client's own"
            " x-forwarded-client-cert, any client can claim any certificate identity.",
            "Keep this only behind an Envoy whose forward_client_cert_details is SANITIZE or"
            " SANITIZE_SET; otherwise set it to false.",
        )
    introspection = credentials.introspection
    if introspection is not None:
        yield from _plain_http(
            introspection.url, where("credentials.introspection.url"), "token introspection"
        )
        if introspection.max_cache_ttl > MAX_CACHE_TTL:
            yield Finding(
                "introspection.cache_ttl",
                Severity.LOW,
                f"introspection results cached for up to {introspection.max_cache_ttl} s",
                where("credentials.introspection.max_cache_ttl"),
                "A token revoked at the provider keeps working until its cached result expires.",
                f"Lower max_cache_ttl to {MAX_CACHE_TTL} s or less.",
            )


def _api_keys_file(api_keys: ApiKeySettings, location: Location) -> Iterator[Finding]:
    """The keys file must hold only hashes: a raw key anywhere in it, comments included, is a
    credential in clear."""
    try:
        lines = api_keys.file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        yield Finding(
            "apikey.not_checked",
            Severity.INFO,
            "API keys file not checked for keys in clear",
            location,
            f"{api_keys.file} cannot be read here ({exc}); it is probably written at deployment.",
            "Run the review where the keys file exists to check it.",
        )
        return
    for number, line in enumerate(lines, start=1):
        if _RAW_KEY.search(line):
            yield Finding(
                "apikey.cleartext",
                Severity.HIGH,
                "an API key in clear in the keys file",
                Location(str(api_keys.file), "", number),
                "The keys file is meant to hold only hashes, so that reading it grants nothing;"
                " this line holds a key itself, usable by anyone who can read the file, its"
                " backups or its history in version control.",
                "Revoke the key (remove its entry), issue a new one with `ext-authz apikey add`,"
                " and keep only its sha256 hash in the file.",
            )


def _is_loopback(listen: str) -> bool:
    """``host:port``, ``[v6]:port`` or ``:port`` (loopback, as the admin server reads it)."""
    host = listen.rpartition(":")[0].removeprefix("[").removesuffix("]")
    if host in ("", "localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: whatever it resolves to


def _exposure(settings: Settings, where: Where) -> Iterator[Finding]:
    if settings.admin.listen is not None and not _is_loopback(settings.admin.listen):
        yield Finding(
            "admin.public_listen",
            Severity.MEDIUM,
            f"admin port listens on {settings.admin.listen}",
            where("admin.listen"),
            "Prometheus /metrics and the live view show who calls what, which paths are denied"
            " and from where: a map of the traffic for anyone who can reach the port.",
            "Listen on loopback, or keep the port on a private network that only monitoring can"
            " reach (no published port, a network policy).",
        )
    webhook = settings.security.webhook
    if webhook is not None:
        yield from _plain_http(webhook.url, where("security.webhook.url"), "security events sent")
    if not settings.security.block.enabled:
        yield Finding(
            "security.block_disabled",
            Severity.INFO,
            "automatic blocking is off",
            where("security.block.enabled"),
            "Brute force and scanning raise security events but are not slowed down.",
            "Set security.block.enabled: true (with an allowlist for monitors and CI).",
        )
    if settings.decision_log.allow_sample_rate < 1:
        yield Finding(
            "decision_log.sampled",
            Severity.INFO,
            f"only {settings.decision_log.allow_sample_rate:.0%} of allowed decisions logged",
            where("decision_log.allow_sample_rate"),
            "An investigation cannot tell from the log everything a stolen credential reached.",
            "Log every decision (allow_sample_rate: 1) where storage allows.",
        )


def _rate_limits(settings: Settings, where: Where) -> Iterator[Finding]:
    limits = settings.rate_limits
    redis = limits.redis
    if limits.backend == "redis" and redis is not None:
        url = urlsplit(redis.url)
        if url.scheme == "redis" and not _is_loopback(f"{url.hostname or ''}:0"):
            yield Finding(
                "rate_limits.redis_plain",
                Severity.MEDIUM,
                f"rate limits and blocks kept in Redis at {url.hostname} without TLS",
                where("rate_limits.redis.url"),
                "Anyone on the network path can read the buckets and blocks, or change them:"
                " reset a bucket, lift a block on their own address, or block someone else.",
                "Use a rediss:// URL (TLS) with a password_file, or a Redis on loopback.",
            )
    anonymous = [r for r in limits.rules if r.per == "address" and not r.addresses]
    if limits.rules and not anonymous:
        yield Finding(
            "rate_limits.anonymous_unlimited",
            Severity.LOW,
            "no rate limit applies to anonymous callers",
            where("rate_limits.rules"),
            "Rules per subject or API key apply to authenticated callers only: anonymous requests"
            " and requests with refused credentials are never limited.",
            "Add a rule with per: address (and no addresses) to limit every caller by address.",
        )
