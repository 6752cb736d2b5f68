"""`ext-authz serve --config FILE`."""

from __future__ import annotations

from pathlib import Path

import click

from ext_authz.cli.errors import config_errors_exit
from ext_authz.logging_setup import configure_logging
from ext_authz.server import serve as run_server
from ext_authz.settings import load_settings
from ext_authz.telemetry import configure_tracing, shutdown_tracing

__all__ = ["serve"]


@click.command()
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Settings YAML file (see the README's configuration reference).",
)
def serve(config_path: Path) -> None:
    """Serve ext_authz v3 gRPC Check, with gRPC health and reflection.

    Traces are exported as the standard OTEL_* environment variables say (OTEL_TRACES_EXPORTER:
    otlp, console or none; off unless an OTLP endpoint or an exporter is set).
    """
    with config_errors_exit():
        settings = load_settings(config_path)
        configure_logging(settings.log_level)
        configure_tracing()
        try:
            status = run_server(settings)
        finally:
            shutdown_tracing()  # export the spans still queued
        raise SystemExit(status)
