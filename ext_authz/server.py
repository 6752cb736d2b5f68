"""Building and running the gRPC server: ext_authz, health and reflection, graceful stop."""

from __future__ import annotations

import logging
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ext_authz._proto.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from ext_authz.errors import ConfigError
from ext_authz.runtime import Runtime, build_runtime
from ext_authz.service import AuthorizationServicer
from ext_authz.settings import Settings

__all__ = ["RunningServer", "build_server", "serve"]

log = logging.getLogger(__name__)

AUTHORIZATION_SERVICE = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"].full_name


READY_POLL_S = 0.2


@dataclass
class RunningServer:
    server: grpc.Server
    health: health.HealthServicer
    port: int
    stopping: threading.Event

    def stop(self, grace: float) -> None:
        """Report NOT_SERVING, stop accepting, and let in-flight checks finish within ``grace``."""
        self.stopping.set()
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()


def _report_serving_when_ready(
    runtime: Runtime, health_servicer: health.HealthServicer, stopping: threading.Event
) -> None:
    # Until every issuer's keys are loaded Envoy should not route here: tokens would get 503s.
    while not runtime.ready():
        if stopping.wait(READY_POLL_S):
            return
    for service in ("", AUTHORIZATION_SERVICE):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)


def build_server(
    settings: Settings, runtime: Runtime, *, reuse_port: bool = False
) -> RunningServer:
    """A started server; health reports SERVING once ``runtime`` has all its keys.

    ``reuse_port`` shares the port with the other `serve --workers` processes; otherwise a
    second server on the port is an error, not a silent stale neighbour.
    """
    server = grpc.server(
        ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="check"),
        options=[("grpc.so_reuseport", int(reuse_port))],
    )
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(
        AuthorizationServicer(lambda: runtime), server
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (AUTHORIZATION_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    try:
        port = server.add_insecure_port(settings.listen)
    except RuntimeError as exc:
        raise ConfigError(f"listen: cannot listen on {settings.listen}: {exc}") from exc
    server.start()
    for service in ("", AUTHORIZATION_SERVICE):
        health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    stopping = threading.Event()
    if runtime.ready():
        _report_serving_when_ready(runtime, health_servicer, stopping)
    else:
        threading.Thread(
            target=_report_serving_when_ready,
            args=(runtime, health_servicer, stopping),
            name="health-ready",
            daemon=True,
        ).start()
    return RunningServer(server, health_servicer, port, stopping)


def serve(settings: Settings, *, reuse_port: bool = False) -> int:
    """Run until SIGTERM or SIGINT, then drain in-flight checks and return 0."""
    runtime = build_runtime(settings)
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    # A thread, not the handler itself: a reload parses files, which must not run inside it.
    signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=runtime.reload).start())
    runtime.start()
    try:
        _wait_for_keys(settings, runtime, stopping)
        running = build_server(settings, runtime, reuse_port=reuse_port)
        host = settings.listen.rsplit(":", 1)[0]
        log.info("serving ext_authz on %s:%s", host, running.port)
        stopping.wait()
        log.info("stopping: draining in-flight checks for up to %ss", settings.grace_period)
        running.stop(settings.grace_period)
    finally:
        runtime.stop()
    log.info("stopped")
    return 0


def _wait_for_keys(settings: Settings, runtime: Runtime, stopping: threading.Event) -> None:
    """Give remote key sources a bounded head start, so the first requests are not 503s."""
    for provider, store in zip(settings.providers, runtime.key_stores, strict=True):
        deadline = time.monotonic() + provider.keys.initial_wait
        # Short waits, so SIGTERM during start-up is not held up by an unreachable IdP.
        while not store.wait_ready(READY_POLL_S) and time.monotonic() < deadline:
            if stopping.is_set():
                return
        if not store.wait_ready(0):
            log.warning(
                "no keys yet for provider %r; health stays NOT_SERVING and its tokens are "
                "refused until they load",
                provider.name,
            )
