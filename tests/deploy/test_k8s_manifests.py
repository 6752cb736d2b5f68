"""deploy/kubernetes and deploy/envoy: complete, valid against the Kubernetes API schemas, and
locked down the way the README promises (non-root, read-only, probes, drain, spread, network)."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
from deploy_manifests import (
    ENVOY,
    KUBERNETES,
    KUSTOMIZATIONS,
    POLICIES,
    ROOT,
    Resource,
    container,
    generated,
    kustomize,
    load_yaml,
    mount_at,
    one,
    port_of,
    volume,
)
from dockerfile_stages import last, runtime_stage

from ext_authz.settings import Settings, load_settings

# The oldest Kubernetes the manifests are for (native gRPC probes, preStop sleep) and the newest
# schema the validator ships.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
APP = "ext-authz"
CONFIG_PATH = "/etc/ext-authz/config.yaml"
NOT_DEPLOYED = {POLICIES / "cases.yaml"}  # run by `ext-authz policy test`, never applied


@pytest.fixture(scope="module")
def rendered() -> list[Resource]:
    return kustomize(KUBERNETES)


@pytest.fixture(scope="module")
def deployment(rendered: list[Resource]) -> Resource:
    return one(rendered, "Deployment", APP)


@pytest.fixture(scope="module")
def image_user() -> str:
    return last(runtime_stage(), "USER")


@pytest.fixture(scope="module")
def pod_labels(deployment: Resource) -> dict[str, str]:
    return dict(deployment["spec"]["template"]["metadata"]["labels"])


@pytest.fixture(scope="module")
def settings(rendered: list[Resource], tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The service settings exactly as the ConfigMap delivers them."""
    data = generated(rendered, "ext-authz-config")["data"]
    path = tmp_path_factory.mktemp("configmap") / "config.yaml"
    path.write_text(data["config.yaml"], encoding="utf-8")
    return load_settings(path)


def _listed_files(directory: Path) -> set[Path]:
    kustomization = load_yaml(directory / "kustomization.yaml")
    listed = {directory / entry for entry in kustomization.get("resources", [])}
    for generator in kustomization.get("configMapGenerator", []):
        for entry in generator.get("files", []):
            listed.add(directory / entry.split("=", 1)[-1])
    return listed


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda d: d.name)
def test_kustomization_lists_every_file_beside_it_and_each_exists(directory: Path) -> None:
    listed = _listed_files(directory)
    for path in listed:
        assert path.exists(), f"{directory.name}/kustomization.yaml lists {path}, which is missing"
    beside = {
        path
        for path in directory.iterdir()
        if path.is_file() and path.name != "kustomization.yaml" and path.suffix != ".md"
    } - NOT_DEPLOYED
    assert beside <= listed, (
        f"files in {directory.name}/ that kustomization.yaml does not apply: {beside - listed}"
    )


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("directory", [KUBERNETES, ENVOY], ids=lambda d: d.name)
def test_rendered_manifests_are_valid_for_the_kubernetes_api(directory: Path, version: str) -> None:
    resources = kustomize(directory)
    assert resources
    for resource in resources:
        # strict: an unknown (misspelt) field is an error, as `kubectl apply` makes it.
        kubernetes_validate.validate(resource, version, strict=True)


def test_the_validator_catches_a_misspelt_field(deployment: Resource) -> None:
    broken: dict[str, Any] = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


def test_every_resource_lands_in_the_ext_authz_namespace(rendered: list[Resource]) -> None:
    for resource in rendered:
        if resource["kind"] != "Namespace":
            assert resource["metadata"].get("namespace") == APP, resource["metadata"]["name"]
    assert one(rendered, "Namespace")["metadata"]["name"] == APP


def test_ext_authz_runs_as_the_image_user(deployment: Resource, image_user: str) -> None:
    # The numeric uid the image was built for, so runAsNonRoot can be verified by the kubelet.
    uid = int(image_user.split(":", 1)[0])
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == uid
    context = container(deployment, APP)["securityContext"]
    assert context["runAsUser"] == uid and context["runAsNonRoot"] is True
    assert context.get("privileged", False) is False


def test_only_scratch_space_is_writable(deployment: Resource) -> None:
    for mount in container(deployment, APP)["volumeMounts"]:
        source = volume(deployment, mount["name"])
        if "emptyDir" in source:
            assert source["emptyDir"].get("sizeLimit"), f"{mount['name']}: unbounded emptyDir"
        else:
            assert mount.get("readOnly") is True, f"{mount['mountPath']} is mounted writable"
    mount, source = mount_at(deployment, APP, "/tmp")
    assert "emptyDir" in source


def test_probes_are_native_grpc_on_the_port_the_service_listens_on(
    deployment: Resource, settings: Settings
) -> None:
    spec = container(deployment, APP)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert spec[probe]["grpc"]["port"] == port_of(settings.listen), probe
        assert spec[probe]["grpc"].get("service", "") == "", probe


def test_startup_allows_for_the_first_key_fetch(deployment: Resource, settings: Settings) -> None:
    probe = container(deployment, APP)["startupProbe"]
    window = probe["periodSeconds"] * probe["failureThreshold"]
    waits = [provider.keys.initial_wait for provider in settings.providers]
    assert window > max(waits, default=0), "pods would be killed while waiting for keys"


