"""Render the demo's Envoy config from the shipped ``envoy/envoy.yaml``.

The shipped file is the one source of truth for every security setting. The demo only moves it
onto loopback: listener/admin addresses and ports, cluster endpoints, and TLS file paths (the
server certificate and key, and the client CA the ``mtls`` listener trusts).

Envoy's spans go to the ``otel_collector`` cluster, rendered to 127.0.0.1:4317 (the standard
OTLP/gRPC port): a local collector or Jaeger listening there receives them; with nothing there
Envoy drops them and serves as usual.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ext_authz.demo.keys import CLIENT_CA_CERT, TLS_CERT, TLS_KEY
from ext_authz.errors import ConfigError

__all__ = ["DemoPorts", "load_envoy_config", "render_demo_config", "walk_mappings"]

LOOPBACK = "127.0.0.1"

# Discovery settings that would contradict (or override) a STATIC cluster with a fixed endpoint.
_NON_STATIC_CLUSTER_KEYS = (
    "cluster_type",
    "eds_cluster_config",
    "dns_lookup_family",
    "dns_refresh_rate",
    "dns_failure_refresh_rate",
    "dns_jitter",
    "dns_resolvers",
    "dns_resolution_config",
    "typed_dns_resolver_config",
    "respect_dns_ttl",
    "use_tcp_for_dns_lookups",
)


@dataclass(frozen=True, slots=True)
class DemoPorts:
    """Loopback ports the demo's processes listen on."""

    https: int = 8443
    http: int = 8080
    grpc: int = 9191  # where ext-authz serves
    admin: int = 9901
    upstream: int = 8000  # where the echo upstream listens
    mtls: int = 8444  # https that requires a client certificate signed by the demo client CA
    otlp: int = 4317  # where Envoy exports its spans (OTLP/gRPC); no demo process listens there
    metrics: int = 9902  # ext-authz's admin HTTP port: /metrics and the live view


def load_envoy_config(path: Path) -> dict[str, Any]:
    """Parse an Envoy bootstrap YAML file; a read or parse error names the file (and line)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read Envoy config: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_error_message(path, exc)) from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: Envoy config must be a YAML mapping at the top level")
    return data


def render_demo_config(
    base: Mapping[str, Any], ports: DemoPorts, state_dir: Path
) -> dict[str, Any]:
    """Return a deep copy of ``base`` moved onto 127.0.0.1 with the demo's ports and TLS files."""
    config: dict[str, Any] = _unshared_copy(dict(base))
    _bind_admin(config, ports.admin)
    listeners = _named(_section(config, "listeners"), "listener")
    clusters = _named(_section(config, "clusters"), "cluster")
    https = _require(listeners, "https", "listener")
    http = _require(listeners, "http", "listener")
    mtls = _require(listeners, "mtls", "listener")
    for listener in listeners.values():
        _bind_loopback(listener, _port_of(listener))
    _bind_loopback(https, ports.https)
    _bind_loopback(http, ports.http)
    _bind_loopback(mtls, ports.mtls)
    _set_redirect_port(http, ports.https)
    state = state_dir.resolve()
    _set_tls_files(https, state)
    _set_tls_files(mtls, state)
    _set_client_ca(mtls, state)
    _make_static(_require(clusters, "ext_authz", "cluster"), ports.grpc)
    _make_static(_require(clusters, "upstream", "cluster"), ports.upstream)
    _make_static(_require(clusters, "otel_collector", "cluster"), ports.otlp)
    return config


