"""`ext-authz token`: mint a token for the demo issuer (development only)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ext_authz.cli.errors import config_errors_exit
from ext_authz.demo.issuer import REGISTERED_CLAIMS, mint_demo_token

__all__ = ["token"]

DEFAULT_STATE_DIR = Path(".ext-authz-demo")


def _parse_claims(pairs: tuple[str, ...]) -> dict[str, object]:
    claims: dict[str, object] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint="--claim")
        if name in REGISTERED_CLAIMS:
            raise click.BadParameter(
                f"{name!r} is set by the other flags (--sub, --role, --ttl)", param_hint="--claim"
            )
        try:
            claims[name] = json.loads(raw)  # numbers, booleans, lists and objects as JSON
        except ValueError:
            claims[name] = raw
    return claims


@click.command()
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=DEFAULT_STATE_DIR,
    show_default=True,
    help="The demo's state dir (holds the issuer key).",
)
@click.option("--sub", "subject", required=True, help="Subject (user name).")
@click.option("--role", "roles", multiple=True, help="A role; repeat for several.")
@click.option(
    "--ttl",
    type=click.IntRange(min=1),
    default=3600,
    show_default=True,
    help="Lifetime in seconds.",
)
@click.option(
    "--claim",
    "claims",
    multiple=True,
    metavar="NAME=VALUE",
    help="An extra claim; VALUE is parsed as JSON when it is JSON.",
)
def token(
    state_dir: Path, subject: str, roles: tuple[str, ...], ttl: int, claims: tuple[str, ...]
) -> None:
    """Print a token for the demo issuer (development only)."""
    extra = _parse_claims(claims)
    with config_errors_exit():
        click.echo(mint_demo_token(state_dir, subject, roles, ttl, extra))
