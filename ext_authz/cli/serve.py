"""`ext-authz serve --config FILE [--workers N]`."""

from __future__ import annotations

from pathlib import Path

import click

from ext_authz.cli.errors import config_errors_exit
from ext_authz.errors import ConfigError
from ext_authz.logging_setup import configure_logging
from ext_authz.server import serve as run_server
from ext_authz.settings import Settings, load_settings
from ext_authz.telemetry import configure_tracing, shutdown_tracing
from ext_authz.workers import run_workers

__all__ = ["serve"]


@click.command()
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Settings YAML file (see the README's configuration reference).",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Server processes sharing the listen port (SO_REUSEPORT); each uses one core.",
)
# Set by the supervisor for each worker it starts (not for direct use).
@click.option("--worker-index", type=click.IntRange(0), default=None, hidden=True)
def serve(config_path: Path, workers: int, worker_index: int | None) -> None:
    """Serve ext_authz v3 gRPC Check, with gRPC health and reflection.

    Traces are exported as the standard OTEL_* environment variables say (OTEL_TRACES_EXPORTER:
    otlp, console or none; off unless an OTLP endpoint or an exporter is set).

    With --workers N > 1 this process supervises N workers on the same port (the listen port
    must be fixed); worker I serves its admin port (if any) at the configured port + I.
    """
    with config_errors_exit():
        settings = load_settings(config_path)
        configure_logging(settings.log_level, worker=worker_index)
        if workers > 1:
            _require_fixed_ports(settings)
            raise SystemExit(run_workers(settings, config_path, workers))
        if worker_index is not None:
            settings = _worker_settings(settings, worker_index)
        configure_tracing()
        try:
            status = run_server(settings, reuse_port=worker_index is not None)
        finally:
            shutdown_tracing()  # export the spans still queued
        raise SystemExit(status)


def _port(listen: str) -> int:
    try:
        return int(listen.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return 0  # not an address we can share; the server reports it


def _require_fixed_ports(settings: Settings) -> None:
    if _port(settings.listen) == 0:
        raise ConfigError(
            f"listen: {settings.listen!r}: --workers needs a fixed port (the workers share it)"
        )


def _worker_settings(settings: Settings, index: int) -> Settings:
    """Worker ``index`` serves /metrics on the admin port + index (each its own counters)."""
    listen = settings.admin.listen
    if listen is None or index == 0 or _port(listen) == 0:
        return settings
    host = listen.rsplit(":", 1)[0]
    admin = settings.admin.model_copy(update={"listen": f"{host}:{_port(listen) + index}"})
    return settings.model_copy(update={"admin": admin})
