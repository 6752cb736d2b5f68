"""Envoy bootstraps for the benchmark's scenarios, rendered from the shipped ``envoy/envoy.yaml``.

The demo renderer moves the shipped config onto loopback; here its ``https`` listener becomes a
plain HTTP listener (TLS would cost the same in every scenario) whose one route answers with a
direct response, so no upstream can be the bottleneck. Per scenario only the HTTP filters change:

- ``none``: no authorization (the ceiling);
- ``native``: Envoy's jwt_authn + rbac filters for the demo rules they can express;
- ``ext_authz``: the shipped ext_authz filter, pointing at whatever serves on the authz port.

The shipped HTTP settings (path normalization, header limits, request ids) stay in all of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ext_authz.assets import bundled_path
from ext_authz.demo.envoy_config import DemoPorts, load_envoy_config, render_demo_config
from ext_authz.demo.issuer import DEMO_AUDIENCE, DEMO_ISSUER

SCENARIO_FILTERS = ("none", "native", "ext_authz")
JWT_FILTER = "envoy.filters.http.jwt_authn"
_TYPE_PREFIX = "type.googleapis.com/envoy.extensions.filters.http."
# What the native filters cannot express of the demo rules (the benchmark checks these requests
# against this weaker expectation, and the README says so).
NATIVE_GAPS = {
    # RBAC cannot compare a path segment with a claim: only admins get other users' profiles,
    # and a non-admin's own profile is refused.
    "own_profile": "403 unless admin: a path segment cannot be compared with the sub claim",
    # With allow_missing, a request without a token reaches RBAC, which refuses it with 403
    # (no 401 and no WWW-Authenticate).
    "books_anonymous": "403 instead of 401 (no WWW-Authenticate)",
}


@dataclass(frozen=True, slots=True)
class BenchPorts:
    listen: int  # plain HTTP, where wrk sends requests
    admin: int
    authz: int = 0  # where the ext_authz cluster points
    otlp: int = 0  # where the otel_collector cluster points (tracing on)


def render(
    filters: str,
    ports: BenchPorts,
    state_dir: Path,
    *,
    tracing: bool = False,
    sampling: float | None = None,
    authz_max_streams: int | None = None,
) -> dict[str, Any]:
    """The bootstrap for one scenario. With ``tracing`` the shipped tracing section stays (its
    random_sampling, or ``sampling`` percent). ``authz_max_streams`` caps concurrent checks per
    HTTP/2 connection to the authz cluster, so Envoy opens more connections under load (that is
    what spreads checks over `serve --workers` processes sharing one port)."""
    if filters not in SCENARIO_FILTERS:
        raise ValueError(f"unknown filters {filters!r}; one of {SCENARIO_FILTERS}")
    demo_ports = DemoPorts(https=ports.listen, admin=ports.admin, grpc=ports.authz, otlp=ports.otlp)
    config = render_demo_config(
        load_envoy_config(bundled_path("envoy") / "envoy.yaml"), demo_ports, state_dir
    )
    resources = config["static_resources"]
    listener = next(item for item in resources["listeners"] if item["name"] == "https")
    resources["listeners"] = [listener]
    chain = listener["filter_chains"][0]
    chain.pop("transport_socket")
    hcm = chain["filters"][0]["typed_config"]
    hcm["stat_prefix"] = "bench"
    hcm["route_config"] = {
        "name": "bench",
        "virtual_hosts": [
            {
                "name": "direct",
                "domains": ["*"],
                "routes": [
                    {
                        "match": {"prefix": "/"},
                        "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}},
                    }
                ],
            }
        ],
    }
    shipped = {item["name"]: item for item in hcm["http_filters"]}
    router = shipped["envoy.filters.http.router"]
    if filters == "none":
        hcm["http_filters"] = [router]
    elif filters == "native":
        hcm["http_filters"] = [_jwt_authn(state_dir), _rbac(), router]
    else:
        hcm["http_filters"] = [shipped["envoy.filters.http.ext_authz"], router]
    if not tracing:
        hcm.pop("tracing", None)
    elif sampling is not None:
        hcm["tracing"]["random_sampling"] = {"value": sampling}
    clusters = {item["name"]: item for item in resources["clusters"]}
    kept = []
    if filters == "ext_authz":
        authz = clusters["ext_authz"]
        if authz_max_streams is not None:
            options = authz["typed_extension_protocol_options"]
            http = options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
            http["explicit_http_config"]["http2_protocol_options"] = {
                "max_concurrent_streams": authz_max_streams
            }
        kept.append(authz)
    if tracing:
        kept.append(clusters["otel_collector"])
    resources["clusters"] = kept
    return config


def _jwt_authn(state_dir: Path) -> dict[str, Any]:
    jwks = json.loads((state_dir / "jwks.json").read_text())
    return {
        "name": JWT_FILTER,
        "typed_config": {
            "@type": _TYPE_PREFIX + "jwt_authn.v3.JwtAuthentication",
            "providers": {
                "demo": {
                    "issuer": DEMO_ISSUER,
                    "audiences": [DEMO_AUDIENCE],
                    "local_jwks": {"inline_string": json.dumps(jwks)},
                    "require_expiration": True,
                    "payload_in_metadata": "jwt_payload",
                    # Like ext-authz's verified-token cache.
                    "jwt_cache_config": {"jwt_cache_size": 10000},
                    "claim_to_headers": [{"header_name": "x-auth-subject", "claim_name": "sub"}],
                }
            },
            "rules": [
                {
                    "match": {"prefix": "/"},
                    # A missing token reaches RBAC (anonymous); a bad one is refused with 401.
                    "requires": {
                        "requires_any": {
                            "requirements": [{"provider_name": "demo"}, {"allow_missing": {}}]
                        }
                    },
                }
            ],
        },
    }


def _method(*methods: str) -> dict[str, Any]:
    rules = [{"header": {"name": ":method", "string_match": {"exact": m}}} for m in methods]
    return rules[0] if len(rules) == 1 else {"or_rules": {"rules": rules}}


def _path_regex(regex: str) -> dict[str, Any]:
    return {"url_path": {"path": {"safe_regex": {"regex": regex}}}}


def _roles(*roles: str) -> list[dict[str, Any]]:
    return [
        {
            "sourced_metadata": {
                "metadata_matcher": {
                    "filter": JWT_FILTER,
                    "path": [{"key": "jwt_payload"}, {"key": "roles"}],
                    "value": {"list_match": {"one_of": {"string_match": {"exact": role}}}},
                }
            }
        }
        for role in roles
    ]


def _all(*rules: dict[str, Any]) -> dict[str, Any]:
    return {"and_rules": {"rules": list(rules)}}


def _rbac() -> dict[str, Any]:
    """The demo rules (policies/policy.csv) as an RBAC allow list; role inheritance spelt out."""
    drafts = {"header": {"name": ":path", "string_match": {"contains": "include=drafts"}}}
    books = _path_regex(r"/api/books(/[^/]+)?")
    policies = {
        "public": {
            "permissions": [
                _all(_method("GET"), _path_regex(r"/public/.*")),
                _all(_method("GET"), {"url_path": {"path": {"exact": "/healthz"}}}),
            ],
            "principals": [{"any": True}],
        },
        "read_books": {
            "permissions": [_all(_method("GET"), books, {"not_rule": drafts})],
            "principals": _roles("viewer", "editor", "admin"),
        },
        "edit_books": {
            "permissions": [
                _all(_method("GET"), books),
                _all(_method("POST"), _path_regex(r"/api/books")),
                _all(_method("PUT"), _path_regex(r"/api/books/[^/]+")),
            ],
            "principals": _roles("editor", "admin"),
        },
        "admin": {
            "permissions": [_path_regex(r"/api/.*"), _path_regex(r"/admin/.*")],
            "principals": _roles("admin"),
        },
    }
    return {
        "name": "envoy.filters.http.rbac",
        "typed_config": {
            "@type": _TYPE_PREFIX + "rbac.v3.RBAC",
            "rules": {"action": "ALLOW", "policies": policies},
        },
    }
