"""`ext-authz policy test` and `ext-authz explain` as users and CI call them."""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from ext_authz.cli.explain import explain
from ext_authz.cli.policy import policy

POLICIES = Path(__file__).resolve().parent.parent / "policies"


@click.group()
def cli() -> None:
    """The two commands as `ext-authz` mounts them."""


cli.add_command(policy)
cli.add_command(explain)


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def cases_file(folder: Path, body: str) -> Path:
    """A cases file over the shipped policy."""
    path = folder / "my_cases.yaml"
    path.write_text(
        f"policy: {{model: {POLICIES / 'model.conf'}, policy: {POLICIES / 'policy.csv'}}}\n"
        f"cases:\n{body}"
    )
    return path


PASSING = """\
  - name: anonymous reads a public page
    request: {method: GET, path: /public/hello}
    expect: allow
"""
FAILING = """\
  - name: viewer reads drafts
    request: {method: GET, path: "/api/books?include=drafts"}
    identity: {sub: alice, roles: [viewer]}
    expect: allow
"""


def test_the_demo_suite_passes_and_exercises_every_demo_rule() -> None:
    result = invoke("policy", "test", POLICIES / "cases.yaml")
    assert result.exit_code == 0, result.output
    assert re.search(r"^\d+ passed, 0 failed$", result.output, re.MULTILINE)
    assert re.search(
        r"^coverage: \S*policy\.csv: (\d+) of \1 rules decided a case$", result.output, re.M
    )
    assert "FAIL" not in result.output


def test_every_shipped_suite_passes() -> None:
    result = invoke("policy", "test", POLICIES)
    assert result.exit_code == 0, result.output
    assert re.search(r"^\d+ passed, 0 failed$", result.output, re.MULTILINE)


def test_a_failing_case_exits_1_showing_expected_and_actual(tmp_path: Path) -> None:
    result = invoke("policy", "test", cases_file(tmp_path, PASSING + FAILING))
    assert result.exit_code == 1
    assert re.search(r"^FAIL +viewer reads drafts +allow +403 +access_denied", result.output, re.M)
    assert "FAILED viewer reads drafts: expected allow, got 403 access_denied" in result.output
    assert result.output.rstrip().endswith("1 passed, 1 failed")


def test_coverage_lists_the_rules_no_case_decided(tmp_path: Path) -> None:
    path = cases_file(tmp_path, PASSING)
    covered = invoke("policy", "test", path)
    assert "never deciding:" in covered.output
    assert re.search(r"^  policy\.csv:\d+ +p, role:viewer, GET, /api/books,", covered.output, re.M)
    assert "coverage:" not in invoke("policy", "test", "--no-coverage", path).output


def test_junit_xml_has_one_suite_per_file_and_the_failure(tmp_path: Path) -> None:
    cases_file(tmp_path, PASSING + FAILING)
    (tmp_path / "more").mkdir()
    shutil.move(tmp_path / "my_cases.yaml", tmp_path / "more" / "b_cases.yaml")
    cases_file(tmp_path, PASSING)
    report = tmp_path / "report.xml"
    result = invoke("policy", "test", "--junit-xml", report, tmp_path)
    assert result.exit_code == 1
    root = ElementTree.parse(report).getroot()  # noqa: S314 - our own output
    assert (root.tag, root.get("tests"), root.get("failures")) == ("testsuites", "3", "1")
    first, second = root.findall("testsuite")
    assert first.get("name", "").endswith("more/b_cases.yaml")
    assert (first.get("tests"), first.get("failures")) == ("2", "1")
    assert second.get("failures") == "0"
    failure = first.find("testcase[@name='viewer reads drafts']/failure")
    assert failure is not None
    assert "expected allow, got 403" in failure.get("message", "")
    assert first.find("testcase[@name='anonymous reads a public page']/failure") is None


def test_a_bad_cases_file_exits_2_naming_file_and_case(tmp_path: Path) -> None:
    path = cases_file(tmp_path, PASSING.replace("expect: allow", "expect: alow"))
    result = invoke("policy", "test", path)
    assert result.exit_code == 2
    assert f"{path}: case 'anonymous reads a public page' (cases[0]): expect:" in result.output


def explain_demo(*args: str) -> Result:
    return invoke("explain", "--policies", POLICIES, *args)


