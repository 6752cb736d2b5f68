"""The `ext-authz` command line. Only this package exits the process."""

from __future__ import annotations

import os

# Before any grpc import: gRPC's fork handlers can deadlock a fork made while its threads run
# (grpc/grpc#37259; seen here as a hang when the demo started Envoy with Popen(preexec_fn) during
# health checks). Every fork this program makes is followed by exec, so it needs no fork support.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import click  # noqa: E402

from ext_authz import __version__
from ext_authz.cli.apikey import apikey
from ext_authz.cli.demo import demo
from ext_authz.cli.explain import explain
from ext_authz.cli.policy import policy
from ext_authz.cli.review import review
from ext_authz.cli.serve import serve
from ext_authz.cli.token import token

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ext-authz")
def main() -> None:
    """Envoy external authorization: JWT authentication and Casbin policies."""


main.add_command(serve)
main.add_command(demo)
main.add_command(token)
main.add_command(apikey)
main.add_command(policy)
main.add_command(explain)
main.add_command(review)
