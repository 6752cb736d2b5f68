"""Throughput benchmark: Envoy alone, Envoy's native filters, a hand-rolled ext_authz and
ext-authz, side by side on this machine, plus direct gRPC load on the Check servers.

    python -m bench.throughput [--duration 10] [--json bench/throughput.json] [--only a,d,...]

Scenarios (Envoy runs with one worker; its one route is a direct response):

  a        Envoy, no authorization: the ceiling
  b        Envoy jwt_authn + rbac for the demo rules they can express
  c        Envoy + a hand-rolled ext_authz (python-jose + stock casbin.Enforcer per request)
  t        Envoy + the trivial always-allow servicer (grpc.aio): the most any Python gRPC
           ext_authz reaches through this Envoy; t-half at half of d's maximum rate (the
           latency a Check that does nothing adds)
  d        Envoy + ext-authz, the compose config, tracing on at the production default sampling:
           Envoy samples 1% of requests (Istio's default; ext-authz follows Envoy's decision)
  d-notrace  the same with tracing off
  d-100pct the same with every request traced, as the demo and compose do (a trace UI for all)
  d-half / a-half  d and a at half of d's maximum rate (added p99 latency)
  d-notrace-half   d-notrace at half of its maximum rate
  d-w2     d with `serve --workers 2` (Envoy spreads checks over HTTP/2 connections)
  d-notrace-w2 (-half)  d-notrace with 2 workers (and at d-notrace-half's rate); -uncapped
           without the cap on streams per connection (how many checks each worker gets)
  grpc-*   h2load straight to a Check server: the trivial always-allow servicer (sync and
           grpc.aio), the hand-rolled one, and ext-authz with 1 and 2 workers

Traffic: RS256 tokens of distinct users and a mix of allowed and denied requests over the demo
routes (bench/traffic.py). Before each Envoy measurement the harness sends a sample of the
requests and counts answers that differ from the demo's rules. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import resource
import signal
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench import loadgen, procs, report, traffic
from bench.envoy_scenarios import BenchPorts, render
from bench.service_config import service_config
from ext_authz.demo.credentials import ensure_demo_credentials
from ext_authz.demo.keys import ensure_demo_keys
from ext_authz.demo.stack import find_envoy

# Checks Envoy may run at once on one HTTP/2 connection to the authz cluster before opening
# another: more connections are what let SO_REUSEPORT spread them over workers.
AUTHZ_MAX_STREAMS = 4
# Percent of requests Envoy traces in (d): Istio's default, and what the README recommends for
# production; the demo and compose trace every request (d-100pct).
DEFAULT_SAMPLING = 1
DIRECT_KINDS = ("books", "drafts", "public", "post_book")  # one h2load per CheckRequest


class Bench:
    def __init__(self, workdir: Path, duration: float, connections: int, seed: int) -> None:
        self.workdir = workdir
        self.duration = duration
        self.connections = connections
        self.state = workdir / "state"
        ensure_demo_keys(self.state)
        ensure_demo_credentials(self.state)
        rng = random.Random(seed)
        users = traffic.make_users(self.state, 300, rng)
        self.requests = traffic.make_requests(users, 3000, rng)
        self.script = workdir / "mix.lua"
        self.script.write_text(traffic.wrk_script(self.requests))
        self.bodies = []
        for kind in DIRECT_KINDS:
            request = next(r for r in self.requests if r.kind == kind)
            body = workdir / f"{kind}.grpc"
            body.write_bytes(traffic.grpc_frame(traffic.check_request(request).SerializeToString()))
            self.bodies.append(body)
        self.python = sys.executable

    # -- processes -------------------------------------------------------------------------

    def ours(self, port: int, *, workers: int = 1, otlp: int = 0) -> procs.Proc:
        settings = service_config(self.state, port, procs.free_port())
        config = self.workdir / f"ext-authz-{port}.yaml"
        config.write_text(yaml.safe_dump(settings))
        env = {**os.environ, "OTEL_SERVICE_NAME": "ext-authz"}
        if otlp:  # as docker-compose sets it
            env.update(
                OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{otlp}",
                OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
            )
        else:
            env["OTEL_TRACES_EXPORTER"] = "none"
        argv = [self.python, "-m", "ext_authz", "serve", "--config", str(config)]
        if workers > 1:
            argv += ["--workers", str(workers)]
        proc = procs.spawn(f"ext-authz-{port}", argv, self.workdir, env)
        procs.wait_until("ext-authz", lambda: _serving(port), proc)
        # Health answers once one worker serves: wait for all, or the first connections all
        # land on the first one.
        procs.wait_until("ext-authz workers", lambda: _workers_serving(proc) >= workers, proc)
        return proc

    def baseline(self, kind: str, port: int, *extra: str) -> procs.Proc:
        argv = [self.python, "-m", "bench.baseline", kind, "--port", str(port), *extra]
        if kind == "naive":
            argv += ["--jwks", str(self.state / "jwks.json")]
        proc = procs.spawn(f"{kind}-{port}", argv, self.workdir)
        procs.wait_until(kind, lambda: "ready" in proc.tail(), proc)
        return proc

    def sink(self) -> tuple[procs.Proc, int]:
        port = procs.free_port()
        proc = procs.spawn(
            f"otlp-sink-{port}",
            [self.python, "-m", "bench.otlp_sink", "--port", str(port)],
            self.workdir,
        )
        procs.wait_until("OTLP sink", lambda: "ready" in proc.tail(), proc)
        return proc, port

    def envoy(
        self,
        filters: str,
        authz: int = 0,
        otlp: int = 0,
        max_streams: int | None = None,
        sampling: float | None = None,
    ) -> tuple[procs.Proc, str]:
        ports = BenchPorts(procs.free_port(), procs.free_port(), authz, otlp)
        config = render(
            filters,
            ports,
            self.state,
            tracing=bool(otlp),
            sampling=sampling,
            authz_max_streams=max_streams,
        )
        path = self.workdir / f"envoy-{ports.listen}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        argv = [
            str(find_envoy()),
            "-c",
            str(path),
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "--log-level",
            "warn",
        ]
        proc = procs.spawn(f"envoy-{ports.listen}", argv, self.workdir)
        procs.wait_until("envoy", lambda: _http_ok(f"http://127.0.0.1:{ports.admin}/ready"), proc)
        return proc, f"http://127.0.0.1:{ports.listen}"

    # -- measurements ----------------------------------------------------------------------

    def verify(self, url: str, expected: Callable[[traffic.Request], int]) -> dict[str, int]:
        """Send a sample of the mix once; count answers that differ from ``expected``."""
        host = url.removeprefix("http://")
        wrong: Counter[str] = Counter()
        connection = http.client.HTTPConnection(host, timeout=5)
        try:
            for request in self.requests[:300]:
                connection.request(request.method, request.path, headers=request.headers)
                reply = connection.getresponse()
                reply.read()
                if reply.status != expected(request):
                    wrong[f"{request.kind}: {reply.status} (expected {expected(request)})"] += 1
        finally:
            connection.close()
        return dict(wrong)

    def through_envoy(
        self, roots: dict[str, int], url: str, mean_delay_ms: float = 0.0
    ) -> dict[str, Any]:
        connections = 16 if mean_delay_ms else self.connections
        with procs.Usage(roots) as usage:
            loader = _children_cpu()
            figures = loadgen.run_wrk(url, self.script, self.duration, connections, mean_delay_ms)
            loader = _children_cpu() - loader
        return _row(figures, usage, loader, self.duration)

    def direct(self, roots: dict[str, int], port: int, clients: int = 2) -> dict[str, Any]:
        with procs.Usage(roots) as usage:
            loader = _children_cpu()
            figures = loadgen.run_h2load(
                f"http://127.0.0.1:{port}", self.bodies, self.duration, clients, streams=4
            )
            loader = _children_cpu() - loader
        return _row(figures, usage, loader, self.duration + 1)  # h2load warms up for 1 s


def _serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _workers_serving(proc: procs.Proc) -> int:
    lines = proc.log.read_text(errors="replace").splitlines()
    serving = [line for line in lines if '"message":"serving ext_authz on' in line]
    return len(serving) if len(serving) == 1 else sum('"worker"' in line for line in serving)


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=1) as reply:  # noqa: S310 - loopback URL we built
        return bool(reply.status == 200)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _row(
    figures: dict[str, float], usage: procs.Usage, loader_cpu: float, seconds: float
) -> dict[str, Any]:
    row: dict[str, Any] = dict(figures)
    row["cpu_percent"] = {name: round(100 * cpu / seconds) for name, cpu in usage.cpu.items()}
    row["cpu_percent"]["loader"] = round(100 * loader_cpu / seconds)
    if "authz" in usage.cpu and figures["rps"]:
        # the service's CPU per request (all its processes), at the measured rate
        row["authz_cpu_us_per_request"] = round(
            usage.cpu["authz"] / (figures["rps"] * seconds) * 1e6
        )
    row["cpu_percent_by_pid"] = {
        name: {str(pid): round(100 * cpu / seconds) for pid, cpu in by_pid.items()}
        for name, by_pid in usage.cpu_by_pid.items()
    }
    row["peak_rss_mb"] = {
        name: {str(pid): mb for pid, mb in peaks.items()}
        for name, peaks in usage.peak_rss_mb.items()
    }
    return row


def _native_expected(request: traffic.Request) -> int:
    """The demo's rules as far as jwt_authn + rbac express them (envoy_scenarios.NATIVE_GAPS)."""
    if request.kind == "books_anonymous":
        return 403
    if request.kind == "own_profile" and request.role != "admin":
        return 403
    return request.expected


