"""policy/: matcher functions, policy loading errors, deny-overrides, and the demo contract."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import yaml

from ext_authz.errors import InvalidRequestError, PolicyLoadError
from ext_authz.models import ANONYMOUS, AuthRequest, Identity
from ext_authz.policy import functions
from ext_authz.policy.conditions import RequestContext
from ext_authz.policy.engine import CasbinPolicyEngine, principals_of
from ext_authz.request import normalize_target

POLICIES = Path(__file__).resolve().parents[2] / "policies"
MODEL = POLICIES / "model.conf"
Query = tuple[tuple[str, str], ...]

# --- path patterns ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "path"),
    [
        ("/api/books", "/api/books"),
        ("/api/books/{id}", "/api/books/1"),
        ("/api/books/{id}", "/api/books/a b"),
        ("/api/users/{id}/profile", "/api/users/bob/profile"),
        ("/api/*/profile", "/api/x/profile"),
        ("/api/**", "/api"),
        ("/api/**", "/api/"),
        ("/api/**", "/api/books"),
        ("/api/**", "/api/books/1/chapters"),
        ("/**", "/"),
        ("/**", "/anything/at/all"),
        ("/", "/"),
    ],
)
def test_path_pattern_matches(pattern: str, path: str) -> None:
    assert functions.path_match(path, pattern)


@pytest.mark.parametrize(
    ("pattern", "path"),
    [
        ("/api/books", "/api/books/1"),
        ("/api/books", "/api/booksx"),
        ("/api/books", "/api/book"),
        ("/api/books", "/api/books/"),
        ("/api/books", "/x/api/books"),
        ("/api/books", "/API/books"),
        ("/api/books/{id}", "/api/books"),
        ("/api/books/{id}", "/api/books/"),
        ("/api/books/{id}", "/api/books/1/2"),
        ("/api/*/profile", "/api/profile"),
        ("/api/*/profile", "/api/a/b/profile"),
        ("/api/**", "/apix"),
        ("/api/**", "/apix/books"),
        ("/api/**", "/x/api/books"),
        ("/a.c", "/abc"),
        ("/a+", "/aa"),
    ],
)
def test_path_pattern_is_anchored_and_segment_based(pattern: str, path: str) -> None:
    assert not functions.path_match(path, pattern)


def test_path_parameter_is_captured() -> None:
    pattern = "/api/users/{id}/profile"

    assert functions.path_params("/api/users/bob/profile", pattern) == {"id": "bob"}
    assert functions.path_params("/api/users/bob", pattern) == {}


@pytest.mark.parametrize(
    "pattern",
    ["api/books", "", "/api/**/x", "/api/{id", "/api/{1id}", "/api/x{id}", "/api/b*", "/{a}/{a}"],
)
def test_bad_path_pattern_raises_value_error(pattern: str) -> None:
    with pytest.raises(ValueError, match="path pattern"):
        functions.compile_path_pattern(pattern)


# --- query conditions ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "condition", "expected"),
    [
        ((), "*", True),
        ((("include", "drafts"),), "*", True),
        ((), "include!=drafts", True),
        ((("include", "published"),), "include!=drafts", True),
        ((("include", "drafts"),), "include!=drafts", False),
        ((("include", "Drafts"),), "include!=drafts", False),
        ((("include", "DRAFTS"),), "include!=drafts", False),
        ((("include", "a,drafts"),), "include!=drafts", False),
        ((("include", "a, drafts "),), "include!=drafts", False),
        ((("include", "a"), ("include", "drafts")), "include!=drafts", False),
        ((("include", "drafts"), ("include", "a")), "include!=drafts", False),
        ((("other", "drafts"),), "include!=drafts", True),
        ((("include", "drafts"),), "include=drafts", True),
        ((("include", "a,Drafts"),), "include=drafts", True),
        ((), "include=drafts", False),
        ((("include", "x"),), "include=drafts", False),
        ((("include", ""),), "include", True),
        ((), "include", False),
        ((), "!include", True),
        ((("include", ""),), "!include", False),
        ((("a", "1"), ("b", "2")), "a=1&b=2", True),
        ((("a", "1"),), "a=1&b=2", False),
        ((("a", "1"),), "a=1&!b", True),
    ],
)
def test_query_condition(query: Query, condition: str, expected: bool) -> None:
    assert functions.query_match(query, condition) is expected


@pytest.mark.parametrize("condition", ["", "&", "a&", "=x", "!=x", "!", "a&&b", "!a=b"])
def test_bad_query_condition_raises_value_error(condition: str) -> None:
    with pytest.raises(ValueError, match="query condition"):
        functions.parse_query_condition(condition)


@pytest.mark.parametrize(
    ("method", "allowed", "expected"),
    [
        ("GET", "*", True),
        ("GET", "GET", True),
        ("PUT", "GET|PUT", True),
        ("POST", "GET|PUT", False),
        ("get", "GET", False),
        ("GET|PUT", "GET|PUT", False),
        ("", "GET", False),
    ],
)
def test_method_match_is_exact(method: str, allowed: str, expected: bool) -> None:
    assert functions.method_match(method, allowed) is expected


@pytest.mark.parametrize("allowed", ["get", "GET,PUT", "GET|", "", "GET PUT"])
def test_bad_method_raises_value_error(allowed: str) -> None:
    with pytest.raises(ValueError, match="method"):
        functions.validate_method(allowed)


def test_cond_match_reads_the_rule_s_path_parameters_and_the_context() -> None:
    pattern = "/api/users/{id}/profile"
    ctx = RequestContext()

    assert functions.cond_match("bob", "/api/users/bob/profile", ctx, pattern, "subject == path.id")
    assert not functions.cond_match(
        "bob", "/api/users/alice/profile", ctx, pattern, "subject == path.id"
    )
    assert not functions.cond_match("", "/api/users//profile", ctx, pattern, "subject == path.id")
    assert not functions.cond_match("bob", "/other", ctx, pattern, "subject == path.id")
    assert functions.cond_match("", "/api/users/alice/profile", ctx, pattern, "*")


# --- loading: every error names the file and line --------------------------------------------


def write_policy(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "policy.csv"
    path.write_text("# comment\n\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def engine_for(policy: Path, model: Path = MODEL) -> CasbinPolicyEngine:
    return CasbinPolicyEngine.from_files(model, policy)


GOOD = "p, everyone, GET, /x, *, *, allow"


@pytest.mark.parametrize(
    "bad",
    [
        "p, everyone, GET, /x, *, allow",
        "p, everyone, GET, /x, *, *, allow, extra",
        "p, everyone, GET, x, *, *, allow",
        "p, everyone, GET, /x/**/y, *, *, allow",
        "p, everyone, GET, /x/{id, *, *, allow",
        "p, everyone, GET, /x, a&&b, *, allow",
        "p, everyone, get, /x, *, *, allow",
        "p, everyone, GET, /x, *, *, permit",
        "p, everyone, GET, /x, *, *, ",
        "p, everyone, GET, /x/{id}, *, id, allow",
        "p, everyone, GET, /x/{id}, *, subject == path.uid, allow",
        "p, everyone, GET, /x, *, subject == path.id, allow",
        "p, everyone, GET, /x, *, tenant == acme, allow",
        "p, everyone, GET, /x, *, claim.tenant = acme, allow",
        "p, everyone, GET, /x, *, source in 10.0.0.1/8, allow",
        "p, everyone, GET, /x, *, time in 09:00-17:60, allow",
        "p, everyone, GET, /x, *, time in 09:00-17:00 tz Mars/Olympus, allow",
        "p, everyone, GET, /x, *, claim.groups in [a, b], allow",
        "p2, everyone, GET, /x, *, *, allow",
        "q, everyone, GET, /x, *, *, allow",
        "g, role:a",
        "g, role:a, role:b, role:c",
        'p, everyone, GET, "/x", *, *, allow',
    ],
)
def test_bad_policy_line_is_a_policy_load_error_naming_file_and_line(
    tmp_path: Path, bad: str
) -> None:
    policy = write_policy(tmp_path, GOOD, bad)

    with pytest.raises(PolicyLoadError) as caught:
        engine_for(policy)
    assert f"{policy}:4" in str(caught.value)


@pytest.mark.parametrize(
    ("condition", "problem"),
    [
        ("id", "cannot read 'id'"),
        ("subject == path.uid", "reads path.uid but '/x/{id}' has no {uid}"),
        ("tenant == acme", "unknown operand 'tenant'"),
        ("source in 10.0.0.1/8", "bad network '10.0.0.1/8'"),
        ("time in 18:00-18:00", "starts where it ends"),
        ("time in 09:00-17:00 tz Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
    ],
)
def test_bad_condition_error_names_file_line_and_problem(
    tmp_path: Path, condition: str, problem: str
) -> None:
    policy = write_policy(tmp_path, GOOD, f"p, everyone, GET, /x/{{id}}, *, {condition}, allow")

    with pytest.raises(PolicyLoadError, match=f"{policy}:4: .*{problem}"):
        engine_for(policy)


def test_policy_line_with_empty_type_is_a_policy_load_error(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, GOOD, ", everyone, GET, /x, *, *, allow")

    with pytest.raises(PolicyLoadError, match=f"{policy}:4"):
        engine_for(policy)


def test_missing_policy_file_is_a_policy_load_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "missing.csv"

    with pytest.raises(PolicyLoadError, match=str(missing)):
        engine_for(missing)


@pytest.mark.parametrize(
    "model_text",
    [
        None,
        "",
        "[request_definition]\nr = sub, obj\n",
        "this is not a casbin model\n",
    ],
    ids=["missing", "empty", "no-matchers", "garbage"],
)
def test_bad_model_is_a_policy_load_error_naming_the_model_file(tmp_path: Path, model_text) -> None:
    model = tmp_path / "model.conf"
    if model_text is not None:
        model.write_text(model_text, encoding="utf-8")

    with pytest.raises(PolicyLoadError) as caught:
        engine_for(write_policy(tmp_path, GOOD), model)
    assert str(model) in str(caught.value)


def test_deny_rule_wins_over_allow_rules(tmp_path: Path) -> None:
    policy = write_policy(
        tmp_path,
        "p, role:admin, *, /admin/**, *, *, allow",
        "p, everyone, *, /admin/**, *, *, allow",
        "p, user:mallory, *, /admin/**, *, *, deny",
    )
    engine = engine_for(policy)
    request = AuthRequest("GET", "/admin/users")

    denied = engine.decide(Identity("mallory", ("admin",)), request)
    assert not denied.allowed
    assert denied.matched_rule == f"{policy}:5"
    assert engine.decide(Identity("alice", ("admin",)), request).allowed


def test_deny_rule_applies_through_role_inheritance(tmp_path: Path) -> None:
    policy = write_policy(
        tmp_path,
        "p, authenticated, GET, /api/**, *, *, allow",
        "p, role:suspended, *, /**, *, *, deny",
        "g, role:intern, role:suspended",
    )
    engine = engine_for(policy)

    assert not engine.decide(Identity("x", ("intern",)), AuthRequest("GET", "/api/a")).allowed
    assert engine.decide(Identity("x", ("other",)), AuthRequest("GET", "/api/a")).allowed


def test_model_from_before_the_condition_column_is_refused_at_load(tmp_path: Path) -> None:
    model = tmp_path / "model.conf"
    model.write_text(
        MODEL.read_text(encoding="utf-8")
        .replace("query, ctx\n", "query\n")
        .replace("condMatch(r.sub, r.path, r.ctx, p.path, p.cond)", "pathMatch(r.path, p.path)"),
        encoding="utf-8",
    )

    with pytest.raises(PolicyLoadError) as caught:
        engine_for(write_policy(tmp_path, GOOD), model)
    assert f"{model}: the model must take r = sub, principals" in str(caught.value)


def test_empty_policy_denies_everything(tmp_path: Path) -> None:
    engine = engine_for(write_policy(tmp_path))

    assert not engine.decide(ANONYMOUS, AuthRequest("GET", "/")).allowed
    assert not engine.decide(Identity("root", ("admin",)), AuthRequest("GET", "/")).allowed


# --- principals --------------------------------------------------------------------------------


def test_principals_are_prefixed_so_a_token_cannot_claim_a_built_in_one() -> None:
    identity = Identity("everyone", ("anonymous", "authenticated", "user:bob"))

    assert principals_of(identity) == {
        "everyone",
        "authenticated",
        "user:everyone",
        "role:anonymous",
        "role:authenticated",
        "role:user:bob",
    }
    assert principals_of(ANONYMOUS) == {"everyone", "anonymous"}


def test_oauth_scopes_are_principals_of_their_own_kind(tmp_path: Path) -> None:
    identity = Identity("svc", ("admin",), scopes=("books:read", "admin"))

    assert principals_of(identity) == {
        "everyone",
        "authenticated",
        "user:svc",
        "role:admin",
        "scope:books:read",
        "scope:admin",
    }
    engine = engine_for(write_policy(tmp_path, "p, scope:books:read, GET, /api/books, *, *, allow"))
    assert engine.decide(identity, AuthRequest("GET", "/api/books")).allowed
    # A role of the same name as a scope grants nothing the scope does, and the other way round.
    as_role = Identity("svc", ("books:read",))
    assert not engine.decide(as_role, AuthRequest("GET", "/api/books")).allowed


# --- the demo contract (design.md "The demo contract"), row by row ---------------------------

ANON = ANONYMOUS
NOBODY = Identity("nobody")
VIEWER = Identity("vera", ("viewer",))
EDITOR = Identity("ed", ("editor",))
ADMIN = Identity("ada", ("admin",))
BOB = Identity("bob")
ALICE = Identity("alice")


def req(method: str, path: str, query: Query = ()) -> AuthRequest:
    return AuthRequest(method, path, query)


DRAFTS: Query = (("include", "drafts"),)

ALLOWED = [
    # anyone, no token
    (ANON, req("GET", "/public/")),
    (ANON, req("GET", "/public")),
    (ANON, req("GET", "/public/index.html")),
    (ANON, req("GET", "/public/a/b/c.css")),
    (ANON, req("GET", "/healthz")),
    (NOBODY, req("GET", "/public/x")),
    (VIEWER, req("GET", "/healthz")),
    # viewer
    (VIEWER, req("GET", "/api/books")),
    (VIEWER, req("GET", "/api/books/42")),
    (VIEWER, req("GET", "/api/books", (("include", "published"),))),
    (VIEWER, req("GET", "/api/books", (("page", "2"),))),
    # editor: viewer's, plus
    (EDITOR, req("GET", "/api/books")),
    (EDITOR, req("GET", "/api/books/42")),
    (EDITOR, req("POST", "/api/books")),
    (EDITOR, req("PUT", "/api/books/42")),
    (EDITOR, req("GET", "/api/books", DRAFTS)),
    (EDITOR, req("GET", "/api/books/42", DRAFTS)),
    # admin
    (ADMIN, req("GET", "/api")),
    (ADMIN, req("DELETE", "/api/books/42")),
    (ADMIN, req("PATCH", "/api/anything/at/all")),
    (ADMIN, req("GET", "/api/books", DRAFTS)),
    (ADMIN, req("POST", "/admin/users")),
    (ADMIN, req("GET", "/admin")),
    (ADMIN, req("GET", "/api/users/bob/profile")),
    (ADMIN, req("PUT", "/api/users/bob/profile")),
    # any signed-in user: their own profile
    (BOB, req("GET", "/api/users/bob/profile")),
    (BOB, req("PUT", "/api/users/bob/profile")),
    (ALICE, req("GET", "/api/users/alice/profile")),
    (Identity("bob", ("viewer",)), req("PUT", "/api/users/bob/profile")),
]

DENIED = [
    # default deny
    (ANON, req("GET", "/")),
    (ANON, req("GET", "/healthz/")),
    (ANON, req("GET", "/healthzx")),
    (ANON, req("POST", "/public/x")),
    (ANON, req("HEAD", "/public/x")),
    (ANON, req("GET", "/publicx")),
    (ANON, req("GET", "/api/books")),
    (ANON, req("GET", "/api/users/anonymous/profile")),
    (ANON, req("GET", "/admin")),
    (NOBODY, req("GET", "/api/books")),
    # viewer
    (VIEWER, req("GET", "/api/books", DRAFTS)),
    (VIEWER, req("GET", "/api/books", (("include", "Drafts"),))),
    (VIEWER, req("GET", "/api/books", (("include", "published,drafts"),))),
    (VIEWER, req("GET", "/api/books", (("include", "x"), ("include", "drafts")))),
    (VIEWER, req("GET", "/api/books/42", DRAFTS)),
    (VIEWER, req("POST", "/api/books")),
    (VIEWER, req("PUT", "/api/books/42")),
    (VIEWER, req("DELETE", "/api/books/42")),
    (VIEWER, req("HEAD", "/api/books")),
    (VIEWER, req("GET", "/api/books/42/chapters")),
    (VIEWER, req("GET", "/api/books/")),
    (VIEWER, req("GET", "/api/booksx")),
    (VIEWER, req("GET", "/admin")),
    (VIEWER, req("GET", "/api/users/bob/profile")),
    # editor
    (EDITOR, req("DELETE", "/api/books/42")),
    (EDITOR, req("POST", "/api/books/42")),
    (EDITOR, req("PUT", "/api/books")),
    (EDITOR, req("GET", "/admin/users")),
    (EDITOR, req("GET", "/api/other")),
    # admin: only under /api and /admin
    (ADMIN, req("GET", "/")),
    (ADMIN, req("GET", "/apix")),
    (ADMIN, req("GET", "/administrator")),
    (ADMIN, req("GET", "/internal/metrics")),
    # profiles: only one's own
    (BOB, req("GET", "/api/users/alice/profile")),
    (BOB, req("PUT", "/api/users/alice/profile")),
    (BOB, req("DELETE", "/api/users/bob/profile")),
    (BOB, req("POST", "/api/users/bob/profile")),
    (BOB, req("GET", "/api/users/bob")),
    (BOB, req("GET", "/api/users/bob/profile/extra")),
    (BOB, req("GET", "/api/users/Bob/profile")),
    (BOB, req("GET", "/api/books")),
    (Identity("bo"), req("GET", "/api/users/bob/profile")),
    # token roles and subjects cannot name built-in principals or other users
    (Identity("mallory", ("anonymous",)), req("GET", "/api/books")),
    (Identity("mallory", ("everyone", "authenticated")), req("GET", "/api/books")),
    (Identity("mallory", ("user:bob",)), req("GET", "/api/users/bob/profile")),
    (Identity("mallory", ("role:admin",)), req("GET", "/api/books")),
    (Identity("mallory", ("Admin", "ADMIN", "admin ")), req("GET", "/admin")),
    (Identity("role:admin"), req("GET", "/admin")),
    (Identity("anonymous"), req("GET", "/api/users/bob/profile")),
]


def label(case: tuple[Identity, AuthRequest]) -> str:
    identity, request = case
    who = "anon" if not identity.authenticated else f"{identity.subject}{list(identity.roles)}"
    query = "&".join(f"{k}={v}" for k, v in request.query)
    return f"{who} {request.method} {request.path}{'?' + query if query else ''}"


@pytest.mark.parametrize("case", ALLOWED, ids=[label(c) for c in ALLOWED])
def test_demo_policy_allows(demo_engine, case: tuple[Identity, AuthRequest]) -> None:
    identity, request = case

    assert demo_engine.decide(identity, request).allowed


@pytest.mark.parametrize("case", DENIED, ids=[label(c) for c in DENIED])
def test_demo_policy_denies(demo_engine, case: tuple[Identity, AuthRequest]) -> None:
    identity, request = case

    assert not demo_engine.decide(identity, request).allowed


def test_allowed_decision_names_the_policy_line_that_allowed_it(demo_engine) -> None:
    policy = POLICIES / "policy.csv"
    lines = policy.read_text(encoding="utf-8").splitlines()
    number = lines.index("p, role:viewer, GET, /api/books, include!=drafts, *, allow") + 1

    result = demo_engine.decide(VIEWER, req("GET", "/api/books"))

    assert result.allowed
    assert result.matched_rule == f"{policy}:{number}"


@pytest.mark.parametrize(
    "target", ["/api/books?x=1;include=drafts", "/api/books?include=x;include=drafts"]
)
def test_viewer_cannot_smuggle_include_drafts_behind_a_semicolon(demo_engine, target) -> None:
    try:
        path, query = normalize_target(target)
    except InvalidRequestError:
        return
    assert not demo_engine.decide(VIEWER, req("GET", path, query)).allowed


@pytest.mark.parametrize("name", ["Include", "INCLUDE"])
def test_viewer_cannot_ask_for_drafts_with_another_spelling_of_include(demo_engine, name) -> None:
    assert not demo_engine.decide(VIEWER, req("GET", "/api/books", ((name, "drafts"),))).allowed


# --- conditions through the engine -----------------------------------------------------------


class Clock:
    """An injected clock the test moves."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


