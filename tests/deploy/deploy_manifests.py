"""The deploy/ manifests as the cluster would get them, for the tests in this folder.

`kubectl kustomize` (kustomize v5, inside kubectl) renders a kustomization exactly as
`kubectl apply -k` does: generated ConfigMaps with their hash suffixes, names rewritten where
they are referenced, the namespace set. Nothing is sent anywhere. Where kubectl is not installed
(a fresh CI machine), kustomize_subset renders the same (test_kustomize_subset checks that they
agree wherever kubectl is there), so the manifests are validated either way.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kustomize_subset import KustomizeSubsetError, render

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
POLICIES = KUBERNETES / "policies"
ENVOY = DEPLOY / "envoy"
ISTIO = DEPLOY / "istio"
KUSTOMIZATIONS = (KUBERNETES, POLICIES, ENVOY)
CLUSTER_DOMAIN = "cluster.local"

Resource = dict[str, Any]


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_all(path: Path) -> list[Resource]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def kustomize(directory: Path) -> list[Resource]:
    """``directory`` rendered by `kubectl kustomize`, or by kustomize_subset without kubectl."""
    if shutil.which("kubectl") is None:
        return kustomize_subset(directory)
    return kubectl_kustomize(directory)


def kubectl_kustomize(directory: Path) -> list[Resource]:
    kubectl = shutil.which("kubectl")
    assert kubectl is not None, "kubectl is not on PATH"
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {directory}: {result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def kustomize_subset(directory: Path) -> list[Resource]:
    try:
        return render(directory)
    except KustomizeSubsetError as exc:
        pytest.fail(f"kubectl is not on PATH and the fallback renderer refused: {exc}")


def one(resources: list[Resource], kind: str, name: str | None = None) -> Resource:
    found = [
        r
        for r in resources
        if r["kind"] == kind and (name is None or r["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def generated(resources: list[Resource], base_name: str) -> Resource:
    """The ConfigMap a configMapGenerator named ``base_name`` produced (hash suffix or not)."""
    found = [
        r
        for r in resources
        if r["kind"] == "ConfigMap"
        and (
            r["metadata"]["name"] == base_name or r["metadata"]["name"].startswith(base_name + "-")
        )
    ]
    assert len(found) == 1, f"expected one ConfigMap generated as {base_name}, found {found}"
    return found[0]


def container(workload: Resource, name: str) -> Resource:
    (found,) = [c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return dict(found)


def volume(workload: Resource, name: str) -> Resource:
    (found,) = [v for v in workload["spec"]["template"]["spec"]["volumes"] if v["name"] == name]
    return dict(found)


def mount_at(workload: Resource, container_name: str, path: str) -> tuple[Resource, Resource]:
    """(volumeMount, volume) that provides ``path`` inside the container."""
    for mount in container(workload, container_name).get("volumeMounts", []):
        if mount["mountPath"] == path or path.startswith(mount["mountPath"].rstrip("/") + "/"):
            return mount, volume(workload, mount["name"])
    raise AssertionError(f"{container_name}: nothing is mounted at {path}")


def container_port(workload: Resource, container_name: str, name: str) -> int:
    (port,) = [
        p["containerPort"]
        for p in container(workload, container_name).get("ports", [])
        if p["name"] == name
    ]
    return int(port)


def service_fqdn(service: Resource) -> str:
    meta = service["metadata"]
    return f"{meta['name']}.{meta['namespace']}.svc.{CLUSTER_DOMAIN}"


def port_of(listen: str) -> int:
    return int(listen.rsplit(":", 1)[1])
