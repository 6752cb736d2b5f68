"""review/service_rules.py: token and credential settings an expert reviewer would flag."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from ext_authz.demo.envoy_config import DemoPorts
from ext_authz.demo.stack import prepare_state
from ext_authz.review.findings import Finding, Location, Severity
from ext_authz.review.service_rules import review_settings
from ext_authz.settings import load_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
CORPUS = REPO_ROOT / "tests" / "review" / "service"
EXPECT = re.compile(r"^# expect: (\S+) (\S+)$", re.MULTILINE)

POLICY = """\
policy:
  model: model.conf
  policy: policy.csv
"""
BASE = (
    POLICY
    + """\
security:
  block:
    enabled: true
"""
)
PROVIDER = """\
providers:
  - name: corp
    issuer: https://login.example.com
    audiences: [api]
    jwks_file: jwks.json
"""


def review(path: Path) -> list[Finding]:
    return review_settings(load_settings(path), path)


def review_text(tmp_path: Path, text: str) -> list[Finding]:
    path = tmp_path / "ext-authz.yaml"
    path.write_text(text, encoding="utf-8")
    return review(path)


def rules(findings: list[Finding]) -> list[tuple[str, Severity]]:
    return [(finding.rule, finding.severity) for finding in findings]


def above_low(findings: list[Finding]) -> list[Finding]:
    return [finding for finding in findings if finding.severity > Severity.LOW]


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.yaml")), ids=lambda path: path.stem)
def test_each_weak_settings_file_raises_exactly_its_planted_findings(path: Path) -> None:
    expected = Counter(
        (rule, Severity.parse(severity))
        for rule, severity in EXPECT.findall(path.read_text(encoding="utf-8"))
    )
    assert Counter(rules(review(path))) == expected


def test_the_demo_settings_raise_nothing_above_low(tmp_path: Path) -> None:
    prepare_state(tmp_path, DemoPorts())
    assert above_low(review(tmp_path / "config.yaml")) == []


def test_the_compose_settings_raise_only_the_admin_port_on_the_compose_network() -> None:
    # Inside a container the admin port must listen on all interfaces to be scraped; compose
    # publishes no port for it, which the review cannot see: a deliberate, suppressible finding.
    findings = above_low(review(REPO_ROOT / "deploy" / "compose" / "ext-authz.yaml"))
    assert rules(findings) == [("admin.public_listen", Severity.MEDIUM)]


def test_a_finding_names_the_settings_file_key_path_and_line(tmp_path: Path) -> None:
    text = BASE + PROVIDER + "credentials:\n  bearer:\n    query_parameter: access_token\n"
    (finding,) = review_text(tmp_path, text)
    assert finding.location == Location(
        str(tmp_path / "ext-authz.yaml"), "credentials.bearer.query_parameter", 14
    )


def test_a_finding_about_a_default_names_the_key_path_without_a_line(tmp_path: Path) -> None:
    (finding,) = review_text(tmp_path, POLICY)
    assert finding.rule == "security.block_disabled"
    assert (finding.location.path, finding.location.line) == ("security.block.enabled", None)


def test_a_settings_file_gone_since_loading_still_gets_key_paths(tmp_path: Path) -> None:
    path = tmp_path / "ext-authz.yaml"
    path.write_text(BASE + "admin:\n  listen: 0.0.0.0:9902\n", encoding="utf-8")
    settings = load_settings(path)
    path.unlink()
    (finding,) = review_settings(settings, path)
    assert (finding.location.path, finding.location.line) == ("admin.listen", None)


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("max_lifetime: 86400", []),
        ("max_lifetime: 86401", [("token.max_lifetime", Severity.MEDIUM)]),
        ("max_lifetime: 604800", [("token.max_lifetime", Severity.MEDIUM)]),
        ("max_lifetime: 604801", [("token.max_lifetime", Severity.HIGH)]),
        ("clock_skew: 60", []),
        ("clock_skew: 61", [("token.clock_skew", Severity.LOW)]),
        ("clock_skew: 120", [("token.clock_skew", Severity.LOW)]),
        ("clock_skew: 121", [("token.clock_skew", Severity.MEDIUM)]),
        ("algorithms: [ES256, RS256]", []),
        ("algorithms: [HS384]", [("token.hmac_only", Severity.MEDIUM)]),
    ],
)
def test_token_limits_are_graded_by_how_far_they_exceed_the_threshold(
    tmp_path: Path, setting: str, expected: list[tuple[str, Severity]]
) -> None:
    assert rules(review_text(tmp_path, BASE + PROVIDER + f"    {setting}\n")) == expected


@pytest.mark.parametrize("listen", ["127.0.0.1:9902", "127.0.0.2:9", "[::1]:9902", ":9902"])
def test_an_admin_port_on_loopback_is_fine(tmp_path: Path, listen: str) -> None:
    assert review_text(tmp_path, BASE + f"admin:\n  listen: '{listen}'\n") == []


@pytest.mark.parametrize(
    "listen", ["0.0.0.0:9902", "[::]:9902", "10.0.0.5:9902", "metrics.internal:9902"]
)
def test_an_admin_port_beyond_loopback_is_flagged(tmp_path: Path, listen: str) -> None:
    findings = review_text(tmp_path, BASE + f"admin:\n  listen: '{listen}'\n")
    assert rules(findings) == [("admin.public_listen", Severity.MEDIUM)]


def test_every_loopback_http_url_the_service_calls_is_flagged_low(tmp_path: Path) -> None:
    text = BASE + (
        "providers:\n"
        "  - {name: a, issuer: https://a.test, audiences: [api], jwks_url: http://127.0.0.1/k}\n"
        "  - {name: b, issuer: 'http://[::1]:8080/realm', audiences: [api], discovery: true}\n"
        "credentials:\n"
        "  introspection:\n"
        "    {url: http://localhost/introspect, client_id: x, client_secret_file: secret}\n"
    )
    text = text.replace("security:\n", "security:\n  webhook: {url: http://127.0.0.1/events}\n")
    findings = review_text(tmp_path, text)
    assert {finding.rule for finding in findings} == {"transport.plain_http"}
    assert [finding.location.path for finding in findings] == [
        "providers[0].jwks_url",
        "providers[1].issuer",
        "credentials.introspection.url",
        "security.webhook.url",
    ]


def test_a_raw_api_key_anywhere_in_the_keys_file_is_flagged_at_its_line(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text(
        "keys:\n"
        "  - id: ci\n"
        "    hash: sha256:" + "ab" * 32 + "\n"
        "    owner: ci\n"
        "# old key, revoked: eak_Yq3xTn0V2pPzRk8sLw1cD4fG6hJ9mN5bQ7tU0vXe\n",
        encoding="utf-8",
    )
    (finding,) = review_text(tmp_path, BASE + f"credentials:\n  api_keys:\n    file: {keys}\n")
    assert (finding.rule, finding.severity) == ("apikey.cleartext", Severity.HIGH)
    assert finding.location == Location(str(keys), "", 5)
    assert "eak_Yq3" not in finding.title + finding.why  # a report never repeats the key


def test_a_keys_file_that_mentions_the_prefix_in_prose_is_fine(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text("# keys start with eak_ and are never stored here\nkeys:\n", encoding="utf-8")
    assert review_text(tmp_path, BASE + f"credentials:\n  api_keys:\n    file: {keys}\n") == []


def test_an_unreadable_keys_file_is_reported_as_not_checked(tmp_path: Path) -> None:
    findings = review_text(tmp_path, BASE + "credentials:\n  api_keys:\n    file: missing.yaml\n")
    assert rules(findings) == [("apikey.not_checked", Severity.INFO)]
    assert findings[0].location.path == "credentials.api_keys.file"