MONDAY_NOON = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # 13:00 in Berlin


def tenant(name: str, *roles: str, sub: str = "alice", **claims: object) -> Identity:
    return Identity(sub, roles, claims=MappingProxyType({"tenant": name, **claims}))


def test_tenant_by_host_label_and_by_path(tmp_path: Path) -> None:
    engine = engine_for(
        write_policy(
            tmp_path,
            "p, role:member, GET, /api/**, *, claim.tenant == host.0, allow",
            "p, role:member, GET, /t/{tenant}/**, *, claim.tenant == path.tenant, allow",
            "p, everyone, *, /**, *, host.0 == initech, deny",
        )
    )
    acme = tenant("acme", "member")

    def decide(identity: Identity, path: str, host: str = "x.example.com") -> bool:
        return engine.decide(identity, AuthRequest("GET", path, host=host)).allowed

    assert decide(acme, "/api/projects", "acme.example.com")
    assert decide(acme, "/api/projects", "Acme.Example.com:8443")
    assert not decide(acme, "/api/projects", "globex.example.com")
    assert not decide(Identity("alice", ("member",)), "/api/projects", "acme.example.com")
    assert decide(acme, "/t/acme/projects")
    assert not decide(acme, "/t/globex/projects")
    assert not decide(tenant("initech", "member"), "/api/projects", "initech.example.com")


