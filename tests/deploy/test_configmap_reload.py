"""Hot reload from a Kubernetes ConfigMap volume, with the kubelet's own file layout.

The kubelet does not rewrite a mounted ConfigMap's files: it writes the new version into a fresh
timestamped directory, then atomically renames a `..data` symlink to point at it, and the names
the service opens are symlinks `policy.csv -> ..data/policy.csv`. These tests build that layout,
start the service's runtime from deploy/kubernetes/config.yaml pointed at it, swap versions the
way the kubelet does, and check what a request then gets.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import yaml

from ext_authz.models import AuthRequest, Decision, Outcome
from ext_authz.policy.reload import ReloadingPolicyEngine
from ext_authz.runtime import Runtime, build_runtime
from ext_authz.settings import load_settings
from ext_authz.watch import WatchedFile

ROOT = Path(__file__).resolve().parents[2]
K8S_CONFIG = ROOT / "deploy" / "kubernetes" / "config.yaml"
K8S_POLICIES = ROOT / "deploy" / "kubernetes" / "policies"
DEPLOYED = ("model.conf", "policy.csv", "denylist.yaml")  # the ConfigMap's keys
ISSUER = "https://issuer.test"  # conftest's make_token signs for it
AUDIENCE = "api"

DELETE_ORDER = AuthRequest("DELETE", "/api/orders/42")
READ_ORDERS = AuthRequest("GET", "/api/orders")


class ConfigMapVolume:
    """A directory laid out and updated the way the kubelet's atomic writer does it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._versions = itertools.count(1)

    def publish(self, files: Mapping[str, str]) -> None:
        data = self.directory / "..data"
        previous = data.resolve() if data.is_symlink() else None
        version = self.directory / f"..2026_11_29_18_00_{next(self._versions):02d}.{os.getpid()}"
        version.mkdir()
        for name, text in files.items():
            (version / name).write_text(text, encoding="utf-8")
        staging = self.directory / "..data_tmp"
        staging.symlink_to(version.name)
        os.replace(staging, data)  # the one atomic step: every name now sees the new version
        for name in files:
            visible = self.directory / name
            if not visible.is_symlink():
                visible.symlink_to(Path("..data") / name)
        if previous is not None:
            shutil.rmtree(previous)


def _shipped() -> dict[str, str]:
    return {name: (K8S_POLICIES / name).read_text(encoding="utf-8") for name in DEPLOYED}


def _with(files: Mapping[str, str], **changes: str) -> dict[str, str]:
    return {**files, **{name.replace("_", "."): text for name, text in changes.items()}}


@pytest.fixture
def volume(tmp_path: Path) -> ConfigMapVolume:
    directory = tmp_path / "policies"
    directory.mkdir()
    mounted = ConfigMapVolume(directory)
    mounted.publish(_shipped())
    return mounted


@pytest.fixture
def runtime(tmp_path: Path, volume: ConfigMapVolume, jwks_file: Path) -> Runtime:
    """The Kubernetes config as the pod reads it, with the policy directory at our volume and a
    local key file standing in for the IdP (no network); the admin port is left off."""
    document: dict[str, Any] = yaml.safe_load(K8S_CONFIG.read_text(encoding="utf-8"))
    mounted = "/etc/ext-authz/policies/"
    for key in ("model", "policy"):
        assert document["policy"][key].startswith(mounted)
        document["policy"][key] = str(volume.directory / document["policy"][key][len(mounted) :])
    assert document["denylist_file"].startswith(mounted)
    document["denylist_file"] = str(volume.directory / document["denylist_file"][len(mounted) :])
    (provider,) = document["providers"]
    provider.pop("discovery")
    provider.update(issuer=ISSUER, audiences=[AUDIENCE], jwks_file=str(jwks_file))
    del document["admin"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return build_runtime(load_settings(path))


def _poll(runtime: Runtime) -> None:
    """One round of what the watcher threads do every interval."""
    for task in runtime.tasks:
        if isinstance(task, WatchedFile | ReloadingPolicyEngine):
            task.check()


@pytest.fixture
def ask(runtime: Runtime, make_token: Callable[..., str]) -> Callable[..., Decision]:
    def evaluate(request: AuthRequest, sub: str = "will", roles: tuple[str, ...] = ("writer",)):
        token = make_token(sub=sub, roles=list(roles), jti=f"jti-{sub}")
        headers = MappingProxyType({"authorization": f"Bearer {token}"})
        return runtime.pipeline.evaluate(AuthRequest(request.method, request.path, headers=headers))

    return evaluate


def test_the_service_reads_the_kubelet_symlinks(volume: ConfigMapVolume) -> None:
    policy = volume.directory / "policy.csv"
    assert policy.is_symlink() and os.readlink(policy) == os.path.join("..data", "policy.csv")
    assert (volume.directory / "..data").is_symlink()


def test_a_swapped_policy_takes_effect(
    volume: ConfigMapVolume, runtime: Runtime, ask: Callable[..., Decision]
) -> None:
    assert ask(DELETE_ORDER).outcome is Outcome.FORBIDDEN
    shipped = _shipped()
    volume.publish(
        _with(
            shipped,
            policy_csv=shipped["policy.csv"] + "p, role:writer, DELETE, /api/**, *, *, allow\n",
        )
    )
    _poll(runtime)
    assert ask(DELETE_ORDER).outcome is Outcome.ALLOW


def test_a_swapped_denylist_revokes_at_once(
    volume: ConfigMapVolume, runtime: Runtime, ask: Callable[..., Decision]
) -> None:
    assert ask(READ_ORDERS).outcome is Outcome.ALLOW
    volume.publish(_with(_shipped(), denylist_yaml="jti: []\nsubjects: [will]\n"))
    _poll(runtime)
    decision = ask(READ_ORDERS)
    assert (decision.outcome, decision.reason_code) == (Outcome.UNAUTHENTICATED, "revoked_token")


def test_a_broken_policy_keeps_the_last_good_one(
    volume: ConfigMapVolume,
    runtime: Runtime,
    ask: Callable[..., Decision],
    caplog: pytest.LogCaptureFixture,
) -> None:
    shipped = _shipped()
    granting = shipped["policy.csv"] + "p, role:writer, DELETE, /api/**, *, *, allow\n"
    volume.publish(_with(shipped, policy_csv=granting))
    _poll(runtime)
    assert ask(DELETE_ORDER).outcome is Outcome.ALLOW

    volume.publish(_with(shipped, policy_csv=granting + "p, role:writer, GET\n"))
    _poll(runtime)
    assert ask(DELETE_ORDER).outcome is Outcome.ALLOW  # still the last good policy
    assert ask(READ_ORDERS).outcome is Outcome.ALLOW
    assert "policy.csv" in caplog.text and "keeping the last good version" in caplog.text

    volume.publish(shipped)  # a fixed version goes live again
    _poll(runtime)
    assert ask(DELETE_ORDER).outcome is Outcome.FORBIDDEN
