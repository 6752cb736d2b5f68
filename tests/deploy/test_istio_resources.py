"""deploy/istio: the extension provider and the CUSTOM AuthorizationPolicies.

AuthorizationPolicies are validated against Istio's own CRD schemas (Istio 1.29's CRDs, as
generated into the @kubernetes-models/istio npm package that `make deploy-schemas` installs
with npm ci from tests/deploy/istio_schema/package-lock.json). Those schemas leave unknown
fields alone (the API server prunes or rejects them), so the fields we use are also checked
against Istio's API reference, as is the mesh config: MeshConfig is no CRD and ships no schema
in any package, so MESH_CONFIG_SCHEMA below is written from the reference
(https://istio.io/latest/docs/reference/config/istio.mesh.v1alpha1/, messages
MeshConfig.ExtensionProvider.EnvoyExternalAuthorizationGrpcProvider and ProxyPathNormalization).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from deploy_manifests import ISTIO, KUBERNETES, Resource, kustomize, load_all, load_yaml, one

from ext_authz.demo.envoy_config import walk_mappings

SCHEMA_CHECK = Path(__file__).resolve().parent / "istio_schema"
OPERATOR = ISTIO / "istio-operator.yaml"
HELM_VALUES = ISTIO / "istiod-values.yaml"
POLICIES = sorted(ISTIO.glob("authorization-policy-*.yaml"))
ENVOY_CONFIG = Path(__file__).resolve().parents[2] / "envoy" / "envoy.yaml"

_DURATION = {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(ms|s|m|h)$"}
MESH_CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "extensionProviders": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "envoyExtAuthzGrpc"],
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "envoyExtAuthzGrpc": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["service", "port"],
                        "properties": {
                            "service": {"type": "string", "minLength": 1},
                            "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                            "timeout": _DURATION,
                            "failOpen": {"type": "boolean"},
                            "statusOnError": {"type": "string", "pattern": "^[1-5][0-9][0-9]$"},
                            "includeRequestBodyInCheck": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "maxRequestBytes": {"type": "integer", "minimum": 0},
                                    "allowPartialMessage": {"type": "boolean"},
                                    "packAsBytes": {"type": "boolean"},
                                },
                            },
                        },
                    },
                },
            },
        },
        "pathNormalization": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "normalization": {
                    "enum": ["DEFAULT", "NONE", "BASE", "MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES"]
                }
            },
        },
    },
}

# AuthorizationPolicy fields (security.istio.io/v1), from Istio's API reference: the spec, a
# Rule, an Operation, a Source, a Condition, a policy target reference.
_SPEC = {"selector", "targetRef", "targetRefs", "rules", "action", "provider"}
_RULE = {"from", "to", "when"}
_OPERATION = {
    "hosts",
    "notHosts",
    "ports",
    "notPorts",
    "methods",
    "notMethods",
    "paths",
    "notPaths",
}
_TARGET = {"group", "kind", "name", "namespace"}


def _validate_with_istio_crds(resources: list[Resource]) -> list[str | None]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is needed for the Istio schema check (Debian's nodejs)")
    if not (SCHEMA_CHECK / "node_modules").is_dir():
        pytest.fail("Istio's schemas are not installed: run `make deploy-schemas` (npm ci)")
    result = subprocess.run(
        [node, str(SCHEMA_CHECK / "validate.mjs")],
        input=json.dumps(resources),
        capture_output=True,
        text=True,
        cwd=SCHEMA_CHECK,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    verdicts = json.loads(result.stdout)
    assert len(verdicts) == len(resources)
    return list(verdicts)


@pytest.fixture(scope="module")
def policies() -> list[Resource]:
    assert POLICIES, "no AuthorizationPolicy under deploy/istio"
    return [resource for path in POLICIES for resource in load_all(path)]


@pytest.fixture(scope="module")
def mesh_config() -> dict[str, Any]:
    operator = load_yaml(OPERATOR)
    assert (operator["apiVersion"], operator["kind"]) == (
        "install.istio.io/v1alpha1",
        "IstioOperator",
    )
    return dict(operator["spec"]["meshConfig"])


@pytest.fixture(scope="module")
def provider(mesh_config: dict[str, Any]) -> dict[str, Any]:
    (entry,) = mesh_config["extensionProviders"]
    return dict(entry)


def test_authorization_policies_are_valid_istio_resources(policies: list[Resource]) -> None:
    assert _validate_with_istio_crds(policies) == [None] * len(policies)


def test_the_crd_check_refuses_what_istio_would(policies: list[Resource]) -> None:
    wrong_action = json.loads(json.dumps(policies[0]))
    wrong_action["spec"]["action"] = "CUSTUM"
    wrong_type = json.loads(json.dumps(policies[0]))
    wrong_type["spec"]["rules"] = {"to": []}
    verdicts = _validate_with_istio_crds([wrong_action, wrong_type])
    assert verdicts[0] is not None and "action" in verdicts[0]
    assert verdicts[1] is not None and "rules" in verdicts[1]


def test_authorization_policies_use_only_fields_istio_defines(policies: list[Resource]) -> None:
    for policy in policies:
        spec = policy["spec"]
        assert set(spec) <= _SPEC, set(spec) - _SPEC
        for rule in spec["rules"]:
            assert set(rule) <= _RULE, set(rule) - _RULE
            for target in rule.get("to", []):
                assert set(target) == {"operation"}
                assert set(target["operation"]) <= _OPERATION
        for reference in spec.get("targetRefs", []):
            assert set(reference) <= _TARGET


@pytest.mark.parametrize("path", [OPERATOR, HELM_VALUES], ids=lambda p: p.name)
def test_mesh_config_matches_istios_api_reference(path: Path) -> None:
    document = load_yaml(path)
    mesh = document["spec"]["meshConfig"] if "spec" in document else document["meshConfig"]
    jsonschema.validate(mesh, MESH_CONFIG_SCHEMA)


def test_the_mesh_config_schema_refuses_a_misspelt_field(mesh_config: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(mesh_config))
    broken["extensionProviders"][0]["envoyExtAuthzGrpc"]["failopen"] = True
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, MESH_CONFIG_SCHEMA)


def test_helm_values_and_istio_operator_say_the_same(mesh_config: dict[str, Any]) -> None:
    assert load_yaml(HELM_VALUES)["meshConfig"] == mesh_config


def test_the_provider_fails_closed_within_the_shipped_timeout(provider: dict[str, Any]) -> None:
    grpc = provider["envoyExtAuthzGrpc"]
    # Istio's defaults would allow 600 s per Check and answer 403 on errors.
    assert grpc.get("failOpen", False) is False
    assert grpc["statusOnError"] == "503"
    envoy_timeouts = {
        node["typed_config"]["grpc_service"]["timeout"]
        for node in walk_mappings(load_yaml(ENVOY_CONFIG))
        if node.get("name") == "envoy.filters.http.ext_authz"
    }
    assert envoy_timeouts == {grpc["timeout"]}
    assert "includeRequestBodyInCheck" not in grpc


def test_every_custom_policy_names_the_provider_and_matches_requests(
    policies: list[Resource], provider: dict[str, Any]
) -> None:
    for policy in policies:
        spec = policy["spec"]
        assert spec["action"] == "CUSTOM"
        assert spec["provider"]["name"] == provider["name"]
        # A CUSTOM policy without rules never matches: nothing would be sent to ext-authz.
        assert spec["rules"], policy["metadata"]["name"]
        assert ("selector" in spec) != ("targetRefs" in spec), "exactly one way of attaching"


def test_sidecar_policy_is_mesh_wide_and_never_selects_ext_authz_itself(
    policies: list[Resource],
) -> None:
    (sidecar,) = [p for p in policies if "selector" in p["spec"]]
    assert sidecar["metadata"]["namespace"] == "istio-system"  # Istio's root namespace
    deployment = one(kustomize(KUBERNETES), "Deployment", "ext-authz")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = sidecar["spec"]["selector"]["matchLabels"]
    # ext-authz checking its own Check calls would wait on itself.
    assert not selector.items() <= labels.items()


def test_waypoint_policy_attaches_to_a_waypoint_gateway(policies: list[Resource]) -> None:
    (waypoint,) = [p for p in policies if "targetRefs" in p["spec"]]
    (reference,) = waypoint["spec"]["targetRefs"]
    assert (reference["group"], reference["kind"]) == ("gateway.networking.k8s.io", "Gateway")
    assert "namespace" not in reference  # a waypoint's policy lives in the waypoint's namespace
