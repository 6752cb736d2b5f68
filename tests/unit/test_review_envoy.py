"""`review`'s Envoy side: strict parsing into envoy-data-plane's typed messages (errors name the
file, line and path), the weak-config corpus (each file raises exactly its planted findings, and
the real Envoy loads it), the shipped config (nothing above low), and rule edge cases."""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy_validate import envoy_validate

from ext_authz.demo.keys import ensure_demo_keys
from ext_authz.errors import ConfigError
from ext_authz.review import envoy_config
from ext_authz.review.envoy_config import load_bootstrap
from ext_authz.review.envoy_rules import RULES, review_envoy
from ext_authz.review.findings import Finding, Severity

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
CORPUS = REPO_ROOT / "tests" / "review" / "envoy"
EXPECTED = yaml.safe_load((CORPUS / "expected.yaml").read_text(encoding="utf-8"))
SHIPPED_STATE_DIR = "/etc/ext-authz/state"
HCM = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
EXT_AUTHZ = f"{HCM}.http_filters[0].typed_config"
ROUTES = f"{HCM}.route_config.virtual_hosts[0].routes"
TESTED_HERE_ONLY = {"envoy.routes.not_reviewed"}  # needs RDS: no corpus file, a test below

Config = dict[str, Any]


def rules_of(findings: list[Finding]) -> list[str]:
    return sorted(finding.rule for finding in findings)


def review_file(path: Path, **kwargs: Any) -> list[Finding]:
    return review_envoy(load_bootstrap(path), **kwargs)


@pytest.fixture
def good() -> Config:
    data: Config = yaml.safe_load((CORPUS / "good_minimal.yaml").read_text(encoding="utf-8"))
    return data


@pytest.fixture
def review_config(tmp_path: Path) -> Callable[..., list[Finding]]:
    """Review a bootstrap given as data (written as JSON, so no lines)."""

    def run(config: Config, **kwargs: Any) -> list[Finding]:
        path = tmp_path / "envoy.json"
        path.write_text(json.dumps(config), encoding="utf-8")
        return review_file(path, **kwargs)

    return run


def https_manager(config: Config) -> Config:
    manager: Config = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"
    ]
    return manager


def authz_filter(config: Config) -> Config:
    found: Config = https_manager(config)["http_filters"][0]
    return found


# --- the corpus and the shipped config ---------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXPECTED["findings"]))
def test_weak_config_raises_exactly_its_planted_findings(name: str) -> None:
    expected = sorted(EXPECTED["findings"][name])
    findings = review_file(CORPUS / name)
    reported = [f for f in findings if f.severity > Severity.INFO or f.rule in expected]
    assert rules_of(reported) == expected, [str(f.location) for f in findings]


def test_every_corpus_file_is_listed_with_its_findings() -> None:
    files = {path.name for path in CORPUS.iterdir() if path.name != "expected.yaml"}
    assert files == set(EXPECTED["findings"])


def test_every_rule_is_planted_in_the_corpus_or_tested_here() -> None:
    planted = {rule for rules in EXPECTED["findings"].values() for rule in rules}
    assert planted | TESTED_HERE_ONLY == {rule.id for rule in RULES}


def test_findings_carry_their_rule_severity_title_and_fix() -> None:
    by_id = {rule.id: rule for rule in RULES}
    assert len(by_id) == len(RULES)
    for name in EXPECTED["findings"]:
        for finding in review_file(CORPUS / name):
            rule = by_id[finding.rule]
            assert (finding.severity, finding.title, finding.fix) == (
                rule.severity,
                rule.title,
                rule.fix,
            )
            assert finding.why and finding.location.path


def test_shipped_envoy_config_has_no_finding_above_low() -> None:
    findings = review_file(REPO_ROOT / "envoy" / "envoy.yaml")
    assert [f for f in findings if f.severity > Severity.LOW] == []


def test_yaml_findings_point_at_the_line_of_the_setting() -> None:
    path = CORPUS / "ext_authz_fail_open.yaml"
    lines = path.read_text(encoding="utf-8").splitlines()
    (finding,) = review_file(path)
    assert finding.location.path == f"{EXT_AUTHZ}.failure_mode_allow"
    assert finding.location.line is not None
    assert lines[finding.location.line - 1].strip() == "failure_mode_allow: true"


