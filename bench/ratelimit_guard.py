"""Rate-limit guard cost per check: local token buckets vs the shared Redis backend.

    python bench/ratelimit_guard.py [--checks 20000] [--json FILE]

Runs the RateLimiter the service builds (ext_authz.ratelimit.backend.open_store) over the demo's
rules for a pool of distinct subjects, once with the local store and once against a real
redis-server started on a free loopback port (Debian's redis-server; `make redis` installs it).
Reports p50/p99 microseconds per check and the ratio to the local store.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ext_authz.models import AuthRequest, Identity
from ext_authz.ratelimit.backend import open_store
from ext_authz.ratelimit.guard import RateLimiter
from ext_authz.ratelimit.rules import compile_rules
from ext_authz.settings import RateLimitSettings, Settings

RULES = [  # the demo's limits (ext_authz/demo/issuer.py), high enough that nothing is refused
    {"name": "users", "per": "subject", "rate": 1_000_000, "burst": 1_000_000},
    {"name": "anonymous", "per": "address", "rate": 1_000_000, "burst": 1_000_000},
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _limiter(limits: dict[str, object]) -> RateLimiter:
    rate_limits = RateLimitSettings.model_validate_json(json.dumps({"rules": RULES, **limits}))
    settings = Settings.model_construct(rate_limits=rate_limits)  # only what open_store reads
    store, _ = open_store(settings)
    return RateLimiter(compile_rules(settings.rate_limits.rules), store, headers_on_allow=True)


def _measure(limiter: RateLimiter, checks: int) -> dict[str, float]:
    request = AuthRequest(method="GET", path="/api/books", source_address="127.0.0.1")
    users = [Identity(subject=f"user-{n}", method="jwt") for n in range(1000)]
    for identity in users:  # warm: every bucket exists
        limiter.check(identity, request)
    samples = []
    for n in range(checks):
        started = time.perf_counter_ns()
        limiter.check(users[n % len(users)], request)
        samples.append((time.perf_counter_ns() - started) / 1000)
    samples.sort()
    return {
        "p50_us": round(statistics.median(samples), 1),
        "p99_us": round(samples[int(len(samples) * 0.99)], 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=20_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    binary = shutil.which("redis-server")
    if binary is None:
        print("redis-server is not installed: run `make redis` (as root)", file=sys.stderr)
        return 2
    results = {"local": _measure(_limiter({}), args.checks)}
    port = _free_port()
    with tempfile.TemporaryDirectory() as workdir:
        server = subprocess.Popen(  # noqa: S603 - the installed redis-server, our arguments
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", workdir],
            stdout=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.5)
            redis = {"backend": "redis", "redis": {"url": f"redis://127.0.0.1:{port}/0"}}
            results["redis"] = _measure(_limiter(redis), args.checks)
        finally:
            server.terminate()
            server.wait()
    base = results["local"]["p50_us"]
    print(f"{'store':<8} {'p50 us':>8} {'p99 us':>8} {'p50 / local':>12}")
    for name, row in results.items():
        print(f"{name:<8} {row['p50_us']:>8} {row['p99_us']:>8} {row['p50_us'] / base:>12.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
