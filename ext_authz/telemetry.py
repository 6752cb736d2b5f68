"""Tracing: span and attribute names, trace context propagation, and the SDK set-up.

One SERVER span ``ext_authz.check`` per Check, with a child span per pipeline phase that runs
(credentials; identity when a credential was sent; guards when any are configured;
authorization); phase spans are only made when the Check span is recording (sampled). It
continues the caller's trace: W3C ``traceparent`` or B3 (single ``b3`` or multi ``x-b3-*``
headers), read from the gRPC call's metadata first (where Envoy puts the context of its ext_authz
call when tracing is on), else from the checked request's headers.

Set-up follows the standard OTEL_* environment (``configure_tracing``):

- ``OTEL_TRACES_EXPORTER``: comma-separated ``otlp``, ``console`` (one JSON line per span on
  stdout) or ``none``. Unset, it is ``otlp`` when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
  ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set and ``none`` otherwise, so a service with no
  collector does not keep dialling localhost:4317.
- ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` / ``OTEL_EXPORTER_OTLP_PROTOCOL``: ``grpc`` (the
  default) or ``http/protobuf``. The exporters read their endpoint, headers, TLS, timeout and
  compression variables themselves.
- Read by the SDK itself: ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG`` (default
  ``parentbased_always_on``: Envoy's sampling decision is followed), ``OTEL_BSP_*`` (batching),
  ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_SDK_DISABLED``.

With no exporter no SDK is installed and nothing is recorded (about 10 µs per Check); the
decision log still carries the caller's trace id, because the API alone continues the incoming
span context. A caller's unsampled W3C trace (99 checks in 100 when Envoy samples 1%) is parsed
without the propagators and carried as it is, without a span, whenever the sampler would drop
that span anyway (skips_unsampled_callers): a few µs instead of ~20.

No span or attribute ever holds a credential, a cookie, a query value or the Authorization header.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from contextvars import Token
from typing import Final

from opentelemetry import trace
from opentelemetry.context import Context, attach, create_key, detach, get_value, set_value
from opentelemetry.propagators.b3 import B3MultiFormat
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.environment_variables import (
    OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_EXPORTER_OTLP_PROTOCOL,
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
)
from opentelemetry.sdk.resources import (
    SERVICE_NAME,
    SERVICE_VERSION,
    OTELResourceDetector,
    Resource,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    StaticSampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    TraceFlags,
    Tracer,
    set_span_in_context,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ext_authz import __version__
from ext_authz.errors import ConfigError

__all__ = [
    "ATTR_AUTH_METHOD",
    "ATTR_CACHE_HIT",
    "ATTR_CREDENTIAL_SOURCE",
    "ATTR_DECISION",
    "ATTR_DECISION_ID",
    "ATTR_PROVIDER",
    "ATTR_REASON",
    "ATTR_REQUEST_ID",
    "ATTR_ROUTE",
    "ATTR_RULE",
    "SPAN_AUTHORIZATION",
    "SPAN_CHECK",
    "SPAN_CREDENTIALS",
    "SPAN_GUARDS",
    "SPAN_IDENTITY",
    "TRACER_NAME",
    "check_span",
    "configure_tracing",
    "extract_parent",
    "phase_tracer",
    "shutdown_tracing",
    "skips_unsampled_callers",
    "span_exporters_from_env",
    "tracer_provider_from_env",
]

TRACER_NAME: Final = "ext_authz"

SPAN_CHECK: Final = "ext_authz.check"
SPAN_CREDENTIALS: Final = "ext_authz.credentials"
SPAN_IDENTITY: Final = "ext_authz.identity"
SPAN_GUARDS: Final = "ext_authz.guards"
SPAN_AUTHORIZATION: Final = "ext_authz.authorization"

ATTR_DECISION: Final = "ext_authz.decision"  # Outcome value: allow, forbidden, ...
ATTR_REASON: Final = "ext_authz.reason_code"  # on a phase span: the error code it refused with
ATTR_REQUEST_ID: Final = "ext_authz.request_id"
ATTR_DECISION_ID: Final = "ext_authz.decision_id"
ATTR_ROUTE: Final = "ext_authz.route"  # method and normalized path, never the query
ATTR_RULE: Final = "ext_authz.policy.rule"  # the policy line that decided
ATTR_CREDENTIAL_SOURCE: Final = "ext_authz.credential.source"  # where, e.g. "cookie 'session'"
ATTR_PROVIDER: Final = "ext_authz.identity.provider"  # issuer (or api-key:<id>, mtls)
ATTR_AUTH_METHOD: Final = "ext_authz.identity.method"  # jwt, introspection, api_key, mtls
# Whether the identity came from the verified-token cache (on the identity span; set by the
# token verifier in identity/jwt.py).
ATTR_CACHE_HIT: Final = "ext_authz.token_cache.hit"

# Extraction runs every propagator in order, a later one overriding an earlier one: with both
# present, W3C tracecontext wins over B3. B3MultiFormat reads the single `b3` header too.
_PROPAGATOR: Final = CompositePropagator([B3MultiFormat(), TraceContextTextMapPropagator()])
# Without one of traceparent, b3 or x-b3-traceid (lowercase, as gRPC metadata and Envoy's
# header map have them) neither propagator can find a trace context: see _carries_context.

# A W3C traceparent of version 00 whose sampled flag is clear: what a caller sampling at 1%
# sends on 99 checks in 100. Parsed here, the propagators need not run for it (see
# _unsampled_parent); anything else (sampled, other versions, whitespace) takes their path.
_UNSAMPLED_TRACEPARENT: Final = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f][02468ace])")
# The SDK's own samplers: a probe tells how they treat an unsampled caller for every call.
_PROBED_SAMPLERS: Final = (ParentBased, StaticSampler, TraceIdRatioBased)

# The tracer of the Check being handled, for the pipeline's phase spans (see check_span).
_TRACER_KEY: Final = create_key("ext_authz.tracer")
# The global provider's tracer: a no-op until configure_tracing installs the SDK.
_GLOBAL_TRACER: Final = trace.get_tracer(TRACER_NAME)

_EXPORTERS_VARIABLE: Final = "OTEL_TRACES_EXPORTER"
_EXPORTER_NAMES: Final = ("otlp", "console", "none")


def extract_parent(
    metadata: Iterable[tuple[str, str | bytes]], headers: Mapping[str, str]
) -> Context:
    """The caller's trace context: from the gRPC ``metadata`` when it carries one, else from the
    checked request's ``headers``; an empty Context (a new trace) when neither does."""
    carrier = {key: value for key, value in metadata if isinstance(value, str)}
    if _carries_context(carrier):
        unsampled = _unsampled_parent(carrier)
        if unsampled is not None:
            return unsampled
        context = _PROPAGATOR.extract(carrier)
        if trace.get_current_span(context).get_span_context().is_valid:
            return context
    # Most requests carry no trace context: skip running the propagators on every Check.
    return _PROPAGATOR.extract(headers) if _carries_context(headers) else Context()


