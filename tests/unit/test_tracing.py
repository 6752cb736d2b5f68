"""Tracing: the Check span and its phase spans (driven through the real servicer and runtime),
trace context from gRPC metadata, W3C and B3 headers, no secret in any span, the decision log's
trace id, and configuration from the OTEL_* environment (with real OTLP receivers).

Spans go to an SDK TracerProvider with an InMemorySpanExporter that each test gets and injects
into the servicer: the global tracer provider is never set here (it can only be set once).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner
from fakes import FAILING_RUNTIMES, exploding_engine_runtime
from google.rpc import code_pb2
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.propagators.b3 import B3MultiFormat
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    ParentBasedTraceIdRatio,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import NoOpTracerProvider, SpanKind, StatusCode, get_current_span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ext_authz import __version__
from ext_authz._proto.envoy.service.auth.v3 import external_auth_pb2_grpc
from ext_authz.cli import main
from ext_authz.credentials import CredentialExtractor
from ext_authz.demo.envoy_config import DemoPorts
from ext_authz.demo.stack import DemoStack
from ext_authz.errors import ConfigError, LimitedError
from ext_authz.models import AuthRequest, Identity, PolicyResult
from ext_authz.pipeline import AuthPipeline
from ext_authz.runtime import Runtime, build_runtime
from ext_authz.service import AuthorizationServicer
from ext_authz.settings import CredentialSettings, HeaderSettings, load_settings
from ext_authz.telemetry import (
    ATTR_AUTH_METHOD,
    ATTR_CACHE_HIT,
    ATTR_CREDENTIAL_SOURCE,
    ATTR_DECISION,
    ATTR_DECISION_ID,
    ATTR_PROVIDER,
    ATTR_REASON,
    ATTR_REQUEST_ID,
    ATTR_ROUTE,
    ATTR_RULE,
    SPAN_AUTHORIZATION,
    SPAN_CHECK,
    SPAN_CREDENTIALS,
    SPAN_GUARDS,
    SPAN_IDENTITY,
    extract_parent,
    skips_unsampled_callers,
    span_exporters_from_env,
    tracer_provider_from_env,
)

REPO = Path(__file__).resolve().parents[2]
POLICIES = REPO / "policies"
ISSUER = "https://issuer.test"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
SPAN_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"
OTHER_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
OTHER_SPAN_ID = "00f067aa0ba902b7"
COOKIE = "session"
QUERY = "access_token"


# --- fixtures ----------------------------------------------------------------------------------


@dataclass
class Tracing:
    provider: TracerProvider
    exporter: InMemorySpanExporter

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def check_span(self) -> ReadableSpan:
        (span,) = [s for s in self.spans() if s.name == SPAN_CHECK]
        return span

    def children(self) -> dict[str, ReadableSpan]:
        check = self.check_span()
        children = [s for s in self.spans() if s is not check]
        parents = [s.parent.span_id if s.parent else None for s in children]
        assert parents == [check.context.span_id] * len(children)
        by_name = {s.name: s for s in children}
        assert len(by_name) == len(children), "a phase span appears twice"
        return by_name


@pytest.fixture
def tracing() -> Iterator[Tracing]:
    """A private SDK provider (injected, never global) that keeps every finished span."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Tracing(provider, exporter)
    provider.shutdown()


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory, jwks_file: Path) -> Runtime:
    """The real runtime over the shipped policies, with tokens also accepted from a cookie and
    from a query parameter (so every credential source is exercised)."""
    config = tmp_path_factory.mktemp("tracing") / "ext-authz.yaml"
    config.write_text(
        f"""
listen: 127.0.0.1:0
providers:
  - name: test
    issuer: {ISSUER}
    audiences: [api]
    jwks_file: {jwks_file}
credentials:
  bearer:
    cookie: {COOKIE}
    query_parameter: {QUERY}
policy:
  model: {POLICIES / "model.conf"}
  policy: {POLICIES / "policy.csv"}
""",
        encoding="utf-8",
    )
    return build_runtime(load_settings(config))


