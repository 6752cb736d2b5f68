"""The image, the Kubernetes manifests, the Istio provider and the Envoy configs agree.

Every number and name that crosses a file boundary is read from both sides: the Dockerfile's
EXPOSE, ENTRYPOINT/CMD and HEALTHCHECK; the Deployment, its probes and mounts; the Service; the
service config as the ConfigMap delivers it; the Istio extension provider; the Envoy
bootstrap's ext_authz cluster. A change on one side only fails here. The Envoy bootstrap is
also run through the real `envoy --mode validate` and `ext-authz review`.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from deploy_manifests import (
    ENVOY,
    ISTIO,
    KUBERNETES,
    ROOT,
    Resource,
    container,
    container_port,
    generated,
    kustomize,
    load_yaml,
    mount_at,
    one,
    port_of,
    service_fqdn,
)
from dockerfile_stages import exec_form, exposed_ports, healthcheck_command, last, runtime_stage
from envoy_validate import envoy_validate

from ext_authz.demo.envoy_config import walk_mappings
from ext_authz.demo.keys import ensure_demo_keys
from ext_authz.settings import Settings, load_settings

APP = "ext-authz"
EXT_AUTHZ_FILTER = "envoy.filters.http.ext_authz"
ENVOY_BOOTSTRAP = ENVOY / "envoy.yaml"
SHIPPED_ENVOY = ROOT / "envoy" / "envoy.yaml"
SIDECAR_CONFIG = ENVOY / "ext-authz.yaml"
TLS_DIR = "/etc/envoy/tls/"


@pytest.fixture(scope="module")
def image() -> list[tuple[str, str]]:
    return runtime_stage()


@pytest.fixture(scope="module")
def image_argv(image: list[tuple[str, str]]) -> list[str]:
    return [*exec_form(last(image, "ENTRYPOINT")), *exec_form(last(image, "CMD"))]


@pytest.fixture(scope="module")
def cluster() -> list[Resource]:
    return kustomize(KUBERNETES)


@pytest.fixture(scope="module")
def edge() -> list[Resource]:
    return kustomize(ENVOY)


def _settings_from(configmap: Resource, key: str, tmp: Path) -> Settings:
    path = tmp / key
    path.write_text(configmap["data"][key], encoding="utf-8")
    return load_settings(path)


@pytest.fixture(scope="module")
def settings(cluster: list[Resource], tmp_path_factory: pytest.TempPathFactory) -> Settings:
    tmp = tmp_path_factory.mktemp("cluster-config")
    return _settings_from(generated(cluster, "ext-authz-config"), "config.yaml", tmp)


@pytest.fixture(scope="module")
def sidecar_settings(edge: list[Resource], tmp_path_factory: pytest.TempPathFactory) -> Settings:
    tmp = tmp_path_factory.mktemp("edge-config")
    return _settings_from(generated(edge, "edge-ext-authz"), "config.yaml", tmp)


@pytest.fixture(scope="module")
def bootstrap() -> dict[str, Any]:
    return dict(load_yaml(ENVOY_BOOTSTRAP))


def _effective_argv(workload: Resource, name: str, image_argv: list[str]) -> list[str]:
    """What the container runs: its command/args where set, else the image's."""
    spec = container(workload, name)
    entrypoint = spec.get("command")
    args = spec.get("args")
    if entrypoint is None:
        entrypoint, default_args = image_argv[:1], image_argv[1:]
        args = default_args if args is None else args
    return [*entrypoint, *(args or [])]


def _option(argv: list[str], flag: str) -> str:
    assert flag in argv, f"{flag} missing from {argv}"
    return argv[argv.index(flag) + 1]


def _service_target(service: Resource, port_name: str, workload: Resource, name: str) -> int:
    (port,) = [p for p in service["spec"]["ports"] if p["name"] == port_name]
    target = port["targetPort"]
    return container_port(workload, name, target) if isinstance(target, str) else int(target)


def _health_target(command: list[str]) -> tuple[str, int]:
    match = re.search(r"insecure_channel\('([0-9.]+):(\d+)'", " ".join(command))
    assert match, f"the health check dials no address: {command}"
    return match.group(1), int(match.group(2))


def _ext_authz_cluster_endpoints(bootstrap: dict[str, Any]) -> set[tuple[str, int]]:
    (cluster,) = [c for c in bootstrap["static_resources"]["clusters"] if c["name"] == "ext_authz"]
    return {
        (node["socket_address"]["address"], node["socket_address"]["port_value"])
        for node in walk_mappings(cluster)
        if "socket_address" in node
    }