def test_explain_an_allowed_request_names_the_rule_and_principals() -> None:
    result = explain_demo("GET", "/api/books?page=2", "--sub", "erin", "--role", "editor")
    assert result.exit_code == 0, result.output
    assert "decision:   allow (200 allowed)" in result.output
    assert re.search(
        r"^rule: +policy\.csv:\d+  p, role:viewer, GET, /api/books,", result.output, re.M
    )
    # editor inherits viewer through a g rule
    assert "principals: authenticated, everyone, role:editor, role:viewer, user:erin" in (
        result.output
    )
    assert "request:    GET /api/books" in result.output
    assert "query:      page=2" in result.output


def test_explain_a_denied_request_says_nothing_allowed_it() -> None:
    result = explain_demo("GET", "/api/books?include=drafts", "--sub", "alice", "--role", "viewer")
    assert result.exit_code == 0
    assert "decision:   deny (403 access_denied)" in result.output
    assert "rule:       none matched: default deny" in result.output


def test_explain_names_the_deny_rule_that_decided(tmp_path: Path) -> None:
    shutil.copy(POLICIES / "model.conf", tmp_path / "model.conf")
    (tmp_path / "policy.csv").write_text(
        "p, everyone, GET, /public/**, *, *, allow\np, everyone, GET, /public/secret, *, *, deny\n"
    )
    result = invoke("explain", "--policies", tmp_path, "GET", "/public/secret", "--json")
    assert result.exit_code == 0
    report = json.loads(result.output)
    assert (report["decision"], report["status"]) == ("deny", 401)
    assert report["rule"] == {
        "location": f"{tmp_path / 'policy.csv'}:2",
        "text": "p, everyone, GET, /public/secret, *, *, deny",
    }


def test_explain_at_a_given_time(tmp_path: Path) -> None:
    shutil.copy(POLICIES / "model.conf", tmp_path / "model.conf")
    (tmp_path / "policy.csv").write_text(
        "p, everyone, GET, /office, *, time in 08:00-18:00 tz UTC, allow\n"
    )
    args = ("explain", "--policies", tmp_path, "GET", "/office", "--time")
    assert "allow (200" in invoke(*args, "2026-03-02T09:30:00Z").output
    assert "deny (401" in invoke(*args, "2026-03-02T20:30:00+01:00").output
    naive = invoke(*args, "2026-03-02T09:30:00")
    assert naive.exit_code == 2
    assert "not an ISO 8601 time with an offset" in naive.output


def test_explain_json_is_one_object() -> None:
    result = explain_demo(
        "get", "/api/users/bob/profile", "--sub", "bob", "--claim", "tenant=acme", "--json"
    )
    report = json.loads(result.output)
    assert report["decision"] == "allow"
    assert report["status"] == 200
    assert report["reason"] == "allowed"
    assert re.fullmatch(r".*policy\.csv:\d+", report["rule"]["location"])
    assert report["principals"] == ["authenticated", "everyone", "user:bob"]
    assert report["identity"] == {"sub": "bob", "roles": []}
    assert report["request"]["method"] == "GET"
    assert report["request"]["path"] == "/api/users/bob/profile"


def test_explain_an_ambiguous_target_shows_the_400_and_why() -> None:
    result = explain_demo("GET", "/public/..%3b/admin", "--json")
    assert result.exit_code == 0
    report = json.loads(result.output)
    assert (report["status"], report["reason"]) == (400, "invalid_request")
    assert "%3B" in report["message"]
    assert report["request"] is None and report["principals"] is None
    text = explain_demo("GET", "/public/a;b").output
    assert "refused before the policy" in text


def test_explain_with_a_serve_config(tmp_path: Path) -> None:
    config = tmp_path / "serve.yaml"
    config.write_text(
        f"policy: {{model: {POLICIES / 'model.conf'}, policy: {POLICIES / 'policy.csv'}}}\n"
    )
    result = invoke("explain", "--config", config, "GET", "/healthz")
    assert result.exit_code == 0
    assert "decision:   allow (200 allowed)" in result.output


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["GET", "/x"], "exactly one of --config FILE or --policies DIR"),
        (["--policies", str(POLICIES), "GET", "/x", "--role", "admin"], "add --sub"),
        (["--policies", str(POLICIES), "GET", "/x", "--header", "novalue"], "is not NAME=VALUE"),
        (["--policies", str(POLICIES), "GET", "/x", "--source", "1.2.3"], "source:"),
    ],
)
def test_explain_usage_errors_exit_2(args: list[str], expected: str) -> None:
    result = invoke("explain", *args)
    assert result.exit_code == 2
    assert expected in result.output
