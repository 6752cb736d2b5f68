"""`ext-authz apikey`: create API keys and the keys-file entries that hold their hashes."""

from __future__ import annotations

import os
import stat
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import click
import yaml

from ext_authz.cli.errors import CONFIG_ERROR_EXIT, config_errors_exit
from ext_authz.errors import ConfigError, InvalidApiKeyError
from ext_authz.identity.apikey import (
    ApiKeyEntryError,
    hash_api_key,
    load_api_keys,
    new_api_key,
    parse_api_key_entry,
)

__all__ = ["apikey"]

_NEW_FILE_MODE = 0o644  # the file holds hashes only, and the service may run as another user
_DEFAULT_INDENT = 2
_OPTION_OF_FIELD = {"id": "--id", "owner": "--owner", "roles": "--role", "expires": "--expires"}


class _InputError(click.ClickException):
    exit_code = CONFIG_ERROR_EXIT


@click.group()
def apikey() -> None:
    """Create API keys and hash them for the API keys file (credentials.api_keys.file)."""


@apikey.command()
@click.option("--id", "key_id", required=True, help="Unique entry id; appears in logs.")
@click.option("--owner", required=True, help="The caller's subject (sent upstream).")
@click.option("--role", "roles", multiple=True, help="A role; repeat for several.")
@click.option(
    "--expires", metavar="ISO8601", help="Expiry with a timezone, e.g. 2027-01-01T00:00:00Z."
)
@click.option(
    "--append-to",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Add the entry to this keys file (created if missing); else print it on stderr.",
)
def new(
    key_id: str, owner: str, roles: tuple[str, ...], expires: str | None, append_to: Path | None
) -> None:
    """Print a new API key on stdout. It is shown once: only its hash is kept."""
    key = new_api_key()
    entry = _entry(key_id, key, owner, roles, expires)
    if append_to is None:
        click.echo("Add this entry under `keys:` in the API keys file:", err=True)
        click.echo(_render(entry, _DEFAULT_INDENT), err=True, nl=False)
    else:
        with config_errors_exit():
            _append(append_to, entry)
        click.echo(f"Appended entry {key_id!r} to {append_to}.", err=True)
    # Last, and alone on stdout: KEY=$(ext-authz apikey new ...) captures only the key, and a
    # failed append never prints a key that was not recorded.
    click.echo(key)


@apikey.command("hash")
def hash_key() -> None:
    """Read an API key from stdin and print its sha256: hash for the keys file."""
    if sys.stdin.isatty():  # typed in: do not echo it
        text = str(click.prompt("API key", hide_input=True, err=True))
    else:
        text = sys.stdin.read()
    key = text.removesuffix("\n").removesuffix("\r")  # one line, as `echo` or a file gives it
    try:
        click.echo(hash_api_key(key))
    except InvalidApiKeyError as error:
        raise _InputError(str(error)) from None


def _entry(
    key_id: str, key: str, owner: str, roles: tuple[str, ...], expires: str | None
) -> dict[str, object]:
    """The keys-file entry, validated exactly as the service will read it."""
    entry: dict[str, object] = {"id": key_id, "hash": hash_api_key(key), "owner": owner}
    if roles:
        entry["roles"] = list(roles)
    if expires is not None:
        entry["expires"] = expires
    try:
        parsed = parse_api_key_entry(entry)
    except ApiKeyEntryError as error:
        option = _OPTION_OF_FIELD.get(error.field.split("[")[0], error.field)
        raise click.BadParameter(error.message, param_hint=option) from None
    if parsed.expires is not None and parsed.expires <= time.time():
        raise click.BadParameter("is in the past", param_hint="--expires")
    return entry


class _EntryDumper(yaml.SafeDumper):
    """Block-style entries with flow-style role lists: `roles: [editor, viewer]`."""


_EntryDumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, True)
)


def _render(entry: Mapping[str, object], indent: int) -> str:
    """The entry as one YAML list item at ``indent``; the dumper quotes what needs quoting."""
    text = yaml.dump(
        dict(entry),
        Dumper=_EntryDumper,
        default_flow_style=False,
        sort_keys=False,
        allow_unicode=True,
        width=4096,
    )
    lines = text.splitlines(keepends=True)
    pad = " " * indent
    return "".join([pad + "- " + lines[0], *(pad + "  " + line for line in lines[1:])])


def _item_indent(text: str) -> int:
    """The column of the existing entries, so an appended one lines up with them."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if isinstance(root, yaml.MappingNode):
        for name, value in root.value:
            if name.value == "keys" and isinstance(value, yaml.SequenceNode) and value.value:
                return int(value.start_mark.column)  # where its first "-" is
    return _DEFAULT_INDENT


def _append(path: Path, entry: Mapping[str, object]) -> None:
    """Append the entry as text (keeping the operator's comments and layout), then re-load the
    result before it replaces the file atomically."""
    target = path.resolve()  # through a symlink: replace its target, keep the link
    key_id = str(entry["id"])
    if target.exists():
        existing = load_api_keys(target)  # never edit a file that is already broken
        if key_id in existing.ids():
            raise ConfigError(f"{path}: an entry with id {key_id!r} already exists")
        text = target.read_text(encoding="utf-8")
        mode = stat.S_IMODE(target.stat().st_mode)
        old_ids = existing.ids()
    else:
        text, mode, old_ids = "", _NEW_FILE_MODE, frozenset()
    if not text.strip():
        text = "keys:\n"
    if not text.endswith("\n"):
        text += "\n"
    updated = text + _render(entry, _item_indent(text))
    _replace_verified(path, target, updated, mode, old_ids | {key_id})


def _replace_verified(
    path: Path, target: Path, text: str, mode: int, expected_ids: frozenset[str]
) -> None:
    try:
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as error:
        raise ConfigError(f"{path}: cannot write: {error.strerror}") from error
    temp = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        temp.chmod(mode)
        _verify(path, temp, expected_ids)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _verify(path: Path, candidate: Path, expected_ids: frozenset[str]) -> None:
    """The new file must load and hold exactly the old entries plus the new one."""
    hint = (
        f"{path}: cannot append the entry as text ('keys' in flow style?); run without"
        " --append-to and paste the entry it prints"
    )
    try:
        table = load_api_keys(candidate)
    except ConfigError as error:
        reason = str(error).replace(str(candidate), str(path))
        raise ConfigError(f"{hint}; the result would be invalid: {reason}") from None
    if table.ids() != expected_ids:
        raise ConfigError(f"{hint}; the result would not hold the old entries plus the new one")
