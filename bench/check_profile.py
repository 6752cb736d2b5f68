"""Where one Check's time goes, in-process (no gRPC): CPU µs per Check for the whole servicer and
for each part, with the compose config and the benchmark's request mix.

    python -m bench.check_profile

Parts are timed inside a full Check (a Check with that part removed, subtracted from the
whole), because timed alone in a tight loop they look two to three times cheaper than they are.
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
from collections.abc import Callable
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


def cpu_us(check: Callable[[int], object], count: int = PER_ROUND) -> float:
    """Median over rounds of process CPU µs per call (background threads included)."""
    rounds = []
    for _ in range(ROUNDS):
        started = time.process_time()
        for index in range(count):
            check(index)
        rounds.append((time.process_time() - started) / count * 1e6)
    return round(sorted(rounds)[ROUNDS // 2], 1)


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
    def whole(servicer: Any, contexts: list[Any] | None = None) -> float:
        context = contexts or [None] * len(checks)
        for check, call in zip(checks, context, strict=True):  # warm: tokens verified, caches
            servicer.Check(check, call)
        return cpu_us(lambda i: servicer.Check(checks[i], context[i]))

    rows: dict[str, float] = {}
    total = rows["Check, tracing off (everything below)"] = whole(_servicer(runtime))
    bare = whole(_servicer(dataclasses.replace(runtime, observers=())))
    rows["  request parsing, pipeline, response, span context"] = bare
    for observer in runtime.observers:
        alone = dataclasses.replace(runtime, observers=(observer,))
        rows[f"  observer {type(observer).__name__}"] = round(whole(_servicer(alone)) - bare, 1)
    spans = TracerProvider(shutdown_on_exit=False)
    spans.add_span_processor(BatchSpanProcessor(_Drop()))
    rows[f"  + tracing at 1%: Envoy's context on each Check, 1 in {SAMPLED_ONE_IN} recorded"] = (
        round(whole(_servicer(runtime, spans), callers) - total, 1)
    )
    rows["  + tracing: spans recorded, dropped"] = round(
        whole(_servicer(runtime, spans)) - total, 1
    )
    spans.shutdown()
    sink = _otlp_sink()
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exported = TracerProvider(shutdown_on_exit=False)
        exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{sink[1]}", insecure=True)
        exported.add_span_processor(BatchSpanProcessor(exporter))
        rows["  + tracing: spans exported over OTLP"] = round(
            whole(_servicer(runtime, exported)) - total, 1
        )
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
