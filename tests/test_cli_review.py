"""`ext-authz review` as CI calls it: exit status by --fail-on, suppressions with justifications,
and the table, JSON and SARIF 2.1.0 reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from ext_authz.cli.review import review

REPO_ROOT = Path(__file__).resolve().parent.parent
CORPUS = REPO_ROOT / "tests" / "review" / "envoy"
SHIPPED_ENVOY = REPO_ROOT / "envoy" / "envoy.yaml"
POLICIES = REPO_ROOT / "policies"
HEALTH_ROUTE = CORPUS / "ext_authz_disabled_route_headers_removed.yaml"  # one high finding
LEVELS = {"critical": "error", "high": "error", "medium": "warning", "low": "note", "info": "note"}


@click.group()
def cli() -> None:
    """The command as `ext-authz` mounts it."""


cli.add_command(review)


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, ["review", *(str(arg) for arg in args)])


def as_json(*args: str | Path) -> list[dict[str, Any]]:
    result = invoke(*args, "--format", "json")
    findings: list[dict[str, Any]] = json.loads(result.stdout)
    return findings


def suppressions_file(folder: Path, body: str) -> Path:
    path = folder / "suppressions.yaml"
    path.write_text(body, encoding="utf-8")
    return path


HEALTH_SUPPRESSION = """\
- rule: envoy.ext_authz.disabled
  location: "*ext_authz_disabled_route_headers_removed.yaml *.routes[0]*"
  justification: /healthz is served by the upstream's health handler, which reads nothing.