def test_owner_condition_never_matches_an_anonymous_caller(tmp_path: Path) -> None:
    engine = engine_for(
        write_policy(tmp_path, "p, everyone, GET, /u/{id}, *, subject == path.id, allow")
    )

    assert engine.decide(Identity("anonymous"), AuthRequest("GET", "/u/anonymous")).allowed
    assert not engine.decide(ANONYMOUS, AuthRequest("GET", "/u/anonymous")).allowed


def test_source_networks_and_a_deny_that_wins(tmp_path: Path) -> None:
    engine = engine_for(
        write_policy(
            tmp_path,
            "p, authenticated, GET, /admin/**, *, source in 10.0.0.0/8|fd00::/8, allow",
            "p, authenticated, GET, /admin/**, *, source in 10.99.0.0/16, deny",
        )
    )

    def decide(source: str) -> bool:
        request = AuthRequest("GET", "/admin/users", source_address=source)
        return engine.decide(Identity("ops"), request).allowed

    assert decide("10.1.2.3")
    assert decide("fd00::1")
    assert decide("::ffff:10.1.2.3")
    assert not decide("192.0.2.1")
    assert not decide("2001:db8::1")
    assert not decide("10.99.0.1")
    assert not decide("")


def test_required_header(tmp_path: Path) -> None:
    engine = engine_for(
        write_policy(tmp_path, "p, authenticated, POST, /deploy, *, header.x-env == prod, allow")
    )

    def decide(headers: dict[str, str]) -> bool:
        request = AuthRequest("POST", "/deploy", headers=MappingProxyType(headers))
        return engine.decide(Identity("ci"), request).allowed

    assert decide({"x-env": "prod"})
    assert not decide({"x-env": "dev"})
    assert not decide({"x-env": "prod,dev"})
    assert not decide({})


