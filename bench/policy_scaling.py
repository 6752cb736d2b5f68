"""Policy scaling: stock casbin.Enforcer vs ext-authz's PolicyEnforcer, same model and rules.

    python bench/policy_scaling.py [--sizes 1000,10000,100000] [--json FILE]

RBAC over paths (g + keyMatch2 + method), the issue's case. Each size gets a generated policy:
roles with path rules spread over services, users assigned to roles (about 10% of the lines),
and requests from random users for random paths (a mix of allowed and denied). Both enforcers
decide the same requests; every decision is compared, and per-decision latency is reported as
p50/p99 microseconds. Ours is measured with its decision cache off (every request is a miss) and
on (the same requests again). Stock gets fewer requests at large sizes: it scans every line.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import casbin

from ext_authz.policy.enforcer import PolicyEnforcer

MODEL = """
[request_definition]
r = sub, obj, act

[policy_definition]
p = sub, obj, act

[role_definition]
g = _, _

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = g(r.sub, p.sub) && keyMatch2(r.obj, p.obj) && r.act == p.act
"""
ACTIONS = ("GET", "POST", "PUT", "DELETE")


def generate(size: int, rng: random.Random) -> tuple[list[str], list[tuple[str, str, str]]]:
    roles = max(10, size // 100)
    services = max(5, roles // 10)
    users = size // 10
    lines = []
    grants: dict[str, list[tuple[str, str]]] = {}
    for index in range(size - users):
        role = f"role{index % roles}"
        service = f"svc{rng.randrange(services)}"
        path = rng.choice(
            [f"/{service}/items", f"/{service}/items/:id", f"/{service}/items/:id/notes/*"]
        )
        action = rng.choice(ACTIONS)
        lines.append(f"p, {role}, {path}, {action}")
        concrete = path.replace(":id", "42").replace("*", "n1")
        grants.setdefault(role, []).append((concrete, action))
    membership = {f"user{u}": f"role{rng.randrange(roles)}" for u in range(users)}
    lines += [f"g, {user}, {role}" for user, role in membership.items()]
    requests = []
    for _ in range(2000):
        user = f"user{rng.randrange(users)}"
        if rng.random() < 0.5:  # something the user's role grants
            path, action = rng.choice(grants[membership[user]])
        else:  # something random, usually denied
            path = f"/svc{rng.randrange(services)}/items/{rng.randrange(100)}"
            action = rng.choice(ACTIONS)
        requests.append((user, path, action))
    return lines, requests


def timed(decide, requests) -> tuple[list[bool], list[float]]:  # noqa: ANN001
    results, micros = [], []
    for request in requests:
        started = time.perf_counter()
        results.append(decide(*request))
        micros.append((time.perf_counter() - started) * 1e6)
    return results, micros


def summary(micros: list[float]) -> dict[str, float]:
    ordered = sorted(micros)
    return {
        "p50_us": round(statistics.median(ordered), 1),
        "p99_us": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 1),
    }


def run(size: int, rng: random.Random, workdir: Path) -> dict[str, object]:
    lines, requests = generate(size, rng)
    model, policy = workdir / "model.conf", workdir / f"policy-{size}.csv"
    model.write_text(MODEL)
    policy.write_text("\n".join(lines) + "\n")
    started = time.perf_counter()
    ours = PolicyEnforcer(model, policy, cache_size=0)
    ours_load = time.perf_counter() - started
    cached = PolicyEnforcer(model, policy)
    stock = casbin.Enforcer(str(model), str(policy))
    stock_requests = requests[: max(20, min(2000, 2_000_000 // size))]
    stock_results, stock_us = timed(stock.enforce, stock_requests)
    ours_results, ours_us = timed(ours.enforce, requests)
    timed(cached.enforce, requests)  # warm the cache
    cached_results, cached_us = timed(cached.enforce, requests)
    mismatches = sum(a != b for a, b in zip(stock_results, ours_results, strict=False))
    mismatches += sum(a != b for a, b in zip(ours_results, cached_results, strict=True))
    return {
        "policy_lines": size,
        "requests": len(requests),
        "allowed_share": round(sum(ours_results) / len(ours_results), 3),
        "stock": {**summary(stock_us), "requests": len(stock_requests)},
        "ours_uncached": summary(ours_us),
        "ours_cached": summary(cached_us),
        "speedup_p50": round(summary(stock_us)["p50_us"] / summary(ours_us)["p50_us"], 1),
        "ours_load_s": round(ours_load, 2),
        "mismatches": mismatches,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rng = random.Random(7)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            rows.append(run(size, rng, Path(tmp)))
            row = rows[-1]
            print(
                f"{row['policy_lines']:>7} lines | stock p50 {row['stock']['p50_us']:>9} us"
                f" p99 {row['stock']['p99_us']:>9} us"
                f" | ours p50 {row['ours_uncached']['p50_us']:>6}"
                f" p99 {row['ours_uncached']['p99_us']:>6} us | cached p50"
                f" {row['ours_cached']['p50_us']:>5} p99 {row['ours_cached']['p99_us']:>5} us |"
                f" x{row['speedup_p50']} | allowed {row['allowed_share']:.0%}"
                f" | mismatches {row['mismatches']}",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 1 if any(row["mismatches"] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