def test_pods_drain_before_they_are_killed(deployment: Resource, settings: Settings) -> None:
    pod = deployment["spec"]["template"]["spec"]
    pause = container(deployment, APP)["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pause + settings.grace_period
    # An Istio sidecar must outlive the drain, or the last answers have no way out.
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    proxy = json.loads(annotations["proxy.istio.io/config"])
    assert proxy["holdApplicationUntilProxyStarts"] is True
    sidecar_drain = float(proxy["terminationDrainDuration"].removesuffix("s"))
    assert pause + settings.grace_period <= sidecar_drain < pod["terminationGracePeriodSeconds"]


def test_requests_and_limits_are_set(deployment: Resource) -> None:
    resources = container(deployment, APP)["resources"]
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[bound]), bound


def test_rollouts_and_disruptions_keep_checks_answered(
    rendered: list[Resource], deployment: Resource, pod_labels: dict[str, str]
) -> None:
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    budget = one(rendered, "PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    autoscaler = one(rendered, "HorizontalPodAutoscaler")
    assert autoscaler["spec"]["minReplicas"] >= 2
    target = autoscaler["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", APP)
    for constraint in deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]:
        assert constraint["labelSelector"]["matchLabels"].items() <= pod_labels.items()
    zones = {
        c["topologyKey"]
        for c in deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    }
    assert zones == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}


def test_service_selects_the_pods(rendered: list[Resource], pod_labels: dict[str, str]) -> None:
    service = one(rendered, "Service", APP)
    assert service["spec"]["selector"].items() <= pod_labels.items()
    grpc = [port for port in service["spec"]["ports"] if port["name"] == "grpc"]
    # Istio picks the protocol from the port's name or appProtocol: gRPC needs HTTP/2.
    assert grpc and grpc[0]["appProtocol"] == "grpc"


def test_settings_roll_out_and_policies_reload_in_place(
    rendered: list[Resource], deployment: Resource
) -> None:
    config = generated(rendered, "ext-authz-config")
    policies = generated(rendered, "ext-authz-policies")
    # A changed config.yaml is a new name in the pod template, so a rollout; the policies keep
    # their name so the kubelet updates the mounted files and the service reloads them.
    assert config["metadata"]["name"] != "ext-authz-config"
    assert policies["metadata"]["name"] == "ext-authz-policies"
    mount, source = mount_at(deployment, APP, CONFIG_PATH)
    assert source["configMap"]["name"] == config["metadata"]["name"]
    assert mount["subPath"] in config["data"]
    mount, source = mount_at(deployment, APP, "/etc/ext-authz/policies/policy.csv")
    assert source["configMap"]["name"] == policies["metadata"]["name"]
    assert "subPath" not in mount, "a subPath mount is never updated in place"


def test_every_file_the_config_names_is_in_the_policies_mount(
    rendered: list[Resource], deployment: Resource, settings: Settings
) -> None:
    policies = generated(rendered, "ext-authz-policies")
    files = [settings.policy.model, settings.policy.policy, settings.denylist_file]
    for path in files:
        assert path is not None
        mount, source = mount_at(deployment, APP, str(path))
        assert source["configMap"]["name"] == policies["metadata"]["name"], path
        key = str(PurePosixPath(path).relative_to(mount["mountPath"]))
        assert key in policies["data"], f"{path}: no key {key} in the policies ConfigMap"


def test_the_deployed_model_is_the_shipped_one() -> None:
    shipped = (ROOT / "policies" / "model.conf").read_text(encoding="utf-8")
    assert (POLICIES / "model.conf").read_text(encoding="utf-8") == shipped


def _peers(rule: dict[str, Any]) -> list[dict[str, Any]]:
    peers = rule.get("from")
    assert peers, "an ingress rule without `from` admits every source"
    return list(peers)


def test_network_policy_admits_only_proxies_to_grpc_and_monitoring_to_metrics(
    rendered: list[Resource], deployment: Resource, pod_labels: dict[str, str], settings: Settings
) -> None:
    policy = one(rendered, "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    assert settings.admin.listen is not None
    grpc_port, metrics_port = port_of(settings.listen), port_of(settings.admin.listen)
    by_port: dict[int, list[dict[str, Any]]] = {}
    for rule in policy["ingress"]:
        for port in rule["ports"]:
            by_port.setdefault(port["port"], []).extend(_peers(rule))
    assert set(by_port) == {grpc_port, metrics_port, 15008}  # 15008: the mesh's HBONE tunnel
    assert by_port[metrics_port] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    for peer in by_port[grpc_port]:
        assert "ipBlock" not in peer
        selector = peer.get("podSelector") or peer.get("namespaceSelector")
        assert selector and selector.get("matchLabels"), f"{peer} admits every pod"
    # The metrics port is not reachable from the proxies' rule, nor gRPC from monitoring's.
    assert by_port[grpc_port] == by_port[15008]


@pytest.mark.parametrize("directory", [KUBERNETES, ENVOY], ids=lambda d: d.name)
def test_every_container_is_locked_down(directory: Path) -> None:
    for workload in (r for r in kustomize(directory) if r["kind"] == "Deployment"):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for spec in pod["containers"]:
            context = spec["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, spec["name"]
            assert context["readOnlyRootFilesystem"] is True, spec["name"]
            assert context["capabilities"] == {"drop": ["ALL"]}, spec["name"]
            assert context.get("runAsUser", 0) != 0, spec["name"]
            assert {"cpu", "memory"} <= set(spec["resources"]["limits"]), spec["name"]
            assert "readinessProbe" in spec and "livenessProbe" in spec, spec["name"]