def test_time_window_decisions_follow_the_clock_not_a_cache(tmp_path: Path) -> None:
    clock = Clock(MONDAY_NOON)
    policy = write_policy(
        tmp_path,
        "p, role:ops, POST, /deploy, *, time in 09:00-17:00 on Mon-Fri tz Europe/Berlin, allow",
        "p, role:ops, POST, /batch, *, time in 22:00-06:00, allow",
    )
    engine = CasbinPolicyEngine.from_files(MODEL, policy, clock=clock)
    ops = Identity("olga", ("ops",))

    def decide(path: str) -> bool:
        return engine.decide(ops, AuthRequest("POST", path)).allowed

    assert decide("/deploy")
    assert not decide("/batch")
    clock.now = MONDAY_NOON.replace(hour=16)  # 17:00 in Berlin: the window has closed
    assert not decide("/deploy")
    clock.now = MONDAY_NOON.replace(hour=23)
    assert decide("/batch")
    clock.now = MONDAY_NOON + timedelta(hours=17)  # Tuesday 05:00 UTC, 06:00 in Berlin
    assert decide("/batch")
    assert not decide("/deploy")
    clock.now = MONDAY_NOON + timedelta(days=5)  # Saturday
    assert not decide("/deploy")
    clock.now = MONDAY_NOON + timedelta(days=4)  # Friday
    assert decide("/deploy")