def _ext_authz_filters(bootstrap: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        node["typed_config"]
        for node in walk_mappings(bootstrap["static_resources"]["listeners"])
        if node.get("name") == EXT_AUTHZ_FILTER
    ]


# --- the image and the ext-authz Deployment -----------------------------------------------------


def test_the_deployment_runs_the_image_default_command_on_the_mounted_config(
    cluster: list[Resource], image_argv: list[str]
) -> None:
    deployment = one(cluster, "Deployment", APP)
    argv = _effective_argv(deployment, APP, image_argv)
    assert argv[:2] == ["ext-authz", "serve"]
    config_path = _option(argv, "--config")
    mount, source = mount_at(deployment, APP, config_path)
    configmap = generated(cluster, "ext-authz-config")
    assert source["configMap"]["name"] == configmap["metadata"]["name"]
    assert mount["subPath"] in configmap["data"]


def test_the_grpc_port_is_the_same_number_everywhere(
    cluster: list[Resource], settings: Settings, image: list[tuple[str, str]]
) -> None:
    deployment = one(cluster, "Deployment", APP)
    service = one(cluster, "Service", APP)
    port = port_of(settings.listen)
    assert container_port(deployment, APP, "grpc") == port
    assert port in exposed_ports(image)
    assert _health_target(healthcheck_command(image)) == ("127.0.0.1", port)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container(deployment, APP)[probe]["grpc"]["port"] == port
    assert _service_target(service, "grpc", deployment, APP) == port
    (provider,) = load_yaml(ISTIO / "istio-operator.yaml")["spec"]["meshConfig"][
        "extensionProviders"
    ]
    service_port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert provider["envoyExtAuthzGrpc"]["port"] == service_port
    policy = one(cluster, "NetworkPolicy")
    assert port in {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}


def test_the_admin_port_is_the_same_number_everywhere(
    cluster: list[Resource], settings: Settings, image: list[tuple[str, str]]
) -> None:
    assert settings.admin.listen is not None
    port = port_of(settings.admin.listen)
    deployment = one(cluster, "Deployment", APP)
    assert container_port(deployment, APP, "metrics") == port
    assert port in exposed_ports(image)
    assert _service_target(one(cluster, "Service", APP), "http-metrics", deployment, APP) == port


def test_the_service_listens_beyond_loopback_in_its_own_pod(settings: Settings) -> None:
    # Proxies in other pods call it: a loopback bind would refuse every Check.
    host = settings.listen.rsplit(":", 1)[0].strip("[]")
    assert ipaddress.ip_address(host).is_unspecified, settings.listen


def test_istio_sends_checks_to_the_service(cluster: list[Resource]) -> None:
    fqdn = service_fqdn(one(cluster, "Service", APP))
    for path in (ISTIO / "istio-operator.yaml", ISTIO / "istiod-values.yaml"):
        document = load_yaml(path)
        mesh = document["spec"]["meshConfig"] if "spec" in document else document["meshConfig"]
        (provider,) = mesh["extensionProviders"]
        assert provider["envoyExtAuthzGrpc"]["service"] == fqdn, path.name


# --- Envoy with ext-authz as a sidecar, and Envoy fleets ----------------------------------------


def test_envoy_calls_the_sidecar_where_it_listens(
    bootstrap: dict[str, Any], sidecar_settings: Settings
) -> None:
    host, port = sidecar_settings.listen.rsplit(":", 1)
    assert host == "127.0.0.1", "the sidecar is reachable from outside its pod"
    assert _ext_authz_cluster_endpoints(bootstrap) == {(host, int(port))}


def test_sidecar_probes_run_the_image_health_check(
    edge: list[Resource], sidecar_settings: Settings, image: list[tuple[str, str]]
) -> None:
    command = healthcheck_command(image)
    # The image's check dials the port the sidecar listens on, on loopback.
    assert _health_target(command) == ("127.0.0.1", port_of(sidecar_settings.listen))
    spec = container(one(edge, "Deployment"), APP)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert spec[probe]["exec"]["command"] == command, probe


def test_the_sidecar_reads_its_config_and_the_shared_policies(
    edge: list[Resource], sidecar_settings: Settings, image_argv: list[str]
) -> None:
    deployment = one(edge, "Deployment")
    config_path = _option(_effective_argv(deployment, APP, image_argv), "--config")
    mount, source = mount_at(deployment, APP, config_path)
    assert source["configMap"]["name"] == generated(edge, "edge-ext-authz")["metadata"]["name"]
    policies = generated(edge, "ext-authz-policies")
    for path in (sidecar_settings.policy.model, sidecar_settings.policy.policy):
        mount, source = mount_at(deployment, APP, str(path))
        assert source["configMap"]["name"] == policies["metadata"]["name"]
        assert str(PurePosixPath(path).relative_to(mount["mountPath"])) in policies["data"]


