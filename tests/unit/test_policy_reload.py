"""Policy hot reload and shadow mode: whole swaps, last good policy kept, never enforced shadow."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import pytest

from ext_authz.errors import PolicyLoadError
from ext_authz.models import AuthRequest, Identity, PolicyResult
from ext_authz.policy.engine import CasbinPolicyEngine
from ext_authz.policy.reload import ReloadingPolicyEngine
from ext_authz.policy.shadow import ShadowPolicyEngine

POLICIES = Path(__file__).resolve().parents[2] / "policies"
MODEL = POLICIES / "model.conf"
VIEWER = Identity("alice", ("viewer",))
BOOKS = AuthRequest("GET", "/api/books")
DRAFTS = AuthRequest("GET", "/api/books", query=(("include", "drafts"),))


def _shipped_rules() -> str:
    return (POLICIES / "policy.csv").read_text()


def _without_viewer_books(text: str) -> str:
    return (
        "\n".join(
            line
            for line in text.splitlines()
            if not line.startswith("p, role:viewer, GET, /api/books,")
        )
        + "\n"
    )


def _write(path: Path, text: str) -> None:
    """Atomic replace, like an editor or a ConfigMap update, with a fresh mtime."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _engine(policy: Path) -> ReloadingPolicyEngine:
    return ReloadingPolicyEngine(
        lambda: CasbinPolicyEngine.from_files(MODEL, policy), MODEL, policy, interval=3600
    )


def test_a_valid_change_goes_live_on_check(tmp_path: Path) -> None:
    policy = tmp_path / "policy.csv"
    _write(policy, _shipped_rules())
    engine = _engine(policy)
    assert engine.decide(VIEWER, BOOKS).allowed

    _write(policy, _without_viewer_books(_shipped_rules()))
    assert engine.check()

    assert not engine.decide(VIEWER, BOOKS).allowed
    assert engine.reloads == 1


def test_an_invalid_change_keeps_the_last_good_policy_and_names_file_and_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    policy = tmp_path / "policy.csv"
    _write(policy, _shipped_rules())
    engine = _engine(policy)

    _write(policy, _shipped_rules() + "p, role:viewer, GET, no-slash, *, *, allow\n")
    with caplog.at_level(logging.ERROR):
        assert not engine.check()

    assert engine.decide(VIEWER, BOOKS).allowed
    assert engine.failures == 1
    line = len(_shipped_rules().splitlines()) + 1
    assert f"{policy}:{line}" in caplog.text


def test_an_invalid_policy_at_start_is_an_error(tmp_path: Path) -> None:
    policy = tmp_path / "policy.csv"
    _write(policy, "p, everyone, GET\n")
    with pytest.raises(PolicyLoadError, match="policy.csv:1"):
        _engine(policy)


def test_reload_forces_a_reload_without_a_file_change(tmp_path: Path) -> None:
    policy = tmp_path / "policy.csv"
    _write(policy, _shipped_rules())
    engine = _engine(policy)
    assert engine.reload()
    assert engine.reloads == 1


def test_no_request_sees_a_half_loaded_policy_under_load(tmp_path: Path) -> None:
    """Readers hammer decide() while the policy flips; every answer is one whole policy's."""
    policy = tmp_path / "policy.csv"
    full, reduced = _shipped_rules(), _without_viewer_books(_shipped_rules())
    _write(policy, full)
    engine = _engine(policy)
    allowed_rule = engine.decide(VIEWER, BOOKS).matched_rule
    stop = threading.Event()
    seen: list[PolicyResult] = []
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                seen.append(engine.decide(VIEWER, BOOKS))
        except BaseException as exc:  # noqa: BLE001 - any error fails the test below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    flips = 0
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        _write(policy, reduced if flips % 2 == 0 else full)
        assert engine.check()
        flips += 1
    stop.set()
    for thread in threads:
        thread.join()

    assert not errors
    assert flips >= 4
    outcomes = {(result.allowed, result.matched_rule) for result in seen}
    assert outcomes <= {(True, allowed_rule), (False, None)}
    assert outcomes == {(True, allowed_rule), (False, None)}  # both policies were really live


class _Fixed:
    def __init__(self, allowed: bool, rule: str | None = None, error: bool = False) -> None:
        self.result = PolicyResult(allowed, rule)
        self.error = error

    def decide(self, identity: Identity, request: AuthRequest) -> PolicyResult:
        if self.error:
            raise RuntimeError("candidate bug")
        return self.result


def test_shadow_returns_the_live_decision_and_logs_differences(
    caplog: pytest.LogCaptureFixture,
) -> None:
    shadow = ShadowPolicyEngine(_Fixed(False), _Fixed(True, "candidate.csv:3"))
    with caplog.at_level(logging.WARNING, logger="ext_authz.policy.shadow"):
        result = shadow.decide(VIEWER, DRAFTS)

    assert result.allowed is False
    assert (shadow.decisions, shadow.differences) == (1, 1)
    fields = caplog.records[0].fields  # type: ignore[attr-defined]
    assert fields["event"] == "policy_shadow_difference"
    assert (fields["live"], fields["candidate"]) == ("deny", "allow")
    assert fields["candidate_rule"] == "candidate.csv:3"
    assert fields["path"] == "/api/books"


def test_shadow_agreement_is_counted_but_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    shadow = ShadowPolicyEngine(_Fixed(True), _Fixed(True))
    with caplog.at_level(logging.WARNING, logger="ext_authz.policy.shadow"):
        assert shadow.decide(VIEWER, BOOKS).allowed
    assert (shadow.decisions, shadow.differences) == (1, 0)
    assert not caplog.records


def test_a_failing_shadow_never_changes_the_answer() -> None:
    shadow = ShadowPolicyEngine(_Fixed(True, "live.csv:1"), _Fixed(False, error=True))
    assert shadow.decide(VIEWER, BOOKS) == PolicyResult(True, "live.csv:1")
    assert shadow.errors == 1