def _carries_context(carrier: Mapping[str, object]) -> bool:
    # Three membership tests, not any() over a generator: this runs twice per Check.
    return "traceparent" in carrier or "b3" in carrier or "x-b3-traceid" in carrier


def _unsampled_parent(carrier: Mapping[str, str]) -> Context | None:
    """The context the propagators would extract from ``carrier`` when it holds a plain W3C
    traceparent with the sampled flag clear and no tracestate; else None. A valid traceparent
    wins over B3 in the composite propagator, so B3 headers beside it change nothing."""
    match = _UNSAMPLED_TRACEPARENT.fullmatch(carrier.get("traceparent", ""))
    if match is None or carrier.get("tracestate"):
        return None
    trace_id, span_id = int(match[1], 16), int(match[2], 16)
    if not trace_id or not span_id:  # all zeros: invalid, the propagators ignore it
        return None
    flags = TraceFlags(int(match[3], 16))
    span_context = SpanContext(trace_id, span_id, is_remote=True, trace_flags=flags)
    return set_span_in_context(NonRecordingSpan(span_context))


def skips_unsampled_callers(tracer: Tracer) -> bool:
    """Whether ``tracer`` records nothing for a span whose remote parent is not sampled, so a
    Check continuing such a caller's trace can skip starting a span and just carry the caller's
    context (for the decision log's trace id). True for the SDK's parent-based samplers (the
    default, and every ``parentbased_*`` OTEL_TRACES_SAMPLER) and ``always_off``; False for
    ``always_on``, ratio samplers, custom samplers and the API's proxy tracer."""
    if not isinstance(tracer, SdkTracer) or not isinstance(tracer.sampler, _PROBED_SAMPLERS):
        return False
    # Trace id 1 is sampled by any ratio sampler with a rate above zero.
    probe = SpanContext(1, 1, is_remote=True, trace_flags=TraceFlags(TraceFlags.DEFAULT))
    result = tracer.sampler.should_sample(
        set_span_in_context(NonRecordingSpan(probe)), 1, SPAN_CHECK, SpanKind.SERVER
    )
    return result.decision is Decision.DROP