@pytest.fixture
def servicer(runtime: Runtime, tracing: Tracing) -> AuthorizationServicer:
    return AuthorizationServicer(lambda: runtime, tracing.provider)


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def hex_trace_id(span: ReadableSpan) -> str:
    return f"{span.context.trace_id:032x}"


def every_string_in(spans: list[ReadableSpan]) -> str:
    """Everything a span exports as text: names, attributes, events, links, status."""
    return "\n".join(span.to_json(indent=None) for span in spans)


# --- one Check, one SERVER span, a child per phase ---------------------------------------------


def test_a_check_is_one_server_span_with_a_child_span_per_phase(
    servicer, tracing, make_check_request, make_token
) -> None:
    token = make_token(sub="vera", roles=["viewer"])
    request = make_check_request(
        "GET", "/api/books", {"authorization": f"Bearer {token}", "x-request-id": "rid-1"}
    )

    response = servicer.Check(request, None)

    assert response.status.code == code_pb2.OK
    check = tracing.check_span()
    assert check.kind is SpanKind.SERVER
    assert check.parent is None  # no incoming trace context: a new trace
    children = tracing.children()
    # The runtime always has a guard (the security signals' block list).
    assert set(children) == {SPAN_CREDENTIALS, SPAN_IDENTITY, SPAN_GUARDS, SPAN_AUTHORIZATION}
    assert {hex_trace_id(span) for span in tracing.spans()} == {hex_trace_id(check)}
    # In pipeline order, each inside the Check span.
    ordered = sorted(children.values(), key=lambda span: span.start_time or 0)
    assert [s.name for s in ordered] == [
        SPAN_CREDENTIALS,
        SPAN_IDENTITY,
        SPAN_GUARDS,
        SPAN_AUTHORIZATION,
    ]
    assert all(
        (check.start_time or 0) <= (s.start_time or 0) <= (s.end_time or 0) <= (check.end_time or 0)
        for s in ordered
    )


def test_check_span_has_the_decision_reason_rule_route_and_ids(
    servicer, tracing, make_check_request, make_token
) -> None:
    token = make_token(sub="vera", roles=["viewer"])
    request = make_check_request(
        "GET", "/api/books?page=2", {"authorization": f"Bearer {token}", "x-request-id": "rid-2"}
    )

    response = servicer.Check(request, None)

    check = attributes(tracing.check_span())
    assert check[ATTR_DECISION] == "allow"
    assert check[ATTR_REASON] == "allowed"
    assert check[ATTR_REQUEST_ID] == "rid-2"
    assert check[ATTR_ROUTE] == "GET /api/books"  # normalized path, no query
    assert check[ATTR_DECISION_ID] == dict(response.dynamic_metadata)["decision_id"]
    rule = check[ATTR_RULE]
    assert isinstance(rule, str) and rule
    assert attributes(tracing.children()[SPAN_AUTHORIZATION]) == {ATTR_RULE: rule}
    assert tracing.check_span().status.status_code is StatusCode.UNSET


def test_identity_span_names_the_provider_and_method_and_credentials_span_the_source(
    servicer, tracing, make_check_request, make_token
) -> None:
    token = make_token(roles=["viewer"])

    servicer.Check(make_check_request("GET", "/api/books", {"cookie": f"{COOKIE}={token}"}), None)

    children = tracing.children()
    assert children[SPAN_CREDENTIALS].attributes == {ATTR_CREDENTIAL_SOURCE: f"cookie '{COOKIE}'"}
    assert children[SPAN_IDENTITY].attributes == {
        ATTR_PROVIDER: ISSUER,
        ATTR_AUTH_METHOD: "jwt",
        ATTR_CACHE_HIT: False,
    }