def _unshared_copy(node: Any) -> Any:
    """A deep copy in which every mapping and list is a new object, even where ``node`` shares one.

    The shipped file shares sections between listeners through YAML aliases. Copied apart, each
    listener can be changed on its own and the rendered YAML has no anchors.
    """
    if isinstance(node, dict):
        return {key: _unshared_copy(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_unshared_copy(value) for value in node]
    return node  # scalars (str, int, float, bool, None) are immutable


def _yaml_error_message(path: Path, exc: yaml.YAMLError) -> str:
    """``file:line:column: invalid YAML: problem`` (1-based, like an editor shows)."""
    mark = getattr(exc, "problem_mark", None)
    where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or type(exc).__name__
    return f"{path}{where}: invalid YAML: {problem}"


def _socket_address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": LOOPBACK, "port_value": port}}


def _bind_admin(config: dict[str, Any], port: int) -> None:
    admin = config.setdefault("admin", {})
    if not isinstance(admin, dict):
        raise ConfigError("Envoy config: 'admin' must be a mapping")
    admin["address"] = _socket_address(port)


def _section(config: dict[str, Any], key: str) -> list[Any]:
    resources = config.get("static_resources")
    items = resources.get(key) if isinstance(resources, dict) else None
    if not isinstance(items, list):
        raise ConfigError(f"Envoy config: 'static_resources.{key}' is missing or not a list")
    return items


def _named(items: list[Any], kind: str) -> dict[str, dict[str, Any]]:
    by_name: dict[str, dict[str, Any]] = {}
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ConfigError(f"Envoy config: every {kind} must be a mapping with a 'name'")
        by_name[item["name"]] = item
    return by_name


def _require(items: dict[str, dict[str, Any]], name: str, kind: str) -> dict[str, Any]:
    try:
        return items[name]
    except KeyError:
        found = ", ".join(sorted(items)) or "none"
        raise ConfigError(
            f"Envoy config: the demo needs a {kind} named {name!r} (found: {found})"
        ) from None


def _port_of(listener: dict[str, Any]) -> int:
    address = listener.get("address")
    socket = address.get("socket_address") if isinstance(address, dict) else None
    port = socket.get("port_value") if isinstance(socket, dict) else None
    if not isinstance(port, int):
        raise ConfigError(f"Envoy config: listener {listener['name']!r} has no socket port_value")
    return port


def _bind_loopback(listener: dict[str, Any], port: int) -> None:
    listener["address"] = _socket_address(port)
    # Extra addresses could bind beyond loopback: the demo must not listen anywhere else.
    listener.pop("additional_addresses", None)


def walk_mappings(node: Any) -> Iterator[dict[str, Any]]:
    """Yield every mapping nested anywhere in ``node``, ``node`` included."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk_mappings(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk_mappings(value)


def _set_redirect_port(listener: dict[str, Any], port: int) -> None:
    redirects = [
        node["redirect"]
        for node in walk_mappings(listener)
        if isinstance(node.get("redirect"), dict) and "port_redirect" in node["redirect"]
    ]
    if not redirects:
        raise ConfigError(
            f"Envoy config: listener {listener['name']!r} has no redirect with port_redirect"
        )
    for redirect in redirects:
        redirect["port_redirect"] = port


def _set_tls_files(listener: dict[str, Any], state_dir: Path) -> None:
    certificates = [
        cert
        for node in walk_mappings(listener)
        if isinstance(node.get("tls_certificates"), list)
        for cert in node["tls_certificates"]
        if isinstance(cert, dict)
    ]
    if not certificates:
        raise ConfigError(f"Envoy config: listener {listener['name']!r} has no tls_certificates")
    for cert in certificates:
        cert["certificate_chain"] = {"filename": str(state_dir / TLS_CERT)}
        cert["private_key"] = {"filename": str(state_dir / TLS_KEY)}


def _set_client_ca(listener: dict[str, Any], state_dir: Path) -> None:
    contexts = [
        node["validation_context"]
        for node in walk_mappings(listener)
        if isinstance(node.get("validation_context"), dict)
        and "trusted_ca" in node["validation_context"]
    ]
    if not contexts:
        raise ConfigError(
            f"Envoy config: listener {listener['name']!r} has no validation_context.trusted_ca"
        )
    for context in contexts:
        context["trusted_ca"] = {"filename": str(state_dir / CLIENT_CA_CERT)}


def _make_static(cluster: dict[str, Any], port: int) -> None:
    cluster["type"] = "STATIC"
    for key in _NON_STATIC_CLUSTER_KEYS:
        cluster.pop(key, None)
    cluster["load_assignment"] = {
        "cluster_name": cluster["name"],
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket_address(port)}}]}],
    }
