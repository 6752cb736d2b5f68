"""Load generators: wrk (HTTP through Envoy) and h2load (gRPC straight to a Check server).

Both are C programs that need a small share of one core for what a Python server on this
machine can answer, so neither is the bottleneck (the report lists their CPU next to the
servers').
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

INSTALL_HINT = (
    "the throughput benchmark needs wrk and h2load; on Debian/Ubuntu: "
    "apt-get install -y wrk nghttp2-client"
)
CHECK_PATH = "/envoy.service.auth.v3.Authorization/Check"


def missing_tools() -> list[str]:
    return [tool for tool in ("wrk", "h2load") if shutil.which(tool) is None]


def wrk_command(
    url: str, script: Path, duration: float, connections: int, threads: int = 1
) -> list[str]:
    return [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{round(duration)}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        url,
    ]


def run_wrk(
    url: str,
    script: Path,
    duration: float,
    connections: int,
    mean_delay_ms: float = 0.0,
) -> dict[str, float]:
    """Run wrk and return its figures (requests/s, non_2xx, latency percentiles in µs)."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "wrk.json"
        env = {
            **os.environ,
            "WRK_RESULT_FILE": str(result),
            "WRK_MEAN_DELAY_MS": f"{mean_delay_ms:.3f}",
        }
        completed = subprocess.run(
            wrk_command(url, script, duration, connections),
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if completed.returncode != 0 or not result.exists():
            output = (completed.stdout + completed.stderr)[-800:]
            raise RuntimeError(f"wrk failed ({completed.returncode}): {output}")
        return parse_wrk(result.read_text())


def parse_wrk(text: str) -> dict[str, float]:
    """The JSON the bench's wrk script writes, plus requests/s."""
    figures: dict[str, float] = json.loads(text)
    figures["rps"] = round(figures["requests"] / (figures["duration_us"] / 1e6), 1)
    return figures


def h2load_command(
    url: str, body: Path, duration: float, clients: int, streams: int, log: Path
) -> list[str]:
    return [
        "h2load",
        "-D",
        str(round(duration)),
        "--warm-up-time",
        "1",
        "-c",
        str(clients),
        "-m",
        str(streams),
        "-t",
        "1",
        "-d",
        str(body),
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        f"--log-file={log}",
        url + CHECK_PATH,
    ]


_FINISHED = re.compile(r"finished in [\d.]+m?s, ([\d.]+) req/s")
_REQUESTS = re.compile(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded")


def parse_h2load(output: str) -> dict[str, float]:
    finished, requests = _FINISHED.search(output), _REQUESTS.search(output)
    if finished is None or requests is None:
        raise RuntimeError(f"unexpected h2load output:\n{output[-800:]}")
    return {
        "rps": float(finished.group(1)),
        "requests": int(requests.group(2)),
        "succeeded": int(requests.group(3)),
    }


def log_latencies_us(log: Path) -> list[int]:
    """Request durations (µs) from an h2load --log-file (start, status, duration per line)."""
    return [int(line.split("\t")[2]) for line in log.read_text().splitlines() if line.strip()]


def percentile(values: list[int], share: float) -> float:
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(len(ordered) * share))]) if ordered else 0.0


def run_h2load(
    url: str, bodies: list[Path], duration: float, clients: int, streams: int
) -> dict[str, float]:
    """One h2load per pre-serialized CheckRequest, all at once; requests/s summed."""
    with tempfile.TemporaryDirectory() as tmp:
        logs = [Path(tmp) / f"h2load-{i}.log" for i in range(len(bodies))]
        runs = [
            subprocess.Popen(
                h2load_command(url, body, duration, clients, streams, log),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for body, log in zip(bodies, logs, strict=True)
        ]
        outputs = [run.communicate()[0] for run in runs]
        results = [parse_h2load(output) for output in outputs]
        latencies = [value for log in logs for value in log_latencies_us(log)]
    return {
        "rps": round(sum(r["rps"] for r in results), 1),
        "requests": sum(r["requests"] for r in results),
        "failed": sum(r["requests"] - r["succeeded"] for r in results),
        "p50_us": percentile(latencies, 0.50),
        "p99_us": percentile(latencies, 0.99),
    }