def test_identity_span_says_when_the_token_came_from_the_cache(
    servicer, tracing, make_check_request, make_token
) -> None:
    request = make_check_request(
        "GET",
        "/api/books",
        {"authorization": f"Bearer {make_token(roles=['viewer'], jti='cache-hit-test')}"},
    )
    servicer.Check(request, None)
    servicer.Check(request, None)

    hits = [
        span.attributes.get(ATTR_CACHE_HIT)
        for span in tracing.spans()
        if span.name == SPAN_IDENTITY and span.attributes is not None
    ]
    assert hits == [False, True]


@pytest.mark.parametrize(
    ("path", "headers", "decision", "reason"),
    [
        ("/api/books", {}, "unauthenticated", "missing_credential"),
        ("/admin/users", {"authorization": "Bearer {viewer}"}, "forbidden", "access_denied"),
        ("/api/books?include=drafts", {"authorization": "Bearer {viewer}"}, "forbidden", None),
    ],
)
def test_check_span_records_denials_without_marking_them_errors(
    servicer, tracing, make_check_request, make_token, path, headers, decision, reason
) -> None:
    viewer = make_token(roles=["viewer"])
    request = make_check_request(
        "GET", path, {name: value.format(viewer=viewer) for name, value in headers.items()}
    )

    servicer.Check(request, None)

    check = attributes(tracing.check_span())
    assert check[ATTR_DECISION] == decision
    if reason is not None:
        assert check[ATTR_REASON] == reason
    assert ATTR_RULE not in check
    # A refusal is a normal answer: no span is an error.
    assert {span.status.status_code for span in tracing.spans()} == {StatusCode.UNSET}


def test_the_phase_that_refuses_carries_the_reason_code(
    servicer, tracing, make_check_request, make_token
) -> None:
    token = make_token(aud="someone-else")

    servicer.Check(
        make_check_request("GET", "/public/x", {"authorization": f"Bearer {token}"}), None
    )

    children = tracing.children()
    assert children[SPAN_IDENTITY].attributes == {
        ATTR_CACHE_HIT: False,
        ATTR_REASON: "invalid_token",
    }
    assert children[SPAN_IDENTITY].status.status_code is StatusCode.UNSET
    # The guards still look at the address (a blocked one gets 429 even with bad credentials);
    # authorization never runs.
    assert set(children) == {SPAN_CREDENTIALS, SPAN_IDENTITY, SPAN_GUARDS}
    assert attributes(tracing.check_span())[ATTR_DECISION] == "unauthenticated"


def test_an_unparseable_request_is_one_span_without_route_or_phases(
    servicer, tracing, make_check_request
) -> None:
    servicer.Check(make_check_request("GET", "/api/books;jsessionid=SECRET"), None)

    check = tracing.check_span()
    assert attributes(check)[ATTR_DECISION] == "invalid_request"
    assert ATTR_ROUTE not in attributes(check)
    assert tracing.spans() == [check]
    assert "SECRET" not in every_string_in(tracing.spans())


class BlockingGuard:
    def check(self, identity: Identity, request: AuthRequest) -> None:
        raise LimitedError("source address is blocked", retry_after=30)


class AllowAll:
    def decide(self, identity: Identity, request: AuthRequest) -> PolicyResult:
        return PolicyResult(True, "p, *, /**, *")


def test_guards_span_carries_the_reason_a_guard_refused_with(tracing, make_check_request) -> None:
    pipeline = AuthPipeline(
        CredentialExtractor(CredentialSettings(), None), {}, AllowAll(), guards=[BlockingGuard()]
    )
    servicer = AuthorizationServicer(lambda: Runtime(pipeline, HeaderSettings()), tracing.provider)

    servicer.Check(make_check_request("GET", "/api/books"), None)

    children = tracing.children()
    assert set(children) == {SPAN_CREDENTIALS, SPAN_GUARDS}
    assert children[SPAN_GUARDS].attributes == {ATTR_REASON: LimitedError.code}
    assert attributes(tracing.check_span())[ATTR_DECISION] == "limited"


# --- continuing the caller's trace -------------------------------------------------------------