def run(bench: Bench, only: set[str] | None) -> dict[str, Any]:
    results: dict[str, Any] = {}

    def wanted(name: str) -> bool:
        return only is None or name in only

    def envoy_run(
        name: str,
        filters: str,
        authz: Callable[[int, int], procs.Proc] | None = None,
        *,
        tracing: bool = False,
        sampling: float | None = None,
        max_streams: int | None = None,
        expected: Callable[[traffic.Request], int] = lambda r: r.expected,
        half_of: str | None = None,
    ) -> None:
        print(f"-- {name}", flush=True)
        with ExitStack() as stack:
            roots: dict[str, int] = {}
            otlp = 0
            if tracing:
                sink, otlp = bench.sink()
                stack.callback(procs.stop, sink)
                roots["otlp-sink"] = sink.pid
            port = 0
            if authz is not None:
                port = procs.free_port()
                service = authz(port, otlp)
                stack.callback(procs.stop, service)
                roots["authz"] = service.pid
            envoy, url = bench.envoy(filters, port, otlp, max_streams, sampling)
            stack.callback(procs.stop, envoy)
            roots["envoy"] = envoy.pid
            wrong = bench.verify(url, expected)
            delay = 0.0
            if half_of is not None:
                rate = results[half_of]["rps"] / 2
                delay = 16 / rate * 1000
            row = bench.through_envoy(roots, url, delay)
            row["mismatches"] = wrong
            if half_of is not None:
                row["target_rps"] = round(results[half_of]["rps"] / 2, 1)
            results[name] = row
            print(report.line(name, row), flush=True)

    def ours(workers: int = 1) -> Callable[[int, int], procs.Proc]:
        return lambda port, otlp: bench.ours(port, workers=workers, otlp=otlp)

    def trivial(name: str, half_of: str | None = None) -> None:
        """Envoy in front of the trivial grpc.aio servicer (it allows everything)."""
        envoy_run(
            name,
            "ext_authz",
            lambda port, _: bench.baseline("trivial", port, "--aio"),
            expected=lambda _: 200,
            half_of=half_of,
        )

    if wanted("a"):
        envoy_run("a", "none", expected=lambda _: 200)
    if wanted("b"):
        envoy_run("b", "native", expected=_native_expected)
    if wanted("c"):
        envoy_run("c", "ext_authz", lambda port, _: bench.baseline("naive", port))
    if wanted("t"):
        trivial("t")
    if wanted("d-notrace"):
        envoy_run("d-notrace", "ext_authz", ours())
        envoy_run("d-notrace-half", "ext_authz", ours(), half_of="d-notrace")
    if wanted("d"):
        envoy_run("d", "ext_authz", ours(), tracing=True, sampling=DEFAULT_SAMPLING)
        envoy_run(
            "d-half", "ext_authz", ours(), tracing=True, sampling=DEFAULT_SAMPLING, half_of="d"
        )
        envoy_run("a-half", "none", expected=lambda _: 200, half_of="d")
        if wanted("t"):
            trivial("t-half", half_of="d")
    if wanted("d-100pct"):
        envoy_run("d-100pct", "ext_authz", ours(), tracing=True, sampling=100)
    if wanted("d-w2"):
        envoy_run(
            "d-w2",
            "ext_authz",
            ours(2),
            tracing=True,
            sampling=DEFAULT_SAMPLING,
            max_streams=AUTHZ_MAX_STREAMS,
        )
    if wanted("d-notrace-w2"):
        # Without the stream cap Envoy keeps one connection: one worker gets every check.
        envoy_run("d-notrace-w2-uncapped", "ext_authz", ours(2))
        envoy_run("d-notrace-w2", "ext_authz", ours(2), max_streams=AUTHZ_MAX_STREAMS)
        if "d-notrace" in results:  # at the rate of d-notrace-half, to compare the two
            envoy_run(
                "d-notrace-w2-half",
                "ext_authz",
                ours(2),
                max_streams=AUTHZ_MAX_STREAMS,
                half_of="d-notrace",
            )
    for name, start, clients in (
        ("grpc-trivial", lambda p: bench.baseline("trivial", p), 2),
        ("grpc-trivial-aio", lambda p: bench.baseline("trivial", p, "--aio"), 2),
        ("grpc-naive", lambda p: bench.baseline("naive", p), 2),
        ("grpc-ours", lambda p: bench.ours(p), 2),
        ("grpc-ours-w1", lambda p: bench.ours(p), 4),
        ("grpc-ours-w2", lambda p: bench.ours(p, workers=2), 4),
    ):
        if not wanted(name):
            continue
        print(f"-- {name}", flush=True)
        port = procs.free_port()
        server = start(port)
        try:
            results[name] = bench.direct({"authz": server.pid}, port, clients)
        finally:
            procs.stop(server)
        print(report.line(name, results[name]), flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per scenario")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--only", help="comma-separated scenario names (default: all)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    missing = loadgen.missing_tools()
    if missing:
        print(f"missing: {', '.join(missing)}; {loadgen.INSTALL_HINT}", file=sys.stderr)
        return 2
    only = set(args.only.split(",")) if args.only else None
    # SIGTERM unwinds like Ctrl-C, so every process the harness started is stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="ext-authz-bench-") as tmp:
        bench = Bench(Path(tmp), args.duration, args.connections, args.seed)
        meta = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "load_average_before": os.getloadavg(),
            "cpus": os.cpu_count(),
            "duration_s": args.duration,
            "wrk_connections": args.connections,
            "denied_share": round(traffic.denied_share(bench.requests), 3),
            "command": "python -m bench.throughput " + " ".join(sys.argv[1:]),
        }
        results = run(bench, only)
    summary = report.summarize(results)
    print()
    print(report.table(results, summary))
    if args.json:
        payload = {"meta": meta, "scenarios": results, "summary": summary}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
