"""policy/testing.py: cases run through the serve pipeline, coverage, and cases-file errors."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from ext_authz.errors import ConfigError, PolicyLoadError
from ext_authz.policy.testing import (
    CaseResult,
    PolicyCase,
    PolicyRunner,
    check_request_of,
    find_case_files,
    load_cases,
    run_suites,
    short_location,
    unexercised_rules,
)
from ext_authz.request import to_auth_request
from ext_authz.settings import PolicySettings

SHIPPED_MODEL = Path(__file__).resolve().parents[2] / "policies" / "model.conf"

# Rules over the shipped model; the condition column is always "*" (no condition).
RULES = [
    "p, everyone, GET, /public/**, *, *, allow",  # line 1
    "p, role:viewer, GET, /api/books, *, *, allow",  # line 2
    "p, role:viewer, GET, /api/books/{id}, *, *, allow",  # line 3
    "p, role:viewer, GET, /api/books/secret, *, *, deny",  # line 4
    "g, role:editor, role:viewer",  # line 5
]


def write_policy(folder: Path, rules: list[str] = RULES) -> PolicySettings:
    shutil.copy(SHIPPED_MODEL, folder / "model.conf")
    (folder / "policy.csv").write_text("\n".join(rules) + "\n", encoding="utf-8")
    return PolicySettings(model=folder / "model.conf", policy=folder / "policy.csv")


def write_cases(folder: Path, cases: list[dict[str, Any]], name: str = "cases.yaml") -> Path:
    document = {"policy": {"model": "model.conf", "policy": "policy.csv"}, "cases": cases}
    path = folder / name
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def case(
    method: str,
    path: str,
    expect: str | int,
    identity: dict[str, Any] | None = None,
    **request: Any,
) -> dict[str, Any]:
    document: dict[str, Any] = {
        "name": f"{method} {path} {identity and identity['sub']} {expect}",
        "request": {"method": method, "path": path, **request},
        "expect": expect,
    }
    if identity is not None:
        document["identity"] = identity
    return document


VIEWER = {"sub": "alice", "roles": ["viewer"], "claims": {"tenant": "acme"}}


def run(folder: Path, *cases: dict[str, Any]) -> list[CaseResult]:
    write_policy(folder)
    (suite,) = run_suites([load_cases(write_cases(folder, list(cases)))])
    return list(suite.results)


def test_allow_deny_and_status_expectations_are_met_or_reported(tmp_path: Path) -> None:
    results = run(
        tmp_path,
        case("GET", "/public/hello", "allow"),
        case("GET", "/api/books", "deny"),  # 401: anonymous
        case("POST", "/api/books", "deny", VIEWER),  # 403: no rule
        case("GET", "/api/books", 200, VIEWER),
        case("POST", "/api/books", "allow", VIEWER),  # fails: 403
        case("GET", "/api/books", 403),  # fails: anonymous gets 401
    )
    assert [(r.status, r.passed) for r in results] == [
        (200, True),
        (401, True),
        (403, True),
        (200, True),
        (403, False),
        (401, False),
    ]


def test_the_deciding_rule_is_named_by_file_and_line(tmp_path: Path) -> None:
    allowed, denied, defaulted = run(
        tmp_path,
        case("GET", "/api/books/42", "allow", VIEWER),
        case("GET", "/api/books/secret", 403, VIEWER),  # the deny rule wins over line 3
        case("DELETE", "/api/books/42", 403, VIEWER),
    )
    assert short_location(allowed.decision.matched_rule or "") == "policy.csv:3"
    assert short_location(denied.decision.matched_rule or "") == "policy.csv:4"
    assert defaulted.decision.matched_rule is None


@pytest.mark.parametrize(
    "path", ["/public/a;jsessionid=1", "/public/..%3b/x", "/public/%2F", "/public//x", "relative"]
)
def test_a_path_serve_cannot_normalize_is_400_before_any_rule(tmp_path: Path, path: str) -> None:
    (result,) = run(tmp_path, case("GET", path, 400))
    assert result.passed
    assert result.request is None
    assert result.decision.reason_code == "invalid_request"
    assert result.decision.matched_rule is None


def test_an_identity_reaches_the_policy_and_its_absence_is_anonymous(tmp_path: Path) -> None:
    signed_in, anonymous = run(
        tmp_path,
        case("GET", "/api/books", "allow", VIEWER),
        case("GET", "/api/books", 401),
    )
    identity = signed_in.decision.identity
    assert (identity.subject, identity.roles, identity.authenticated) == (
        "alice",
        ("viewer",),
        True,
    )
    assert identity.claims["tenant"] == "acme"
    assert identity.claims["sub"] == "alice"  # like a verified token's claims
    assert anonymous.decision.identity.authenticated is False
    assert anonymous.decision.reason_code == "missing_credential"


def test_inherited_roles_apply(tmp_path: Path) -> None:
    (result,) = run(
        tmp_path, case("GET", "/api/books", "allow", {"sub": "erin", "roles": ["editor"]})
    )
    assert result.passed


def test_a_case_authorization_header_is_a_credential_like_any_other(tmp_path: Path) -> None:
    (result,) = run(
        tmp_path, case("GET", "/public/x", 401, headers={"Authorization": "Bearer made-up"})
    )
    assert result.passed
    assert result.decision.reason_code == "invalid_token"


def test_the_check_request_is_shaped_like_envoys(tmp_path: Path) -> None:
    write_policy(tmp_path)
    cases = load_cases(
        write_cases(
            tmp_path,
            [
                case(
                    "GET",
                    "/api/books?page=2",
                    "allow",
                    query={"include": "a b"},
                    headers={"X-Env": "prod"},
                    host="api.example.com",
                    source="10.1.2.3",
                )
            ],
        )
    ).cases
    check = check_request_of(cases[0].request, "case-1", "req-9")
    http = check.attributes.request.http
    assert http.path == http.headers[":path"] == "/api/books?page=2&include=a+b"
    assert http.headers[":authority"] == http.host == "api.example.com"
    assert http.headers[":method"] == "GET"
    assert http.headers[":scheme"] == "https"
    assert http.headers["authorization"] == "Bearer case-1"
    request = to_auth_request(check)
    assert request.query == (("page", "2"), ("include", "a b"))
    assert request.headers["x-env"] == "prod"
    assert (request.source_address, request.request_id) == ("10.1.2.3", "req-9")


def test_a_case_time_pins_the_clock_of_time_window_conditions(tmp_path: Path) -> None:
    # Monday 2 March 2026; the one place these tests read the shipped condition syntax.
    write_policy(tmp_path, ["p, everyone, GET, /office, *, time in 08:00-18:00 tz UTC, allow"])
    path = tmp_path / "cases.yaml"
    path.write_text(
        "policy: {model: model.conf, policy: policy.csv}\ncases:\n"
        "  - {name: open, request: {method: GET, path: /office, time: 2026-03-02T09:30:00Z},"
        " expect: allow}\n"
        "  - {name: closed, expect: 401,"
        " request: {method: GET, path: /office, time: '2026-03-02T20:00:00+01:00'}}\n"
    )
    (suite,) = run_suites([load_cases(path)])
    assert [result.passed for result in suite.results] == [True, True]
    check = check_request_of(suite.cases_file.cases[0].request, None, "r")
    assert check.attributes.request.time.ToSeconds() == 1772443800


def test_coverage_lists_the_p_rules_no_case_decided(tmp_path: Path) -> None:
    write_policy(tmp_path)
    first = write_cases(tmp_path, [case("GET", "/public/x", "allow")], "a_cases.yaml")
    second = write_cases(tmp_path, [case("GET", "/api/books", "allow", VIEWER)], "b_cases.yaml")
    suites = run_suites([load_cases(first), load_cases(second)])
    assert suites[0].runner is suites[1].runner  # one policy load for both files
    (unexercised,) = unexercised_rules(suites).values()
    assert [short_location(rule.location) for rule in unexercised] == [
        "policy.csv:3",
        "policy.csv:4",
    ]  # role links (line 5) are not rules that decide


def test_a_directory_holds_every_cases_file_beneath_it_sorted(tmp_path: Path) -> None:
    for name in ("b/cases.yaml", "a/x_cases.yaml", "a/other.yaml"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("")
    assert find_case_files(tmp_path) == [tmp_path / "a/x_cases.yaml", tmp_path / "b/cases.yaml"]
    assert find_case_files(tmp_path / "a/other.yaml") == [tmp_path / "a/other.yaml"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="empty: no "):
        find_case_files(tmp_path / "empty")


def test_a_config_file_supplies_the_policy(tmp_path: Path) -> None:
    write_policy(tmp_path)
    (tmp_path / "serve.yaml").write_text("policy: {model: model.conf, policy: policy.csv}\n")
    path = tmp_path / "cases.yaml"
    path.write_text(
        "config: serve.yaml\ncases:\n"
        "  - {name: c, request: {method: GET, path: /public/x}, expect: allow}\n"
    )
    assert load_cases(path).policy.policy == tmp_path / "policy.csv"


def test_a_bad_policy_file_is_a_policy_load_error_naming_file_and_line(tmp_path: Path) -> None:
    settings = write_policy(tmp_path, ["p, everyone, GET, /public/**, *, *, allow", "p, x, y"])
    with pytest.raises(PolicyLoadError, match="policy.csv:2"):
        PolicyRunner(settings)


GOOD = "  - name: good\n    request: {method: GET, path: /x}\n    expect: allow\n"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            GOOD + "  - name: twice\n    request: {method: GET, path: /x}\n"
            "    expect: allow\n    expect: deny\n",
            "case 'twice' (cases[1]): expect: duplicate key",
        ),
        (
            GOOD + "  - name: typo\n    request: {method: GET, path: /x, heders: {}}\n"
            "    expect: allow\n",
            "case 'typo' (cases[1]): request.heders: unknown key",
        ),
        (
            "  - name: lost\n    request: {method: GET, path: /x}\n",
            "case 'lost' (cases[0]): expect",
        ),
        ("  - request: {method: GET, path: /x}\n    expect: allow\n", "cases[0]: name"),
        (GOOD.replace("allow", "maybe"), "(cases[0]): expect: 'maybe' is not allow, deny"),
        (GOOD.replace("allow", "418"), "418 is not allow, deny or a status"),
        (GOOD.replace("GET", "get"), "request.method: 'get' is not an upper-case HTTP method"),
        (GOOD.replace("path: /x", "path: /x, source: 10.0.0"), "request.source"),
        (
            GOOD.replace("path: /x", "path: /x, headers: {':path': /y}"),
            "request.headers: ':path' is not a header name",
        ),
        (
            GOOD + "    identity: {sub: a}\n".replace("a}", "a, claims: {sub: b}}"),
            "identity.claims: claim 'sub' is set by",
        ),
        (
            GOOD.replace("path: /x", "path: /x, headers: {authorization: Bearer x}")
            + "    identity: {sub: a}\n",
            "case 'good' (cases[0]): give an identity or an authorization header",
        ),
        (GOOD + GOOD, "case 'good' (cases[1]): name already used by cases[0]"),
        ("  []\n", "cases: the list is empty"),
        (
            GOOD.replace("path: /x", "path: /x, time: 2026-03-02T09:30:00"),
            "request.time: Input should have timezone info",
        ),
        ("  - [unclosed\n", "not valid YAML"),
    ],
)
def test_a_bad_cases_file_names_the_file_and_the_case(
    tmp_path: Path, body: str, expected: str
) -> None:
    write_policy(tmp_path)
    path = tmp_path / "cases.yaml"
    path.write_text("policy: {model: model.conf, policy: policy.csv}\ncases:\n" + body)
    with pytest.raises(ConfigError) as error:
        load_cases(path)
    assert str(error.value).startswith(str(path))
    assert expected in str(error.value)


@pytest.mark.parametrize(
    ("top", "expected"),
    [
        (f"cases:\n{GOOD}", "set exactly one of policy"),
        (
            f"config: serve.yaml\npolicy: {{model: m, policy: p}}\ncases:\n{GOOD}",
            "set exactly one of policy",
        ),
        (f"polcy: {{}}\ncases:\n{GOOD}", "polcy: unknown key"),
        ("- a\n", "expected a mapping"),
    ],
)
def test_the_policy_source_is_exactly_one_and_known(
    tmp_path: Path, top: str, expected: str
) -> None:
    path = tmp_path / "cases.yaml"
    path.write_text(top)
    with pytest.raises(ConfigError, match=expected):
        load_cases(path)


def test_expectation_texts() -> None:
    request = {"method": "GET", "path": "/"}
    deny = PolicyCase.model_validate({"name": "n", "request": request, "expect": "deny"})
    assert deny.expected == "deny (401/403)"
    assert deny.accepts(401) and deny.accepts(403) and not deny.accepts(400)