def assert_child_of(span: ReadableSpan, trace_id: str, span_id: str) -> None:
    assert hex_trace_id(span) == trace_id
    assert span.parent is not None and span.parent.is_remote
    assert f"{span.parent.span_id:016x}" == span_id


@pytest.mark.parametrize(
    "headers",
    [
        {"traceparent": TRACEPARENT},
        {"traceparent": TRACEPARENT, "tracestate": "vendor=value"},
        {"b3": f"{TRACE_ID}-{SPAN_ID}-1"},
        {"x-b3-traceid": TRACE_ID, "x-b3-spanid": SPAN_ID, "x-b3-sampled": "1"},
    ],
    ids=["traceparent", "traceparent+tracestate", "b3-single", "b3-multi"],
)
def test_check_span_continues_the_trace_in_the_request_headers(
    servicer, tracing, make_check_request, headers
) -> None:
    servicer.Check(make_check_request("GET", "/public/x", headers), None)

    check = tracing.check_span()
    assert_child_of(check, TRACE_ID, SPAN_ID)
    assert {hex_trace_id(span) for span in tracing.spans()} == {TRACE_ID}


def test_traceparent_wins_over_b3_when_a_request_carries_both(
    servicer, tracing, make_check_request
) -> None:
    headers = {"traceparent": TRACEPARENT, "b3": f"{OTHER_TRACE_ID}-{OTHER_SPAN_ID}-1"}

    servicer.Check(make_check_request("GET", "/public/x", headers), None)

    assert_child_of(tracing.check_span(), TRACE_ID, SPAN_ID)


@pytest.mark.parametrize("traceparent", ["garbage", f"00-{'0' * 32}-{SPAN_ID}-01", ""])
def test_an_invalid_traceparent_starts_a_new_trace(
    servicer, tracing, make_check_request, traceparent
) -> None:
    servicer.Check(make_check_request("GET", "/public/x", {"traceparent": traceparent}), None)

    check = tracing.check_span()
    assert check.parent is None and hex_trace_id(check) != TRACE_ID


def test_an_unsampled_caller_is_followed_no_span_is_recorded(
    servicer, tracing, make_check_request
) -> None:
    # Envoy's sampling decision rules: the SDK's default sampler is parent-based.
    traceparent = f"00-{TRACE_ID}-{SPAN_ID}-00"

    response = servicer.Check(
        make_check_request("GET", "/public/x", {"traceparent": traceparent}), None
    )

    assert response.status.code == code_pb2.OK
    assert tracing.spans() == []


def test_an_unsampled_caller_is_recorded_when_the_sampler_says_so(
    runtime, make_check_request
) -> None:
    # With always_on the sampler, not the caller, decides: the Check is recorded under the
    # caller's trace.
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    servicer = AuthorizationServicer(lambda: runtime, provider)

    servicer.Check(
        make_check_request("GET", "/public/x", {"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-00"}), None
    )

    (check,) = [s for s in exporter.get_finished_spans() if s.name == SPAN_CHECK]
    assert_child_of(check, TRACE_ID, SPAN_ID)
    provider.shutdown()


class _NamedSampler(Sampler):
    """A custom sampler: never probed, whatever it would answer."""

    def should_sample(self, *_: Any, **__: Any) -> SamplingResult:
        return SamplingResult(Decision.DROP)

    def get_description(self) -> str:
        return "custom"


@pytest.mark.parametrize(
    ("sampler", "skips"),
    [
        (ParentBased(ALWAYS_ON), True),  # the SDK's default
        (ParentBasedTraceIdRatio(0.01), True),
        (ALWAYS_OFF, True),
        (ALWAYS_ON, False),
        (TraceIdRatioBased(0.01), False),
        (_NamedSampler(), False),
    ],
    ids=["parentbased", "parentbased-ratio", "always-off", "always-on", "ratio", "custom"],
)
def test_only_samplers_that_drop_unsampled_callers_skip_the_span(sampler, skips) -> None:
    provider = TracerProvider(sampler=sampler)
    assert skips_unsampled_callers(provider.get_tracer("t")) is skips
    provider.shutdown()


