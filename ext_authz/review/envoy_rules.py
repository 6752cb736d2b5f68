"""Security rules for an Envoy bootstrap that fronts ext-authz (static resources only).

Each rule has a stable id, a severity, a title and a fix (the same for every finding of the rule);
a finding's ``why`` names the listener, route or value concerned. ``RULES`` lists them all.

What counts as what:
- A route "reaches an upstream" when it has a ``route`` action (cluster, weighted clusters,
  cluster header or plugin); ``redirect``/``direct_response`` routes do not, and on a listener
  without TLS neither does a virtual host with ``require_tls``. HTTP hardening rules (path
  normalization, escaped slashes, underscores, header limits) apply only to connection managers
  with such a route: a plain listener that only redirects to https needs none of them.
- A listener is public when one of its addresses is neither loopback nor a pipe/internal address
  (0.0.0.0 and hostnames are public). Public listeners are "edge" for the X-Forwarded-For rules.
- Routes from RDS (``rds``/``scoped_routes``) cannot be seen: the manager is assumed to reach an
  upstream, and an informational finding says the routes were not reviewed.
- Header limits: Envoy's defaults (60 KiB, 100 headers) are fine; only values raised above
  ``MAX_REQUEST_HEADERS_KB``/``MAX_HEADERS_COUNT`` are flagged.
- Body buffering (``with_request_body``): ``max_request_bytes`` unset or above
  ``MAX_REQUEST_BODY_BYTES`` is flagged.
- The ext_authz timeout: unset means Envoy's built-in 200 ms (informational); 0 (no timeout) or
  above ``MAX_AUTHZ_TIMEOUT`` is flagged.
- Identity headers: ext-authz removes the client's copies itself on every request it checks, so
  only routes that skip ext_authz and do not ``request_headers_to_remove`` them are flagged.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

import betterproto2

from ext_authz.review.envoy_config import (
    EnvoyBootstrap,
    item_path,
    key_path,
    quiet_envoy_data_plane,
    unpack,
)
from ext_authz.review.findings import Finding, Location, Severity

with quiet_envoy_data_plane():
    from envoy_data_plane.envoy.config.core.v3 import Address, TransportSocket
    from envoy_data_plane.envoy.config.listener.v3 import FilterChain, Listener
    from envoy_data_plane.envoy.config.route.v3 import (
        FilterConfig,
        Route,
        RouteConfiguration,
        VirtualHost,
        VirtualHostTlsRequirementType,
    )
    from envoy_data_plane.envoy.extensions.filters.http.ext_authz.v3 import (
        ExtAuthz,
        ExtAuthzPerRoute,
    )
    from envoy_data_plane.envoy.extensions.filters.http.ext_proc.v3 import ExternalProcessor
    from envoy_data_plane.envoy.extensions.filters.http.header_mutation.v3 import HeaderMutation
    from envoy_data_plane.envoy.extensions.filters.http.router.v3 import Router
    from envoy_data_plane.envoy.extensions.filters.network.ext_authz.v3 import (
        ExtAuthz as NetworkExtAuthz,
    )
    from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
        HttpConnectionManager,
        HttpConnectionManagerPathWithEscapedSlashesAction,
        HttpFilter,
    )
    from envoy_data_plane.envoy.extensions.filters.network.tcp_proxy.v3 import TcpProxy
    from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import (
        CommonTlsContext,
        DownstreamTlsContext,
        TlsParametersTlsProtocol,
        UpstreamTlsContext,
    )
    from envoy_data_plane.envoy.type.v3 import FractionalPercent, FractionalPercentDenominatorType
    from envoy_data_plane.google.protobuf import Any as AnyMessage

__all__ = [
    "DEFAULT_IDENTITY_HEADERS",
    "MAX_AUTHZ_TIMEOUT",
    "MAX_HEADERS_COUNT",
    "MAX_REQUEST_BODY_BYTES",
    "MAX_REQUEST_HEADERS_KB",
    "RULES",
    "Rule",
    "review_envoy",
]

DEFAULT_IDENTITY_HEADERS = ("x-auth-subject", "x-auth-roles")  # HeaderSettings' defaults
MAX_AUTHZ_TIMEOUT = timedelta(seconds=5)
MAX_REQUEST_HEADERS_KB = 96  # Envoy's default is 60
MAX_HEADERS_COUNT = 200  # Envoy's default is 100
MAX_REQUEST_BODY_BYTES = 1024 * 1024  # Envoy's default per-connection buffer limit
# Filters that run arbitrary code on the request, or rewrite its path by design.
PATH_REWRITING_FILTERS = frozenset(
    {
        "envoy.extensions.filters.http.lua.v3.Lua",
        "envoy.extensions.filters.http.wasm.v3.Wasm",
        "envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
        "envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
    }
)
_TLS_TRANSPORTS = frozenset(
    {
        "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "envoy.extensions.transport_sockets.quic.v3.QuicDownstreamTransport",
    }
)
_OLD_TLS = frozenset({TlsParametersTlsProtocol.TLSv1_0, TlsParametersTlsProtocol.TLSv1_1})
_GOOD_ESCAPED_SLASHES = frozenset(
    {
        HttpConnectionManagerPathWithEscapedSlashesAction.REJECT_REQUEST,
        HttpConnectionManagerPathWithEscapedSlashesAction.UNESCAPE_AND_REDIRECT,
    }
)
_DENOMINATORS = {
    FractionalPercentDenominatorType.HUNDRED: 100,
    FractionalPercentDenominatorType.TEN_THOUSAND: 10_000,
    FractionalPercentDenominatorType.MILLION: 1_000_000,
}


@dataclass(frozen=True, slots=True)
class Rule:
    """A rule: every finding it raises shares its id, severity, title and fix."""

    id: str
    severity: Severity
    title: str
    fix: str

    def at(self, location: Location, why: str) -> Finding:
        return Finding(self.id, self.severity, self.title, location, why, self.fix)


FAILURE_MODE_ALLOW = Rule(
    "envoy.ext_authz.failure_mode_allow",
    Severity.CRITICAL,
    "ext_authz fails open",
    "Set failure_mode_allow: false, so an unavailable authorization service means a denial"
    " (status_on_error, e.g. ServiceUnavailable).",
)
MISSING = Rule(
    "envoy.ext_authz.missing",
    Severity.CRITICAL,
    "Upstream reachable without ext_authz",
    "Put envoy.filters.http.ext_authz first in http_filters (envoy.filters.network.ext_authz"
    " before a tcp_proxy), pointing at the ext_authz cluster, as envoy/envoy.yaml does.",
)
AFTER_ROUTER = Rule(
    "envoy.ext_authz.after_router",
    Severity.CRITICAL,
    "ext_authz placed after the router",
    "Move envoy.filters.http.ext_authz before envoy.filters.http.router (first in http_filters).",
)
DISABLED = Rule(
    "envoy.ext_authz.disabled",
    Severity.HIGH,
    "ext_authz disabled for requests that reach an upstream",
    "Let the policy decide anonymous access instead of switching ext_authz off. Where a route"
    " really must skip it (a health check), keep that route narrow (exact path, GET only),"
    " remove the identity headers on it, and suppress this finding with the justification.",
)
PATH_REWRITE = Rule(
    "envoy.ext_authz.after_path_rewrite",
    Severity.HIGH,
    "ext_authz runs after a filter that can rewrite the path",
    "Put ext_authz first in http_filters; rewrite paths in the route (prefix_rewrite,"
    " regex_rewrite), which the router applies after the check.",
)
STATUS_ON_ERROR = Rule(
    "envoy.ext_authz.status_on_error",
    Severity.MEDIUM,
    "status_on_error is not a denial",
    "Set status_on_error to a 5xx such as {code: ServiceUnavailable}, or leave it unset (403).",
)
TIMEOUT = Rule(
    "envoy.ext_authz.timeout",
    Severity.MEDIUM,
    "ext_authz timeout unbounded or too long",
    f"Set grpc_service.timeout to a short bound: at most {MAX_AUTHZ_TIMEOUT.seconds}s"
    " (envoy/envoy.yaml uses 1s).",
)
TIMEOUT_UNSET = Rule(
    "envoy.ext_authz.timeout_unset",
    Severity.INFO,
    "ext_authz timeout left at Envoy's default",
    "Set grpc_service.timeout explicitly (envoy/envoy.yaml uses 1s).",
)
REQUEST_BODY = Rule(
    "envoy.ext_authz.request_body",
    Severity.MEDIUM,
    "Request body buffered for ext_authz without a sane size limit",
    f"Set with_request_body.max_request_bytes to at most {MAX_REQUEST_BODY_BYTES} (a few KiB is"
    " plenty), or drop with_request_body: ext-authz policies do not read the body.",
)
IDENTITY_HEADERS = Rule(
    "envoy.ext_authz.identity_headers",
    Severity.LOW,
    "Client-sent identity headers reach the upstream on a route without ext_authz",
    "Add the identity headers (x-auth-subject, x-auth-roles by default) to"
    " request_headers_to_remove on the route or its virtual host.",
)
TLS_MISSING = Rule(
    "envoy.tls.missing",
    Severity.HIGH,
    "Public listener forwards to an upstream without TLS",
    "Add a DownstreamTlsContext transport_socket to the filter chain, or make the plain listener"
    " answer only with redirect: {https_redirect: true}.",
)
TLS_VERSION = Rule(
    "envoy.tls.min_version",
    Severity.MEDIUM,
    "TLS older than 1.2 allowed",
    "Set tls_minimum_protocol_version: TLSv1_2 (or leave it unset: Envoy's default is 1.2).",
)
WEAK_CIPHERS = Rule(
    "envoy.tls.weak_ciphers",
    Severity.MEDIUM,
    "Weak TLS cipher suites allowed",
    "List only ECDHE suites with AES-GCM or CHACHA20-POLY1305 (as envoy/envoy.yaml does), or"
    " leave cipher_suites unset.",
)
HTTPS_REDIRECT = Rule(
    "envoy.http.https_redirect",
    Severity.LOW,
    "Plain-HTTP listener does not redirect to HTTPS",
    "Answer every plain-HTTP request with redirect: {https_redirect: true} (or set"
    " require_tls: ALL on its virtual hosts).",
)
PATH_NORMALIZATION = Rule(
    "envoy.http.path_normalization",
    Severity.HIGH,
    "Path normalization off",
    "Set normalize_path: true and merge_slashes: true on the http_connection_manager.",
)
ESCAPED_SLASHES = Rule(
    "envoy.http.escaped_slashes",
    Severity.HIGH,
    "Escaped slashes in paths kept or forwarded",
    "Set path_with_escaped_slashes_action: REJECT_REQUEST (or UNESCAPE_AND_REDIRECT).",
)
UNDERSCORES = Rule(
    "envoy.http.headers_with_underscores",
    Severity.MEDIUM,
    "Header names with underscores allowed",
    "Set common_http_protocol_options.headers_with_underscores_action: REJECT_REQUEST.",
)
REMOTE_ADDRESS = Rule(
    "envoy.http.use_remote_address",
    Severity.MEDIUM,
    "Edge listener takes the client address from X-Forwarded-For",
    "Set use_remote_address: true on listeners that face clients.",
)
TRUSTED_HOPS = Rule(
    "envoy.http.xff_trusted_hops",
    Severity.MEDIUM,
    "Edge listener trusts client-supplied X-Forwarded-For hops",
    "Set xff_num_trusted_hops: 0 where Envoy is the edge. Behind a load balancer that overwrites"
    " X-Forwarded-For, suppress this finding with that justification.",
)
HEADER_LIMITS = Rule(
    "envoy.http.header_limits",
    Severity.LOW,
    "Request header limits raised",
    f"Keep max_request_headers_kb at most {MAX_REQUEST_HEADERS_KB} and max_headers_count at most"
    f" {MAX_HEADERS_COUNT} (Envoy's defaults, 60 and 100, suit most APIs).",
)
ADMIN_PUBLIC = Rule(
    "envoy.admin.public",
    Severity.HIGH,
    "Envoy admin interface reachable beyond loopback",
    "Bind admin.address to 127.0.0.1 (or a pipe) and reach it through the host.",
)
ROUTES_NOT_REVIEWED = Rule(
    "envoy.routes.not_reviewed",
    Severity.INFO,
    "Routes come from RDS and were not reviewed",
    "Review the routes your control plane serves, or inline route_config to review it here.",
)

RULES: tuple[Rule, ...] = (
    FAILURE_MODE_ALLOW,
    MISSING,
    AFTER_ROUTER,
    DISABLED,
    PATH_REWRITE,
    STATUS_ON_ERROR,
    TIMEOUT,
    TIMEOUT_UNSET,
    REQUEST_BODY,
    IDENTITY_HEADERS,
    TLS_MISSING,
    TLS_VERSION,
    WEAK_CIPHERS,
    HTTPS_REDIRECT,
    PATH_NORMALIZATION,
    ESCAPED_SLASHES,
    UNDERSCORES,
    REMOTE_ADDRESS,
    TRUSTED_HOPS,
    HEADER_LIMITS,
    ADMIN_PUBLIC,
    ROUTES_NOT_REVIEWED,
)


def review_envoy(
    config: EnvoyBootstrap, identity_headers: Sequence[str] = DEFAULT_IDENTITY_HEADERS
) -> list[Finding]:
    """Findings for a parsed bootstrap; ``identity_headers`` are those ext-authz sets upstream."""
    review = _Review(config, tuple(header.lower() for header in identity_headers))
    return [*review.admin(), *review.listeners(), *review.clusters()]


@dataclass(frozen=True, slots=True)
class _Manager:
    """An http_connection_manager and where it sits."""

    config: HttpConnectionManager
    path: str  # of its typed_config
    listener: str
    address: str
    public: bool
    tls: bool
    chain_path: str


@dataclass(frozen=True, slots=True)
class _UpstreamRoute:
    route: Route
    path: str
    host: VirtualHost
    host_path: str


class _Review:
    def __init__(self, config: EnvoyBootstrap, identity_headers: tuple[str, ...]) -> None:
        self.config = config
        self.identity_headers = identity_headers

    def at(self, path: str) -> Location:
        return self.config.location(path)

    def admin(self) -> Iterator[Finding]:
        admin = self.config.bootstrap.admin
        if admin is not None and admin.address is not None and _is_public(admin.address):
            yield ADMIN_PUBLIC.at(
                self.at("admin.address"),
                f"The admin interface listens on {_address_text(admin.address)}: whoever reaches"
                " it can dump the configuration, drain listeners or stop Envoy"
                " (/quitquitquit), with no authentication.",
            )

    def clusters(self) -> Iterator[Finding]:
        static = self.config.bootstrap.static_resources
        for index, cluster in enumerate(static.clusters if static else []):
            path = item_path("static_resources.clusters", index)
            sockets = [(f"{path}.transport_socket", cluster.transport_socket)] + [
                (
                    f"{item_path(f'{path}.transport_socket_matches', i)}.transport_socket",
                    m.transport_socket,
                )
                for i, m in enumerate(cluster.transport_socket_matches)
            ]
            for socket_path, socket in sockets:
                context = unpack(socket.typed_config) if socket else None
                if isinstance(context, UpstreamTlsContext) and context.common_tls_context:
                    yield from self.tls_parameters(
                        context.common_tls_context,
                        f"{socket_path}.typed_config.common_tls_context",
                        f"cluster {cluster.name!r}",
                    )

    def listeners(self) -> Iterator[Finding]:
        static = self.config.bootstrap.static_resources
        for index, listener in enumerate(static.listeners if static else []):
            path = item_path("static_resources.listeners", index)
            chains = [
                (item_path(f"{path}.filter_chains", i), chain)
                for i, chain in enumerate(listener.filter_chains)
            ]
            if listener.default_filter_chain is not None:
                chains.append((f"{path}.default_filter_chain", listener.default_filter_chain))
            for chain_path, chain in chains:
                yield from self.chain(listener, chain, chain_path)

    def chain(self, listener: Listener, chain: FilterChain, path: str) -> Iterator[Finding]:
        name = f"listener {listener.name!r}"
        tls = _type_name(chain.transport_socket) in _TLS_TRANSPORTS
        context = unpack(chain.transport_socket.typed_config) if chain.transport_socket else None
        if isinstance(context, DownstreamTlsContext) and context.common_tls_context:
            context_path = f"{path}.transport_socket.typed_config.common_tls_context"
            yield from self.tls_parameters(context.common_tls_context, context_path, name)
        public = any(_is_public(address) for address in _addresses(listener))
        address = _address_text(listener.address)
        network_authz = False
        for index, network_filter in enumerate(chain.filters):
            filter_path = item_path(f"{path}.filters", index)
            config = unpack(network_filter.typed_config)
            if isinstance(config, NetworkExtAuthz):
                network_authz = True
                if config.failure_mode_allow:
                    yield FAILURE_MODE_ALLOW.at(
                        self.at(f"{filter_path}.typed_config.failure_mode_allow"),
                        f"On {name} the network ext_authz filter lets connections through when"
                        " the authorization service is down, slow or failing.",
                    )
            elif isinstance(config, TcpProxy):
                if not network_authz:
                    yield MISSING.at(
                        self.at(filter_path),
                        f"On {name} a tcp_proxy forwards connections to"
                        f" {config.cluster or 'its weighted clusters'} with no network ext_authz"
                        " filter before it: nothing is authenticated or authorized.",
                    )
                if public and not tls:
                    yield TLS_MISSING.at(
                        self.at(path),
                        f"{name} on {address} proxies plain TCP to an upstream: credentials cross"
                        " the network in clear.",
                    )
            elif isinstance(config, HttpConnectionManager):
                manager = _Manager(
                    config, f"{filter_path}.typed_config", name, address, public, tls, path
                )
                yield from self.manager(manager)

    def manager(self, manager: _Manager) -> Iterator[Finding]:
        hcm = manager.config
        routes: list[_UpstreamRoute] | None = None  # None: not visible (RDS)
        if hcm.route_config is not None:
            routes = list(
                _upstream_routes(hcm.route_config, f"{manager.path}.route_config", manager.tls)
            )
        else:
            yield ROUTES_NOT_REVIEWED.at(
                self.at(manager.path),
                f"The http_connection_manager of {manager.listener} takes its routes from RDS:"
                " per-route ext_authz settings and TLS redirects could not be checked; it is"
                " assumed to reach an upstream.",
            )
        forwards = routes is None or bool(routes)
        if manager.public and not manager.tls:
            yield from self.plain_http(manager, routes, forwards)
        yield from self.ext_authz_settings(manager)
        if forwards:
            yield from self.http_hardening(manager)
            yield from self.coverage(manager, routes)

    def plain_http(
        self, manager: _Manager, routes: list[_UpstreamRoute] | None, forwards: bool
    ) -> Iterator[Finding]:
        if forwards:
            yield TLS_MISSING.at(
                self.at(manager.chain_path),
                f"{manager.listener} on {manager.address} accepts plain HTTP and routes it to"
                f" {_targets(routes)}: bearer tokens, API keys and cookies cross the network"
                " in clear, where they can be read and replayed.",
            )
        elif manager.config.route_config is not None and not _redirects_to_https(
            manager.config.route_config
        ):
            yield HTTPS_REDIRECT.at(
                self.at(f"{manager.path}.route_config"),
                f"{manager.listener} on {manager.address} answers plain HTTP without redirecting"
                " to https: clients that start on http:// are never moved to TLS, and keep"
                " sending their credentials in clear.",
            )

    def ext_authz_settings(self, manager: _Manager) -> Iterator[Finding]:
        for index, http_filter in enumerate(manager.config.http_filters):
            config = unpack(http_filter.typed_config)
            if not isinstance(config, ExtAuthz):
                continue
            path = f"{item_path(f'{manager.path}.http_filters', index)}.typed_config"
            name = manager.listener
            if config.failure_mode_allow:
                yield FAILURE_MODE_ALLOW.at(
                    self.at(f"{path}.failure_mode_allow"),
                    f"On {name} failure_mode_allow is true: when ext-authz is down, slow or"
                    " answers with an error, Envoy forwards the request unauthorized. Whoever can"
                    " overload or crash the authorization service gets every route.",
                )
            code = int(config.status_on_error.code) if config.status_on_error else 0
            if 0 < code < 400:
                yield STATUS_ON_ERROR.at(
                    self.at(f"{path}.status_on_error.code"),
                    f"On {name} a failed authorization check is answered with {code}: clients,"
                    " monitors and caches see success (or a redirect) for a request that was"
                    " refused, and a cache may store the empty answer.",
                )
            yield from self.timeout(config, path, name)
            body = config.with_request_body
            if body is not None and not 0 < body.max_request_bytes <= MAX_REQUEST_BODY_BYTES:
                limit = (
                    f"max_request_bytes is {body.max_request_bytes}"
                    if body.max_request_bytes
                    else "max_request_bytes is unset (no limit; Envoy 1.40 refuses to load that)"
                )
                yield REQUEST_BODY.at(
                    self.at(f"{path}.with_request_body"),
                    f"On {name} with_request_body is set and {limit}: Envoy holds each request"
                    " body in memory up to that limit before the check, for unauthenticated"
                    " clients too, so a few concurrent uploads exhaust its memory.",
                )

    def timeout(self, config: ExtAuthz, path: str, name: str) -> Iterator[Finding]:
        if config.http_service is not None:
            uri = config.http_service.server_uri
            timeout = uri.timeout if uri else None
            timeout_path = f"{path}.http_service.server_uri.timeout"
        else:
            timeout = config.grpc_service.timeout if config.grpc_service else None
            timeout_path = f"{path}.grpc_service.timeout"
        if timeout is None:
            yield TIMEOUT_UNSET.at(
                self.at(timeout_path),
                f"On {name} the Check call has no timeout set, so Envoy's built-in 200 ms"
                " applies: safe, but invisible to whoever tunes the service.",
            )
        elif not timeout or timeout > MAX_AUTHZ_TIMEOUT:
            said = "0s, which disables it" if not timeout else f"{timeout.total_seconds():g}s"
            yield TIMEOUT.at(
                self.at(timeout_path),
                f"On {name} the Check call timeout is {said}: a slow or stuck authorization"
                " service holds every request and its connection that long, so a slowdown of"
                " ext-authz becomes resource exhaustion at the edge.",
            )

    def http_hardening(self, manager: _Manager) -> Iterator[Finding]:
        hcm, path, name = manager.config, manager.path, manager.listener
        if hcm.normalize_path is not True:
            yield PATH_NORMALIZATION.at(
                self.at(f"{path}.normalize_path"),
                f"normalize_path is not true on {name}: /public/../admin reaches ext-authz and"
                " the upstream as sent, and each may resolve it differently, so a rule on /admin"
                " can be bypassed.",
            )
        if not hcm.merge_slashes:
            yield PATH_NORMALIZATION.at(
                self.at(f"{path}.merge_slashes"),
                f"merge_slashes is off on {name}: //admin does not match a rule on /admin, but"
                " many upstreams serve it as /admin.",
            )
        action = hcm.path_with_escaped_slashes_action
        if action not in _GOOD_ESCAPED_SLASHES:
            yield ESCAPED_SLASHES.at(
                self.at(f"{path}.path_with_escaped_slashes_action"),
                f"path_with_escaped_slashes_action is {action.name} on {name}: ext-authz checks"
                " /api%2Fadmin as one segment, and many upstreams decode it to /api/admin.",
            )
        options = hcm.common_http_protocol_options
        options_path = f"{path}.common_http_protocol_options"
        if options is None or not options.headers_with_underscores_action:
            yield UNDERSCORES.at(
                self.at(f"{options_path}.headers_with_underscores_action"),
                f"{name} forwards header names with underscores: some upstreams (CGI/WSGI-style)"
                " read x_auth_subject as x-auth-subject, so a client can smuggle an identity"
                " header past the removal of x-auth-subject.",
            )
        if manager.public and hcm.use_remote_address is not True:
            yield REMOTE_ADDRESS.at(
                self.at(f"{path}.use_remote_address"),
                f"use_remote_address is not true on public {name}: Envoy takes the client"
                " address from the X-Forwarded-For the client sent, so IP rules, rate limits,"
                " blocks and logs in ext-authz can be steered by the client.",
            )
        if manager.public and hcm.xff_num_trusted_hops > 0:
            yield TRUSTED_HOPS.at(
                self.at(f"{path}.xff_num_trusted_hops"),
                f"xff_num_trusted_hops is {hcm.xff_num_trusted_hops} on public {name}: a client"
                " that reaches Envoy directly writes X-Forwarded-For and picks the address"
                " ext-authz sees.",
            )
        limits = [
            (
                f"{path}.max_request_headers_kb",
                "max_request_headers_kb",
                hcm.max_request_headers_kb,
                MAX_REQUEST_HEADERS_KB,
            ),
            (
                f"{options_path}.max_headers_count",
                "max_headers_count",
                options.max_headers_count if options else None,
                MAX_HEADERS_COUNT,
            ),
        ]
        for limit_path, field, value, limit in limits:
            if value is not None and value > limit:
                yield HEADER_LIMITS.at(
                    self.at(limit_path),
                    f"{field} is {value} on {name} (above {limit}): every request may make Envoy"
                    " and ext-authz buffer and parse that much before anyone is authenticated.",
                )

    def coverage(self, manager: _Manager, routes: list[_UpstreamRoute] | None) -> Iterator[Finding]:
        """Whether every upstream route goes through ext_authz, and in which order."""
        filters = manager.config.http_filters
        filters_path = f"{manager.path}.http_filters"
        configs = [unpack(http_filter.typed_config) for http_filter in filters]
        authz = next((i for i, c in enumerate(configs) if isinstance(c, ExtAuthz)), None)
        router = next((i for i, c in enumerate(configs) if isinstance(c, Router)), len(filters))
        if authz is None:
            yield MISSING.at(
                self.at(filters_path),
                f"{manager.listener} routes requests to {_targets(routes)} but its http_filters"
                " have no ext_authz: nothing is authenticated or authorized.",
            )
            return
        authz_path = item_path(filters_path, authz)
        if router < authz:
            yield AFTER_ROUTER.at(
                self.at(authz_path),
                f"On {manager.listener} ext_authz comes after the terminal router filter, so it"
                " never runs and requests reach the upstream unauthorized (current Envoy refuses"
                " to load such a chain).",
            )
            return
        for index in range(authz):
            if _rewrites_path(filters[index]):
                yield PATH_REWRITE.at(
                    self.at(item_path(filters_path, index)),
                    f"On {manager.listener} {filters[index].name} runs before ext_authz and can"
                    " change the path: ext-authz decides on a path derived from unauthenticated"
                    " input, while Envoy chose the route (and its ext_authz settings) from the"
                    " original one.",
                )
        extauthz = configs[authz]
        assert isinstance(extauthz, ExtAuthz)  # noqa: S101 - found by isinstance above
        yield from self.partially_enabled(extauthz, f"{authz_path}.typed_config", manager.listener)
        route_config = manager.config.route_config
        if route_config is not None and routes is not None:
            yield from self.per_route(
                filters[authz],
                authz_path,
                route_config,
                f"{manager.path}.route_config",
                routes,
                manager.listener,
            )

    def partially_enabled(self, config: ExtAuthz, path: str, name: str) -> Iterator[Finding]:
        enabled = config.filter_enabled
        deny = config.deny_at_disable
        if enabled is None or (deny is not None and deny.default_value):
            return
        percent = _percent(enabled.default_value)
        if percent < 100:
            yield DISABLED.at(
                self.at(f"{path}.filter_enabled"),
                f"On {name} ext_authz runs for {percent:g}% of requests (filter_enabled) and"
                " deny_at_disable is not set: the others reach the upstream unauthorized.",
            )

    def per_route(
        self,
        http_filter: HttpFilter,
        filter_path: str,
        route_config: RouteConfiguration,
        route_config_path: str,
        routes: list[_UpstreamRoute],
        name: str,
    ) -> Iterator[Finding]:
        unprotected: dict[str, list[_UpstreamRoute]] = {}  # what turns ext_authz off -> routes
        for upstream in routes:
            cause = _disabled_by(
                http_filter, filter_path, route_config, route_config_path, upstream
            )
            if cause is not None:
                unprotected.setdefault(cause, []).append(upstream)
        for cause, affected in unprotected.items():
            yield DISABLED.at(
                self.at(cause),
                f"On {name} this turns ext_authz off for {len(affected)} route(s) to"
                f" {_clusters(affected)}: those requests reach the upstream without"
                " authentication or policy.",
            )
            for upstream in affected:
                removed = {
                    header.lower()
                    for scope in (route_config, upstream.host, upstream.route)
                    for header in scope.request_headers_to_remove
                }
                kept = [header for header in self.identity_headers if header not in removed]
                if kept:
                    yield IDENTITY_HEADERS.at(
                        self.at(upstream.path),
                        f"On {name} this route skips ext_authz and does not remove"
                        f" {', '.join(kept)}: a client can send x-auth-subject: admin and the"
                        " upstream receives it as if ext-authz had set it.",
                    )

    def tls_parameters(self, context: CommonTlsContext, path: str, owner: str) -> Iterator[Finding]:
        params = context.tls_params
        if params is None:
            return
        params_path = f"{path}.tls_params"
        for field, version in (
            ("tls_minimum_protocol_version", params.tls_minimum_protocol_version),
            ("tls_maximum_protocol_version", params.tls_maximum_protocol_version),
        ):
            if version in _OLD_TLS:
                yield TLS_VERSION.at(
                    self.at(f"{params_path}.{field}"),
                    f"{owner} sets {field}: {version.name}: TLS 1.0 and 1.1 have known attacks"
                    " (BEAST, downgrade, SHA-1 handshakes) and are deprecated (RFC 8996).",
                )
                break
        weak = _weak_ciphers(params.cipher_suites)
        if weak:
            yield WEAK_CIPHERS.at(
                self.at(f"{params_path}.cipher_suites"),
                f"{owner} allows {', '.join(weak)}: suites without ECDHE have no forward"
                " secrecy, CBC suites invite padding-oracle attacks, and 3DES, RC4, NULL and"
                " EXPORT suites are broken.",
            )


def _type_name(config: TransportSocket | HttpFilter | None) -> str:
    if config is None or config.typed_config is None:
        return ""
    return config.typed_config.type_url.rpartition("/")[2]


def _addresses(listener: Listener) -> list[Address]:
    extra = [additional.address for additional in listener.additional_addresses]
    return [address for address in [listener.address, *extra] if address is not None]


def _is_public(address: Address) -> bool:
    """Reachable beyond this host: not loopback, not a pipe or internal address."""
    if address.socket_address is None:
        return False
    host = address.socket_address.address
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # a host name: assume it resolves to a reachable address


def _address_text(address: Address | None) -> str:
    if address is None or address.socket_address is None:
        return "a non-IP address"
    socket_address = address.socket_address
    return f"{socket_address.address}:{socket_address.port_value}"


def _upstream_routes(
    route_config: RouteConfiguration, path: str, tls: bool
) -> Iterator[_UpstreamRoute]:
    for host_index, host in enumerate(route_config.virtual_hosts):
        host_path = item_path(f"{path}.virtual_hosts", host_index)
        if not tls and host.require_tls != VirtualHostTlsRequirementType.NONE:
            continue  # plain HTTP is redirected to https before any route
        for index, route in enumerate(host.routes):
            if route.route is not None:
                yield _UpstreamRoute(
                    route, item_path(f"{host_path}.routes", index), host, host_path
                )


def _targets(routes: Sequence[_UpstreamRoute] | None) -> str:
    return "its RDS routes" if routes is None else _clusters(routes)


def _clusters(routes: Sequence[_UpstreamRoute]) -> str:
    names: set[str] = set()
    for upstream in routes:
        action = upstream.route.route
        assert action is not None  # noqa: S101 - _upstream_routes keeps route actions only
        if action.cluster:
            names.add(f"cluster {action.cluster!r}")
        elif action.weighted_clusters is not None:
            names.update(f"cluster {c.name!r}" for c in action.weighted_clusters.clusters)
        else:
            names.add("a cluster chosen per request")
    return ", ".join(sorted(names))


def _redirects_to_https(route_config: RouteConfiguration) -> bool:
    return any(
        host.require_tls != VirtualHostTlsRequirementType.NONE
        or any(
            route.redirect is not None
            and (route.redirect.https_redirect or route.redirect.scheme_redirect == "https")
            for route in host.routes
        )
        for host in route_config.virtual_hosts
    )


def _rewrites_path(http_filter: HttpFilter) -> bool:
    """Whether a filter can change :path (or the query) of the request."""
    if _type_name(http_filter) in PATH_REWRITING_FILTERS:
        return True
    config = unpack(http_filter.typed_config)
    if isinstance(config, HeaderMutation) and config.mutations is not None:
        mutations = config.mutations
        return bool(mutations.query_parameter_mutations) or any(
            mutation.append is not None
            and mutation.append.header is not None
            and mutation.append.header.key.startswith(":")
            for mutation in mutations.request_mutations
        )
    if isinstance(config, ExternalProcessor):
        rules = config.mutation_rules
        return rules is not None and rules.allow_all_routing is True
    return False


def _per_route_enabled(config: betterproto2.Message | None) -> bool:
    """Whether a typed_per_filter_config entry for ext_authz leaves it on (any entry enables a
    filter that is disabled by default)."""
    if isinstance(config, FilterConfig):
        return not config.disabled and _per_route_enabled(unpack(config.config))
    if isinstance(config, ExtAuthzPerRoute):
        return config.disabled is not True
    return True


def _disabled_by(
    http_filter: HttpFilter,
    filter_path: str,
    route_config: RouteConfiguration,
    route_config_path: str,
    upstream: _UpstreamRoute,
) -> str | None:
    """The path of the setting that leaves ext_authz off for this route, or None when it runs.
    The most specific typed_per_filter_config entry wins (route, virtual host, route config)."""
    cause = f"{filter_path}.disabled" if http_filter.disabled else None
    scopes: list[tuple[str, Mapping[str, AnyMessage]]] = [
        (route_config_path, route_config.typed_per_filter_config),
        (upstream.host_path, upstream.host.typed_per_filter_config),
        (upstream.path, upstream.route.typed_per_filter_config),
    ]
    for scope_path, per_filter in scopes:
        entry = per_filter.get(http_filter.name)
        if entry is not None:
            enabled = _per_route_enabled(unpack(entry))
            cause = (
                None
                if enabled
                else key_path(f"{scope_path}.typed_per_filter_config", http_filter.name)
            )
    return cause


def _percent(value: FractionalPercent | None) -> float:
    if value is None:
        return 0.0
    return 100 * value.numerator / _DENOMINATORS.get(value.denominator, 100)


def _weak_ciphers(suites: Sequence[str]) -> list[str]:
    """Suites other than ECDHE with an AEAD; "[A|B]" equal-preference groups are split."""
    names = [name.strip() for suite in suites for name in suite.strip("[]").split("|")]
    return [name for name in names if not _strong_cipher(name.upper())]


def _strong_cipher(name: str) -> bool:
    if name.startswith("TLS_"):  # TLS 1.3 suites: all AEAD with forward secrecy
        return True
    aead = "-GCM-" in name or name.endswith("CHACHA20-POLY1305")
    return name.startswith("ECDHE-") and aead
