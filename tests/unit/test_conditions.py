"""policy/conditions.py: the ``cond`` column's grammar, its evaluation, and the request context."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from ext_authz.policy.conditions import ContextNeeds, RequestContext, combine, parse_condition

MONDAY = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday in winter (Europe/Berlin is UTC+1)
BERLIN = ZoneInfo("Europe/Berlin")


def at(day: int, hhmm: str, tz: ZoneInfo | None = None) -> datetime:
    """``day`` days after MONDAY (0 = Monday) at local ``hhmm`` in ``tz`` (UTC by default)."""
    hours, minutes = (int(part) for part in hhmm.split(":"))
    local = (MONDAY + timedelta(days=day)).replace(hour=hours, minute=minutes, tzinfo=tz or UTC)
    return local.astimezone(UTC)


def holds(
    text: str,
    *,
    subject: str = "alice",
    params: Mapping[str, str] | None = None,
    claims: Mapping[str, object] | None = None,
    headers: Mapping[str, str] | None = None,
    host: str = "",
    source: str = "",
    now: datetime = MONDAY,
) -> bool:
    condition = parse_condition(text)
    context = condition.needs.context(
        claims=claims or {}, headers=headers or {}, host=host, source=source, clock=lambda: now
    )
    return condition.holds(subject, params or {}, context)


# --- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "needs"),
    [
        ("*", ContextNeeds()),
        ("subject == path.id", ContextNeeds()),
        ("subject != path.id", ContextNeeds()),
        ("claim.tenant == host.0", ContextNeeds(claims=frozenset({"tenant"}), host=True)),
        ("claim.org.tenant == path.t", ContextNeeds(claims=frozenset({"org.tenant"}))),
        ("header.x-env == prod", ContextNeeds(headers=frozenset({"x-env"}))),
        ("host == api.example.com", ContextNeeds(host=True)),
        ("claim.groups in [ops|sre]", ContextNeeds(claims=frozenset({"groups"}))),
        ("claim.groups not in [x | y]", ContextNeeds(claims=frozenset({"groups"}))),
        ("claim.scope==read:*", ContextNeeds(claims=frozenset({"scope"}))),
        ("claim.email == a@b.example", ContextNeeds(claims=frozenset({"email"}))),
        ("source in 10.0.0.0/8", ContextNeeds(source=True)),
        ("source in 10.0.0.0/8|fd00::/8|192.0.2.7", ContextNeeds(source=True)),
        ("source not in 10.9.0.0/16", ContextNeeds(source=True)),
        ("time in 09:00-17:00", ContextNeeds(time=True)),
        ("time in 22:00-06:00 on Fri", ContextNeeds(time=True)),
        ("time in 09:00-24:00 on Mon-Fri|Sun tz Europe/Berlin", ContextNeeds(time=True)),
        ("time in 09:00-17:00 tz America/New_York on sat", ContextNeeds(time=True)),
        (
            "subject == path.id and header.x-a != b and source in ::1/128",
            ContextNeeds(headers=frozenset({"x-a"}), source=True),
        ),
    ],
)
def test_every_term_form_parses_and_says_what_it_reads(text: str, needs: ContextNeeds) -> None:
    assert parse_condition(text).needs == needs


def test_parsing_is_cached_and_collects_path_parameters() -> None:
    condition = parse_condition("subject == path.id and claim.t in [a] and path.org != x")

    assert parse_condition("subject == path.id and claim.t in [a] and path.org != x") is condition
    assert condition.path_params == {"id", "org"}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty condition"),
        ("  ", "empty condition"),
        ("* and subject == a", "'\\*' must stand alone"),
        ("owner", "cannot read 'owner'"),
        ("id", "cannot read"),
        ("subject = a", "cannot read"),
        ("subject === a", "cannot read"),
        ("subject == a b", "cannot read"),
        ("subject == a and", "cannot read"),
        ("subject == a AND claim.x == b", "cannot read"),
        ("subject == a, b", "cannot read"),
        ("subject == 'a'", "cannot read"),
        ("subject in []", "bad list item ''"),
        ("subject in [a||b]", "bad list item ''"),
        ("subject in [a b]", "bad list item 'a b'"),
        ("subject in [path.id]", "list items are literals"),
        ("subject in (a|b)", "cannot read"),
        # unknown or malformed operands
        ("tenant == host.0", "unknown operand 'tenant'"),
        ("claims.tenant == x", "unknown operand 'claims.tenant'"),
        ("acme == claim.tenant", "unknown operand 'acme'"),
        ("subject.x == a", "bad attribute 'subject.x'"),
        ("host.x == a", "bad attribute 'host.x'"),
        ("host. == a", "bad attribute"),
        ("path == a", "bad attribute 'path'"),
        ("path.1d == a", "bad attribute 'path.1d'"),
        ("claim == a", "bad attribute 'claim'"),
        ("claim.a..b == x", "bad attribute 'claim.a..b'"),
        ("claim.a. == x", "bad attribute"),
        ("header.X-Env == prod", "bad attribute 'header.X-Env'.*lower case"),
        ("claim.t == header", "bad attribute 'header'"),
        ("host == Acme.example.com", "host is compared in lower case"),
        ("host.0 in [acme|Globex]", "host is compared in lower case"),
        # source: networks only
        ("source == 10.0.0.1", "source is only tested as 'source \\[not\\] in <cidr>"),
        ("subject == source", "source is only tested as"),
        ("source in [10.0.0.1]", "source is only tested as"),
        ("source in 10.0.0.0/33", "bad network '10.0.0.0/33'"),
        ("source in 10.0.0.1/8", "bad network '10.0.0.1/8'.*host bits"),
        ("source in corp", "bad network 'corp'"),
        ("source in 10.0.0.0/8|", "bad network ''"),
        ("source in fd00::/129", "bad network"),
        # time windows
        ("time == 10:00", "cannot read"),
        ("subject == time", "time is only tested as"),
        ("time in", "cannot read"),
        ("time at 09:00-17:00", "cannot read"),
        ("time in 9:00-17:00", "bad time window '9:00-17:00'"),
        ("time in 09:00", "bad time window"),
        ("time in 24:00-01:00", "times run from 00:00 to 24:00"),
        ("time in 09:00-24:01", "times run from 00:00 to 24:00"),
        ("time in 09:60-17:00", "times run from"),
        ("time in 09:00-25:00", "times run from"),
        ("time in 09:00-09:00", "starts where it ends"),
        ("time in 00:00-00:00", "starts where it ends"),
        ("time in 09:00-17:00 on Mun", "unknown day 'Mun'"),
        ("time in 09:00-17:00 on Monday", "unknown day 'Monday'"),
        ("time in 09:00-17:00 on Mon-", "unknown day ''"),
        ("time in 09:00-17:00 on Mon||Tue", "unknown day ''"),
        ("time in 09:00-17:00 on", "cannot read"),
        ("time in 09:00-17:00 on Mon on Tue", "after the window"),
        ("time in 09:00-17:00 at Mon", "after the window"),
        ("time in 09:00-17:00 tz Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
        ("time in 09:00-17:00 tz europe/berlin", "unknown time zone"),
        ("time in 09:00-17:00 tz Europe", "unknown time zone 'Europe'"),
        ("time in 09:00-17:00 tz ../../etc/passwd", "unknown time zone"),
        ("time in 09:00-17:00 tz /etc/localtime", "unknown time zone"),
        ("time in 09:00-17:00 tz zone.tab", "unknown time zone"),
    ],
)
def test_bad_condition_is_a_value_error_naming_the_problem(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as caught:
        parse_condition(text)
    if text.strip():
        assert str(caught.value).startswith(f"condition {text!r}: ")


# --- comparisons -----------------------------------------------------------------------------


def test_owner_condition_compares_the_subject_with_the_path_parameter() -> None:
    assert holds("subject == path.id", subject="bob", params={"id": "bob"})
    assert not holds("subject == path.id", subject="bob", params={"id": "Bob"})
    assert not holds("subject == path.id", subject="bob", params={"id": "alice"})
    assert holds("subject != path.id", subject="bob", params={"id": "alice"})


@pytest.mark.parametrize(
    ("claims", "text", "expected"),
    [
        ({"tenant": "acme"}, "claim.tenant == acme", True),
        ({"tenant": "Acme"}, "claim.tenant == acme", False),  # exact
        ({"tenant": "acme"}, "claim.tenant != acme", False),
        ({"tenant": "globex"}, "claim.tenant != acme", True),
        ({"tenant": "acme"}, "claim.tenant in [globex|acme]", True),
        ({"tenant": "acme"}, "claim.tenant not in [globex|acme]", False),
        ({"tenant": "initech"}, "claim.tenant not in [globex|acme]", True),
        ({"level": 7}, "claim.level == 7", True),
        ({"level": 7}, "claim.level in [6|7]", True),
        ({"level": 7.0}, "claim.level == 7", True),  # canonical: 7.0 is 7
        ({"level": 2.5}, "claim.level == 2.5", True),
        ({"verified": True}, "claim.verified == true", True),
        ({"verified": False}, "claim.verified == true", False),
        ({"verified": False}, "claim.verified == false", True),
        ({"verified": True}, "claim.verified == True", False),  # not Python's spelling
        ({"verified": 1}, "claim.verified == true", False),
        # a list claim is the set of its elements: any element decides == and in
        ({"groups": ["dev", "ops"]}, "claim.groups == ops", True),
        ({"groups": ["dev", "ops"]}, "claim.groups in [sre|ops]", True),
        ({"groups": ["dev", "ops"]}, "claim.groups in [sre|qa]", False),
        ({"groups": ["dev", "ops"]}, "claim.groups != ops", False),
        ({"groups": ["dev", "ops"]}, "claim.groups not in [sre|qa]", True),
        ({"groups": ["dev", "ops"]}, "claim.groups not in [ops]", False),
        ({"groups": []}, "claim.groups in [ops]", False),
        ({"groups": []}, "claim.groups not in [ops]", True),  # present, and holds no ops
        ({"groups": ["ops", {"x": 1}]}, "claim.groups in [ops]", False),  # not a plain list
        # nested objects by dots; a key with dots in it is found as well
        ({"org": {"tenant": "acme"}}, "claim.org.tenant == acme", True),
        ({"org": {"tenant": "acme"}}, "claim.org == acme", False),
        ({"https://ex.com/tenant": "acme"}, "claim.https://ex.com/tenant == acme", True),
        ({"a.b": {"c": "x"}}, "claim.a.b.c == x", True),
        ({"tenant": "acme", "owner": "acme"}, "claim.tenant == claim.owner", True),
        ({"tenant": "acme", "owner": "x"}, "claim.tenant != claim.owner", True),
    ],
)
def test_claims_compare_as_strings(claims: dict[str, object], text: str, expected: bool) -> None:
    assert holds(text, claims=claims) is expected


@pytest.mark.parametrize(
    ("headers", "text", "expected"),
    [
        ({"x-env": "prod"}, "header.x-env == prod", True),
        ({"x-env": "Prod"}, "header.x-env == prod", False),
        ({"x-env": "prod,dev"}, "header.x-env == prod", False),  # duplicates arrive joined
        ({"x-env": "prod,dev"}, "header.x-env in [prod|dev]", False),
        ({"x-env": "dev"}, "header.x-env != prod", True),
        ({"x-env": ""}, "header.x-env != prod", True),  # sent empty: present
    ],
)
def test_headers_compare_exactly(headers: dict[str, str], text: str, expected: bool) -> None:
    assert holds(text, headers=headers) is expected


@pytest.mark.parametrize(
    ("host", "text", "expected"),
    [
        ("acme.example.com", "host == acme.example.com", True),
        ("ACME.Example.COM", "host == acme.example.com", True),
        ("acme.example.com:8443", "host == acme.example.com", True),
        ("acme.example.com.", "host == acme.example.com", True),
        ("acme.example.com", "host.0 == acme", True),
        ("acme.example.com:8443", "host.1 == example", True),
        ("acme.example.com", "host.2 == com", True),
        ("acme.example.com", "host.3 != x", False),  # no such label: absent
        ("[::1]:8443", "host == ::1", True),
        ("[::1]", "host == ::1", True),
        ("[::1]:8443", "host.0 != x", False),  # an IP address has no DNS labels
        ("10.1.2.3:80", "host == 10.1.2.3", True),
        ("10.1.2.3", "host.0 != x", False),
        ("a.example.com,b.example.com", "host != x", False),  # two Host headers: neither
        ("a.example.com,b.example.com", "host.0 != x", False),
    ],
)
def test_host_is_lower_case_without_port(host: str, text: str, expected: bool) -> None:
    assert holds(text, host=host) is expected


def test_tenant_by_host_label_or_by_path_parameter() -> None:
    claims = {"tenant": "acme"}

    assert holds("claim.tenant == host.0", claims=claims, host="acme.example.com")
    assert not holds("claim.tenant == host.0", claims=claims, host="globex.example.com")
    assert holds("claim.tenant == path.tenant", claims=claims, params={"tenant": "acme"})
    assert not holds("claim.tenant == path.tenant", claims=claims, params={"tenant": "globex"})


def test_every_term_must_hold() -> None:
    text = "claim.tenant == host.0 and header.x-env == prod"

    assert holds(text, claims={"tenant": "a"}, host="a.example.com", headers={"x-env": "prod"})
    assert not holds(text, claims={"tenant": "a"}, host="a.example.com", headers={"x-env": "dev"})
    assert not holds(text, claims={"tenant": "b"}, host="a.example.com", headers={"x-env": "prod"})


# --- what is absent never grants -------------------------------------------------------------

ABSENT_CASES = [
    # (condition, what the request lacks)
    ("subject == path.id", {"subject": ""}),
    ("subject != path.id", {"subject": ""}),
    ("subject in [anonymous|x]", {"subject": ""}),
    ("subject not in [x]", {"subject": ""}),
    ("subject == path.id", {"params": {}}),
    ("subject != path.id", {"params": {}}),
    ("claim.tenant == x", {}),
    ("claim.tenant != x", {}),
    ("claim.tenant in [x|y]", {}),
    ("claim.tenant not in [x|y]", {}),
    ("claim.org.tenant != x", {"claims": {"org": "flat"}}),
    ("claim.tenant != x", {"claims": {"tenant": None}}),
    ("claim.tenant != x", {"claims": {"tenant": {"id": "x"}}}),
    ("claim.tenant != x", {"claims": {"tenant": float("nan")}}),
    ("claim.tenant != claim.other", {"claims": {"tenant": "a"}}),
    ("claim.tenant == host.0", {"claims": {"tenant": "a"}}),
    ("header.x-env == prod", {}),
    ("header.x-env != prod", {}),
    ("header.x-env not in [prod]", {}),
    ("host != x", {}),
    ("host.0 not in [x]", {}),
    ("source in 0.0.0.0/0|::/0", {}),
    ("source not in 10.0.0.0/8", {}),
    ("source not in 10.0.0.0/8", {"source": "not-an-address"}),
    ("source in 0.0.0.0/0", {"source": "10.0.0.1:443"}),
]


@pytest.mark.parametrize(("text", "request_parts"), ABSENT_CASES)
def test_a_term_on_something_absent_never_holds(text: str, request_parts: dict) -> None:
    parts = {"subject": "alice", "params": {"id": "alice"}, **request_parts}
    assert not holds(text, **parts)


def test_a_time_term_without_a_time_in_the_context_never_holds() -> None:
    condition = parse_condition("time in 00:00-23:59")

    assert not condition.holds("alice", {}, RequestContext())


# --- source networks -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "text", "expected"),
    [
        ("10.1.2.3", "source in 10.0.0.0/8", True),
        ("11.1.2.3", "source in 10.0.0.0/8", False),
        ("11.1.2.3", "source not in 10.0.0.0/8", True),
        ("10.1.2.3", "source not in 10.0.0.0/8", False),
        ("192.0.2.7", "source in 192.0.2.7", True),  # an address is a /32
        ("192.0.2.8", "source in 192.0.2.7", False),
        ("192.168.1.1", "source in 10.0.0.0/8|192.168.0.0/16", True),
        ("fd00::1", "source in fd00::/8", True),
        ("fe80::1", "source in fd00::/8", False),
        ("FD00:0:0::1", "source in fd00::/8", True),
        ("fd00::1", "source in 10.0.0.0/8|fd00::/8", True),
        ("10.1.2.3", "source in ::/0", False),  # families never mix
        ("::ffff:10.1.2.3", "source in 10.0.0.0/8", True),  # IPv4-mapped is IPv4
        ("::ffff:10.1.2.3", "source in ::ffff:0:0/96", False),
        ("::1", "source in ::1/128", True),
    ],
)
def test_source_networks_v4_and_v6(source: str, text: str, expected: bool) -> None:
    assert holds(text, source=source) is expected


# --- time windows (the clock is injected) ----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "now", "expected"),
    [
        ("time in 09:00-17:00", at(0, "09:00"), True),  # start inclusive
        ("time in 09:00-17:00", at(0, "16:59"), True),
        ("time in 09:00-17:00", at(0, "17:00"), False),  # end exclusive
        ("time in 09:00-17:00", at(0, "08:59"), False),
        ("time in 18:00-24:00", at(0, "23:59"), True),
        ("time in 18:00-24:00", at(1, "00:00"), False),
        # wrapping midnight
        ("time in 22:00-06:00", at(0, "21:59"), False),
        ("time in 22:00-06:00", at(0, "22:00"), True),
        ("time in 22:00-06:00", at(0, "23:59"), True),
        ("time in 22:00-06:00", at(1, "00:00"), True),
        ("time in 22:00-06:00", at(1, "05:59"), True),
        ("time in 22:00-06:00", at(1, "06:00"), False),
        ("time in 22:00-06:00", at(1, "12:00"), False),
        # weekdays
        ("time in 09:00-17:00 on Mon-Fri", at(0, "10:00"), True),
        ("time in 09:00-17:00 on Mon-Fri", at(4, "10:00"), True),
        ("time in 09:00-17:00 on Mon-Fri", at(5, "10:00"), False),
        ("time in 09:00-17:00 on Mon-Fri", at(6, "10:00"), False),
        ("time in 09:00-17:00 on Sat|Sun", at(6, "10:00"), True),
        ("time in 09:00-17:00 on Tue|Thu", at(2, "10:00"), False),
        ("time in 00:00-24:00 on Sat|Sun", at(5, "00:00"), True),  # all day
        ("time in 00:00-24:00 on Sat|Sun", at(6, "23:59"), True),
        ("time in 00:00-24:00 on Sat|Sun", at(7, "00:00"), False),
        ("time in 09:00-17:00 on Fri-Mon", at(0, "10:00"), True),  # ranges wrap the week
        ("time in 09:00-17:00 on Fri-Mon", at(6, "10:00"), True),
        ("time in 09:00-17:00 on Fri-Mon", at(1, "10:00"), False),
        # a wrapping window belongs to the day it starts
        ("time in 22:00-06:00 on Fri", at(4, "23:00"), True),
        ("time in 22:00-06:00 on Fri", at(5, "05:00"), True),  # Saturday morning
        ("time in 22:00-06:00 on Fri", at(5, "23:00"), False),  # Saturday night
        ("time in 22:00-06:00 on Fri", at(4, "05:00"), False),  # Friday morning: Thursday's
        ("time in 22:00-06:00 on Sun", at(7, "01:00"), True),  # Monday 01:00, across the week
        # zones, with daylight saving time
        ("time in 09:00-17:00 tz Europe/Berlin", at(0, "09:00", BERLIN), True),
        ("time in 09:00-17:00 tz Europe/Berlin", at(0, "08:30"), True),  # 09:30 in Berlin
        ("time in 09:00-17:00 tz Europe/Berlin", at(0, "16:30"), False),  # 17:30 in Berlin
        ("time in 09:00-17:00 tz Europe/Berlin", at(126, "07:30"), True),  # July: UTC+2
        ("time in 09:00-17:00 tz Europe/Berlin", at(126, "06:30"), False),
        ("time in 09:00-17:00 on Mon tz Europe/Berlin", at(0, "00:30", BERLIN), False),
        ("time in 00:00-01:00 on Mon tz Europe/Berlin", at(0, "00:30", BERLIN), True),
        ("time in 00:00-01:00 on Mon", at(0, "00:30", BERLIN), False),  # Sunday 23:30 UTC
        ("time in 09:00-17:00 tz UTC", at(0, "09:00"), True),
    ],
)
def test_time_windows(text: str, now: datetime, expected: bool) -> None:
    assert holds(text, now=now) is expected


# --- the request context ---------------------------------------------------------------------


def test_context_holds_only_what_the_conditions_read() -> None:
    needs = combine(
        parse_condition(text).needs
        for text in ("*", "subject == path.id", "claim.tenant == host.0", "header.x-env == a")
    )
    clock_reads = []

    def clock() -> datetime:
        clock_reads.append(1)
        return MONDAY

    context = needs.context(
        claims={"tenant": "acme", "email": "a@example.com", "groups": ["x"]},
        headers={"x-env": "prod", "authorization": "Bearer secret", "cookie": "s=1"},
        host="acme.example.com:8443",
        source="10.1.2.3",
        clock=clock,
    )

    assert context == RequestContext(
        claims=(("tenant", frozenset({"acme"})),),
        headers=(("x-env", "prod"),),
        host="acme.example.com",
    )
    assert "secret" not in repr(context)
    assert clock_reads == []  # no condition reads the time
    hash(context)


def test_requests_differing_only_in_what_no_condition_reads_share_one_context() -> None:
    needs = parse_condition("claim.tenant == acme").needs

    first = needs.context(claims={"tenant": "acme", "jti": "1"}, headers={}, host="a", source="")
    second = needs.context(
        claims={"tenant": "acme", "jti": "2"}, headers={"x": "y"}, host="b", source="10.0.0.1"
    )

    assert first == second
    assert hash(first) == hash(second)


def test_context_reads_the_clock_to_the_minute_only_when_time_is_used() -> None:
    needs = parse_condition("time in 09:00-17:00 and source in 10.0.0.0/8").needs
    now = datetime(2026, 3, 2, 9, 30, 59, 999, tzinfo=UTC)

    context = needs.context(claims={}, headers={}, host="h", source="10.0.0.1", clock=lambda: now)

    assert context.minute == int(now.replace(second=0, microsecond=0).timestamp()) // 60
    assert context.host is None
    assert str(context.source) == "10.0.0.1"
    later = needs.context(
        claims={}, headers={}, host="h", source="10.0.0.1", clock=lambda: now + timedelta(seconds=1)
    )
    assert later != context  # the next minute is a new context (and a new cache key)