def test_the_api_alone_is_never_assumed_to_skip() -> None:
    # The global proxy tracer may get an SDK behind it later.
    assert not skips_unsampled_callers(trace.get_tracer("t"))


@pytest.mark.parametrize(
    "carrier",
    [
        {"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-00"},
        {"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-00", "tracestate": ""},
        {"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-02"},
        {"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-00", "tracestate": "vendor=value"},
        {"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-00", "b3": f"{OTHER_TRACE_ID}-{OTHER_SPAN_ID}-1"},
        {"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-00-extra"},
        {"traceparent": f"01-{TRACE_ID}-{SPAN_ID}-00-extra"},
        {"traceparent": f"ff-{TRACE_ID}-{SPAN_ID}-00"},
        {"traceparent": f" 00-{TRACE_ID}-{SPAN_ID}-00"},
        {"traceparent": f"00-{TRACE_ID.upper()}-{SPAN_ID}-00"},
        {"traceparent": f"00-{'0' * 32}-{SPAN_ID}-00"},
        {"traceparent": f"00-{TRACE_ID}-{'0' * 16}-00"},
        {"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-0"},
        {"traceparent": "", "b3": f"{OTHER_TRACE_ID}-{OTHER_SPAN_ID}-0"},
    ],
)
def test_extract_parent_finds_what_the_propagators_find(carrier) -> None:
    # Unsampled W3C parents are parsed without the propagators: the result must not differ.
    expected = B3MultiFormat().extract(carrier)
    expected = TraceContextTextMapPropagator().extract(carrier, expected)

    for metadata, headers in (((), carrier), (tuple(carrier.items()), {})):
        found = get_current_span(extract_parent(metadata, headers)).get_span_context()
        assert found == get_current_span(expected).get_span_context()


@pytest.fixture
def grpc_check(servicer: AuthorizationServicer) -> Iterator[Callable[..., Any]]:
    """Check over a real gRPC server, so the servicer reads real invocation metadata."""
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = external_auth_pb2_grpc.AuthorizationStub(channel)
    yield lambda request, metadata=(): stub.Check(request, metadata=metadata, timeout=5)
    channel.close()
    server.stop(0)


def test_trace_context_in_the_grpc_metadata_wins_over_the_request_headers(
    grpc_check, tracing, make_check_request
) -> None:
    # What Envoy sends with tracing on: its ext_authz call's context as gRPC metadata, while the
    # checked request may carry the client's own traceparent.
    headers = {"traceparent": f"00-{OTHER_TRACE_ID}-{OTHER_SPAN_ID}-01"}

    grpc_check(make_check_request("GET", "/public/x", headers), [("traceparent", TRACEPARENT)])

    assert_child_of(tracing.check_span(), TRACE_ID, SPAN_ID)


def test_b3_in_the_grpc_metadata_is_continued(grpc_check, tracing, make_check_request) -> None:
    metadata = [("x-b3-traceid", TRACE_ID), ("x-b3-spanid", SPAN_ID), ("x-b3-sampled", "1")]

    grpc_check(make_check_request("GET", "/public/x"), metadata)

    assert_child_of(tracing.check_span(), TRACE_ID, SPAN_ID)


def test_the_request_headers_are_used_when_the_metadata_has_no_trace_context(
    grpc_check, tracing, make_check_request
) -> None:
    grpc_check(
        make_check_request("GET", "/public/x", {"traceparent": TRACEPARENT}),
        [("x-unrelated", "1"), ("traceparent", "not-a-traceparent")],
    )

    assert_child_of(tracing.check_span(), TRACE_ID, SPAN_ID)


def test_extract_parent_ignores_binary_metadata() -> None:
    context = extract_parent([("traceparent-bin", b"\x00\x01")], {})
    assert context == {}


# --- no secret in any span ---------------------------------------------------------------------