def test_json_findings_have_the_path_but_no_line() -> None:
    (finding,) = review_file(CORPUS / "ext_authz_fail_open.json")
    assert finding.location.path == f"{EXT_AUTHZ}.failure_mode_allow"
    assert finding.location.line is None


def test_an_unset_setting_is_located_at_its_nearest_written_parent() -> None:
    path = CORPUS / "http_no_normalize_path.yaml"
    lines = path.read_text(encoding="utf-8").splitlines()
    (finding,) = review_file(path)
    assert finding.location.path == f"{HCM}.normalize_path"
    assert finding.location.line is not None
    assert lines[finding.location.line - 1].strip() == "typed_config:"


def test_the_real_envoy_loads_every_corpus_file_but_the_refused_ones(tmp_path: Path) -> None:
    """The corpus is made of configs Envoy runs, not of broken ones (TLS paths made real)."""
    state = ensure_demo_keys(tmp_path / "state").tls_cert.parent

    def validate(name: str) -> tuple[str, int, str]:
        text = (CORPUS / name).read_text(encoding="utf-8")
        config_file = tmp_path / name
        config_file.write_text(text.replace(SHIPPED_STATE_DIR, str(state)), encoding="utf-8")
        result = envoy_validate(config_file, "error")
        return name, result.returncode, result.stderr

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(validate, sorted(EXPECTED["findings"])))
    refused = EXPECTED["envoy_refuses"]
    for name, status, stderr in results:
        if name in refused:
            assert status != 0 and refused[name] in stderr, name
        else:
            assert status == 0, f"{name}: {stderr[-1000:]}"


# --- parsing -----------------------------------------------------------------------------------


def write_variant(tmp_path: Path, old: str, new: str, source: str = "good_minimal.yaml") -> Path:
    text = (CORPUS / source).read_text(encoding="utf-8")
    assert text.count(old) == 1
    path = tmp_path / "variant.yaml"
    path.write_text(text.replace(old, new), encoding="utf-8")
    return path


def parse_error(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_bootstrap(path)
    return str(caught.value)


def test_misspelt_field_is_an_error_naming_file_line_and_path(tmp_path: Path) -> None:
    path = write_variant(tmp_path, "failure_mode_allow: false", "failure_mode_alow: false")
    line = (
        path.read_text(encoding="utf-8").splitlines().index(" " * 22 + "failure_mode_alow: false")
    )
    assert parse_error(path) == (
        f"{path}:{line + 1}: {EXT_AUTHZ}.failure_mode_alow: unknown field in ExtAuthz"
        " (did you mean failure_mode_allow?)"
    )


def test_misspelt_field_in_json_names_the_path(tmp_path: Path, good: Config) -> None:
    https_manager(good)["normalise_path"] = True
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(good), encoding="utf-8")
    assert parse_error(path) == (
        f"{path}: {HCM}.normalise_path: unknown field in HttpConnectionManager"
        " (did you mean normalize_path?)"
    )


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "path_with_escaped_slashes_action: REJECT_REQUEST",
            "path_with_escaped_slashes_action: REJECT",
            f"{HCM}.path_with_escaped_slashes_action: 'REJECT' is not one of",
        ),
        ("merge_slashes: true", 'merge_slashes: "yes"', f"{HCM}.merge_slashes: expected bool"),
        ("normalize_path: true", "normalize_path: 1", f"{HCM}.normalize_path: expected bool"),
        (
            "max_request_headers_kb: 60",
            "max_request_headers_kb: lots",
            f"{HCM}.max_request_headers_kb: expected uint32",
        ),
        (" timeout: 1s", " timeout: 1", f"{EXT_AUTHZ}.grpc_service.timeout: expected text"),
        (" timeout: 1s", " timeout: soon", f"{EXT_AUTHZ}.grpc_service.timeout: invalid value"),
        (
            'upstream\n                      domains: ["*"]',
            'upstream\n                      domains: "*"',
            "virtual_hosts[0].domains: expected a list",
        ),
        (
            "ext_authz.v3.ExtAuthz\n",
            "ext_authz.v3.ExtAuth\n",
            f"{EXT_AUTHZ}.@type: unknown type 'type.googleapis.com/envoy.extensions.filters.http"
            ".ext_authz.v3.ExtAuth'",
        ),
        (
            "route: {cluster: upstream}",
            "route: {cluster: upstream}\n                          redirect: {path_redirect: /}",
            f"{ROUTES}[0]: only one of redirect, route may be set (oneof action)",
        ),
        (
            "{code: ServiceUnavailable}",
            "{code: Unavailable}",
            f"{EXT_AUTHZ}.status_on_error.code: 'Unavailable' is not one of",
        ),
    ],
)
def test_invalid_values_are_errors_naming_the_path(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    error = parse_error(write_variant(tmp_path, old, new))
    assert error.startswith(f"{tmp_path / 'variant.yaml'}:")
    assert message in error


def test_camel_case_json_names_are_read_as_envoy_reads_them(
    tmp_path: Path, good: Config, review_config: Callable[..., list[Finding]]
) -> None:
    authz = authz_filter(good)["typed_config"]
    del authz["failure_mode_allow"]
    authz["failureModeAllow"] = True
    (finding,) = review_config(good)
    assert finding.rule == "envoy.ext_authz.failure_mode_allow"
    assert finding.location.path == f"{EXT_AUTHZ}.failure_mode_allow"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- a\n- b\n", "expected an Envoy bootstrap (a mapping)"),
        ("admin: {address: 1}\n", "admin.address: expected a mapping for Address"),
        ("admin: {}\nadmin: {}\n", "not valid YAML: duplicate key 'admin'"),
        ("static_resources: {listeners: [{name: a, nme: b}]}\n", "listeners[0].nme: unknown"),
    ],
)
def test_malformed_documents_are_config_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "envoy.yaml"
    path.write_text(text, encoding="utf-8")
    assert message in parse_error(path)