def test_claims_and_headers_no_condition_reads_do_not_change_a_decision(tmp_path: Path) -> None:
    engine = engine_for(
        write_policy(tmp_path, "p, authenticated, GET, /x, *, claim.tenant == acme, allow")
    )
    request = AuthRequest("GET", "/x", headers=MappingProxyType({"x-trace": "1"}))
    other = AuthRequest("GET", "/x", headers=MappingProxyType({"x-trace": "2"}))

    assert engine.decide(tenant("acme", jti="1"), request).allowed
    assert engine.decide(tenant("acme", jti="2"), other).allowed
    assert not engine.decide(tenant("globex", jti="1"), request).allowed


def test_one_engine_decides_each_identity_by_its_own_roles_scopes_and_subject(
    tmp_path: Path,
) -> None:
    # One engine, so a decision cache keyed on too little would answer with another caller's.
    engine = engine_for(
        write_policy(
            tmp_path,
            "p, role:viewer, GET, /books, *, *, allow",
            "p, scope:books.read, GET, /books, *, *, allow",
            "p, user:carol, GET, /books, *, *, allow",
            "p, authenticated, GET, /me/{id}, *, subject == path.id, allow",
        )
    )
    books = AuthRequest("GET", "/books")
    assert engine.decide(Identity("bob", ("viewer",)), books).allowed
    assert not engine.decide(Identity("bob", ()), books).allowed
    assert engine.decide(Identity("bob", (), scopes=("books.read",)), books).allowed
    assert not engine.decide(Identity("bob", (), scopes=("books.write",)), books).allowed
    assert engine.decide(Identity("carol"), books).allowed
    assert not engine.decide(Identity("carol", authenticated=False), books).allowed
    assert engine.decide(Identity("bob"), AuthRequest("GET", "/me/bob")).allowed
    assert not engine.decide(Identity("eve"), AuthRequest("GET", "/me/bob")).allowed
    hits, misses = engine.decision_cache_stats()
    assert engine.decide(Identity("bob", ("viewer",)), books).allowed
    assert engine.decision_cache_stats() == (hits + 1, misses)