"""


# --- exit status -------------------------------------------------------------------------------


def test_shipped_configs_pass_the_default_gate() -> None:
    result = invoke("--envoy", SHIPPED_ENVOY, "--policies", POLICIES)
    assert result.exit_code == 0, result.output
    assert "0 at or above high" in result.stdout


def test_a_high_finding_fails_the_review_with_status_1() -> None:
    result = invoke("--envoy", HEALTH_ROUTE)
    assert result.exit_code == 1
    assert "envoy.ext_authz.disabled" in result.stdout
    assert "1 finding (1 high); 1 at or above high" in result.stdout


@pytest.mark.parametrize(
    ("envoy", "fail_on", "status"),
    [
        ("ext_authz_disabled_route_headers_removed.yaml", "critical", 0),
        ("ext_authz_fail_open.yaml", "critical", 1),
        ("ext_authz_timeout_unset.yaml", "low", 0),
        ("ext_authz_timeout_unset.yaml", "info", 1),
        ("http_no_redirect.yaml", "high", 0),
        ("http_no_redirect.yaml", "low", 1),
    ],
)
def test_fail_on_sets_the_threshold(envoy: str, fail_on: str, status: int) -> None:
    assert invoke("--envoy", CORPUS / envoy, "--fail-on", fail_on).exit_code == status


def test_a_misspelt_envoy_field_exits_2_naming_file_line_and_path(tmp_path: Path) -> None:
    text = (CORPUS / "good_minimal.yaml").read_text(encoding="utf-8")
    path = tmp_path / "envoy.yaml"
    path.write_text(text.replace("failure_mode_allow:", "failure_mode_alow:"), encoding="utf-8")
    line = 1 + text.splitlines().index(" " * 22 + "failure_mode_allow: false")
    result = invoke("--envoy", path)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert (
        f"ext-authz: error: {path}:{line}: static_resources.listeners[0].filter_chains[0]"
        ".filters[0].typed_config.http_filters[0].typed_config.failure_mode_alow:"
        " unknown field in ExtAuthz (did you mean failure_mode_allow?)\n"
    ) == result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "nothing to review"),
        (("--policies", POLICIES, "--model", POLICIES / "model.conf"), "either --policies"),
        (("--model", POLICIES / "model.conf"), "--model and --policy go together"),
        (("--envoy", REPO_ROOT / "absent.yaml"), "does not exist"),
        (("--envoy", SHIPPED_ENVOY, "--fail-on", "severe"), "'severe' is not one of"),
    ],
)
def test_usage_errors_exit_2(args: tuple[str | Path, ...], message: str) -> None:
    result = invoke(*args)
    assert result.exit_code == 2
    assert message in result.stderr


def test_an_invalid_service_config_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("listen: 127.0.0.1:9191\npolicy: {model: a.conf}\nlisen: x\n")
    result = invoke("--config", config)
    assert result.exit_code == 2
    assert f"ext-authz: error: {config}" in result.stderr


# --- inputs ------------------------------------------------------------------------------------


def service_config(folder: Path, extra: str = "") -> Path:
    path = folder / "config.yaml"
    path.write_text(
        f"policy: {{model: {POLICIES / 'model.conf'}, policy: {POLICIES / 'policy.csv'}}}\n{extra}",
        encoding="utf-8",
    )
    return path


def test_the_config_supplies_the_policy_files_unless_given(tmp_path: Path) -> None:
    findings = as_json("--config", service_config(tmp_path))
    policy_files = {f["location"]["file"] for f in findings if f["rule"].startswith("policy.")}
    assert policy_files and all(file.endswith("policy.csv") for file in policy_files)


def test_the_config_supplies_the_identity_header_names(tmp_path: Path) -> None:
    config = service_config(tmp_path, "headers: {subject: x-user}\n")
    findings = as_json("--config", config, "--envoy", HEALTH_ROUTE)
    (identity,) = [f for f in findings if f["rule"] == "envoy.ext_authz.identity_headers"]
    assert "x-user" in identity["why"]


def test_several_envoy_files_are_reviewed_together() -> None:
    findings = as_json(
        "--envoy", CORPUS / "ext_authz_fail_open.yaml", "--envoy", CORPUS / "tls_old_version.yaml"
    )
    assert sorted(f["rule"] for f in findings) == [
        "envoy.ext_authz.failure_mode_allow",
        "envoy.tls.min_version",
    ]


# --- suppressions ------------------------------------------------------------------------------


def test_a_suppressed_finding_does_not_fail_and_is_reported_as_suppressed(tmp_path: Path) -> None:
    accepted = suppressions_file(tmp_path, HEALTH_SUPPRESSION)
    result = invoke("--envoy", HEALTH_ROUTE, "--suppressions", accepted)
    assert result.exit_code == 0, result.output
    assert "suppressed:" in result.stdout
    assert "justification: /healthz is served" in result.stdout
    assert "0 findings, 1 suppressed; 0 at or above high" in result.stdout
    (finding,) = as_json("--envoy", HEALTH_ROUTE, "--suppressions", accepted)
    assert finding["suppressed"] is True
    assert finding["justification"].startswith("/healthz is served")


def test_a_suppression_only_covers_its_rule_and_location(tmp_path: Path) -> None:
    accepted = suppressions_file(tmp_path, HEALTH_SUPPRESSION)
    # Same rule, other file: the location glob does not match.
    result = invoke(
        "--envoy", CORPUS / "ext_authz_disabled_virtual_host.yaml", "--suppressions", accepted
    )
    assert result.exit_code == 1
    assert "matched no finding" in result.stderr


def test_a_suppression_without_location_covers_the_rule_everywhere(tmp_path: Path) -> None:
    accepted = suppressions_file(
        tmp_path, "- rule: envoy.ext_authz.disabled\n  justification: accepted everywhere\n"
    )
    result = invoke(
        "--envoy",
        HEALTH_ROUTE,
        "--envoy",
        CORPUS / "ext_authz_disabled_virtual_host.yaml",
        "--suppressions",
        accepted,
    )
    assert result.exit_code == 0
    assert "2 suppressed" in result.stdout


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "- rule: envoy.ext_authz.disabled\n  location: '*'\n",
            "suppressions.yaml:1: entry 1 (rule envoy.ext_authz.disabled): justification is"
            " required",
        ),
        (
            "- {rule: a, justification: ok}\n- rule: envoy.tls.missing\n  justification: '  '\n",
            "suppressions.yaml:2: entry 2 (rule envoy.tls.missing): justification is required",
        ),
        ("- {justification: why}\n", "entry 1: rule is required"),
        ("- {rule: a, justification: b, until: 2027}\n", "entry 1: unknown key 'until'"),
        ("rule: a\n", "expected a list of suppressions"),
    ],
)
def test_invalid_suppressions_exit_2_naming_the_entry(
    tmp_path: Path, body: str, message: str
) -> None:
    result = invoke("--envoy", SHIPPED_ENVOY, "--suppressions", suppressions_file(tmp_path, body))
    assert result.exit_code == 2
    assert message in result.stderr


def test_an_empty_suppressions_file_suppresses_nothing(tmp_path: Path) -> None:
    result = invoke("--envoy", HEALTH_ROUTE, "--suppressions", suppressions_file(tmp_path, ""))
    assert result.exit_code == 1


# --- reports -----------------------------------------------------------------------------------


def test_the_table_lists_severity_rule_location_title_and_fix_most_severe_first() -> None:
    result = invoke("--envoy", CORPUS / "ext_authz_disabled_route.yaml")
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["SEVERITY", "RULE", "LOCATION"]
    assert lines[1].split()[:2] == ["high", "envoy.ext_authz.disabled"]
    assert "ext_authz_disabled_route.yaml:51 static_resources.listeners[0]" in lines[1]
    assert lines[2].strip() == "ext_authz disabled for requests that reach an upstream"
    assert "fix: Let the policy decide" in result.stdout
    low = next(i for i, line in enumerate(lines) if line.startswith("low"))
    assert low > 1
    assert lines[-1] == "2 findings (1 high, 1 low); 1 at or above high"


def test_json_is_a_list_of_findings() -> None:
    (finding,) = as_json("--envoy", CORPUS / "ext_authz_fail_open.yaml")
    assert finding == {
        "rule": "envoy.ext_authz.failure_mode_allow",
        "severity": "critical",
        "title": "ext_authz fails open",
        "location": {
            "file": str(CORPUS / "ext_authz_fail_open.yaml"),
            "path": "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
            ".http_filters[0].typed_config.failure_mode_allow",
            "line": 54,
        },
        "why": finding["why"],
        "fix": finding["fix"],
        "suppressed": False,
    }
    assert "failure_mode_allow is true" in finding["why"]


def test_output_goes_to_a_file_with_a_summary_on_stdout(tmp_path: Path) -> None:
    report = tmp_path / "review.json"
    result = invoke("--envoy", HEALTH_ROUTE, "--format", "json", "--output", report)
    assert result.exit_code == 1
    assert result.stdout == f"{report}: 1 finding (1 high); 1 at or above high\n"
    assert [f["rule"] for f in json.loads(report.read_text())] == ["envoy.ext_authz.disabled"]


def check_sarif(document: dict[str, Any]) -> None:
    """The SARIF 2.1.0 structure code-scanning tools read (no schema ships with the venv)."""
    assert document["version"] == "2.1.0"
    assert document["$schema"].endswith("sarif-schema-2.1.0.json")
    (run,) = document["runs"]
    driver = run["tool"]["driver"]
    assert driver["name"] and driver["version"]
    rules = driver["rules"]
    assert len({rule["id"] for rule in rules}) == len(rules)
    for rule in rules:
        assert rule["shortDescription"]["text"] and rule["help"]["text"]
        assert rule["defaultConfiguration"]["level"] in {"error", "warning", "note"}
    for result in run["results"]:
        assert rules[result["ruleIndex"]]["id"] == result["ruleId"]
        assert result["level"] in {"error", "warning", "note"}
        assert result["message"]["text"]
        (location,) = result["locations"]
        physical = location["physicalLocation"]
        assert physical["artifactLocation"]["uri"]
        if "region" in physical:
            assert isinstance(physical["region"]["startLine"], int)
            assert physical["region"]["startLine"] >= 1
        for logical in location.get("logicalLocations", []):
            assert logical["fullyQualifiedName"]
        for suppression in result["suppressions"]:
            assert suppression["kind"] in {"inSource", "external"}
            assert suppression["justification"]


def sarif(*args: str | Path) -> dict[str, Any]:
    result = invoke(*args, "--format", "sarif")
    document: dict[str, Any] = json.loads(result.stdout)
    check_sarif(document)
    return document


def test_sarif_results_map_severity_to_level_and_locate_file_line_and_path() -> None:
    document = sarif("--envoy", CORPUS / "ext_authz_disabled_route.yaml", "--fail-on", "info")
    (run,) = document["runs"]
    by_rule = {result["ruleId"]: result for result in run["results"]}
    assert {rule: result["level"] for rule, result in by_rule.items()} == {
        "envoy.ext_authz.disabled": "error",
        "envoy.ext_authz.identity_headers": "note",
    }
    (location,) = by_rule["envoy.ext_authz.identity_headers"]["locations"]
    assert location["physicalLocation"] == {
        "artifactLocation": {"uri": (CORPUS / "ext_authz_disabled_route.yaml").as_uri()},
        "region": {"startLine": 47},
    }
    assert location["logicalLocations"] == [
        {
            "fullyQualifiedName": "static_resources.listeners[0].filter_chains[0].filters[0]"
            ".typed_config.route_config.virtual_hosts[0].routes[0]"
        }
    ]
    assert all(result["suppressions"] == [] for result in run["results"])


def test_sarif_levels_cover_every_severity() -> None:
    files = [
        "ext_authz_fail_open.yaml",  # critical
        "tls_missing.yaml",  # high
        "tls_old_version.yaml",  # medium
        "http_no_redirect.yaml",  # low
        "ext_authz_timeout_unset.yaml",  # info
    ]
    args: list[str | Path] = []
    for name in files:
        args += ["--envoy", CORPUS / name]
    (run,) = sarif(*args)["runs"]
    rules = run["tool"]["driver"]["rules"]
    levels = {rule["id"]: rule["defaultConfiguration"]["level"] for rule in rules}
    assert levels == {
        "envoy.ext_authz.failure_mode_allow": LEVELS["critical"],
        "envoy.tls.missing": LEVELS["high"],
        "envoy.tls.min_version": LEVELS["medium"],
        "envoy.http.https_redirect": LEVELS["low"],
        "envoy.ext_authz.timeout_unset": LEVELS["info"],
    }
    assert [result["ruleIndex"] for result in run["results"]] == list(range(5))


def test_sarif_marks_suppressed_results_with_the_justification(tmp_path: Path) -> None:
    accepted = suppressions_file(tmp_path, HEALTH_SUPPRESSION)
    (run,) = sarif("--envoy", HEALTH_ROUTE, "--suppressions", accepted)["runs"]
    (result,) = run["results"]
    (suppression,) = result["suppressions"]
    assert suppression["kind"] == "external"
    assert suppression["justification"].startswith("/healthz is served")


def test_sarif_uris_of_relative_paths_stay_relative(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO_ROOT)
    (run,) = sarif("--envoy", "tests/review/envoy/ext_authz_fail_open.json")["runs"]
    (result,) = run["results"]
    (location,) = result["locations"]
    # JSON input: no line, so no region.
    assert location["physicalLocation"] == {
        "artifactLocation": {"uri": "tests/review/envoy/ext_authz_fail_open.json"}
    }
