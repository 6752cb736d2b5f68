"""kustomize_subset, the fallback renderer for machines without kubectl: it renders what
`kubectl kustomize` renders (checked wherever kubectl is installed), and it refuses what it does
not implement instead of rendering it wrong."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from deploy_manifests import KUSTOMIZATIONS, ROOT, Resource, kubectl_kustomize, one
from kustomize_subset import KustomizeSubsetError, configmap_hash, render

needs_kubectl = pytest.mark.skipif(
    shutil.which("kubectl") is None,
    reason="kubectl is not on PATH: no reference rendering to compare the fallback renderer with",
)

BASE_DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: app}
spec:
  selector: {matchLabels: {app: app}}
  template:
    metadata: {labels: {app: app}}
    spec:
      initContainers:
        - {name: init, image: "registry.example:5000/team/app:old"}
      containers:
        - name: app
          image: app
          env:
            - name: MODE
              valueFrom: {configMapKeyRef: {name: settings, key: mode}}
            - name: OTHER
              valueFrom: {configMapKeyRef: {name: not-generated, key: x}}
          envFrom:
            - configMapRef: {name: settings}
        - {name: side, image: "other/tool@sha256:0123"}
      volumes:
        - name: settings
          configMap: {name: settings}
        - name: both
          projected:
            sources:
              - configMap: {name: stable}
              - configMap: {name: settings}
"""