def test_json_duplicate_keys_and_syntax_errors_are_config_errors(tmp_path: Path) -> None:
    path = tmp_path / "envoy.json"
    path.write_text('{"admin": {}, "admin": {}}', encoding="utf-8")
    assert "duplicate key 'admin'" in parse_error(path)
    path.write_text('{"admin": ', encoding="utf-8")
    assert "not valid JSON" in parse_error(path)


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    assert "cannot read Envoy config" in parse_error(tmp_path / "absent.yaml")


def test_alias_expansion_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(envoy_config, "MAX_VALUES", 50)
    path = tmp_path / "envoy.yaml"
    path.write_text(
        "static_resources:\n  clusters:\n"
        + "".join(f"    - {{name: c{i}, connect_timeout: 1s}}\n" for i in range(40)),
        encoding="utf-8",
    )
    assert "more than 50 values" in parse_error(path)


def test_typed_configs_unpack_to_their_messages() -> None:
    bootstrap = load_bootstrap(REPO_ROOT / "envoy" / "envoy.yaml").bootstrap
    assert bootstrap.static_resources is not None
    network_filter = bootstrap.static_resources.listeners[0].filter_chains[0].filters[0]
    manager = envoy_config.unpack(network_filter.typed_config)
    assert type(manager).__name__ == "HttpConnectionManager"
    assert envoy_config.unpack(None) is None


# --- rules: edge cases -------------------------------------------------------------------------


def test_routes_from_rds_are_reported_as_not_reviewed(
    good: Config, review_config: Callable[..., list[Finding]]
) -> None:
    manager = https_manager(good)
    del manager["route_config"]
    manager["rds"] = {"route_config_name": "https", "config_source": {"ads": {}}}
    (finding,) = review_config(good)
    assert (finding.rule, finding.severity) == ("envoy.routes.not_reviewed", Severity.INFO)


def test_rds_routes_without_ext_authz_count_as_reaching_an_upstream(
    good: Config, review_config: Callable[..., list[Finding]]
) -> None:
    manager = https_manager(good)
    del manager["route_config"]
    manager["rds"] = {"route_config_name": "https", "config_source": {"ads": {}}}
    del manager["http_filters"][0]
    assert rules_of(review_config(good)) == ["envoy.ext_authz.missing", "envoy.routes.not_reviewed"]


def header_mutation(mutations: Config) -> Config:
    return {
        "name": "envoy.filters.http.header_mutation",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3"
            ".HeaderMutation",
            "mutations": mutations,
        },
    }