# --- the example policy sets and their cases (as `ext-authz policy test` would run them) ------

EXAMPLES = POLICIES / "examples"
# A refused anonymous caller is answered 401, a refused known one 403 (see pipeline.py).
EXPECTED = {"allow": (True, None), "deny": (False, None), 401: (False, False), 403: (False, True)}


def example_engine(cases_file: Path, clock: Clock) -> CasbinPolicyEngine:
    policy = yaml.safe_load(cases_file.read_text(encoding="utf-8"))["policy"]
    model, rules = cases_file.parent / policy["model"], cases_file.parent / policy["policy"]
    return CasbinPolicyEngine.from_files(model, rules, clock)


def example_cases() -> list[Any]:
    return [
        pytest.param(cases_file, case, id=f"{cases_file.parent.name}: {case['name']}")
        for cases_file in sorted(EXAMPLES.glob("*/cases.yaml"))
        for case in yaml.safe_load(cases_file.read_text(encoding="utf-8"))["cases"]
    ]


def case_identity(identity: dict[str, Any] | None) -> Identity:
    if identity is None:
        return ANONYMOUS
    roles = tuple(identity.get("roles", ()))
    claims = {"sub": identity["sub"], "roles": list(roles), **identity.get("claims", {})}
    return Identity(identity["sub"], roles, claims=MappingProxyType(claims))


