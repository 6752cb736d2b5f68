"""What a review reports: findings with a stable rule id, a severity, where, why and how to fix."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

__all__ = ["Finding", "Location", "Severity"]


class Severity(IntEnum):
    """Ordered, so ``--fail-on medium`` means medium or worse."""

    INFO = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @classmethod
    def parse(cls, name: str) -> Severity:
        try:
            return cls[name.upper()]
        except KeyError:
            raise ValueError(
                f"unknown severity {name!r}; one of {', '.join(s.name.lower() for s in cls)}"
            ) from None


@dataclass(frozen=True, slots=True)
class Location:
    """A file and, inside it, a path (``static_resources.listeners[0]...``) and/or a line."""

    file: str
    path: str = ""
    line: int | None = None

    def __str__(self) -> str:
        where = self.file + (f":{self.line}" if self.line else "")
        return f"{where} {self.path}".rstrip()


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem. ``rule`` is a stable id like ``envoy.failure_mode_allow`` (suppressions and
    SARIF refer to it); ``why`` says what an attacker gains, ``fix`` what to change."""

    rule: str
    severity: Severity
    title: str
    location: Location
    why: str
    fix: str
