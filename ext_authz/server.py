"""Building and running the gRPC server: ext_authz, health and reflection, graceful stop.

The server is grpc.aio, on an event loop in a thread of its own. Check is CPU work with no I/O
(keys and policies are refreshed in the background), so it runs on the loop itself: measured
here, the thread-pool server spent ~30% more CPU per Check handing each call between its poller
and worker threads (and their GIL). When something on the request path can wait on the network
(see ``waits_on_network``), checks run in a pool of ``threads`` threads instead, so one slow
endpoint cannot stall every other check.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ext_authz._proto.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from ext_authz.errors import ConfigError
from ext_authz.runtime import Runtime, build_runtime
from ext_authz.service import AuthorizationServicer
from ext_authz.settings import Settings

__all__ = ["RunningServer", "build_server", "serve", "waits_on_network"]

log = logging.getLogger(__name__)

AUTHORIZATION_SERVICE = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"].full_name


READY_POLL_S = 0.2
_T = TypeVar("_T")
# grpc_health's asyncio servicer (its stubs do not declare the `aio` submodule).
_AioHealthServicer: Any = health.aio.HealthServicer  # type: ignore[attr-defined]


class _AioAuthorization(external_auth_pb2_grpc.AuthorizationServicer):
    """Serves the (synchronous, never raising) AuthorizationServicer on the event loop."""

    def __init__(self, servicer: AuthorizationServicer, pool: ThreadPoolExecutor | None) -> None:
        self._servicer = servicer
        self._pool = pool

    async def Check(
        self, request: external_auth_pb2.CheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> external_auth_pb2.CheckResponse:
        if self._pool is None:
            return self._servicer.Check(request, context)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._servicer.Check, request, context)


@dataclass
class RunningServer:
    server: grpc.aio.Server
    health: Any
    port: int
    stopping: threading.Event
    loop: asyncio.AbstractEventLoop
    loop_thread: threading.Thread
    pool: ThreadPoolExecutor | None = None

    def stop(self, grace: float) -> None:
        """Report NOT_SERVING, stop accepting, and let in-flight checks finish within ``grace``."""
        self.stopping.set()
        if self.loop.is_closed():
            return
        _on_loop(self.loop, self._stop(grace))
        _close_loop(self.loop, self.loop_thread)
        if self.pool is not None:
            self.pool.shutdown(wait=True)

    async def _stop(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


def _close_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()


def _on_loop(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coroutine`` on the server's loop from another thread and return its result."""
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result()


async def _set_all(health_servicer: Any, status: int) -> None:
    for service in ("", AUTHORIZATION_SERVICE):
        await health_servicer.set(service, status)


def _report_serving_when_ready(runtime: Runtime, running: RunningServer) -> None:
    # Until every issuer's keys are loaded Envoy should not route here: tokens would get 503s.
    while not runtime.ready():
        if running.stopping.wait(READY_POLL_S):
            return
    if not running.stopping.is_set():
        _on_loop(running.loop, _set_all(running.health, health_pb2.HealthCheckResponse.SERVING))


def waits_on_network(settings: Settings) -> list[str]:
    """What in ``settings`` makes a Check wait on the network, named for the start-up log; empty
    when every Check is CPU work only and can run on the event loop."""
    waits = []
    if settings.credentials.introspection is not None:
        waits.append("token introspection asks its endpoint")
    if settings.rate_limits.backend == "redis":
        waits.append("rate limits and blocks are kept in Redis")
    remote = [
        p.issuer for p in settings.providers if p.jwks_file is None and p.keys.unknown_kid_wait
    ]
    if remote:
        waits.append(f"an unknown kid waits for its JWKS refetch ({', '.join(remote)})")
    return waits


def build_server(
    settings: Settings, runtime: Runtime, *, reuse_port: bool = False
) -> RunningServer:
    """A started server; health reports SERVING once ``runtime`` has all its keys.

    ``reuse_port`` shares the port with the other `serve --workers` processes; otherwise a
    second server on the port is an error, not a silent stale neighbour.
    """
    loop = asyncio.new_event_loop()
    loop_thread = threading.Thread(target=loop.run_forever, name="grpc-aio", daemon=True)
    loop_thread.start()
    waits = waits_on_network(settings)
    if waits:
        log.info("checks run in a pool of %d threads: %s", settings.threads, "; ".join(waits))
    blocking = bool(waits)
    pool = (
        ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="check")
        if blocking
        else None
    )
    try:
        server, health_servicer, port = _on_loop(loop, _start(settings, runtime, pool, reuse_port))
    except BaseException:
        _close_loop(loop, loop_thread)
        if pool is not None:
            pool.shutdown()
        raise
    running = RunningServer(
        server, health_servicer, port, threading.Event(), loop, loop_thread, pool
    )
    if runtime.ready():
        _report_serving_when_ready(runtime, running)
    else:
        threading.Thread(
            target=_report_serving_when_ready,
            args=(runtime, running),
            name="health-ready",
            daemon=True,
        ).start()
    return running


async def _start(
    settings: Settings, runtime: Runtime, pool: ThreadPoolExecutor | None, reuse_port: bool
) -> tuple[grpc.aio.Server, Any, int]:
    server = grpc.aio.server(options=[("grpc.so_reuseport", int(reuse_port))])
    servicer = _AioAuthorization(AuthorizationServicer(lambda: runtime), pool)
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(servicer, server)
    health_servicer = _AioHealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (AUTHORIZATION_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    try:
        port = server.add_insecure_port(settings.listen)
    except RuntimeError as exc:
        raise ConfigError(f"listen: cannot listen on {settings.listen}: {exc}") from exc
    await server.start()
    await _set_all(health_servicer, health_pb2.HealthCheckResponse.NOT_SERVING)
    return server, health_servicer, port


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
        # What start-up loaded (modules, keys, policies) lives as long as the process: keep it
        # out of the collector's full passes, which otherwise pause checks for milliseconds.
        gc.collect()
        gc.freeze()
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