def write(directory: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(text, encoding="utf-8")
    return directory


@pytest.fixture
def every_feature(tmp_path: Path) -> Path:
    """A kustomization using every field the subset implements, a base included."""
    write(
        tmp_path,
        {
            "base/kustomization.yaml": (
                "configMapGenerator:\n"
                "  - name: stable\n"
                "    files: [one.txt]\n"
                "    options: {disableNameSuffixHash: true}\n"
            ),
            "base/one.txt": "stays <named> & unhashed\n",
            "app/kustomization.yaml": (
                "apiVersion: kustomize.config.k8s.io/v1beta1\n"
                "kind: Kustomization\n"
                "namespace: team\n"
                "resources: [namespace.yaml, deployment.yaml, ../base]\n"
                "configMapGenerator:\n"
                "  - name: settings\n"
                "    files: [mode, renamed.txt=source.txt]\n"
                "images:\n"
                "  - {name: app, newName: registry.example/app, newTag: '1.2'}\n"
                "  - {name: registry.example:5000/team/app, newTag: new}\n"
                "  - {name: other/tool, newName: mirror/tool}\n"
            ),
            "app/namespace.yaml": "apiVersion: v1\nkind: Namespace\nmetadata: {name: team}\n",
            "app/deployment.yaml": BASE_DEPLOYMENT,
            "app/mode": "strict é\t\n",
            "app/source.txt": "key=value\n",
        },
    )
    return tmp_path / "app"


def by_identity(resources: list[Resource]) -> dict[tuple[str, str, str | None, str], Resource]:
    keyed = {
        (r["apiVersion"], r["kind"], r["metadata"].get("namespace"), r["metadata"]["name"]): r
        for r in resources
    }
    assert len(keyed) == len(resources), "a resource is rendered twice"
    return keyed


@needs_kubectl
@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_fallback_renders_deploy_exactly_as_kubectl_does(directory: Path) -> None:
    # Same resources, kinds, namespaces, names (hash suffixes included) and content.
    assert by_identity(render(directory)) == by_identity(kubectl_kustomize(directory))


@needs_kubectl
def test_the_fallback_renders_every_implemented_field_as_kubectl_does(every_feature: Path) -> None:
    assert by_identity(render(every_feature)) == by_identity(kubectl_kustomize(every_feature))


def test_generated_names_are_hashed_and_every_pod_spec_reference_follows(
    every_feature: Path,
) -> None:
    resources = render(every_feature)
    settings = [r for r in resources if r["metadata"]["name"].startswith("settings-")]
    assert len(settings) == 1
    hashed = settings[0]["metadata"]["name"]
    assert settings[0]["data"] == {"mode": "strict é\t\n", "renamed.txt": "key=value\n"}
    assert hashed == "settings-" + configmap_hash(settings[0]["data"])
    assert one(resources, "ConfigMap", "stable")["data"] == {
        "one.txt": "stays <named> & unhashed\n"
    }

    pod = one(resources, "Deployment", "app")["spec"]["template"]["spec"]
    app, side = pod["containers"]
    assert [e["valueFrom"]["configMapKeyRef"]["name"] for e in app["env"]] == [
        hashed,
        "not-generated",
    ]
    assert app["envFrom"][0]["configMapRef"]["name"] == hashed
    assert pod["volumes"][0]["configMap"]["name"] == hashed
    sources = pod["volumes"][1]["projected"]["sources"]
    assert [s["configMap"]["name"] for s in sources] == ["stable", hashed]

    assert app["image"] == "registry.example/app:1.2"
    assert pod["initContainers"][0]["image"] == "registry.example:5000/team/app:new"
    assert side["image"] == "mirror/tool@sha256:0123"
    for resource in resources:
        if resource["kind"] != "Namespace":
            assert resource["metadata"]["namespace"] == "team", resource["metadata"]


def test_a_changed_file_is_a_new_name() -> None:
    assert configmap_hash({"a": "1\n"}) != configmap_hash({"a": "2\n"})
    assert configmap_hash({"a": "1\n"}) != configmap_hash({"b": "1\n"})
    assert len(configmap_hash({"a": "1\n"})) == 10


def test_the_hash_is_kustomizes_own() -> None:
    # Suffixes `kubectl kustomize` (kustomize v5.5.0) printed for these files; the second needs
    # Go's JSON escaping of <, > and & and a non-ASCII letter left as UTF-8.
    assert configmap_hash({"f.txt": "hello\n"}) == "dhdgtdmfh9"
    assert configmap_hash({"f.txt": "a<b>&c é \t x\n"}) == "mbf9c65tgm"


@pytest.mark.parametrize(
    ("kustomization", "refused"),
    [
        ("namePrefix: x-\n", "namePrefix not implemented"),
        ("commonLabels: {a: b}\n", "commonLabels not implemented"),
        ("patches: []\n", "patches not implemented"),
        ("configMapGenerator:\n  - {name: c, literals: [a=b]}\n", "literals not implemented"),
        ("configMapGenerator:\n  - {name: c, behavior: merge}\n", "behavior not implemented"),
        (
            "configMapGenerator:\n  - {name: c, files: [f], options: {labels: {a: b}}}\n",
            "labels not implemented",
        ),
        ("images:\n  - {name: app, digest: 'sha256:00'}\n", "digest not implemented"),
        ("resources: [https://example.com/x.yaml]\n", "not a local path"),
        ("resources: [../outside.yaml]\n", "is outside"),
        ("resources: [missing.yaml]\n", "does not exist"),
        ("resources: [binding.yaml]\n", "kind RoleBinding (b) is not implemented"),
        ("namespace: other\nresources: [namespace.yaml]\n", "Namespace team differs"),
        ("configMapGenerator:\n  - {name: c, files: [f, f]}\n", "key f twice"),
        ("configMapGenerator:\n  - {name: c, files: [binary]}\n", "is not UTF-8"),
        ("resources: [namespace.yaml, namespace.yaml]\n", "defined twice"),
        ("apiVersion: v2\n", "not a kustomize.config.k8s.io/v1beta1 Kustomization"),
    ],
)
def test_what_the_subset_does_not_implement_is_refused(
    tmp_path: Path, kustomization: str, refused: str
) -> None:
    root = write(
        tmp_path / "k",
        {
            "kustomization.yaml": kustomization,
            "f": "x\n",
            "namespace.yaml": "apiVersion: v1\nkind: Namespace\nmetadata: {name: team}\n",
            "binding.yaml": "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\n"
            "metadata: {name: b}\n",
        },
    )
    (root / "binary").write_bytes(b"\xff\xfe\x00")
    (tmp_path / "outside.yaml").write_text("kind: Namespace\nmetadata: {name: o}\n")
    with pytest.raises(KustomizeSubsetError, match=re.escape(refused)):
        render(root)


def test_without_kubectl_the_manifests_are_still_rendered(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import deploy_manifests

    monkeypatch.setenv("PATH", str(tmp_path))  # no kubectl here
    resources = deploy_manifests.kustomize(deploy_manifests.KUBERNETES)
    assert one(resources, "Deployment", "ext-authz")["metadata"]["namespace"] == "ext-authz"