def case_request(request: dict[str, Any]) -> AuthRequest:
    path, query = normalize_target(request["path"])
    headers = {name.lower(): value for name, value in request.get("headers", {}).items()}
    return AuthRequest(
        request["method"],
        path,
        query,
        headers=MappingProxyType(headers),
        host=request.get("host", "localhost"),
        source_address=request.get("source", "192.0.2.1"),
    )


def test_both_example_sets_ship_cases() -> None:
    assert {path.parent.name for path in EXAMPLES.glob("*/cases.yaml")} == {
        "saas",
        "internal-admin",
    }


def case_clock(request: dict[str, Any]) -> Clock:
    """The case's instant (it pins time windows), else now."""
    time = request.get("time")
    return Clock(datetime.fromisoformat(time) if time else datetime.now(UTC))


@pytest.mark.parametrize(("cases_file", "case"), example_cases())
def test_example_policy_case(cases_file: Path, case: dict[str, Any]) -> None:
    identity = case_identity(case.get("identity"))
    engine = example_engine(cases_file, case_clock(case["request"]))

    result = engine.decide(identity, case_request(case["request"]))

    want_allowed, want_authenticated = EXPECTED[case["expect"]]
    assert result.allowed is want_allowed
    if want_authenticated is not None:
        assert identity.authenticated is want_authenticated