def test_no_token_cookie_or_query_value_reaches_any_span(
    servicer, tracing, make_check_request, make_token
) -> None:
    token = make_token(sub="vera", roles=["viewer"])
    expired = make_token(exp=1_000_000_300, iat=1_000_000_000)
    bad = "SECRETBADTOKEN.aaa.bbb"
    query_value = "SECRET-QUERY-VALUE"
    cookie_value = "SECRET-COOKIE-VALUE"
    requests = [
        make_check_request("GET", "/api/books", {"authorization": f"Bearer {token}"}),
        make_check_request("GET", "/api/books", {"authorization": f"Bearer {expired}"}),
        make_check_request("GET", "/api/books", {"authorization": f"Bearer {bad}"}),
        make_check_request("GET", "/api/books", {"authorization": "Basic U0VDUkVUOnB3"}),
        make_check_request("GET", "/api/books", {"cookie": f"{COOKIE}={token}; other=x"}),
        make_check_request("GET", "/api/books", {"cookie": f"{COOKIE}={bad}"}),
        make_check_request("GET", f"/public/x?{QUERY}={token}"),
        make_check_request("GET", f"/public/x?{QUERY}={bad}"),
        make_check_request("GET", f"/public/x?q={query_value}", {"cookie": f"c={cookie_value}"}),
        # Two credentials, a refused request, and a path that cannot be interpreted.
        make_check_request(
            "GET", f"/api/books?{QUERY}={token}", {"authorization": f"Bearer {token}"}
        ),
        make_check_request("GET", f"/x%2f?{QUERY}={token}", {"authorization": f"Bearer {token}"}),
    ]

    for request in requests:
        servicer.Check(request, None)

    spans = tracing.spans()
    assert len([s for s in spans if s.name == SPAN_CHECK]) == len(requests)
    text = every_string_in(spans)
    for secret in (token, token.split(".")[2], expired.split(".")[2], bad, query_value):
        assert secret not in text
    for secret in (cookie_value, "U0VDUkVUOnB3", "Bearer"):
        assert secret not in text


# --- fail closed, and recorded as the error it is ----------------------------------------------


@pytest.mark.parametrize("runtime_source", FAILING_RUNTIMES)
def test_an_internal_error_is_recorded_on_the_span_and_still_answers_503(
    tracing, make_check_request, runtime_source, caplog
) -> None:
    servicer = AuthorizationServicer(runtime_source, tracing.provider)

    with caplog.at_level(logging.CRITICAL, logger="ext_authz.service"):
        response = servicer.Check(make_check_request("GET", "/public/x"), None)

    assert response.status.code == code_pb2.UNAVAILABLE
    assert response.denied_response.status.code == 503
    check = tracing.check_span()
    assert check.status.status_code is StatusCode.ERROR
    assert attributes(check)[ATTR_DECISION] == "error"
    assert attributes(check)[ATTR_REASON] == "internal_error"
    (event,) = check.events
    assert event.name == "exception"
    assert dict(event.attributes or {})["exception.type"] == "RuntimeError"


def test_the_phase_that_failed_is_marked_as_the_error(tracing, make_check_request) -> None:
    runtime = exploding_engine_runtime()
    servicer = AuthorizationServicer(lambda: runtime, tracing.provider)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(logging.getLogger("ext_authz.service"), "disabled", True)
        servicer.Check(make_check_request("GET", "/public/x"), None)

    authorization = tracing.children()[SPAN_AUTHORIZATION]
    assert authorization.status.status_code is StatusCode.ERROR
    assert [event.name for event in authorization.events] == ["exception"]


# --- the decision log names the trace ----------------------------------------------------------


