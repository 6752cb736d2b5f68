"""A renderer for exactly the kustomize subset deploy/ uses, for machines without kubectl.

Implemented: `resources` (YAML files inside the kustomization directory, and directories with
their own kustomization, rendered first), `namespace`, `configMapGenerator` entries with `name`,
`files` (`path` or `key=path`) and `options.disableNameSuffixHash`, and `images` with `name`,
`newName`, `newTag`. Anything else in a kustomization, or a resource kind whose namespace and
references this module does not know how to treat, is refused with `KustomizeSubsetError`: a
future change to deploy/ must extend this renderer (and its agreement test with kubectl) rather
than be rendered wrong in silence.

Generated ConfigMap names get kustomize's own suffix (`configmap_hash`), and the references a
pod spec makes to them (volumes, projected volumes, env and envFrom) are rewritten, as
`kubectl kustomize` does. The output order is the order of the inputs, not kustomize's kind
order: callers look resources up by kind and name.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]

API_VERSION = "kustomize.config.k8s.io/v1beta1"
KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
KUSTOMIZATION_FIELDS = {
    "apiVersion",
    "kind",
    "namespace",
    "resources",
    "configMapGenerator",
    "images",
}
GENERATOR_FIELDS = {"name", "files", "options"}
GENERATOR_OPTIONS = {"disableNameSuffixHash"}
IMAGE_FIELDS = {"name", "newName", "newTag"}

# Where each workload kind keeps its pod spec (the image and ConfigMap references live there).
POD_SPEC_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": ("spec",),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}
# Namespaced kinds that refer to no ConfigMap and carry no image: only metadata.namespace changes.
# (RoleBinding is left out on purpose: kustomize also rewrites its subjects' namespaces.)
PLAIN_NAMESPACED = {
    "ConfigMap",
    "Secret",
    "Service",
    "ServiceAccount",
    "PodDisruptionBudget",
    "HorizontalPodAutoscaler",
    "NetworkPolicy",
}
CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")
# kustomize's hash encoding swaps these hex digits for letters (fewer accidental words/numbers).
HASH_LETTERS = str.maketrans("013ae", "ghkmt")
# Go's encoding/json escapes these even inside strings; the hash is over Go's encoding.
GO_JSON_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


class KustomizeSubsetError(Exception):
    """A kustomization uses something this renderer does not implement, or is malformed."""


def render(directory: Path) -> list[Resource]:
    """The resources `kubectl kustomize directory` would print (modulo order)."""
    resources, _ = _build(directory.resolve())
    return resources


def configmap_hash(data: dict[str, str]) -> str:
    """kustomize's name suffix for a generated ConfigMap with ``data``.

    sha256 over the JSON (sorted keys, Go escaping) of {"data", "kind": "ConfigMap", "name": ""}
    (kustomize hashes the generated object before it has a name), first 10 hex digits encoded.
    """
    encoded = json.dumps(
        {"data": data, "kind": "ConfigMap", "name": ""},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    for char, escape in GO_JSON_ESCAPES.items():
        encoded = encoded.replace(char, escape)
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()[:10].translate(HASH_LETTERS)


def _build(directory: Path) -> tuple[list[Resource], dict[str, str]]:
    """This kustomization's resources and its (and its bases') generated-name renames."""
    where = _kustomization_file(directory)
    spec = yaml.safe_load(where.read_text(encoding="utf-8")) or {}
    _refuse_unknown(spec, KUSTOMIZATION_FIELDS, f"{where}")
    if spec.get("apiVersion", API_VERSION) != API_VERSION or spec.get("kind", "Kustomization") != (
        "Kustomization"
    ):
        raise KustomizeSubsetError(f"{where}: not a {API_VERSION} Kustomization")

    resources: list[Resource] = []
    renames: dict[str, str] = {}
    for entry in _list(spec, "resources", where):
        base, base_renames = _resource_entry(directory, entry, where)
        resources += base
        renames.update(base_renames)
    for generator in _list(spec, "configMapGenerator", where):
        configmap, original = _generate(directory, generator, where)
        resources.append(configmap)
        renames[original] = configmap["metadata"]["name"]

    images = _list(spec, "images", where)
    for image in images:
        _refuse_unknown(image, IMAGE_FIELDS, f"{where}: images entry")
    for resource in resources:
        _check_kind(resource, where)
        _rewrite_configmap_refs(resource, renames)
        _set_images(resource, images)
    namespace = spec.get("namespace")
    if namespace is not None:
        for resource in resources:
            _set_namespace(resource, namespace, where)
    _refuse_duplicates(resources, where)
    return resources, renames


def _kustomization_file(directory: Path) -> Path:
    for name in KUSTOMIZATION_FILES:
        if (directory / name).is_file():
            return directory / name
    raise KustomizeSubsetError(f"{directory}: no kustomization.yaml")


def _refuse_unknown(mapping: Any, known: set[str], where: str) -> None:
    if not isinstance(mapping, dict):
        raise KustomizeSubsetError(f"{where}: expected a mapping, got {mapping!r}")
    unknown = sorted(set(mapping) - known)
    if unknown:
        raise KustomizeSubsetError(
            f"{where}: {', '.join(unknown)} not implemented by tests/deploy/kustomize_subset.py "
            f"(it knows {', '.join(sorted(known))}); extend it or render with kubectl"
        )


def _list(spec: dict[str, Any], field: str, where: Path) -> list[Any]:
    value = spec.get(field) or []
    if not isinstance(value, list):
        raise KustomizeSubsetError(f"{where}: {field} must be a list")
    return value


def _inside(directory: Path, relative: str, where: Path) -> Path:
    """A file a kustomization names; kustomize refuses files outside its directory too."""
    path = (directory / relative).resolve()
    if not path.is_relative_to(directory):
        raise KustomizeSubsetError(f"{where}: {relative} is outside {directory}")
    return path


def _resource_entry(
    directory: Path, entry: Any, where: Path
) -> tuple[list[Resource], dict[str, str]]:
    if not isinstance(entry, str) or "://" in entry or entry.startswith(("github.com/", "git@")):
        raise KustomizeSubsetError(f"{where}: resource {entry!r} is not a local path")
    path = (directory / entry).resolve()
    if path.is_dir():
        return _build(path)
    path = _inside(directory, entry, where)
    if not path.is_file():
        raise KustomizeSubsetError(f"{where}: resource {entry} does not exist")
    docs = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
    for doc in docs:
        if not isinstance(doc, dict) or "kind" not in doc or "metadata" not in doc:
            raise KustomizeSubsetError(f"{path}: a document without kind/metadata")
    return docs, {}


def _generate(directory: Path, generator: Any, where: Path) -> tuple[Resource, str]:
    _refuse_unknown(generator, GENERATOR_FIELDS, f"{where}: configMapGenerator entry")
    name = generator.get("name")
    if not isinstance(name, str) or not name:
        raise KustomizeSubsetError(f"{where}: configMapGenerator entry without a name")
    options = generator.get("options") or {}
    _refuse_unknown(options, GENERATOR_OPTIONS, f"{where}: configMapGenerator {name} options")
    data: dict[str, str] = {}
    for item in generator.get("files") or []:
        key, equals, relative = str(item).partition("=")
        if not equals:
            key, relative = "", key
        path = _inside(directory, relative, where)
        key = key or path.name
        if key in data:
            raise KustomizeSubsetError(f"{where}: configMapGenerator {name}: key {key} twice")
        try:
            data[key] = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            # kustomize would put it under binaryData, which this subset does not implement.
            raise KustomizeSubsetError(f"{where}: {relative} is not UTF-8 text") from exc
    final = name if options.get("disableNameSuffixHash") else f"{name}-{configmap_hash(data)}"
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": final}, "data": data}
    return configmap, name


def _check_kind(resource: Resource, where: Path) -> None:
    kind = resource["kind"]
    if kind != "Namespace" and kind not in POD_SPEC_PATHS and kind not in PLAIN_NAMESPACED:
        raise KustomizeSubsetError(
            f"{where}: kind {kind} ({resource['metadata'].get('name')}) is not implemented by "
            "tests/deploy/kustomize_subset.py (its namespace and references would need handling)"
        )


def _pod_spec(resource: Resource) -> dict[str, Any] | None:
    path = POD_SPEC_PATHS.get(resource["kind"])
    node: Any = resource
    for key in path or ():
        node = node.get(key) if isinstance(node, dict) else None
    return node if path and isinstance(node, dict) else None


def _containers(pod_spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for field in CONTAINER_LISTS:
        yield from pod_spec.get(field) or []


def _configmap_refs(pod_spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every mapping in a pod spec whose `name` names a ConfigMap."""
    for vol in pod_spec.get("volumes") or []:
        if "configMap" in vol:
            yield vol["configMap"]
        for source in (vol.get("projected") or {}).get("sources") or []:
            if "configMap" in source:
                yield source["configMap"]
    for item in _containers(pod_spec):
        for env in item.get("env") or []:
            ref = (env.get("valueFrom") or {}).get("configMapKeyRef")
            if ref is not None:
                yield ref
        for env_from in item.get("envFrom") or []:
            if "configMapRef" in env_from:
                yield env_from["configMapRef"]


