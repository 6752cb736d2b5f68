"""review/policy_rules.py: policy grants an expert reviewer would flag."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from ext_authz.errors import PolicyLoadError
from ext_authz.review.findings import Finding, Location, Severity
from ext_authz.review.policy_rules import review_policy

REPO_ROOT = Path(__file__).resolve().parents[2]
POLICIES = REPO_ROOT / "policies"
MODEL = POLICIES / "model.conf"
CORPUS = REPO_ROOT / "tests" / "review" / "policy"
EXPECT = re.compile(r"^# expect: (\S+) (\S+)$", re.MULTILINE)


def review(tmp_path: Path, rules: str, model: Path = MODEL) -> list[Finding]:
    policy = tmp_path / "policy.csv"
    policy.write_text(rules, encoding="utf-8")
    return review_policy(model, policy)


def rule_ids(findings: list[Finding]) -> list[tuple[str, Severity]]:
    return [(finding.rule, finding.severity) for finding in findings]


def lines(findings: list[Finding], rule: str) -> list[int | None]:
    return [finding.location.line for finding in findings if finding.rule == rule]


@pytest.mark.parametrize("policy", sorted(CORPUS.glob("*.csv")), ids=lambda path: path.stem)
def test_each_weak_policy_raises_exactly_its_planted_findings(policy: Path) -> None:
    model = policy.with_suffix(".conf")
    expected = Counter(
        (rule, Severity.parse(severity))
        for rule, severity in EXPECT.findall(policy.read_text(encoding="utf-8"))
    )
    findings = review_policy(model if model.exists() else MODEL, policy)
    assert Counter(rule_ids(findings)) == expected


@pytest.mark.parametrize("policy", ["policy.csv", "examples/saas/policy.csv"])
def test_the_shipped_policies_raise_nothing_above_low(policy: str) -> None:
    findings = review_policy(MODEL, POLICIES / policy)
    assert [finding for finding in findings if finding.severity > Severity.LOW] == []


def test_the_internal_admin_example_grants_its_admin_api_to_roles_not_named_admin() -> None:
    # Deliberate in that example (auditor reads, operator writes in working hours, both from the
    # corporate network only): the review cannot tell intent from a name, so a suppression must.
    policy = POLICIES / "examples" / "internal-admin" / "policy.csv"
    findings = [f for f in review_policy(MODEL, policy) if f.severity > Severity.LOW]
    assert [(f.rule, f.title) for f in findings] == [
        ("policy.admin_path", "admin path /admin/** reachable by role:auditor"),
        ("policy.admin_path", "admin path /admin/** reachable by role:operator"),
    ]


def test_a_finding_names_the_policy_file_and_line(tmp_path: Path) -> None:
    (finding,) = review(tmp_path, "# a comment\n\np, role:viewer, *, /api/books, *, *, allow\n")
    assert finding.location == Location(str(tmp_path / "policy.csv"), "", 3)


def test_a_deny_override_model_is_reported_at_its_effect_line(tmp_path: Path) -> None:
    model = tmp_path / "model.conf"
    model.write_text(
        MODEL.read_text(encoding="utf-8").replace(
            "e = some(where (p.eft == allow)) && !some(where (p.eft == deny))",
            "e = !some(where (p.eft == deny))",
        ),
        encoding="utf-8",
    )
    (finding,) = review(tmp_path, "", model)
    assert (finding.rule, finding.severity) == ("policy.no_default_deny", Severity.CRITICAL)
    assert finding.location.file == str(model)
    assert finding.location.line is not None
    assert model.read_text().splitlines()[finding.location.line - 1].startswith("e = !some")


@pytest.mark.parametrize(
    "rule",
    [
        "p, everyone, GET, /, *, *, allow",
        "p, everyone, GET|HEAD, /static/**, *, *, allow",
        "p, anonymous, HEAD, /healthz, *, *, allow",
        "p, everyone, GET, /.well-known/openid-configuration, *, *, allow",
        "p, everyone, POST, /api/**, *, *, deny",
    ],
)
def test_anonymous_reads_of_public_paths_and_anonymous_denials_are_fine(
    tmp_path: Path, rule: str
) -> None:
    assert review(tmp_path, rule + "\n") == []


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("p, everyone, GET|DELETE, /public/x, *, *, allow", Severity.HIGH),
        ("p, everyone, *, /static/**, *, *, allow", Severity.HIGH),
        ("p, anonymous, GET, /api/books, *, *, allow", Severity.HIGH),
        ("p, everyone, GET, /{page}, *, *, allow", Severity.HIGH),
        ("p, everyone, GET, /**, *, header.x-debug == 1, allow", Severity.HIGH),
    ],
)
def test_anonymous_writes_and_reads_beyond_public_paths_are_high(
    tmp_path: Path, rule: str, expected: Severity
) -> None:
    assert rule_ids(review(tmp_path, rule + "\n")) == [("policy.anonymous_access", expected)]


@pytest.mark.parametrize(
    ("principal", "expected"),
    [
        ("role:admin", Severity.LOW),
        ("role:tenant-admin", Severity.LOW),
        ("role:break-glass", Severity.LOW),
        ("role:root", Severity.LOW),
        ("role:editor", Severity.MEDIUM),
        ("role:rooted", Severity.MEDIUM),
        ("authenticated", Severity.MEDIUM),
        ("user:alice", Severity.MEDIUM),
    ],
)
def test_wildcard_grants_are_low_for_admin_roles_and_medium_otherwise(
    tmp_path: Path, principal: str, expected: Severity
) -> None:
    findings = review(tmp_path, f"p, {principal}, *, /**, *, *, allow\n")
    assert rule_ids(findings) == [
        ("policy.wildcard_method", expected),
        ("policy.wildcard_path", expected),
    ]


@pytest.mark.parametrize("path", ["/*", "/{tenant}/**", "/*/{id}"])
def test_a_path_made_only_of_wildcards_is_a_wildcard_path(tmp_path: Path, path: str) -> None:
    findings = review(tmp_path, f"p, role:viewer, GET, {path}, *, *, allow\n")
    assert rule_ids(findings) == [("policy.wildcard_path", Severity.MEDIUM)]


@pytest.mark.parametrize(
    ("broad", "narrow"),
    [
        ("role:viewer, GET, /api/**", "role:viewer, GET, /api"),
        ("role:viewer, GET, /api/**", "role:viewer, GET, /api/books/"),
        ("role:viewer, GET, /**", "role:viewer, GET, /"),
        ("role:viewer, GET, /api/{id}", "role:viewer, GET, /api/books"),
        ("role:viewer, GET, /api/*/**", "role:viewer, GET, /api/{id}/x/**"),
        ("role:viewer, GET|HEAD, /api/x", "role:viewer, HEAD, /api/x"),
        ("role:admin, *, /admin/**", "role:admin, POST|PUT, /admin/x"),
        ("everyone, GET, /public/**", "role:viewer, GET, /public/x"),
        ("authenticated, GET, /api/x", "role:viewer, GET, /api/x"),
        ("authenticated, GET, /api/x", "user:bob, GET, /api/x"),
    ],
)
def test_an_allow_rule_inside_a_broader_one_is_shadowed(
    tmp_path: Path, broad: str, narrow: str
) -> None:
    findings = review(tmp_path, f"p, {narrow}, *, *, allow\np, {broad}, *, *, allow\n")
    assert lines(findings, "policy.shadowed_rule") == [1]


@pytest.mark.parametrize(
    ("broad", "narrow"),
    [
        ("role:viewer, GET, /api/*, *, *", "role:viewer, GET, /api/, *, *"),
        ("role:viewer, GET, /api/books/**, *, *", "role:viewer, GET, /api/**, *, *"),
        ("role:viewer, GET, /api/{id}, *, *", "role:viewer, GET, /api/{id}/x, *, *"),
        ("role:viewer, GET, /api/x, *, *", "role:viewer, GET|POST, /api/x, *, *"),
        ("role:viewer, GET, /api/x, *, *", "role:viewer, *, /api/x, *, *"),
        ("role:viewer, GET, /api/x, draft, *", "role:viewer, GET, /api/x, *, *"),
        ("role:viewer, GET, /api/x, *, header.a == b", "role:viewer, GET, /api/x, *, *"),
        ("role:editor, GET, /api/x, *, *", "role:viewer, GET, /api/x, *, *"),
        ("anonymous, GET, /public/x, *, *", "role:viewer, GET, /public/x, *, *"),
        (
            "authenticated, GET, /u/{id}/**, *, subject == path.id",
            "authenticated, GET, /u/x/{id}, *, subject == path.id",
        ),
    ],
)
def test_an_allow_rule_that_allows_something_more_is_not_shadowed(
    tmp_path: Path, broad: str, narrow: str
) -> None:
    policy = f"p, {narrow}, allow\np, {broad}, allow\ng, role:editor, role:viewer\n"
    assert 1 not in lines(review(tmp_path, policy), "policy.shadowed_rule")


def test_narrower_query_and_condition_terms_are_shadowed_by_fewer_of_them(tmp_path: Path) -> None:
    findings = review(
        tmp_path,
        "p, role:viewer, GET, /api/x, !draft, header.a == b, allow\n"
        "p, role:viewer, GET, /api/x, !draft&page, header.a == b and host == x.test, allow\n",
    )
    assert lines(findings, "policy.shadowed_rule") == [2]


def test_of_two_equivalent_rules_only_the_later_is_shadowed(tmp_path: Path) -> None:
    rule = "p, role:viewer, GET|HEAD, /api/x, *, *, allow\n"
    findings = review(tmp_path, rule + rule.replace("GET|HEAD", "HEAD|GET"))
    assert lines(findings, "policy.shadowed_rule") == [2]


def test_a_deny_rule_shadows_nothing_and_is_never_shadowed(tmp_path: Path) -> None:
    findings = review(
        tmp_path,
        "p, role:viewer, GET, /api/**, *, *, deny\n"
        "p, role:viewer, GET, /api/x, *, *, deny\n"
        "p, role:viewer, GET, /api/y, *, *, allow\n",
    )
    assert findings == []


def test_authenticated_does_not_cover_a_role_anonymous_callers_inherit(tmp_path: Path) -> None:
    findings = review(
        tmp_path,
        "p, role:guest, GET, /public/x, *, *, allow\n"
        "p, authenticated, GET, /public/**, *, *, allow\n"
        "g, anonymous, role:guest\n",
    )
    assert findings == []


def test_an_admin_path_granted_to_an_admin_role_or_one_user_is_fine(tmp_path: Path) -> None:
    findings = review(
        tmp_path,
        "p, role:admin, GET, /admin/**, *, *, allow\n"
        "p, role:sysadmin, GET, /internal/stats, *, *, allow\n"
        "p, user:svc-backup, GET, /internal/export, *, *, allow\n"
        "g, role:superadmin, role:admin\n"
        "g, user:alice, role:admin\n",
    )
    assert findings == []


def test_oauth_scope_principals_are_known_and_judged_like_roles(tmp_path: Path) -> None:
    findings = review(
        tmp_path,
        "p, scope:books:read, GET, /api/books, *, *, allow\n"
        "p, scope:admin, GET, /admin/**, *, *, allow\n"
        "p, scope:reports:read, GET, /admin/reports, *, *, allow\n",
    )
    assert [(f.rule, f.location.line) for f in findings] == [("policy.admin_path", 3)]


@pytest.mark.parametrize("path", ["/admin", "/internal/jobs/{id}", "/actuator/**", "/debug/pprof"])
def test_an_admin_path_granted_to_every_signed_in_caller_is_high(tmp_path: Path, path: str) -> None:
    findings = review(tmp_path, f"p, authenticated, GET, {path}, *, *, allow\n")
    assert rule_ids(findings) == [("policy.admin_path", Severity.HIGH)]


def test_inheriting_an_admin_role_through_another_is_reported_at_the_first_link(
    tmp_path: Path,
) -> None:
    findings = review(
        tmp_path,
        "p, role:admin, GET, /admin/**, *, *, allow\n"
        "g, role:superadmin, role:admin\n"
        "g, role:helpdesk, role:superadmin\n",
    )
    assert rule_ids(findings) == [("policy.admin_path", Severity.HIGH)]
    assert findings[0].location.line == 3
    assert "role:helpdesk (inheriting role:superadmin)" in findings[0].title


def test_a_role_that_only_denies_does_not_grant_nothing(tmp_path: Path) -> None:
    findings = review(
        tmp_path,
        "p, role:suspended, *, /**, *, *, deny\n"
        "p, user:bob, GET, /api/x, *, *, allow\n"
        "g, user:bob, role:suspended\n",
    )
    assert findings == []


def test_a_role_inheriting_only_roles_that_grant_nothing_is_reported_once_per_role(
    tmp_path: Path,
) -> None:
    findings = review(
        tmp_path,
        "g, role:a, role:b\ng, role:c, role:b\ng, role:b, role:d\n",
    )
    assert [f.title for f in findings] == [
        "role:b is inherited but grants nothing",
        "role:d is inherited but grants nothing",
    ]


def test_an_unprefixed_name_reached_through_a_role_link_is_a_principal(tmp_path: Path) -> None:
    findings = review(tmp_path, "p, staff, GET, /api/x, *, *, allow\ng, role:employee, staff\n")
    assert findings == []


def test_a_role_link_from_a_name_no_caller_holds_is_reported(tmp_path: Path) -> None:
    findings = review(tmp_path, "p, role:viewer, GET, /api/x, *, *, allow\ng, alice, role:viewer\n")
    assert rule_ids(findings) == [("policy.unknown_principal", Severity.LOW)]
    assert findings[0].location.line == 2


def test_a_model_with_other_columns_gets_only_the_default_deny_check(tmp_path: Path) -> None:
    model = tmp_path / "model.conf"
    model.write_text(
        "[request_definition]\nr = sub, principals, method, path, query, ctx\n"
        "[policy_definition]\np = sub, obj, act\n"
        "[policy_effect]\ne = some(where (p.eft == allow))\n"
        "[matchers]\nm = r.sub == p.sub && r.path == p.obj && r.method == p.act\n",
        encoding="utf-8",
    )
    findings = review(tmp_path, "p, alice, /**, *\n", model)
    assert rule_ids(findings) == [("policy.not_reviewed", Severity.INFO)]


def test_a_policy_serve_refuses_raises_policy_load_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyLoadError, match=r"policy.csv:1"):
        review(tmp_path, "p, role:viewer, GET, api/x, *, *, allow\n")


def test_a_model_of_another_request_shape_raises_policy_load_error(tmp_path: Path) -> None:
    model = tmp_path / "model.conf"
    model.write_text(
        "[request_definition]\nr = sub, obj, act\n[policy_definition]\np = sub, obj, act\n"
        "[policy_effect]\ne = some(where (p.eft == allow))\n"
        "[matchers]\nm = r.sub == p.sub && r.obj == p.obj && r.act == p.act\n",
        encoding="utf-8",
    )
    with pytest.raises(PolicyLoadError, match="the model must take"):
        review(tmp_path, "p, alice, /x, GET\n", model)


def test_an_admin_path_of_a_non_admin_role_is_reported_at_its_rule_not_at_each_heir(
    tmp_path: Path,
) -> None:
    findings = review(
        tmp_path,
        "p, role:ops, GET, /internal/stats, *, *, allow\n"
        "g, role:admin, role:ops\n"
        "g, role:helpdesk, role:admin\n",
    )
    assert [(f.rule, f.location.line) for f in findings] == [("policy.admin_path", 1)]