def decision_fields(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [getattr(r, "fields") for r in caplog.records if r.name == "ext_authz.decision"]  # noqa: B009


def test_decision_log_line_has_the_trace_id_of_the_check_span(
    servicer, tracing, make_check_request, caplog
) -> None:
    with caplog.at_level(logging.INFO, logger="ext_authz.decision"):
        servicer.Check(make_check_request("GET", "/public/x", {"traceparent": TRACEPARENT}), None)

    (fields,) = decision_fields(caplog)
    assert fields["trace_id"] == hex_trace_id(tracing.check_span()) == TRACE_ID


def test_decision_log_has_an_unsampled_callers_trace_id(
    grpc_check, tracing, make_check_request, caplog
) -> None:
    with caplog.at_level(logging.INFO, logger="ext_authz.decision"):
        grpc_check(
            make_check_request("GET", "/public/x"), [("traceparent", f"00-{TRACE_ID}-{SPAN_ID}-00")]
        )

    (fields,) = decision_fields(caplog)
    assert fields["trace_id"] == TRACE_ID
    assert tracing.spans() == []


def test_decision_log_has_the_callers_trace_id_even_with_tracing_off(
    runtime, make_check_request, caplog
) -> None:
    servicer = AuthorizationServicer(lambda: runtime, NoOpTracerProvider())

    with caplog.at_level(logging.INFO, logger="ext_authz.decision"):
        servicer.Check(make_check_request("GET", "/public/x", {"traceparent": TRACEPARENT}), None)
        servicer.Check(make_check_request("GET", "/public/x"), None)

    continued, fresh = decision_fields(caplog)
    assert continued["trace_id"] == TRACE_ID
    assert fresh["trace_id"] is None


# --- configuration from the OTEL_* environment -------------------------------------------------


@pytest.fixture
def otel_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No OTEL_* variable from the outer environment; each test sets its own."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    return monkeypatch


def exporter_types(monkeypatch: pytest.MonkeyPatch, **env: str) -> list[type]:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    exporters = span_exporters_from_env()
    try:
        return [type(exporter) for exporter in exporters]
    finally:
        for exporter in exporters:
            exporter.shutdown()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, [GrpcSpanExporter]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, [GrpcSpanExporter]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, []),
        ({"OTEL_TRACES_EXPORTER": "console"}, [ConsoleSpanExporter]),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, [GrpcSpanExporter]),
        ({"OTEL_TRACES_EXPORTER": " otlp , console "}, [GrpcSpanExporter, ConsoleSpanExporter]),
        ({"OTEL_TRACES_EXPORTER": "console,console"}, [ConsoleSpanExporter]),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
            [HttpSpanExporter],
        ),
        (
            {
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
            },
            [GrpcSpanExporter],
        ),
    ],
)
def test_exporters_are_chosen_from_the_environment(otel_env, env, expected) -> None:
    assert exporter_types(otel_env, **env) == expected


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER: unknown exporter 'zipkin'"),
        ({"OTEL_TRACES_EXPORTER": "none,console"}, "'none' cannot be combined"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"},
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: unsupported protocol 'http/json'",
        ),
    ],
)
def test_a_bad_exporter_setting_is_a_config_error_naming_the_variable(
    otel_env, env, message
) -> None:
    with pytest.raises(ConfigError, match=message):
        exporter_types(otel_env, **env)


def test_no_exporter_means_no_sdk_provider(otel_env) -> None:
    assert tracer_provider_from_env() is None


def test_provider_resource_defaults_to_ext_authz_and_yields_to_the_environment(otel_env) -> None:
    otel_env.setenv("OTEL_TRACES_EXPORTER", "console")
    provider = tracer_provider_from_env()
    assert provider is not None
    assert provider.resource.attributes[SERVICE_NAME] == "ext-authz"
    assert provider.resource.attributes[SERVICE_VERSION] == __version__
    provider.shutdown()

    otel_env.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs,deployment.environment=ci")
    otel_env.setenv("OTEL_SERVICE_NAME", "authz-eu")
    provider = tracer_provider_from_env()
    assert provider is not None
    assert provider.resource.attributes[SERVICE_NAME] == "authz-eu"
    assert provider.resource.attributes["deployment.environment"] == "ci"
    provider.shutdown()


