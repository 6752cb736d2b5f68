"""`ext-authz apikey new` and `ext-authz apikey hash`, as an operator or a script calls them."""

from __future__ import annotations

import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from ext_authz.cli.apikey import apikey
from ext_authz.errors import InvalidApiKeyError
from ext_authz.identity.apikey import (
    KEY_PREFIX,
    ApiKeyAuthenticator,
    hash_api_key,
    load_api_keys,
)
from ext_authz.models import Identity
from ext_authz.settings import ApiKeySettings


def run(*args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(apikey, list(args), input=stdin)


def authenticate(keys_file: Path, key: str, now: float | None = None) -> Identity:
    settings = ApiKeySettings(file=keys_file)
    if now is None:
        return ApiKeyAuthenticator(settings).authenticate(key)
    return ApiKeyAuthenticator(settings, clock=lambda: now).authenticate(key)


def test_new_prints_only_the_key_on_stdout_and_the_entry_on_stderr() -> None:
    result = run("new", "--id", "ci-bot-1", "--owner", "ci-bot", "--role", "editor")
    assert result.exit_code == 0, result.output
    key = result.stdout.removesuffix("\n")
    assert result.stdout == key + "\n"  # exactly one line: KEY=$(ext-authz apikey new ...)
    assert key.startswith(KEY_PREFIX)
    assert key not in result.stderr  # the entry holds the hash, never the key
    pasted = yaml.safe_load("keys:\n" + result.stderr.split("\n", 1)[1])
    assert pasted == {
        "keys": [
            {"id": "ci-bot-1", "hash": hash_api_key(key), "owner": "ci-bot", "roles": ["editor"]}
        ]
    }


def test_new_appended_to_a_missing_file_creates_it_and_the_key_authenticates(
    tmp_path: Path,
) -> None:
    keys_file = tmp_path / "keys.yaml"
    result = run(
        "new", "--id", "ci-bot-1", "--owner", "ci-bot", "--role", "editor", "--role", "viewer",
        "--append-to", str(keys_file),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    key = result.stdout.strip()
    assert authenticate(keys_file, key) == Identity(
        subject="ci-bot", roles=("editor", "viewer"), method="api_key", issuer="api-key:ci-bot-1"
    )
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o644  # readable by the service's user


def test_new_appends_below_existing_entries_keeping_comments_and_mode(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(
        "# managed by hand\nkeys:\n"
        f"- id: old  # the first one\n  hash: {hash_api_key('eak_old')}\n  owner: old-owner\n",
        encoding="utf-8",
    )
    keys_file.chmod(0o640)
    result = run("new", "--id", "new", "--owner", "new-owner", "--append-to", str(keys_file))
    assert result.exit_code == 0, result.output
    text = keys_file.read_text(encoding="utf-8")
    assert text.startswith("# managed by hand\nkeys:\n- id: old  # the first one\n")
    assert "\n- id: new\n" in text  # lined up with the existing entries
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o640
    assert authenticate(keys_file, "eak_old").subject == "old-owner"
    assert authenticate(keys_file, result.stdout.strip()).subject == "new-owner"


def test_new_with_expiry_writes_an_entry_that_expires(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.yaml"
    result = run(
        "new", "--id", "temp", "--owner", "contractor", "--expires", "2099-01-01T00:00:00Z",
        "--append-to", str(keys_file),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    key = result.stdout.strip()
    expiry = datetime(2099, 1, 1, tzinfo=UTC).timestamp()
    assert authenticate(keys_file, key, now=expiry - 1).subject == "contractor"
    with pytest.raises(InvalidApiKeyError, match="expired"):
        authenticate(keys_file, key, now=expiry)


def test_new_with_a_duplicate_id_exits_2_and_leaves_the_file_alone(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.yaml"
    assert run("new", "--id", "ci", "--owner", "a", "--append-to", str(keys_file)).exit_code == 0
    before = keys_file.read_bytes()
    result = run("new", "--id", "ci", "--owner", "b", "--append-to", str(keys_file))
    assert result.exit_code == 2
    assert result.stdout == ""  # no key printed that was never recorded
    assert "an entry with id 'ci' already exists" in result.stderr
    assert str(keys_file) in result.stderr
    assert keys_file.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keys.yaml"]  # no temp file left behind


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("keys: []\n", "cannot append the entry as text"),  # flow style: refuse, never mangle
        ("keys:\n  - {id: a}\n", "keys[0].hash"),  # already broken: not touched
    ],
)
def test_new_refuses_to_append_where_the_result_would_be_wrong(
    tmp_path: Path, text: str, expected: str
) -> None:
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(text, encoding="utf-8")
    result = run("new", "--id", "ci", "--owner", "a", "--append-to", str(keys_file))
    assert result.exit_code == 2
    assert result.stdout == ""
    assert expected in result.stderr
    assert keys_file.read_text(encoding="utf-8") == text
    assert [p.name for p in tmp_path.iterdir()] == ["keys.yaml"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--id", "a b", "--owner", "o"], "--id"),
        (["--id", "a", "--owner", "a,b"], "--owner"),
        (["--id", "a", "--owner", "o", "--role", " admin"], "--role"),
        (["--id", "a", "--owner", "o", "--expires", "2099-01-01T00:00:00"], "no timezone"),
        (["--id", "a", "--owner", "o", "--expires", "2001-01-01T00:00:00Z"], "in the past"),
        (["--id", "a", "--owner", "o", "--expires", "tomorrow"], "--expires"),
    ],
)
def test_new_with_invalid_values_exits_2_without_a_key(args: list[str], expected: str) -> None:
    result = run("new", *args)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert expected in result.stderr


def test_new_quotes_values_yaml_would_misread(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.yaml"
    result = run(
        "new", "--id", "x", "--owner", "yes: no", "--role", "on", "--role", "#1",
        "--append-to", str(keys_file),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (entry,) = load_api_keys(keys_file).by_digest.values()
    assert (entry.owner, entry.roles) == ("yes: no", ("on", "#1"))


def test_hash_prints_the_sha256_of_the_key_read_from_stdin() -> None:
    result = run("hash", stdin="abc\n")
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n"
    )


def test_hash_matches_what_new_writes() -> None:
    created = run("new", "--id", "a", "--owner", "o")
    key = created.stdout.strip()
    assert run("hash", stdin=key).stdout.strip() in created.stderr


@pytest.mark.parametrize("stdin", ["", "k" * 513, "two\nlines\n", "tab\tkey"])
def test_hash_refuses_a_key_the_service_would_never_accept(stdin: str) -> None:
    result = run("hash", stdin=stdin)
    assert result.exit_code == 2
    assert result.stdout == ""