class check_span(AbstractContextManager[Span]):  # noqa: N801 - used like a function
    """The SERVER span of one Check, a child of ``parent`` and current while the block runs.

    ``tracer`` (the servicer's: injected, or the global one) also becomes phase_tracer() inside
    the block, so every span of the Check comes from the same provider. Exceptions are left to
    the caller to record: the servicer turns them into an answer. A plain class rather than
    @contextmanager, and nothing is attached when there is neither a span nor a caller's trace
    (tracing off, no trace headers): this runs on every Check.

    With ``skip_unsampled`` (skips_unsampled_callers(tracer)) a caller's unsampled trace is
    carried as it is instead of starting a span the sampler would drop anyway.
    """

    __slots__ = ("_parent", "_skip_unsampled", "_span", "_token", "_tracer")

    def __init__(self, tracer: Tracer, parent: Context, skip_unsampled: bool = False) -> None:
        self._tracer = tracer
        self._parent = parent
        self._skip_unsampled = skip_unsampled
        self._token: Token[Context] | None = None

    def __enter__(self) -> Span:
        if self._skip_unsampled:
            caller = trace.get_current_span(self._parent)
            caller_context = caller.get_span_context()
            if caller_context.is_valid and not caller_context.trace_flags.sampled:
                # Nothing records below it: no phase spans, so no tracer to hand down.
                self._span = caller
                self._token = attach(self._parent)
                return caller
        self._span = self._tracer.start_span(SPAN_CHECK, self._parent, kind=SpanKind.SERVER)
        if self._span.get_span_context().is_valid:
            context = set_value(_TRACER_KEY, self._tracer, self._parent)
            self._token = attach(set_span_in_context(self._span, context))
        return self._span

    def __exit__(self, *_: object) -> None:
        self._span.end()
        if self._token is not None:
            detach(self._token)


def phase_tracer() -> Tracer:
    """The tracer for a pipeline phase span: the current Check's (check_span), else the global
    one (offline tools such as `policy test` and `explain` run the pipeline outside a Check)."""
    tracer = get_value(_TRACER_KEY)
    return tracer if isinstance(tracer, Tracer) else _GLOBAL_TRACER


def _one_json_line(span: ReadableSpan) -> str:
    return f"{span.to_json(indent=None)}\n"


def _otlp_exporter() -> SpanExporter:
    variable = OTEL_EXPORTER_OTLP_TRACES_PROTOCOL
    protocol = os.environ.get(variable, "").strip()
    if not protocol:
        variable = OTEL_EXPORTER_OTLP_PROTOCOL
        protocol = os.environ.get(variable, "").strip() or "grpc"
    # Imported here: each exporter costs tens of milliseconds to import, and only one is used.
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpOTLPSpanExporter,
        )

        return HttpOTLPSpanExporter()
    raise ConfigError(f"{variable}: unsupported protocol {protocol!r}; use grpc or http/protobuf")


def span_exporters_from_env() -> list[SpanExporter]:
    """The exporters OTEL_TRACES_EXPORTER names (see the module docstring); raises ConfigError
    for an unknown name, an unknown OTLP protocol, or ``none`` listed beside another exporter."""
    value = os.environ.get(_EXPORTERS_VARIABLE, "").strip()
    if not value:
        endpoints = (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_ENDPOINT)
        value = "otlp" if any(os.environ.get(name) for name in endpoints) else "none"
    names = [name.strip().lower() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in _EXPORTER_NAMES]
    if unknown:
        raise ConfigError(
            f"{_EXPORTERS_VARIABLE}: unknown exporter {unknown[0]!r}; "
            f"use {', '.join(_EXPORTER_NAMES)} (comma-separated)"
        )
    if "none" in names:
        if len(set(names)) > 1:
            raise ConfigError(f"{_EXPORTERS_VARIABLE}: 'none' cannot be combined with {value!r}")
        return []
    exporters: list[SpanExporter] = []
    for name in dict.fromkeys(names):  # each exporter once, in the order given
        if name == "otlp":
            exporters.append(_otlp_exporter())
        else:
            exporters.append(ConsoleSpanExporter(formatter=_one_json_line))
    return exporters


def _resource(service_name: str) -> Resource:
    """``service_name`` and the version, unless OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES say
    otherwise (Resource.create alone would let our defaults override the environment)."""
    from_env = OTELResourceDetector().detect().attributes
    defaults = {SERVICE_NAME: service_name, SERVICE_VERSION: __version__}
    return Resource.create({key: value for key, value in defaults.items() if key not in from_env})


def tracer_provider_from_env(service_name: str = "ext-authz") -> TracerProvider | None:
    """An SDK TracerProvider exporting in batches to the configured exporters, or None when
    there are none. It is not installed and is not shut down at exit: the caller does both."""
    exporters = span_exporters_from_env()
    if not exporters:
        return None
    provider = TracerProvider(resource=_resource(service_name), shutdown_on_exit=False)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def configure_tracing(service_name: str = "ext-authz") -> None:
    """Install the tracer provider the OTEL_* environment describes (none: tracing stays off).

    Call once at start-up, before the server is built; raises ConfigError for bad settings.
    """
    provider = tracer_provider_from_env(service_name)
    if provider is not None:
        trace.set_tracer_provider(provider)


def shutdown_tracing() -> None:
    """Export the spans still queued and stop the exporters (at exit; a no-op without SDK)."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()
