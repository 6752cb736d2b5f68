"""Where one Check's time goes, in-process (no gRPC): CPU µs per Check for the whole servicer and
for each part, with the compose config and the benchmark's request mix.

    python -m bench.check_profile

Parts are timed inside a full Check (a Check with that part, less one without it, timed in
alternate rounds; the median difference), because timed alone in a tight loop they look two to
three times cheaper than they are.
Tracing is timed with the OpenTelemetry SDK at the production default (Envoy samples 1%: each
Check gets Envoy's trace context in its gRPC metadata, sampled in 1 of 100), then recording
every Check (as Envoy's 100% sampling makes it), first dropping the spans, then exporting them
over OTLP/gRPC to a local sink.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from bench import procs, traffic
from bench.service_config import service_config
from ext_authz.demo.credentials import ensure_demo_credentials
from ext_authz.demo.keys import ensure_demo_keys
from ext_authz.logging_setup import configure_logging
from ext_authz.observe import DecisionObserver
from ext_authz.runtime import Runtime, build_runtime
from ext_authz.service import AuthorizationServicer
from ext_authz.settings import load_settings

ROUNDS, PER_ROUND = 7, 2000
SAMPLED_ONE_IN = 100  # Envoy's 1%


class _GrpcContext:
    """What the servicer reads of a gRPC call: the metadata Envoy sends with tracing on."""

    def __init__(self, traceparent: str) -> None:
        self._metadata = (("traceparent", traceparent), ("x-envoy-internal", "true"))

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


def _callers_contexts(count: int, rng: random.Random) -> list[_GrpcContext]:
    return [
        _GrpcContext(
            f"00-{rng.getrandbits(128):032x}-{rng.getrandbits(64):016x}-"
            + ("01" if index % SAMPLED_ONE_IN == 0 else "00")
        )
        for index in range(count)
    ]


class _Drop(SpanExporter):
    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS


_Run = tuple[Any, list[Any], list[Any]]  # a servicer, its CheckRequests, their gRPC contexts


def _round_us(run: _Run) -> float:
    """Process CPU µs per Check over one pass (background threads included)."""
    servicer, checks, contexts = run
    started = time.process_time()
    for check, context in zip(checks, contexts, strict=True):
        servicer.Check(check, context)
    return (time.process_time() - started) / len(checks) * 1e6


def paired_us(base: _Run, variant: _Run) -> tuple[float, float]:
    """The median µs per Check of ``base``, and the median over rounds of what ``variant``
    adds to it: the two are timed alternately, so a shared machine's drift falls on both."""
    for servicer, checks, contexts in (base, variant):  # warm: tokens verified, caches filled
        for check, context in zip(checks, contexts, strict=True):
            servicer.Check(check, context)
    bases, added = [], []
    for _ in range(ROUNDS):
        before = _round_us(base)
        bases.append(before)
        added.append(_round_us(variant) - before)
    return round(sorted(bases)[ROUNDS // 2], 1), round(sorted(added)[ROUNDS // 2], 1)


def _servicer(runtime: Runtime, tracer_provider: TracerProvider | None = None) -> Any:
    return AuthorizationServicer(lambda: runtime, tracer_provider)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        ensure_demo_keys(state)
        ensure_demo_credentials(state)
        settings = service_config(state, 0, procs.free_port())
        (state / "config.yaml").write_text(yaml.safe_dump(settings))
        # Decision log lines go where the service's stderr would; here nowhere.
        sys.stderr = open(state / "stderr.log", "w")  # noqa: SIM115 - for the whole run
        configure_logging("info")
        runtime = build_runtime(load_settings(state / "config.yaml"))
        runtime.start()
        while not runtime.ready():
            time.sleep(0.05)
        rng = random.Random(7)
        users = traffic.make_users(state, 300, rng)
        checks = [traffic.check_request(r) for r in traffic.make_requests(users, PER_ROUND, rng)]
        rows = _measure(runtime, checks, _callers_contexts(len(checks), rng))
        runtime.stop()
        logging.shutdown()
    width = max(len(name) for name in rows)
    for name, value in rows.items():
        print(f"{name:<{width}}  {value:>7.1f} µs", file=sys.__stdout__)
    return 0


def _measure(runtime: Runtime, checks: list[Any], callers: list[_GrpcContext]) -> dict[str, float]:
    plain: list[Any] = [None] * len(checks)

    def run(
        observers: tuple[DecisionObserver, ...] | None = None,
        spans: TracerProvider | None = None,
        contexts: list[_GrpcContext] | None = None,
    ) -> _Run:
        alone = runtime if observers is None else dataclasses.replace(runtime, observers=observers)
        return _servicer(alone, spans), checks, contexts or plain

    rows: dict[str, float] = {}
    bare, total = paired_us(run(observers=()), run())
    rows["Check, tracing off (everything below)"] = round(bare + total, 1)
    rows["  request parsing, pipeline, response, span context"] = bare
    for observer in runtime.observers:
        rows[f"  observer {type(observer).__name__}"] = paired_us(
            run(observers=()), run(observers=(observer,))
        )[1]
    spans = TracerProvider(shutdown_on_exit=False)
    spans.add_span_processor(BatchSpanProcessor(_Drop()))
    rows[f"  + tracing at 1%: Envoy's context on each Check, 1 in {SAMPLED_ONE_IN} recorded"] = (
        paired_us(run(), run(spans=spans, contexts=callers))[1]
    )
    rows["  + tracing: spans recorded, dropped"] = paired_us(run(), run(spans=spans))[1]
    spans.shutdown()
    sink = _otlp_sink()
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exported = TracerProvider(shutdown_on_exit=False)
        exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{sink[1]}", insecure=True)
        exported.add_span_processor(BatchSpanProcessor(exporter))
        rows["  + tracing: spans exported over OTLP"] = paired_us(run(), run(spans=exported))[1]
        exported.shutdown()
    finally:
        procs.stop(sink[0])
    return rows


def _otlp_sink() -> tuple[procs.Proc, int]:
    port = procs.free_port()
    log_dir = Path(tempfile.mkdtemp(prefix="otlp-sink-"))
    argv = [sys.executable, "-m", "bench.otlp_sink", "--port", str(port)]
    proc = procs.spawn("otlp-sink", argv, log_dir)
    procs.wait_until("OTLP sink", lambda: "ready" in proc.tail(), proc)
    return proc, port


if __name__ == "__main__":
    sys.exit(main())
