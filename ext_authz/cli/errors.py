"""How CLI commands report a ConfigError: one clear message, exit status 2, no traceback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click

from ext_authz.errors import ConfigError

__all__ = ["CONFIG_ERROR_EXIT", "config_errors_exit"]

CONFIG_ERROR_EXIT = 2


@contextmanager
def config_errors_exit() -> Iterator[None]:
    try:
        yield
    except ConfigError as error:
        click.echo(f"ext-authz: error: {error}", err=True)
        raise SystemExit(CONFIG_ERROR_EXIT) from None
