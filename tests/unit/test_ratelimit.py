"""ratelimit/: the bucket math, which rule applies, the local store's bounds, the failover, and
the 429 / allowed responses with their RateLimit headers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakes import FakeClock
from hypothesis import given, settings
from hypothesis import strategies as st

from ext_authz.errors import ConfigError, RateLimitedError, RateLimitUnavailableError
from ext_authz.models import ANONYMOUS, AuthRequest, Decision, Identity, Outcome, Quota
from ext_authz.pipeline import refusal
from ext_authz.ratelimit import FailoverStore, LocalStore, RateLimiter, compile_rules, select
from ext_authz.ratelimit.bucket import Taken, interval_us, take
from ext_authz.response import to_check_response
from ext_authz.settings import HeaderSettings, RateLimitRuleSettings, load_settings

US = 1_000_000
ALICE = Identity("alice", roles=("viewer",))
CI_KEY = Identity("ci-bot", method="api_key", issuer="api-key:ci-1")


def rule(name: str, per: str, rate: int = 2, burst: int = 3, **more: object):
    return RateLimitRuleSettings.model_validate_json(
        json.dumps({"name": name, "per": per, "rate": rate, "burst": burst, **more})
    )


def request(path: str = "/api/books", method: str = "GET", source: str = "192.0.2.1"):
    return AuthRequest(method=method, path=path, source_address=source)


# -- bucket math -------------------------------------------------------------------------------


def test_a_full_bucket_allows_the_burst_then_refuses_until_a_token_is_back() -> None:
    interval = interval_us(2, 1)  # 2 per second: one token every 0.5 s
    tat = None
    answers = []
    for _ in range(4):
        new_tat, taken = take(tat, 0, interval, 3)
        tat = new_tat if new_tat is not None else tat
        answers.append((taken.allowed, taken.remaining))
    assert answers == [(True, 2), (True, 1), (True, 0), (False, 0)]
    assert take(tat, 0, interval, 3)[1].retry_after_us == US // 2
    assert take(tat, US // 2 - 1, interval, 3)[1].allowed is False
    assert take(tat, US // 2, interval, 3)[1].allowed is True  # refilled on time


def test_the_interval_rounds_up_so_a_limit_is_never_looser() -> None:
    assert interval_us(3, 1) == 333_334
    assert interval_us(30, 60) == 2 * US


@settings(max_examples=300, deadline=None)
@given(
    rate=st.integers(1, 50),
    period=st.integers(1, 5),
    burst=st.integers(1, 20),
    gaps=st.lists(st.integers(0, 400_000), min_size=1, max_size=200),
)
def test_no_window_ever_lets_more_than_burst_plus_rate_times_its_length(
    rate: int, period: int, burst: int, gaps: list[int]
) -> None:
    interval = interval_us(rate, period)
    now, tat, allowed = 0, None, []
    for gap in gaps:
        now += gap
        new_tat, taken = take(tat, now, interval, burst)
        if new_tat is not None:
            tat = new_tat
            allowed.append(now)
        assert taken.allowed is (new_tat is not None)
    for i, start in enumerate(allowed):
        for j in range(i, len(allowed)):
            window = allowed[j] - start
            assert j - i + 1 <= burst + window * rate / (period * US)


@settings(max_examples=100, deadline=None)
@given(rate=st.integers(1, 50), burst=st.integers(1, 20), count=st.integers(1, 100))
def test_requests_spaced_one_interval_apart_always_pass(rate: int, burst: int, count: int) -> None:
    interval = interval_us(rate, 1)
    tat = None
    for index in range(count):
        tat, taken = take(tat, index * interval, interval, burst)
        assert taken.allowed


# -- which rule applies ------------------------------------------------------------------------

RULES = compile_rules(
    [
        rule("anonymous", "address", rate=5, burst=10),
        rule("users", "subject", rate=10, burst=20),
        rule("keys", "api_key", rate=50, burst=100),
        rule("writes", "subject", routes=["/api/books/**"], methods=["POST", "PUT"]),
        rule("login", "address", routes=["/login"]),
        rule("partner", "subject", subjects=["alice"], rate=100, burst=100),
        rule("office", "address", addresses=["10.0.0.0/8"], rate=100, burst=100),
        rule("ci", "api_key", api_keys=["ci-1"], rate=7, burst=7),
    ]
)


def applies(identity: Identity, req: AuthRequest) -> tuple[str, str] | None:
    found = select(RULES, identity, req)
    return None if found is None else (found[0].name, found[1])


def test_anonymous_callers_are_limited_by_address() -> None:
    assert applies(ANONYMOUS, request()) == ("anonymous", "limit:anonymous:192.0.2.1")
    assert applies(ANONYMOUS, request(method="POST")) == ("anonymous", "limit:anonymous:192.0.2.1")


def test_an_authenticated_caller_gets_a_bucket_per_subject() -> None:
    bob = Identity("bob")
    assert applies(bob, request()) == ("users", "limit:users:bob")


def test_a_rule_naming_the_caller_beats_everything_else() -> None:
    assert applies(ALICE, request(method="POST"))[0] == "partner"
    assert applies(ANONYMOUS, request(source="10.1.2.3"))[0] == "office"
    assert applies(CI_KEY, request(method="POST")) == ("ci", "limit:ci:ci-1")


def test_a_route_class_beats_a_rule_for_every_route() -> None:
    bob = Identity("bob")
    assert applies(bob, request("/api/books/7", "PUT")) == ("writes", "limit:writes:bob")
    assert applies(bob, request("/api/books/7", "GET"))[0] == "users"  # not a write
    assert applies(bob, request("/login", "POST"))[0] == "login"  # route class, per address


def test_an_api_key_bucket_beats_a_subject_bucket() -> None:
    other_key = Identity("robot", method="api_key", issuer="api-key:other")
    assert applies(other_key, request()) == ("keys", "limit:keys:other")


def test_a_request_no_rule_applies_to_is_not_limited() -> None:
    only_users = compile_rules([rule("users", "subject")])
    assert select(only_users, ANONYMOUS, request()) is None


CALLERS = [
    ANONYMOUS,
    Identity("bob"),
    ALICE,
    CI_KEY,
    Identity("robot", method="api_key", issuer="api-key:other"),
    Identity("robot", method="api_key", issuer="not-an-api-key"),
]


@settings(max_examples=300, deadline=None)
@given(
    caller=st.sampled_from(CALLERS),
    path=st.sampled_from(["/api/books", "/api/books/7", "/login", "/", "/api"]),
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
    source=st.sampled_from(["192.0.2.1", "10.1.2.3", "10.255.0.1", "2001:db8::1", "not-an-ip"]),
)
def test_the_rules_tried_for_a_kind_of_caller_pick_what_trying_every_rule_would(
    caller: Identity, path: str, method: str, source: str
) -> None:
    req = request(path, method, source)
    is_key = caller.method == "api_key" and caller.issuer.startswith("api-key:")
    api_key = caller.issuer.removeprefix("api-key:") if is_key else None
    keys = ((rule, rule.key(caller, req, api_key)) for rule in RULES.ordered)
    every_rule = next(((rule, key) for rule, key in keys if key is not None), None)
    assert select(RULES, caller, req) == every_rule


def test_a_rule_for_some_addresses_answers_each_address_for_itself() -> None:
    # Whether an address is in the rule's networks is remembered: never for another address.
    for _ in range(3):
        assert applies(ANONYMOUS, request(source="10.1.2.3"))[0] == "office"
        assert applies(ANONYMOUS, request(source="192.0.2.1"))[0] == "anonymous"
        assert applies(ANONYMOUS, request(source="not-an-ip"))[0] == "anonymous"
    office = next(rule for rule in RULES.ordered if rule.name == "office")
    for index in range(10_000):  # a flood of addresses: answers still right, memory bounded
        inside = index % 2 == 0
        source = f"{10 if inside else 11}.0.{index >> 8 & 255}.{index & 255}"
        assert (applies(ANONYMOUS, request(source=source))[0] == "office") is inside
        assert len(office.in_networks) <= 4096


def test_each_rule_and_bucket_state_has_its_own_quota() -> None:
    users, partner = (
        next(rule for rule in RULES.ordered if rule.name == name) for name in ("users", "partner")
    )
    assert users.quota(3, 1) == Quota("users", 20, 2, 3, 1)
    assert partner.quota(3, 1) == Quota("partner", 100, 1, 3, 1)
    assert users.quota(2, 1) == Quota("users", 20, 2, 2, 1)
    assert users.quota(3, 2) == Quota("users", 20, 2, 3, 2)
    assert users.quota(3, 1) is users.quota(3, 1)  # immutable: one object for the same state
    for remaining in range(5000):
        assert users.quota(remaining, 1).remaining == remaining
    assert len(users.quotas) <= 1024


# -- settings ----------------------------------------------------------------------------------

POLICY = "policy: {model: model.conf, policy: policy.csv}\n"


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        (
            "rate_limits: {rules: [{name: a, per: subject, rate: 1, burst: 1, routes: [api]}]}",
            "rate_limits.rules[0].routes: path pattern 'api' must start with '/'",
        ),
        (
            "rate_limits: {rules: [{name: a, per: user, rate: 1, burst: 1}]}",
            "rate_limits.rules[0].per:",
        ),
        (
            "rate_limits: {rules: [{name: a, per: subject, rate: 0, burst: 1}]}",
            "rate_limits.rules[0].rate:",
        ),
        (
            'rate_limits: {rules: [{name: a, per: subject, rate: "2", burst: 1}]}',
            "rate_limits.rules[0].rate:",
        ),
        (
            "rate_limits: {rules: [{name: Bad-Name, per: subject, rate: 1, burst: 1}]}",
            "rate_limits.rules[0].name:",
        ),
        (
            "rate_limits: {rules: [{name: a, per: address, rate: 1, burst: 1, "
            "addresses: [10.0.0.0/33]}]}",
            "rate_limits.rules[0].addresses: '10.0.0.0/33' is not an address or CIDR",
        ),
        (
            "rate_limits: {rules: [{name: a, per: subject, rate: 1, burst: 1, methods: [get]}]}",
            "rate_limits.rules[0].methods: 'get' is not an upper-case HTTP method",
        ),
        (
            "rate_limits: {rules: [{name: a, per: subject, rate: 1, burst: 1}, "
            "{name: a, per: address, rate: 1, burst: 1}]}",
            "rate_limits: rule name 'a' is used more than once",
        ),
        ("rate_limits: {backend: redis}", "rate_limits: backend: redis needs a redis section"),
        (
            "rate_limits: {backend: redis, redis: {url: 'redis://:secret@cache:6379'}}",
            "rate_limits.redis.url: the URL holds credentials",
        ),
        ("rate_limits: {on_backend_error: allow}", "rate_limits.on_backend_error:"),
        ("rate_limits: {limits: []}", "rate_limits.limits: unknown key"),
    ],
)
def test_bad_rate_limit_settings_name_the_key(tmp_path: Path, yaml_text: str, message: str) -> None:
    path = tmp_path / "ext-authz.yaml"
    path.write_text(POLICY + yaml_text + "\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert message in str(caught.value)
    assert "secret" not in str(caught.value)


def test_rate_limits_are_off_unless_configured(tmp_path: Path) -> None:
    path = tmp_path / "ext-authz.yaml"
    path.write_text(POLICY)
    limits = load_settings(path).rate_limits
    assert (limits.backend, limits.rules, limits.on_backend_error) == ("local", (), "fail_closed")


# -- the local store's bounds ------------------------------------------------------------------


def test_a_flood_of_distinct_keys_keeps_the_local_store_bounded() -> None:
    store = LocalStore(max_keys=100, clock=FakeClock(0.0))
    interval = interval_us(1, 60)
    for index in range(10_000):
        assert store.take(
            f"limit:anonymous:10.{index >> 16}.{index >> 8 & 255}.{index & 255}", interval, 1
        ).allowed
        assert len(store) <= 100


def test_an_evicted_key_starts_again_with_a_full_bucket_as_documented() -> None:
    store = LocalStore(max_keys=100, clock=FakeClock(0.0))
    interval = interval_us(1, 60)
    assert store.take("victim", interval, 1).allowed
    assert not store.take("victim", interval, 1).allowed
    for index in range(100):  # pushes the victim out (least recently used)
        store.take(f"other-{index}", interval, 1)
    assert store.take("victim", interval, 1).allowed  # a full bucket again
    assert not store.take("victim", interval, 1).allowed  # and only the burst


def test_a_refilled_bucket_is_forgotten() -> None:
    clock = FakeClock(0.0)
    store = LocalStore(max_keys=100, clock=clock)
    store.take("a", interval_us(2, 1), 3)
    clock.advance(2.0)
    store.take("b", interval_us(2, 1), 3)
    assert len(store) == 1


# -- the guard and the responses ---------------------------------------------------------------


def limiter(store=None, headers_on_allow: bool = True) -> RateLimiter:
    rules = compile_rules([rule("anonymous", "address", rate=2, burst=3)])
    return RateLimiter(rules, store or LocalStore(100, clock=FakeClock(0.0)), headers_on_allow)


def header_map(headers) -> dict[str, str]:
    return {option.header.key: option.header.value for option in headers}


def test_over_the_limit_is_a_429_with_retry_after_and_ratelimit_headers() -> None:
    guard = limiter()
    for _ in range(3):
        guard.check(ANONYMOUS, request())
    with pytest.raises(RateLimitedError) as caught:
        guard.check(ANONYMOUS, request())
    assert caught.value.code == "rate_limited"
    decision = refusal(caught.value, "d1", "r1")
    response = to_check_response(decision, request(), HeaderSettings())
    assert response.denied_response.status.code == 429
    headers = header_map(response.denied_response.headers)
    assert headers["retry-after"] == "1"
    assert headers["ratelimit-policy"] == '"anonymous";q=3;w=2'
    assert headers["ratelimit"] == '"anonymous";r=0;t=1'
    assert json.loads(response.denied_response.body)["reason"] == "rate_limited"


def test_allowed_responses_carry_the_remaining_quota_when_configured() -> None:
    quota = limiter().check(ANONYMOUS, request())
    assert quota is not None and (quota.remaining, quota.reset) == (2, 1)
    decision = Decision(Outcome.ALLOW, "allowed", "d1", quota=quota)
    response = to_check_response(decision, request(), HeaderSettings())
    headers = header_map(response.ok_response.response_headers_to_add)
    assert headers == {
        "ratelimit-policy": '"anonymous";q=3;w=2',
        "ratelimit": '"anonymous";r=2;t=1',
    }
    assert limiter(headers_on_allow=False).check(ANONYMOUS, request()) is None


# -- failover ----------------------------------------------------------------------------------


class DeadStore:
    """A primary that always fails, counting how often it was asked."""

    def __init__(self) -> None:
        self.calls = 0

    def _fail(self, *_: object) -> None:
        self.calls += 1
        raise RateLimitUnavailableError("the rate-limit store (Redis) failed: ConnectionError")

    take = block = blocked = blocks = _fail


def test_fail_closed_refuses_when_the_shared_store_is_down() -> None:
    failover = FailoverStore(DeadStore(), LocalStore(100), "fail_closed", 1.0)
    with pytest.raises(RateLimitUnavailableError):
        limiter(failover).check(ANONYMOUS, request())
    assert failover.errors == 1


def test_local_fallback_still_limits_with_this_replicas_own_buckets() -> None:
    failover = FailoverStore(DeadStore(), LocalStore(100), "local", 1.0)
    guard = limiter(failover)
    for _ in range(3):
        guard.check(ANONYMOUS, request())
    with pytest.raises(RateLimitedError):
        guard.check(ANONYMOUS, request())


def test_the_breaker_skips_a_dead_store_until_the_retry_interval_passes() -> None:
    clock = FakeClock(0.0)
    dead = DeadStore()
    failover = FailoverStore(dead, LocalStore(100, clock=clock), "local", 2.0, clock)
    for _ in range(50):
        failover.take("k", US, 100)
    assert dead.calls == 1 and not failover.available
    clock.advance(2.0)
    failover.take("k", US, 100)
    failover.take("k", US, 100)
    assert dead.calls == 2  # one probe, then skipped again


def test_blocks_are_held_locally_and_checked_locally_when_the_store_is_down() -> None:
    failover = FailoverStore(DeadStore(), LocalStore(100), "fail_closed", 1.0)
    failover.block("block:address:192.0.2.1", 60, "credential_stuffing")
    [remaining] = failover.blocked(["block:address:192.0.2.1"])
    assert remaining is not None and 59 < remaining <= 60
    assert [b.key for b in failover.blocks()] == ["block:address:192.0.2.1"]


def test_taken_rounds_retry_after_up_to_whole_seconds() -> None:
    assert Taken(False, 0, 1, 1).retry_after_s == 1
    assert Taken(False, 0, US + 1, 1).retry_after_s == 2