@pytest.mark.parametrize(
    ("mutations", "rewrites"),
    [
        ({"request_mutations": [{"remove": "x-debug"}]}, False),
        (
            {"request_mutations": [{"append": {"header": {"key": ":path", "value": "/admin"}}}]},
            True,
        ),
        ({"query_parameter_mutations": [{"remove": "debug"}]}, True),
    ],
)
def test_header_mutation_before_ext_authz_counts_when_it_can_change_the_path(
    good: Config, review_config: Callable[..., list[Finding]], mutations: Config, rewrites: bool
) -> None:
    https_manager(good)["http_filters"].insert(0, header_mutation(mutations))
    expected = ["envoy.ext_authz.after_path_rewrite"] if rewrites else []
    assert rules_of(review_config(good)) == expected


@pytest.mark.parametrize("allow_all_routing", [False, True])
def test_ext_proc_before_ext_authz_counts_when_it_may_change_routing_headers(
    good: Config, review_config: Callable[..., list[Finding]], allow_all_routing: bool
) -> None:
    processor = {
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3"
            ".ExternalProcessor",
            "grpc_service": {"envoy_grpc": {"cluster_name": "ext_authz"}},
            "mutation_rules": {"allow_all_routing": allow_all_routing},
        },
    }
    https_manager(good)["http_filters"].insert(0, processor)
    expected = ["envoy.ext_authz.after_path_rewrite"] if allow_all_routing else []
    assert rules_of(review_config(good)) == expected


def test_a_plain_listener_that_requires_tls_neither_leaks_nor_lacks_a_redirect(
    good: Config, review_config: Callable[..., list[Finding]]
) -> None:
    plain = good["static_resources"]["listeners"][1]["filter_chains"][0]["filters"][0]
    host = plain["typed_config"]["route_config"]["virtual_hosts"][0]
    host["require_tls"] = "ALL"
    host["routes"] = [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}]
    assert review_config(good) == []


def test_a_loopback_listener_needs_no_tls_nor_remote_address_but_is_hardened(
    good: Config, review_config: Callable[..., list[Finding]]
) -> None:
    listener = good["static_resources"]["listeners"][0]
    listener["address"]["socket_address"]["address"] = "127.0.0.1"
    del listener["filter_chains"][0]["transport_socket"]
    manager = https_manager(good)
    del manager["use_remote_address"], manager["normalize_path"]
    assert rules_of(review_config(good)) == ["envoy.http.path_normalization"]


def test_the_most_specific_per_filter_config_wins(
    good: Config, review_config: Callable[..., list[Finding]]
) -> None:
    per_route = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
    host = https_manager(good)["route_config"]["virtual_hosts"][0]
    host["typed_per_filter_config"] = {
        "envoy.filters.http.ext_authz": {"@type": per_route, "disabled": True}
    }
    host["request_headers_to_remove"] = ["x-auth-subject", "x-auth-roles"]
    host["routes"].insert(
        0,
        {
            "match": {"prefix": "/api/"},
            "route": {"cluster": "upstream"},
            "typed_per_filter_config": {
                "envoy.filters.http.ext_authz": {"@type": per_route, "disabled": False}
            },
        },
    )
    (finding,) = review_config(good)
    assert finding.rule == "envoy.ext_authz.disabled"
    host_path = f"{HCM}.route_config.virtual_hosts[0]"
    path = f'{host_path}.typed_per_filter_config["envoy.filters.http.ext_authz"]'
    assert finding.location.path == path
    assert "1 route(s)" in finding.why


def test_a_filter_disabled_by_default_is_on_where_a_route_configures_it(
    good: Config, review_config: Callable[..., list[Finding]]
) -> None:
    authz_filter(good)["disabled"] = True
    route = https_manager(good)["route_config"]["virtual_hosts"][0]["routes"][0]
    route["typed_per_filter_config"] = {
        "envoy.filters.http.ext_authz": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3"
            ".ExtAuthzPerRoute",
            "check_settings": {"context_extensions": {"scope": "api"}},
        }
    }
    assert review_config(good) == []


