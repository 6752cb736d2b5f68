"""`ext-authz policy test`: run policy test cases through the serve pipeline, for people and CI."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from pathlib import Path

import click

from ext_authz.cli.errors import config_errors_exit
from ext_authz.policy.enforcer import PolicyRule
from ext_authz.policy.testing import (
    CaseResult,
    PolicyRunner,
    SuiteResult,
    find_case_files,
    load_cases,
    rule_text,
    run_suites,
    short_location,
    unexercised_rules,
)

__all__ = ["policy"]

FAILED_EXIT = 1
_COLUMNS = ("", "case", "expect", "status", "reason", "rule")


@click.group()
def policy() -> None:
    """Policy tools: test cases, coverage of policy lines."""


@policy.command("test")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--junit-xml",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write a JUnit XML report here (one testsuite per cases file).",
)
@click.option(
    "--coverage/--no-coverage",
    default=True,
    show_default=True,
    help="List the policy rules that decided no case.",
)
def test_command(path: Path, junit_xml: Path | None, coverage: bool) -> None:
    """Run the cases in PATH (a cases file, or every *cases*.yaml beneath a directory).

    Exit status: 0 all passed, 1 a case failed, 2 a cases or policy file is invalid.
    """
    with config_errors_exit():
        # Every file is validated before any case runs: a typo fails fast, not half-way.
        files = [load_cases(file) for file in find_case_files(path)]
        suites = run_suites(files)
    for suite in suites:
        _echo_suite(suite)
    if coverage:
        for runner, rules in unexercised_rules(suites).items():
            click.echo(_coverage(runner, rules))
    results = [result for suite in suites for result in suite.results]
    failed = sum(not result.passed for result in results)
    click.echo(f"{len(results) - failed} passed, {failed} failed")
    if junit_xml is not None:
        _write_junit(junit_xml, suites)
    if failed:
        raise SystemExit(FAILED_EXIT)


def _outcome_text(result: CaseResult) -> str:
    """``403 access_denied (policy.csv:12)``: the answer and the rule that decided it."""
    decision = result.decision
    rule = f" ({short_location(decision.matched_rule)})" if decision.matched_rule else ""
    return f"{result.status} {decision.reason_code}{rule}"


def _failure_text(result: CaseResult) -> str:
    message = f": {result.decision.message}" if result.decision.message else ""
    return f"expected {result.case.expected}, got {_outcome_text(result)}{message}"


def _render_table(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, two spaces apart."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _echo_suite(suite: SuiteResult) -> None:
    click.echo(f"{suite.cases_file.path}  (policy: {_shown(suite.runner.policy.policy)})")
    rows = [_COLUMNS] + [_row(result) for result in suite.results]
    click.echo(_render_table(rows))
    for result in suite.results:
        if not result.passed:
            click.echo(f"FAILED {result.case.name}: {_failure_text(result)}")
    click.echo()


def _row(result: CaseResult) -> tuple[str, ...]:
    rule = result.decision.matched_rule
    return (
        "ok" if result.passed else "FAIL",
        result.case.name,
        result.case.expected,
        str(result.status),
        result.decision.reason_code,
        short_location(rule) if rule else "-",
    )


def _coverage(runner: PolicyRunner, unexercised: Sequence[PolicyRule]) -> str:
    total = len(runner.rules)
    decided = total - len(unexercised)
    head = f"coverage: {_shown(runner.policy.policy)}: {decided} of {total} rules decided a case"
    if not unexercised:
        return head
    rows = [(f"  {short_location(rule.location)}", rule_text(rule)) for rule in unexercised]
    return f"{head}; never deciding:\n{_render_table(rows)}"


def _shown(path: Path) -> Path:
    """Relative to the working directory where possible: shorter, and what the user typed."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def _write_junit(path: Path, suites: Sequence[SuiteResult]) -> None:
    root = ElementTree.Element("testsuites")
    for suite in suites:
        root.append(_junit_suite(suite))
    root.set("tests", str(sum(int(s.get("tests", "0")) for s in root)))
    root.set("failures", str(sum(int(s.get("failures", "0")) for s in root)))
    ElementTree.indent(root)
    try:
        ElementTree.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    except OSError as exc:
        raise click.FileError(str(path), hint=exc.strerror) from None


def _junit_suite(suite: SuiteResult) -> ElementTree.Element:
    name = str(suite.cases_file.path)
    failures = [result for result in suite.results if not result.passed]
    element = ElementTree.Element(
        "testsuite",
        name=name,
        tests=str(len(suite.results)),
        failures=str(len(failures)),
        errors="0",
        skipped="0",
    )
    for result in suite.results:
        case = ElementTree.SubElement(element, "testcase", classname=name, name=result.case.name)
        if not result.passed:
            failure = ElementTree.SubElement(
                case, "failure", message=_failure_text(result), type="PolicyMismatch"
            )
            failure.text = f"{result.case.request.method} {result.case.request.target}"
    return element
