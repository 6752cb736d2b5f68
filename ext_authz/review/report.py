"""What becomes of findings: suppressions, the ``--fail-on`` verdict, and three renderings.

Suppressions file (YAML), a list of entries::

    - rule: envoy.ext_authz.disabled           # a rule id, exactly
      location: "envoy/envoy.yaml *routes[0]*"  # optional glob over "FILE PATH"
      justification: /healthz is answered by the upstream's health handler only

``location`` is matched against the whole of a finding's file and path joined by one space
(no line: lines move); ``*`` matches any run of characters and ``?`` one; anything else, ``[``
included, is literal. Without ``location`` the entry covers the rule everywhere. A justification
is mandatory. Suppressed findings stay in the JSON and SARIF output, marked so, and never fail
the review.

Renderings: a table for people (most severe first), a JSON list, and SARIF 2.1.0 for
code-scanning tools (levels: critical and high are ``error``, medium ``warning``, low and info
``note``; a suppressed result carries ``suppressions``).
"""

from __future__ import annotations

import json
import re
import textwrap
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from urllib.parse import quote

import yaml

from ext_authz import __version__
from ext_authz.errors import ConfigError
from ext_authz.review.findings import Finding, Severity
from ext_authz.yaml_strict import StrictLoader

__all__ = [
    "FORMATS",
    "SARIF_SCHEMA",
    "Reviewed",
    "Suppression",
    "apply_suppressions",
    "failing",
    "load_suppressions",
    "render",
    "summary",
    "unused_suppressions",
]

FORMATS = ("table", "json", "sarif")
SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/os/schemas/sarif-schema-2.1.0.json"
_SARIF_LEVEL = {
    Severity.CRITICAL: "error",
    Severity.HIGH: "error",
    Severity.MEDIUM: "warning",
    Severity.LOW: "note",
    Severity.INFO: "note",
}
# GitHub code scanning ranks security alerts by this score (critical >= 9, high >= 7, ...).
_SECURITY_SEVERITY = {
    Severity.CRITICAL: "9.5",
    Severity.HIGH: "8.0",
    Severity.MEDIUM: "5.5",
    Severity.LOW: "3.0",
}
_ENTRY_KEYS = frozenset({"rule", "location", "justification"})
_WIDTH = 100
_INDENT = " " * 10


@dataclass(frozen=True, slots=True)
class Suppression:
    """One accepted finding (or family of findings); ``source`` says where it was written."""

    rule: str
    location: str | None
    justification: str
    source: str

    def matches(self, finding: Finding) -> bool:
        if finding.rule != self.rule:
            return False
        if self.location is None:
            return True
        pattern = ".*".join(
            ".".join(re.escape(part) for part in piece.split("?"))
            for piece in self.location.split("*")
        )
        subject = f"{finding.location.file} {finding.location.path}".rstrip()
        return re.fullmatch(pattern, subject, flags=re.DOTALL) is not None


@dataclass(frozen=True, slots=True)
class Reviewed:
    """A finding and the suppression that covers it, if any."""

    finding: Finding
    suppression: Suppression | None = None