def test_identity_headers_come_from_the_service_settings(tmp_path: Path) -> None:
    findings = review_file(
        CORPUS / "ext_authz_disabled_route_headers_removed.yaml",
        identity_headers=("X-User", "x-auth-roles"),
    )
    (identity,) = [f for f in findings if f.rule == "envoy.ext_authz.identity_headers"]
    assert identity.location.path == f"{ROUTES}[0]"
    assert "does not remove x-user:" in identity.why


def test_partial_enabling_is_fine_when_disabled_requests_are_denied(
    good: Config, review_config: Callable[..., list[Finding]]
) -> None:
    authz_filter(good)["typed_config"]["filter_enabled"] = {
        "default_value": {"numerator": 50},
        "runtime_key": "ext_authz.enabled",
    }
    assert rules_of(review_config(good)) == ["envoy.ext_authz.disabled"]
    authz_filter(good)["typed_config"]["deny_at_disable"] = {
        "default_value": True,
        "runtime_key": "ext_authz.deny",
    }
    assert review_config(good) == []


@pytest.mark.parametrize(
    ("code", "flagged"),
    [("Forbidden", False), ("ServiceUnavailable", False), ("OK", True), ("Found", True)],
)
def test_status_on_error_must_be_a_denial(
    good: Config, review_config: Callable[..., list[Finding]], code: str, flagged: bool
) -> None:
    authz_filter(good)["typed_config"]["status_on_error"] = {"code": code}
    expected = ["envoy.ext_authz.status_on_error"] if flagged else []
    assert rules_of(review_config(good)) == expected


def test_http_service_timeouts_are_checked_too(
    good: Config, review_config: Callable[..., list[Finding]]
) -> None:
    authz = authz_filter(good)["typed_config"]
    del authz["grpc_service"]
    authz["http_service"] = {
        "server_uri": {"uri": "http://ext-authz:9192", "cluster": "ext_authz", "timeout": "10s"}
    }
    (finding,) = review_config(good)
    assert finding.rule == "envoy.ext_authz.timeout"
    assert finding.location.path == f"{EXT_AUTHZ}.http_service.server_uri.timeout"
    assert "10s" in finding.why


def test_raising_the_header_count_is_flagged(
    good: Config, review_config: Callable[..., list[Finding]]
) -> None:
    https_manager(good)["common_http_protocol_options"]["max_headers_count"] = 1000
    (finding,) = review_config(good)
    assert finding.rule == "envoy.http.header_limits"
    assert finding.location.path == f"{HCM}.common_http_protocol_options.max_headers_count"


def test_upstream_tls_parameters_are_checked(
    good: Config, review_config: Callable[..., list[Finding]]
) -> None:
    cluster = good["static_resources"]["clusters"][1]
    cluster["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"
            ".UpstreamTlsContext",
            "common_tls_context": {
                "tls_params": {
                    "tls_maximum_protocol_version": "TLSv1_1",
                    "cipher_suites": ["DES-CBC3-SHA"],
                }
            },
        },
    }
    findings = review_config(good)
    assert rules_of(findings) == ["envoy.tls.min_version", "envoy.tls.weak_ciphers"]
    assert all("cluster 'upstream'" in f.why for f in findings)


def test_filters_shared_by_a_yaml_alias_are_reported_per_listener(tmp_path: Path) -> None:
    text = (REPO_ROOT / "envoy" / "envoy.yaml").read_text(encoding="utf-8")
    path = tmp_path / "envoy.yaml"
    path.write_text(text.replace("failure_mode_allow: false", "failure_mode_allow: true"))
    findings = review_file(path)
    assert rules_of(findings) == ["envoy.ext_authz.failure_mode_allow"] * 2
    https, mtls = sorted(findings, key=lambda f: f.location.path)
    assert https.location.path.startswith("static_resources.listeners[0].")
    assert mtls.location.path.startswith("static_resources.listeners[1].")
    assert https.location.line == mtls.location.line  # the anchor's line


def test_body_buffering_without_max_request_bytes_is_flagged(
    good: Config, review_config: Callable[..., list[Finding]]
) -> None:
    authz_filter(good)["typed_config"]["with_request_body"] = {"allow_partial_message": True}
    (finding,) = review_config(good)
    assert finding.rule == "envoy.ext_authz.request_body"
    assert "max_request_bytes is unset" in finding.why
