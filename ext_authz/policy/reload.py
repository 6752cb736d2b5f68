"""The live policy: rebuilt from its files when they change (or on SIGHUP), swapped in whole.

A change is parsed and validated into a complete new engine (new enforcer, index and decision
cache) before one reference assignment makes it live, so a request sees the old policy or the
new one, never a mix. A change that does not load is logged with its file and line, counted,
and the last good policy stays in force.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

from ext_authz.models import AuthRequest, Identity, PolicyResult
from ext_authz.policy.engine import PolicyEngine
from ext_authz.watch import WatchedFile

__all__ = ["ReloadingPolicyEngine"]


@runtime_checkable
class _CachingEngine(Protocol):
    def decision_cache_stats(self) -> tuple[int, int]: ...


class ReloadingPolicyEngine:
    """A PolicyEngine whose rules follow the model and policy files."""

    def __init__(
        self,
        build: Callable[[], PolicyEngine],
        model: Path,
        policy: Path,
        interval: float = 1.0,
    ) -> None:
        # Raises PolicyLoadError at start: a bad policy never starts a service.
        self._watched = WatchedFile(policy, lambda _: build(), interval, also=(model,))

    @property
    def reloads(self) -> int:
        return self._watched.reloads

    @property
    def failures(self) -> int:
        return self._watched.failures

    @property
    def version(self) -> int:
        """1 for the policy loaded at start, +1 for each reload that went live."""
        return self._watched.reloads + 1

    def decision_cache_stats(self) -> tuple[int, int]:
        """(hits, misses) of the live policy's decision cache, which each reload starts anew;
        (0, 0) for an engine without one."""
        engine = self._watched.current()
        return engine.decision_cache_stats() if isinstance(engine, _CachingEngine) else (0, 0)

    def decide(self, identity: Identity, request: AuthRequest) -> PolicyResult:
        return self._watched.current().decide(identity, request)

    def check(self) -> bool:
        """Reload now if a file changed; True when a new policy went live."""
        return self._watched.check()

    def reload(self) -> bool:
        """Reload now whether or not the files changed (SIGHUP)."""
        return self._watched.reload()

    def start(self) -> None:
        self._watched.start()

    def stop(self) -> None:
        self._watched.stop()