def test_sampling_comes_from_the_sdks_own_environment_variables(otel_env) -> None:
    otel_env.setenv("OTEL_TRACES_EXPORTER", "console")
    default = tracer_provider_from_env()
    assert default is not None and isinstance(default.sampler, ParentBased)
    default.shutdown()

    otel_env.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    otel_env.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    ratio = tracer_provider_from_env()
    assert ratio is not None and isinstance(ratio.sampler, TraceIdRatioBased)
    assert ratio.sampler.rate == 0.25
    ratio.shutdown()


class TraceCollector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    def Export(self, request, context):  # noqa: N802 - the gRPC method name
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


def span_names(requests: list[trace_service_pb2.ExportTraceServiceRequest]) -> list[str]:
    return [
        span.name
        for request in requests
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]


def export_one_span(name: str) -> None:
    """A span through a provider built from the environment, flushed by its shutdown."""
    provider = tracer_provider_from_env()
    assert provider is not None
    with provider.get_tracer("test").start_as_current_span(name):
        pass
    provider.shutdown()


def test_otlp_grpc_export_reaches_the_configured_endpoint_on_shutdown(otel_env) -> None:
    collector = TraceCollector()
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
        export_one_span("over-grpc")
    finally:
        server.stop(0)
    assert span_names(collector.requests) == ["over-grpc"]


def test_otlp_http_export_reaches_the_configured_endpoint_on_shutdown(otel_env) -> None:
    received: list[tuple[str, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        export_one_span("over-http")
    finally:
        server.shutdown()
        server.server_close()
    ((path, body),) = received
    assert path == "/v1/traces"
    request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
    assert span_names([request]) == ["over-http"]


def test_configure_tracing_installs_the_provider_and_shutdown_flushes_it() -> None:
    # In a child process: the global tracer provider can be set only once per process.
    script = (
        "from opentelemetry import trace\n"
        "from ext_authz.telemetry import configure_tracing, shutdown_tracing\n"
        "configure_tracing()\n"
        "with trace.get_tracer('t').start_as_current_span('configured'): pass\n"
        "shutdown_tracing()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env |= {"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "svc-under-test"}
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    (line,) = result.stdout.splitlines()  # one JSON line per span
    span = json.loads(line)
    assert span["name"] == "configured"
    assert span["resource"]["attributes"]["service.name"] == "svc-under-test"


def test_serve_refuses_a_bad_tracing_setting_with_exit_status_2(
    otel_env, tmp_path: Path, jwks_file: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"""
listen: 127.0.0.1:0
providers:
  - name: test
    issuer: {ISSUER}
    audiences: [api]
    jwks_file: {jwks_file}
policy:
  model: {POLICIES / "model.conf"}
  policy: {POLICIES / "policy.csv"}
""",
        encoding="utf-8",
    )
    otel_env.setenv("OTEL_TRACES_EXPORTER", "jaeger")

    result = CliRunner().invoke(main, ["serve", "--config", str(config)])

    assert result.exit_code == 2
    assert "OTEL_TRACES_EXPORTER: unknown exporter 'jaeger'" in result.output


# --- the demo shows its traces -----------------------------------------------------------------


@pytest.mark.parametrize(("outer", "expected"), [(None, "console"), ("otlp", "otlp")])
def test_demo_service_exports_to_the_console_unless_the_user_chose(
    otel_env, tmp_path: Path, outer: str | None, expected: str
) -> None:
    if outer is not None:
        otel_env.setenv("OTEL_TRACES_EXPORTER", outer)
    spawned: list[dict[str, str] | None] = []

    def spawn(self: DemoStack, name: str, argv: list[str], env: dict[str, str] | None = None):
        spawned.append(env)

    otel_env.setattr(DemoStack, "_spawn", spawn)

    stack = DemoStack(tmp_path, DemoPorts(upstream=0))
    try:
        stack.start_service()
    finally:
        stack.stop()  # closes the echo upstream's socket; no process was started

    (env,) = spawned
    assert env is not None and env["OTEL_TRACES_EXPORTER"] == expected
