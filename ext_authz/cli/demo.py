"""`ext-authz demo`: the service, an echo upstream and a real Envoy on 127.0.0.1, no Docker."""

from __future__ import annotations

import shutil
import signal
import sys
import threading
from pathlib import Path

import click

from ext_authz.cli.errors import config_errors_exit
from ext_authz.cli.token import DEFAULT_STATE_DIR
from ext_authz.demo.envoy_config import DemoPorts
from ext_authz.demo.stack import DemoStack, prepare_state
from ext_authz.errors import StartupError

__all__ = ["demo"]

STARTUP_FAILED_EXIT = 1
_PORT = click.IntRange(1, 65535)


@click.command()
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=DEFAULT_STATE_DIR,
    show_default=True,
    help="Where certificates, keys, configs and logs are kept.",
)
@click.option("--https-port", type=_PORT, default=8443, show_default=True)
@click.option(
    "--http-port",
    type=_PORT,
    default=8080,
    show_default=True,
    help="Plain HTTP; redirects to https.",
)
@click.option(
    "--grpc-port", type=_PORT, default=9191, show_default=True, help="The ext_authz gRPC service."
)
@click.option(
    "--admin-port", type=_PORT, default=9901, show_default=True, help="Envoy's admin API."
)
@click.option(
    "--upstream-port", type=_PORT, default=8000, show_default=True, help="The echo upstream."
)
@click.option(
    "--metrics-port",
    type=_PORT,
    default=9902,
    show_default=True,
    help="ext-authz's admin HTTP port: Prometheus /metrics and the live view.",
)
@click.option(
    "--mtls-port",
    type=_PORT,
    default=8444,
    show_default=True,
    help="https that requires the demo client certificate.",
)
@click.option(
    "--policies",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=None,
    help="Policy folder (model.conf, policy.csv); default: shipped one.",
)
@click.option(
    "--init-only",
    is_flag=True,
    help="Only generate the state dir (keys, configs) and exit; used by docker-compose.",
)
def demo(
    state_dir: Path,
    https_port: int,
    http_port: int,
    grpc_port: int,
    admin_port: int,
    upstream_port: int,
    metrics_port: int,
    mtls_port: int,
    policies: Path | None,
    init_only: bool,
) -> None:
    """Run the whole thing locally; prints `ready` with the URL, stops on Ctrl-C or SIGTERM."""
    ports = DemoPorts(
        https=https_port,
        http=http_port,
        grpc=grpc_port,
        admin=admin_port,
        upstream=upstream_port,
        mtls=mtls_port,
        metrics=metrics_port,
    )
    with config_errors_exit():
        if init_only:
            prepare_state(state_dir, ports, policies)
            click.echo(f"initialized {state_dir}")
            return
        stack = DemoStack(state_dir, ports, policies)
        stopping = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stopping.set())
        try:
            stack.start()
        except StartupError as error:
            click.echo(f"ext-authz: demo failed to start: {error}", err=True)
            raise SystemExit(STARTUP_FAILED_EXIT) from None
        try:
            click.echo(f"ready {stack.url}")
            click.echo(_hints(state_dir, stack.url, ports))
            stopping.wait()
        finally:
            stack.stop()
            click.echo("stopped")


def _command() -> str:
    """How to run ext-authz from this shell: by name when it is on PATH, else the venv's path."""
    beside = Path(sys.executable).parent / "ext-authz"
    if shutil.which("ext-authz") or not beside.exists():
        return "ext-authz"
    try:
        return str(beside.relative_to(Path.cwd()))
    except ValueError:
        return str(beside)


def _hints(state_dir: Path, url: str, ports: DemoPorts) -> str:
    ca = f"--cacert {state_dir}/tls.crt"
    token = f"{_command()} token --state-dir {state_dir} --sub alice --role viewer"
    return (
        f"  JWT:     TOKEN=$({token})\n"
        f'           curl {ca} -H "Authorization: Bearer $TOKEN" {url}/api/books\n'
        f'  API key: curl {ca} -H "x-api-key: $(cat {state_dir}/demo-api-key)"'
        f" -X POST {url}/api/books\n"
        f"  mTLS:    curl {ca} --cert {state_dir}/client.crt --key {state_dir}/client.key"
        f" https://127.0.0.1:{ports.mtls}/api/books\n"
        f"  live view: http://127.0.0.1:{ports.metrics}/  metrics:"
        f" http://127.0.0.1:{ports.metrics}/metrics\n"
        f"  logs (decisions, security events, trace spans): {state_dir}/ext-authz.log;"
        f" Envoy: {state_dir}/envoy.log; Ctrl-C stops everything"
    )
