"""Building and running the gRPC server: ext_authz, health and reflection, graceful stop."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ext_authz._proto.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from ext_authz.errors import ConfigError
from ext_authz.identity.jwks import load_jwks_file
from ext_authz.identity.jwt import JwtVerifier
from ext_authz.pipeline import AuthPipeline
from ext_authz.policy.engine import CasbinPolicyEngine
from ext_authz.service import AuthorizationServicer, Runtime
from ext_authz.settings import Settings

__all__ = ["RunningServer", "build_runtime", "build_server", "serve"]

log = logging.getLogger(__name__)

AUTHORIZATION_SERVICE = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"].full_name


def build_runtime(settings: Settings) -> Runtime:
    """Load keys and policies; raises ConfigError naming the file that is wrong."""
    providers = [(p, load_jwks_file(p.jwks_file)) for p in settings.providers]
    verifier = JwtVerifier(providers) if providers else None
    engine = CasbinPolicyEngine.from_files(settings.policy.model, settings.policy.policy)
    return Runtime(AuthPipeline(verifier, engine), settings.headers)


@dataclass
class RunningServer:
    server: grpc.Server
    health: health.HealthServicer
    port: int

    def stop(self, grace: float) -> None:
        """Report NOT_SERVING, stop accepting, and let in-flight checks finish within ``grace``."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()


def build_server(settings: Settings, runtime: Runtime) -> RunningServer:
    """A started server reporting SERVING: keys and policies are already in ``runtime``."""
    server = grpc.server(
        ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="check"),
        # Without this a second server could silently share the port with a stale one.
        options=[("grpc.so_reuseport", 0)],
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
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, health_servicer, port)


def serve(settings: Settings) -> int:
    """Run until SIGTERM or SIGINT, then drain in-flight checks and return 0."""
    runtime = build_runtime(settings)
    running = build_server(settings, runtime)
    host = settings.listen.rsplit(":", 1)[0]
    log.info("serving ext_authz on %s:%s", host, running.port)
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    stopping.wait()
    log.info("stopping: draining in-flight checks for up to %ss", settings.grace_period)
    running.stop(settings.grace_period)
    log.info("stopped")
    return 0