def load_suppressions(path: Path) -> list[Suppression]:
    """Read a suppressions file; raises ConfigError naming the file, line and entry."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read suppressions file: {exc}") from exc
    loader = StrictLoader(text)
    try:
        node = loader.get_single_node()
        data = None if node is None else loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    finally:
        loader.dispose()
    if node is None:
        return []  # an empty file suppresses nothing
    if not isinstance(data, list) or not isinstance(node, yaml.SequenceNode):
        raise ConfigError(f"{path}: expected a list of suppressions (rule, justification)")
    return [
        _suppression(entry, f"{path}:{item.start_mark.line + 1}: entry {index + 1}")
        for index, (entry, item) in enumerate(zip(data, node.value, strict=True))
    ]


def _suppression(entry: object, source: str) -> Suppression:
    if not isinstance(entry, dict):
        raise ConfigError(f"{source}: expected a mapping with rule and justification")
    unknown = sorted(str(key) for key in entry if key not in _ENTRY_KEYS)
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r} (rule, location, justification)")
    rule, location, justification = (
        entry.get(key) for key in ("rule", "location", "justification")
    )
    if not isinstance(rule, str) or not rule.strip():
        raise ConfigError(f"{source}: rule is required (a rule id, e.g. envoy.ext_authz.disabled)")
    named = f"{source} (rule {rule})"
    if location is not None and not isinstance(location, str):
        raise ConfigError(f"{named}: location must be text (a glob over 'FILE PATH')")
    if not isinstance(justification, str) or not justification.strip():
        raise ConfigError(f"{named}: justification is required: say why the finding is accepted")
    return Suppression(rule.strip(), location, justification.strip(), named)


def apply_suppressions(
    findings: Iterable[Finding], suppressions: Sequence[Suppression]
) -> list[Reviewed]:
    """Each finding with the first suppression covering it; most severe first."""
    reviewed = [
        Reviewed(finding, next((s for s in suppressions if s.matches(finding)), None))
        for finding in findings
    ]
    return sorted(reviewed, key=_order)


def _order(item: Reviewed) -> tuple[int, str, str, str, int]:
    finding = item.finding
    where = finding.location
    return (-finding.severity, finding.rule, where.file, where.path, where.line or 0)


def unused_suppressions(
    reviewed: Sequence[Reviewed], suppressions: Sequence[Suppression]
) -> list[Suppression]:
    """Suppressions that covered nothing: stale, or a misspelt rule id."""
    used = {id(item.suppression) for item in reviewed if item.suppression is not None}
    return [suppression for suppression in suppressions if id(suppression) not in used]


def failing(reviewed: Sequence[Reviewed], fail_on: Severity) -> list[Reviewed]:
    """Unsuppressed findings at or above ``fail_on``."""
    return [
        item for item in reviewed if item.suppression is None and item.finding.severity >= fail_on
    ]


def summary(reviewed: Sequence[Reviewed], fail_on: Severity) -> str:
    """``3 findings (1 critical, 2 low), 1 suppressed; 1 at or above high``."""
    active = [item.finding.severity for item in reviewed if item.suppression is None]
    counts = Counter(active)
    parts = [f"{counts[s]} {s.name.lower()}" for s in sorted(counts, reverse=True)]
    text = f"{len(active)} finding{'' if len(active) == 1 else 's'}"
    if parts:
        text += f" ({', '.join(parts)})"
    suppressed = len(reviewed) - len(active)
    if suppressed:
        text += f", {suppressed} suppressed"
    return f"{text}; {len(failing(reviewed, fail_on))} at or above {fail_on.name.lower()}"


def render(reviewed: Sequence[Reviewed], output_format: str, fail_on: Severity) -> str:
    """The report in one of FORMATS."""
    if output_format == "json":
        return json.dumps([_json(item) for item in reviewed], indent=2) + "\n"
    if output_format == "sarif":
        return json.dumps(_sarif(reviewed), indent=2) + "\n"
    return _table(reviewed, fail_on)


def _table(reviewed: Sequence[Reviewed], fail_on: Severity) -> str:
    active = [item.finding for item in reviewed if item.suppression is None]
    lines: list[str] = []
    if active:
        rule_width = max(len(finding.rule) for finding in active)
        lines.append(f"{'SEVERITY':<9} {'RULE':<{rule_width}}  LOCATION")
        for finding in active:
            lines.append(
                f"{finding.severity.name.lower():<9} {finding.rule:<{rule_width}}"
                f"  {finding.location}"
            )
            lines += _wrapped(finding.title)
            lines += _wrapped(finding.why)
            lines += _wrapped(f"fix: {finding.fix}")
            lines.append("")
    suppressed = [item for item in reviewed if item.suppression is not None]
    if suppressed:
        lines.append("suppressed:")
        for item in suppressed:
            assert item.suppression is not None  # noqa: S101 - filtered above
            finding = item.finding
            lines.append(f"  {finding.severity.name.lower():<7} {finding.rule}  {finding.location}")
            lines += _wrapped(f"justification: {item.suppression.justification}")
        lines.append("")
    lines.append(summary(reviewed, fail_on))
    return "\n".join(lines) + "\n"


def _wrapped(text: str) -> list[str]:
    return textwrap.wrap(
        text, _WIDTH, initial_indent=_INDENT, subsequent_indent=_INDENT, break_on_hyphens=False
    )


def _json(item: Reviewed) -> dict[str, object]:
    finding = item.finding
    where = finding.location
    entry: dict[str, object] = {
        "rule": finding.rule,
        "severity": finding.severity.name.lower(),
        "title": finding.title,
        "location": {"file": where.file, "path": where.path, "line": where.line},
        "why": finding.why,
        "fix": finding.fix,
        "suppressed": item.suppression is not None,
    }
    if item.suppression is not None:
        entry["justification"] = item.suppression.justification
    return entry


def _sarif(reviewed: Sequence[Reviewed]) -> dict[str, object]:
    rules: dict[str, int] = {}
    descriptors: list[dict[str, object]] = []
    results: list[dict[str, object]] = []
    for item in reviewed:
        finding = item.finding
        if finding.rule not in rules:
            rules[finding.rule] = len(descriptors)
            descriptors.append(_sarif_rule(finding))
        result: dict[str, object] = {
            "ruleId": finding.rule,
            "ruleIndex": rules[finding.rule],
            "level": _SARIF_LEVEL[finding.severity],
            "message": {"text": f"{finding.title}: {finding.why}"},
            "locations": [_sarif_location(finding)],
            # An empty list says "not suppressed" (an absent one: "unknown").
            "suppressions": [],
        }
        if item.suppression is not None:
            result["suppressions"] = [
                {
                    "kind": "external",
                    "status": "accepted",
                    "justification": item.suppression.justification,
                }
            ]
        results.append(result)
    driver = {
        "name": "ext-authz review",
        "version": __version__,
        "rules": descriptors,
    }
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{"tool": {"driver": driver}, "results": results}],
    }


def _sarif_rule(finding: Finding) -> dict[str, object]:
    properties: dict[str, object] = {"tags": ["security"]}
    if finding.severity in _SECURITY_SEVERITY:
        properties["security-severity"] = _SECURITY_SEVERITY[finding.severity]
    return {
        "id": finding.rule,
        "shortDescription": {"text": finding.title},
        "help": {"text": finding.fix},
        "defaultConfiguration": {"level": _SARIF_LEVEL[finding.severity]},
        "properties": properties,
    }


def _sarif_location(finding: Finding) -> dict[str, object]:
    where = finding.location
    physical: dict[str, object] = {"artifactLocation": {"uri": _uri(where.file)}}
    if where.line:
        physical["region"] = {"startLine": where.line}
    location: dict[str, object] = {"physicalLocation": physical}
    if where.path:
        location["logicalLocations"] = [{"fullyQualifiedName": where.path}]
    return location


def _uri(file: str) -> str:
    """A relative path stays relative (code scanning resolves it against the repository)."""
    path = PurePath(file)
    if path.is_absolute():
        return Path(path).as_uri()
    return quote(path.as_posix())
