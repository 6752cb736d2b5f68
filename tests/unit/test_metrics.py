"""metrics.py: decisions, latency, caches, JWKS, policy reloads and security events, read back
from the Prometheus exposition exactly as a scraper sees it."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import pytest
import yaml
from fakes import FakeClock
from prometheus_client.parser import text_string_to_metric_families

from ext_authz.identity.cache import CachedToken, TokenCache
from ext_authz.identity.jwks import KeyStore
from ext_authz.metrics import LATENCY_BUCKETS, Metrics, label_code
from ext_authz.models import AuthRequest, Decision, Identity, Outcome, PolicyResult
from ext_authz.policy.enforcer import PolicyEnforcer
from ext_authz.policy.engine import CasbinPolicyEngine
from ext_authz.policy.reload import ReloadingPolicyEngine
from ext_authz.settings import ProviderSettings

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "policies"
DEPLOY = ROOT / "deploy"
MODEL = POLICIES / "model.conf"
TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"

Labels = frozenset[tuple[str, str]]


def samples(metrics: Metrics) -> dict[str, dict[Labels, float]]:
    """Every sample of the exposition: name -> {label set: value}."""
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain")
    found: dict[str, dict[Labels, float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return found


def labels(**values: str) -> Labels:
    return frozenset(values.items())


def decision(outcome: Outcome, reason: str) -> Decision:
    return Decision(outcome, reason, "decision-id", Identity("alice@example.com", ("viewer",)))


class FakeStore:
    def __init__(self, name: str, age: float | None, failures: int = 0) -> None:
        self.name = name
        self._age = age
        self.refresh_failures = failures

    def age(self) -> float | None:
        return self._age


def test_decisions_are_counted_by_decision_and_reason() -> None:
    metrics = Metrics()
    for outcome, reason in [
        (Outcome.ALLOW, "allowed"),
        (Outcome.ALLOW, "allowed"),
        (Outcome.FORBIDDEN, "access_denied"),
        (Outcome.UNAUTHENTICATED, "expired_token"),
        (Outcome.UNAUTHENTICATED, "expired_token"),
        (Outcome.UNAUTHENTICATED, "missing_credential"),
    ]:
        metrics.observe(decision(outcome, reason), None, 0.001)

    assert samples(metrics)["ext_authz_decisions_total"] == {
        labels(decision="allow", reason="allowed"): 2,
        labels(decision="forbidden", reason="access_denied"): 1,
        labels(decision="unauthenticated", reason="expired_token"): 2,
        labels(decision="unauthenticated", reason="missing_credential"): 1,
    }


def test_each_outcome_and_reason_is_its_own_series_and_every_non_code_is_other() -> None:
    # What a decision counts in is looked up by (outcome, reason) as decided, and remembered.
    metrics = Metrics()
    for _ in range(2):
        metrics.observe(decision(Outcome.FORBIDDEN, "access_denied"), None, 0.001)
        metrics.observe(decision(Outcome.UNAUTHENTICATED, "access_denied"), None, 0.001)
        metrics.observe(decision(Outcome.ERROR, "Not A Code"), None, 0.001)
        metrics.observe(decision(Outcome.ERROR, "/not/a/code"), None, 0.001)
    for index in range(5000):  # a caller passing request data as codes: still bounded
        metrics.observe(decision(Outcome.ERROR, f"Bad {index}"), None, 0.001)
    assert samples(metrics)["ext_authz_decisions_total"] == {
        labels(decision="forbidden", reason="access_denied"): 2,
        labels(decision="unauthenticated", reason="access_denied"): 2,
        labels(decision="error", reason="other"): 5004,
    }
    assert samples(metrics)["ext_authz_decision_duration_seconds_count"] == {
        labels(decision="forbidden"): 2,
        labels(decision="unauthenticated"): 2,
        labels(decision="error"): 5004,
    }
    assert len(metrics._decisions._cells) <= 1024


def test_latency_histogram_has_the_buckets_and_the_observations() -> None:
    metrics = Metrics()
    for latency in (0.00004, 0.0003, 0.0003, 0.02, 2.0):
        metrics.observe(decision(Outcome.ALLOW, "allowed"), None, latency)
    metrics.observe(decision(Outcome.FORBIDDEN, "access_denied"), None, 0.0007)

    found = samples(metrics)
    allow_buckets = {
        dict(key)["le"]: value
        for key, value in found["ext_authz_decision_duration_seconds_bucket"].items()
        if dict(key)["decision"] == "allow"
    }
    assert [float(le) for le in allow_buckets] == [*LATENCY_BUCKETS, float("inf")]
    assert allow_buckets["5e-05"] == 1
    assert allow_buckets["0.0005"] == 3  # cumulative
    assert allow_buckets["0.025"] == 4
    assert allow_buckets["1.0"] == 4
    assert allow_buckets["+Inf"] == 5
    assert found["ext_authz_decision_duration_seconds_count"] == {
        labels(decision="allow"): 5,
        labels(decision="forbidden"): 1,
    }
    sums = found["ext_authz_decision_duration_seconds_sum"]
    assert sums[labels(decision="allow")] == pytest.approx(2.02064)


def test_labels_never_carry_subjects_tokens_paths_or_addresses() -> None:
    metrics = Metrics(
        key_stores=[FakeStore("demo", 1.0)],
        token_caches=[TokenCache(10)],
        policy_engines={"live": _policy_engine(POLICIES / "policy.csv")},
    )
    request = AuthRequest(
        "GET",
        "/api/users/alice@example.com/profile",
        query=(("token", TOKEN),),
        headers=MappingProxyType({"authorization": f"Bearer {TOKEN}", "cookie": "sid=s3cr3t"}),
        source_address="203.0.113.77",
    )
    metrics.observe(decision(Outcome.FORBIDDEN, "access_denied"), request, 0.001)
    # A caller that passes request data as a code gets it counted as "other", never labelled.
    metrics.observe(decision(Outcome.UNAUTHENTICATED, f"Bearer {TOKEN}"), request, 0.001)
    metrics.observe(decision(Outcome.ERROR, "/api/users/alice@example.com"), request, 0.001)
    metrics.record_security_event("203.0.113.77")
    metrics.record_security_event("auth_failures_per_source")

    body = metrics.exposition()[0].decode()
    for secret in (TOKEN, "alice", "s3cr3t", "203.0.113.77", "/api/users", "Bearer"):
        assert secret not in body
    allowed_label_keys = {
        "ext_authz_decisions_total": {"decision", "reason"},
        "ext_authz_decision_duration_seconds_bucket": {"decision", "le"},
        "ext_authz_decision_duration_seconds_count": {"decision"},
        "ext_authz_decision_duration_seconds_sum": {"decision"},
        "ext_authz_security_events_total": {"kind"},
        "ext_authz_token_cache_lookups_total": {"result"},
        "ext_authz_policy_decision_cache_lookups_total": {"policy", "result"},
        "ext_authz_jwks_age_seconds": {"provider"},
        "ext_authz_jwks_refresh_failures_total": {"provider"},
        "ext_authz_policy_version": {"policy"},
        "ext_authz_policy_reloads_total": {"policy", "result"},
    }
    found = samples(metrics)
    assert set(found) == set(allowed_label_keys)
    for name, series in found.items():
        for label_set in series:
            assert {key for key, _ in label_set} == allowed_label_keys[name], name
    assert set(found["ext_authz_decisions_total"]) == {
        labels(decision="forbidden", reason="access_denied"),
        labels(decision="unauthenticated", reason="other"),
        labels(decision="error", reason="other"),
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("access_denied", "access_denied"),
        ("rate_limited", "rate_limited"),
        ("Access_Denied", "other"),
        ("10.0.0.1", "other"),
        ("a" * 65, "other"),
        ("", "other"),
        ("bad\nline", "other"),
    ],
)
def test_label_code_keeps_only_codes(value: str, expected: str) -> None:
    assert label_code(value) == expected


def test_jwks_age_and_refresh_failures_per_provider() -> None:
    metrics = Metrics(
        key_stores=[
            FakeStore("corp", 42.5, failures=3),
            FakeStore("partner", 7.0),
            FakeStore("pending", None, failures=1),  # never loaded: no age to report
        ]
    )
    found = samples(metrics)
    assert found["ext_authz_jwks_age_seconds"] == {
        labels(provider="corp"): 42.5,
        labels(provider="partner"): 7.0,
    }
    assert found["ext_authz_jwks_refresh_failures_total"] == {
        labels(provider="corp"): 3,
        labels(provider="partner"): 0,
        labels(provider="pending"): 1,
    }


def test_a_real_key_store_reports_its_age_and_failed_loads(
    provider_settings: ProviderSettings,
) -> None:
    clock = FakeClock(1_000.0)
    file_store = KeyStore(provider_settings, clock=clock)
    clock.advance(90)

    def unreachable(url: str, timeout: float) -> tuple[bytes, Mapping[str, str]]:
        raise OSError("connection refused")

    url_settings = ProviderSettings(
        name="remote",
        issuer="https://idp.test",
        audiences=("api",),
        jwks_url="https://idp.test/jwks.json",
    )
    url_store = KeyStore(url_settings, clock=clock, fetch=unreachable)
    assert not url_store.refresh()
    assert not url_store.refresh()

    found = samples(Metrics(key_stores=[file_store, url_store]))
    assert found["ext_authz_jwks_age_seconds"] == {labels(provider="test"): 90.0}
    assert found["ext_authz_jwks_refresh_failures_total"] == {
        labels(provider="test"): 0,
        labels(provider="remote"): 2,
    }


def test_token_cache_hits_and_misses_are_summed_over_caches() -> None:
    first, second = TokenCache(10), TokenCache(10)
    entry = CachedToken(Identity("alice"), expires_at=2_000.0, key_version=1)
    first.put("token-a", entry)
    first.get("token-a", 1_000.0)  # hit
    first.get("token-a", 1_000.0)  # hit
    first.get("token-b", 1_000.0)  # miss
    first.get("token-a", 2_000.0)  # expired: miss
    second.get("token-c", 1_000.0)  # miss
    TokenCache(0).get("token-a", 1_000.0)  # a cache that is off counts nothing

    found = samples(Metrics(token_caches=[first, second]))
    assert found["ext_authz_token_cache_lookups_total"] == {
        labels(result="hit"): 2,
        labels(result="miss"): 3,
    }


def _write(path: Path, text: str) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _policy_engine(policy: Path) -> ReloadingPolicyEngine:
    return ReloadingPolicyEngine(
        lambda: CasbinPolicyEngine.from_files(MODEL, policy), MODEL, policy, interval=3600
    )


def test_policy_version_and_reload_results(tmp_path: Path) -> None:
    policy = tmp_path / "policy.csv"
    _write(policy, (POLICIES / "policy.csv").read_text())
    live = _policy_engine(policy)
    metrics = Metrics(policy_engines={"live": live})
    assert samples(metrics)["ext_authz_policy_version"] == {labels(policy="live"): 1}

    assert live.reload()
    _write(policy, "p, role:viewer, GET\n")  # too few fields: refused, the last good one stays
    assert not live.reload()
    assert not live.reload()

    found = samples(metrics)
    assert found["ext_authz_policy_version"] == {labels(policy="live"): 2}
    assert found["ext_authz_policy_reloads_total"] == {
        labels(policy="live", result="success"): 1,
        labels(policy="live", result="failure"): 2,
    }


def test_policy_decision_cache_hits_follow_the_live_policy(tmp_path: Path) -> None:
    policy = tmp_path / "policy.csv"
    _write(policy, (POLICIES / "policy.csv").read_text())
    live = _policy_engine(policy)
    metrics = Metrics(policy_engines={"live": live})
    viewer = Identity("alice", ("viewer",))
    books = AuthRequest("GET", "/api/books")
    hits, misses = live.decision_cache_stats()  # loading checks one decision already
    for _ in range(3):
        assert live.decide(viewer, books).allowed
    assert live.decide(viewer, AuthRequest("GET", "/api/books/1")).allowed

    assert samples(metrics)["ext_authz_policy_decision_cache_lookups_total"] == {
        labels(policy="live", result="hit"): hits + 2,
        labels(policy="live", result="miss"): misses + 2,
    }
    assert live.reload()  # a new policy version starts a new cache
    assert live.decision_cache_stats() == (hits, misses)


class UncachedEngine:
    def decide(self, identity: Identity, request: AuthRequest) -> PolicyResult:
        return PolicyResult(allowed=False)


def test_engines_without_a_decision_cache_report_no_lookups() -> None:
    policy = POLICIES / "policy.csv"
    assert ReloadingPolicyEngine(UncachedEngine, MODEL, policy).decision_cache_stats() == (0, 0)
    engine = CasbinPolicyEngine(PolicyEnforcer(MODEL, policy, cache_size=0), cache_size=0)
    engine.decide(Identity("alice", ("viewer",)), AuthRequest("GET", "/api/books"))
    assert engine.decision_cache_stats() == (0, 0)


def test_security_events_are_counted_by_kind() -> None:
    metrics = Metrics()
    for kind in ("auth_failures_per_source", "auth_failures_per_source", "deny_spike"):
        metrics.record_security_event(kind)

    assert samples(metrics)["ext_authz_security_events_total"] == {
        labels(kind="auth_failures_per_source"): 2,
        labels(kind="deny_spike"): 1,
    }


def test_openmetrics_is_served_when_the_scraper_asks_for_it() -> None:
    metrics = Metrics()
    metrics.observe(decision(Outcome.ALLOW, "allowed"), None, 0.001)
    body, content_type = metrics.exposition("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")
    assert b'ext_authz_decisions_total{decision="allow",reason="allowed"} 1.0' in body


def test_the_grafana_dashboard_queries_only_metrics_and_labels_that_exist() -> None:
    metrics = Metrics(
        key_stores=[FakeStore("demo", 1.0)],
        token_caches=[TokenCache(10)],
        policy_engines={"live": _policy_engine(POLICIES / "policy.csv")},
    )
    metrics.observe(decision(Outcome.ALLOW, "allowed"), None, 0.001)
    metrics.record_security_event("deny_spike")
    exposed = {
        name: {key for label_set in series for key, _ in label_set}
        for name, series in samples(metrics).items()
    }
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "ext-authz.json").read_text())
    expressions = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    assert len(expressions) >= 10
    queried: set[str] = set()
    for expr in expressions:
        names = set(re.findall(r"\bext_authz_\w+", expr))
        assert names, expr
        assert names <= exposed.keys(), expr
        queried |= names
        labels_used = {
            label.strip()
            for group in re.findall(r"\bby \(([^)]*)\)", expr)
            for label in group.split(",")
        } | set(re.findall(r"(\w+)(?:=~|!=|=)\"", expr))
        known = set().union(*(exposed[name] for name in names)) | {"instance", "le"}
        assert labels_used <= known, expr
    # Every family is on the dashboard (the histogram through its buckets).
    assert {name.removesuffix("_bucket") for name in queried} >= {
        name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum") for name in exposed
    }


def test_prometheus_scrapes_the_admin_port_and_grafana_reads_prometheus() -> None:
    config = yaml.safe_load((DEPLOY / "compose" / "prometheus.yaml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"] == [{"targets": ["ext-authz:9902"]}]
    provisioning = DEPLOY / "grafana" / "provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ]
    assert (source["type"], source["url"]) == ("prometheus", "http://prometheus:9090")
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "ext-authz.yaml").read_text())[
        "providers"
    ]
    assert provider["options"]["path"] == "/etc/grafana/dashboards"