def _rewrite_configmap_refs(resource: Resource, renames: dict[str, str]) -> None:
    pod_spec = _pod_spec(resource)
    if pod_spec is None:
        return
    for ref in _configmap_refs(pod_spec):
        ref["name"] = renames.get(ref.get("name", ""), ref.get("name"))


def _set_images(resource: Resource, images: list[dict[str, str]]) -> None:
    pod_spec = _pod_spec(resource)
    if pod_spec is None:
        return
    for item in _containers(pod_spec):
        name, suffix = _split_image(item.get("image", ""))
        for image in images:
            if image.get("name") == name:
                new_suffix = f":{image['newTag']}" if "newTag" in image else suffix
                item["image"] = f"{image.get('newName', name)}{new_suffix}"


def _split_image(image: str) -> tuple[str, str]:
    """("registry:5000/repo/name", ":tag" or "@digest" or "")."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return name, f"@{digest}"
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon:]
    return image, ""


def _set_namespace(resource: Resource, namespace: str, where: Path) -> None:
    if resource["kind"] == "Namespace":
        if resource["metadata"]["name"] != namespace:
            # kustomize would rename it; this subset refuses instead of guessing.
            raise KustomizeSubsetError(
                f"{where}: Namespace {resource['metadata']['name']} differs from "
                f"namespace: {namespace}"
            )
        return
    resource["metadata"]["namespace"] = namespace


def _refuse_duplicates(resources: list[Resource], where: Path) -> None:
    seen: set[tuple[str, str | None, str]] = set()
    for resource in resources:
        meta = resource["metadata"]
        key = (resource["kind"], meta.get("namespace"), meta["name"])
        if key in seen:
            raise KustomizeSubsetError(f"{where}: {key} defined twice")
        seen.add(key)
