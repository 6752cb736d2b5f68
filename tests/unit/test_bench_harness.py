"""The throughput benchmark's pure parts: its Envoy configs load in the real Envoy, its traffic
expects what the service really answers, and its load generator output is parsed right."""

from __future__ import annotations

import dataclasses
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # bench/ sits beside the package, it is not installed

from bench import loadgen, traffic  # noqa: E402
from bench.baseline import NaiveServicer  # noqa: E402
from bench.envoy_scenarios import BenchPorts, render  # noqa: E402
from bench.service_config import service_config  # noqa: E402
from ext_authz.demo.credentials import ensure_demo_credentials  # noqa: E402
from ext_authz.demo.keys import ensure_demo_keys  # noqa: E402
from ext_authz.demo.stack import find_envoy  # noqa: E402
from ext_authz.runtime import build_runtime  # noqa: E402
from ext_authz.service import AuthorizationServicer  # noqa: E402
from ext_authz.settings import load_settings  # noqa: E402


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bench-state")
    ensure_demo_keys(folder)
    ensure_demo_credentials(folder)
    return folder


@pytest.fixture(scope="module")
def requests(state: Path) -> list[traffic.Request]:
    rng = random.Random(3)  # noqa: S311 - test traffic, not security
    return traffic.make_requests(traffic.make_users(state, 40, rng), 400, rng)


def _status(response: object) -> int:
    if response.HasField("ok_response"):  # type: ignore[attr-defined]
        return 200
    return int(response.denied_response.status.code)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("filters", "tracing", "streams"),
    [("none", False, None), ("native", False, None), ("ext_authz", True, 4)],
)
def test_scenario_configs_are_accepted_by_envoy(
    state: Path, tmp_path: Path, filters: str, tracing: bool, streams: int | None
) -> None:
    config = render(
        filters,
        BenchPorts(10000, 10001, 10002, 10003),
        state,
        tracing=tracing,
        sampling=1 if tracing else None,
        authz_max_streams=streams,
    )
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [str(find_envoy()), "--mode", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "deprecated" not in result.stdout + result.stderr


def test_the_mix_expects_what_ext_authz_answers(
    state: Path, requests: list[traffic.Request], tmp_path: Path
) -> None:
    settings = service_config(state, 0, 0)
    settings.pop("admin")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(settings))
    runtime = build_runtime(load_settings(config))
    runtime.start()
    try:
        servicer = AuthorizationServicer(lambda: runtime)
        answers = [_status(servicer.Check(traffic.check_request(r), None)) for r in requests]
    finally:
        runtime.stop()
    assert answers == [r.expected for r in requests]
    assert 0.25 < traffic.denied_share(requests) < 0.5  # a realistic mix of both
    assert {r.kind for r in requests} == {kind for kind, _ in traffic.ROUTE_SHARES}


def test_the_hand_rolled_baseline_gives_the_same_answers(
    state: Path, requests: list[traffic.Request], tmp_path: Path
) -> None:
    servicer = NaiveServicer(json.loads((state / "jwks.json").read_text()), tmp_path)
    answers = [_status(servicer.Check(traffic.check_request(r), None)) for r in requests]
    assert answers == [r.expected for r in requests]


def test_grpc_frame_is_the_length_prefixed_message(requests: list[traffic.Request]) -> None:
    message = traffic.check_request(requests[0]).SerializeToString()
    frame = traffic.grpc_frame(message)
    assert frame[0] == 0 and int.from_bytes(frame[1:5], "big") == len(message)
    assert frame[5:] == message


def test_wrk_script_holds_every_request(requests: list[traffic.Request]) -> None:
    script = traffic.wrk_script(requests)
    assert script.count("\n{") == len(requests)
    assert "function done(summary, latency, requests)" in script
    tampered = dataclasses.replace(requests[0], path='/x"y\\z')
    assert '"/x\\"y\\\\z"' in traffic.wrk_script([tampered])


def test_h2load_and_wrk_output_are_parsed() -> None:
    output = (
        "finished in 5.00s, 2538.80 req/s, 615.11KB/s\n"
        "requests: 12700 total, 12732 started, 12694 done, 12690 succeeded, 4 failed, "
        "0 errored, 0 timeout\n"
    )
    assert loadgen.parse_h2load(output) == {"rps": 2538.8, "requests": 12694, "succeeded": 12690}
    with pytest.raises(RuntimeError, match="unexpected h2load output"):
        loadgen.parse_h2load("-D: value error 3.0")
    figures = loadgen.parse_wrk('{"duration_us": 2000000, "requests": 5000, "p99_us": 900}')
    assert figures["rps"] == 2500.0
    assert loadgen.percentile([5, 1, 3, 2, 4], 0.5) == 3.0