def test_envoy_container_loads_this_bootstrap_and_its_certificate(
    edge: list[Resource], bootstrap: dict[str, Any]
) -> None:
    deployment = one(edge, "Deployment")
    config_path = _option(container(deployment, "envoy")["args"], "-c")
    mount, source = mount_at(deployment, "envoy", config_path)
    configmap = generated(edge, "edge-envoy")
    assert source["configMap"]["name"] == configmap["metadata"]["name"]
    assert yaml.safe_load(configmap["data"][mount["subPath"]]) == bootstrap
    files = {node["filename"] for node in walk_mappings(bootstrap) if "filename" in node}
    assert files and all(name.startswith(TLS_DIR) for name in files)
    for name in files:
        mount, source = mount_at(deployment, "envoy", name)
        assert "secret" in source
        assert PurePosixPath(name).name in {"tls.crt", "tls.key"}  # a kubernetes.io/tls Secret


def test_the_edge_service_reaches_envoys_listeners(
    edge: list[Resource], bootstrap: dict[str, Any]
) -> None:
    deployment = one(edge, "Deployment")
    service = one(edge, "Service")
    listeners = {
        listener["address"]["socket_address"]["port_value"]
        for listener in bootstrap["static_resources"]["listeners"]
    }
    targets = {
        _service_target(service, p["name"], deployment, "envoy") for p in service["spec"]["ports"]
    }
    assert targets == listeners
    assert service["spec"]["externalTrafficPolicy"] == "Local"  # keeps the client's address


def test_fleet_instructions_name_the_real_service(
    cluster: list[Resource], settings: Settings
) -> None:
    # envoy.yaml tells fleets which address to put in the ext_authz cluster.
    fqdn = service_fqdn(one(cluster, "Service", APP))
    text = ENVOY_BOOTSTRAP.read_text(encoding="utf-8")
    assert f"{{address: {fqdn}, port_value: {port_of(settings.listen)}}}" in text


def test_the_filter_settings_are_the_shipped_recommended_ones(bootstrap: dict[str, Any]) -> None:
    shipped = _ext_authz_filters(load_yaml(SHIPPED_ENVOY))
    ours = _ext_authz_filters(bootstrap)
    assert ours and shipped
    assert all(filter_config == shipped[0] for filter_config in [*ours, *shipped])
    assert ours[0]["failure_mode_allow"] is False
    assert ours[0]["transport_api_version"] == "V3"
    assert "with_request_body" not in ours[0]


def test_the_bootstrap_validates_with_the_real_envoy(tmp_path: Path) -> None:
    keys = ensure_demo_keys(tmp_path / "tls")
    text = ENVOY_BOOTSTRAP.read_text(encoding="utf-8")
    assert text.count(TLS_DIR) == 2
    config = tmp_path / "envoy.yaml"
    config.write_text(text.replace(TLS_DIR, f"{keys.tls_cert.parent}/"), encoding="utf-8")
    result = envoy_validate(config)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "arguments",
    [
        ["--envoy", "deploy/envoy/envoy.yaml", "--config", "deploy/envoy/ext-authz.yaml"],
        ["--config", "deploy/kubernetes/config.yaml"],
    ],
    ids=["envoy-sidecar", "kubernetes"],
)
def test_security_review_passes(arguments: list[str]) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ext_authz",
            "review",
            *arguments,
            "--policies",
            "deploy/kubernetes/policies",
            "--suppressions",
            "deploy/review-suppressions.yaml",
            "--fail-on",
            "medium",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- the README's walk-through ------------------------------------------------------------------


def _deploy_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## Deploy\b[^\n]*\n(.*?)(?=^## )", text, flags=re.MULTILINE | re.DOTALL)
    assert match, "the README has no 'Deploy' section"
    return match.group(1)


def test_every_file_the_readme_deploy_section_names_exists() -> None:
    section = _deploy_section()
    named = set(re.findall(r"(?<![\w./-])((?:deploy|envoy|policies|tests)/[\w./-]*\w)", section))
    named |= set(re.findall(r"\b(Dockerfile)\b", section))
    assert len(named) >= 10, named
    missing = sorted(name for name in named if not (ROOT / name).exists())
    assert not missing, f"the README's Deploy section names files that do not exist: {missing}"
