"""API keys: the keys file, lookup by hash, expiry, hot reload, and secrecy of the key."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from ext_authz.errors import ConfigError, InvalidApiKeyError
from ext_authz.identity import apikey as apikey_module
from ext_authz.identity.apikey import (
    KEY_PREFIX,
    ApiKeyAuthenticator,
    hash_api_key,
    load_api_keys,
    new_api_key,
)
from ext_authz.models import Identity
from ext_authz.settings import ApiKeySettings

KEY = "eak_" + "k" * 43
OTHER_KEY = "eak_" + "o" * 43
EXPIRY = datetime(2030, 1, 1, tzinfo=UTC).timestamp()


def entry(key: str = KEY, **fields: object) -> dict[str, object]:
    return {"id": "ci-bot-1", "hash": hash_api_key(key), "owner": "ci-bot", **fields}


def write_keys(path: Path, entries: Sequence[object]) -> Path:
    """Replace the file atomically (a new inode), as an operator's tooling would."""
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(yaml.safe_dump({"keys": list(entries)}), encoding="utf-8")
    os.replace(temp, path)
    return path


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    return write_keys(tmp_path / "keys.yaml", [entry(roles=["editor", "viewer"])])


@pytest.fixture
def make_authenticator(keys_file: Path) -> Callable[..., ApiKeyAuthenticator]:
    def make(now: float = time.time(), header: str = "x-api-key") -> ApiKeyAuthenticator:
        settings = ApiKeySettings(file=keys_file, header=header)
        return ApiKeyAuthenticator(settings, clock=lambda: now)

    return make


# --- authentication ----------------------------------------------------------------------------


def test_a_valid_key_authenticates_as_its_owner_with_its_roles(make_authenticator) -> None:
    identity = make_authenticator().authenticate(KEY)
    assert identity == Identity(
        subject="ci-bot",
        roles=("editor", "viewer"),
        authenticated=True,
        method="api_key",
        issuer="api-key:ci-bot-1",
    )


def test_an_unknown_key_is_refused(make_authenticator) -> None:
    with pytest.raises(InvalidApiKeyError, match="unknown API key"):
        make_authenticator().authenticate(OTHER_KEY)


@pytest.mark.parametrize(
    "near_miss",
    [KEY.upper(), KEY[:-1], KEY + "k", KEY[:-1] + "K", " " + KEY, KEY.replace("eak_", "EAK_")],
)
def test_a_near_miss_of_a_valid_key_is_refused(make_authenticator, near_miss) -> None:
    with pytest.raises(InvalidApiKeyError, match="unknown API key"):
        make_authenticator().authenticate(near_miss)


def test_the_header_name_is_exposed_lower_case(make_authenticator) -> None:
    assert make_authenticator(header="X-Service-Key").header == "x-service-key"


@pytest.fixture
def expiring_keys(keys_file: Path) -> Path:
    return write_keys(keys_file, [entry(expires=datetime.fromtimestamp(EXPIRY, UTC))])


@pytest.mark.parametrize("now", [EXPIRY, EXPIRY + 1, EXPIRY + 86400 * 365])
def test_a_key_is_refused_from_its_expiry_on(expiring_keys, make_authenticator, now) -> None:
    with pytest.raises(InvalidApiKeyError, match="API key has expired"):
        make_authenticator(now=now).authenticate(KEY)


def test_a_key_works_until_its_expiry(expiring_keys, make_authenticator) -> None:
    assert make_authenticator(now=EXPIRY - 1).authenticate(KEY).subject == "ci-bot"


def test_an_expiry_with_an_offset_is_read_in_that_timezone(keys_file, make_authenticator) -> None:
    # 02:00+02:00 is midnight UTC: the same instant as EXPIRY.
    keys_file.write_text(
        f"keys:\n- id: a\n  hash: {hash_api_key(KEY)}\n  owner: o\n"
        "  expires: 2030-01-01T02:00:00+02:00\n",
        encoding="utf-8",
    )
    assert make_authenticator(now=EXPIRY - 1).authenticate(KEY).subject == "o"
    with pytest.raises(InvalidApiKeyError, match="expired"):
        make_authenticator(now=EXPIRY).authenticate(KEY)


def test_a_quoted_expiry_string_is_accepted(keys_file, make_authenticator) -> None:
    write_keys(keys_file, [entry(expires="2030-01-01T00:00:00Z")])
    with pytest.raises(InvalidApiKeyError, match="expired"):
        make_authenticator(now=EXPIRY).authenticate(KEY)


def test_an_oversized_key_is_refused_before_it_is_hashed(make_authenticator, monkeypatch) -> None:
    authenticator = make_authenticator()

    def no_hashing(key: str) -> bytes:
        raise AssertionError("an oversized key must not be hashed")

    monkeypatch.setattr(apikey_module, "_digest", no_hashing)
    started = time.perf_counter()
    with pytest.raises(InvalidApiKeyError, match="longer than 512 bytes"):
        authenticator.authenticate("k" * 10_000)
    assert time.perf_counter() - started < 0.1


def test_a_key_of_exactly_512_bytes_is_looked_up(make_authenticator) -> None:
    with pytest.raises(InvalidApiKeyError, match="unknown API key"):
        make_authenticator().authenticate("k" * 512)


@pytest.mark.parametrize(
    "key", ["", "eak_\x00abc", "eak_abc\n", "eak_\tabc", "eak_äbc", "eak_\x7f"]
)
def test_an_empty_or_non_printable_key_is_refused(make_authenticator, key) -> None:
    with pytest.raises(InvalidApiKeyError):
        make_authenticator().authenticate(key)


def test_no_error_message_contains_the_presented_key(keys_file: Path, make_authenticator) -> None:
    secret = "eak_TopSecretValue0123456789"
    write_keys(keys_file, [entry(secret, expires="2030-01-01T00:00:00Z")])
    attempts = [
        (make_authenticator(now=EXPIRY), secret),  # expired
        (make_authenticator(), secret + "x"),  # unknown
        (make_authenticator(), secret * 40),  # too long
        (make_authenticator(), secret + "\x00"),  # not printable
    ]
    for authenticator, presented in attempts:
        with pytest.raises(InvalidApiKeyError) as caught:
            authenticator.authenticate(presented)
        assert "TopSecret" not in str(caught.value)
        assert "TopSecret" not in repr(caught.value.args)
        assert caught.value.code == "invalid_api_key"


# --- key generation ----------------------------------------------------------------------------


def test_new_keys_are_prefixed_random_and_accepted_by_their_own_check() -> None:
    keys = {new_api_key() for _ in range(100)}
    assert len(keys) == 100
    for key in keys:
        assert key.startswith(KEY_PREFIX)
        assert len(key) == len(KEY_PREFIX) + 43  # 32 random bytes, base64url without padding
        apikey_module.check_key_shape(key)


def test_a_key_hash_is_sha256_hex_of_the_key() -> None:
    assert hash_api_key("abc") == (
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


# --- the keys file -----------------------------------------------------------------------------


HASH = hash_api_key(KEY)


def test_a_file_of_valid_entries_loads_in_order(tmp_path: Path) -> None:
    path = write_keys(
        tmp_path / "keys.yaml",
        [entry(), entry(OTHER_KEY, id="b", owner="svc b", roles=[], expires="2030-01-01T00:00Z")],
    )
    table = load_api_keys(path)
    assert [e.id for e in table.by_digest.values()] == ["ci-bot-1", "b"]
    assert table.ids() == {"ci-bot-1", "b"}


@pytest.mark.parametrize("text", ["keys:\n", "keys: []\n", "keys:\n# - id: retired\n"])
def test_a_file_without_entries_accepts_no_key(tmp_path: Path, text: str) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(text, encoding="utf-8")
    assert len(load_api_keys(path)) == 0


GOOD = f"  - id: good\n    hash: {HASH}\n    owner: o\n"


@pytest.mark.parametrize(
    ("entry_text", "expected"),
    [
        ("  - {id: b, hash: H, owner: o, role: [x]}\n", "keys[1].role (line 6): unknown field"),
        ("  - {hash: H, owner: o}\n", "keys[1].id (line 6): missing"),
        ("  - {id: b, owner: o}\n", "keys[1].hash (line 6): missing"),
        ("  - {id: b, hash: H}\n", "keys[1].owner (line 6): missing"),
        ("  - {id: b, hash: 'abc', owner: o}\n", "keys[1].hash (line 6): expected sha256:"),
        ("  - {id: b, hash: 'sha256:abc', owner: o}\n", "keys[1].hash"),
        (f"  - {{id: b, hash: 'md5:{'0' * 64}', owner: o}}\n", "keys[1].hash"),
        (f"  - {{id: b, hash: 'sha256:{'g' * 64}', owner: o}}\n", "keys[1].hash"),
        ("  - {id: good, hash: H, owner: o}\n", "keys[1].id (line 6): duplicate of keys[0]"),
        (f"  - {{id: b, hash: {HASH}, owner: o}}\n", "keys[1].hash (line 6): same key as"),
        ("  - {id: b, hash: H, owner: o, expires: 2030-01-01T00:00:00}\n", "no timezone"),
        ("  - {id: b, hash: H, owner: o, expires: 2030-01-01}\n", "a date without a time"),
        ("  - {id: b, hash: H, owner: o, expires: soon}\n", "keys[1].expires"),
        ("  - {id: b, hash: H, owner: o, expires: 1893456000}\n", "not a date and time"),
        ("  - {id: b, hash: H, owner: 'a,b'}\n", "keys[1].owner (line 6): contains a comma"),
        ("  - {id: b, hash: H, owner: ' o'}\n", "keys[1].owner (line 6): has leading"),
        ("  - {id: b, hash: H, owner: 'o '}\n", "keys[1].owner (line 6): has leading"),
        ('  - {id: b, hash: H, owner: "o\\u0085x"}\n', "keys[1].owner (line 6): contains control"),
        ('  - {id: b, hash: H, owner: "o\\u202ex"}\n', "keys[1].owner (line 6): contains control"),
        ("  - {id: b, hash: H, owner: ''}\n", "keys[1].owner (line 6): must be a non-empty"),
        ("  - {id: b, hash: H, owner: 7}\n", "keys[1].owner (line 6): must be a non-empty"),
        ("  - {id: b, hash: H, owner: o, roles: [a, 'b,c']}\n", "keys[1].roles[1] (line 6)"),
        ('  - {id: b, hash: H, owner: o, roles: ["a\\nb"]}\n', "keys[1].roles[0]"),
        (
            "  - {id: b, hash: H, owner: o, roles: admin}\n",
            "keys[1].roles (line 6): must be a list",
        ),
        ("  - {id: 12, hash: H, owner: o}\n", "keys[1].id (line 6): must be a non-empty string"),
        ("  - {id: 'a b', hash: H, owner: o}\n", "keys[1].id (line 6): use letters"),
        ("  - just-a-string\n", "keys[1] (line 6): expected a mapping"),
        ("  - id: b\n    hash: H\n    owner: o\n    owner: p\n", "duplicate key 'owner'"),
    ],
)
def test_a_bad_entry_is_a_config_error_naming_file_entry_and_line(
    tmp_path: Path, entry_text: str, expected: str
) -> None:
    path = tmp_path / "keys.yaml"
    # A distinct valid hash for H, so only the intended problem is reported.
    bad = entry_text.replace("hash: H", f"hash: {hash_api_key(OTHER_KEY)}")
    path.write_text("# API keys\nkeys:\n" + GOOD + bad, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_api_keys(path)
    assert str(path) in str(caught.value)
    assert expected in str(caught.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "expected a mapping with a 'keys' list"),
        ("- a\n", "expected a mapping with a 'keys' list"),
        ("key:\n", "key: unknown key"),
        ("keys: []\nextra: 1\n", "extra: unknown key"),
        ("keys: {a: 1}\n", "keys: expected a list"),
        ("keys: [unclosed\n", "not valid YAML"),
        ("keys: []\nkeys: []\n", "duplicate key 'keys'"),
        ("keys:\n  - {id: a, hash: H, owner: o, expires: 2030-13-01T00:00:00Z}\n", "not valid"),
    ],
)
def test_a_bad_file_is_a_config_error_naming_the_file(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_api_keys(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert expected in str(caught.value)


def test_a_missing_or_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read API keys file"):
        load_api_keys(tmp_path / "absent.yaml")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"keys:\n  - id: \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_api_keys(binary)


def test_a_bad_file_at_start_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text("keys:\n  - {id: a}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"keys\[0\]\.hash"):
        ApiKeyAuthenticator(ApiKeySettings(file=path))


# --- hot reload --------------------------------------------------------------------------------


def test_a_rewritten_file_adds_and_removes_keys_on_check(keys_file, make_authenticator) -> None:
    authenticator = make_authenticator()
    assert not authenticator.check()  # unchanged
    write_keys(keys_file, [entry(OTHER_KEY, id="new", owner="newcomer")])
    assert authenticator.check()
    assert authenticator.authenticate(OTHER_KEY).subject == "newcomer"
    with pytest.raises(InvalidApiKeyError, match="unknown API key"):
        authenticator.authenticate(KEY)


def test_a_broken_rewrite_keeps_the_last_good_keys(keys_file, make_authenticator, caplog) -> None:
    authenticator = make_authenticator()
    write_keys(keys_file, [entry(OTHER_KEY, id="new", owner="newcomer", hash="sha256:nope")])
    assert not authenticator.check()
    assert authenticator.authenticate(KEY).subject == "ci-bot"
    with pytest.raises(InvalidApiKeyError):
        authenticator.authenticate(OTHER_KEY)
    assert "keys[0].hash" in caplog.text


def test_a_deleted_file_keeps_the_last_good_keys(keys_file, make_authenticator) -> None:
    authenticator = make_authenticator()
    keys_file.unlink()
    assert not authenticator.check()
    assert authenticator.authenticate(KEY).subject == "ci-bot"


def test_the_polling_thread_picks_up_a_new_key(keys_file: Path) -> None:
    settings = ApiKeySettings(file=keys_file)
    authenticator = ApiKeyAuthenticator(settings, interval=0.01)
    authenticator.start()
    try:
        write_keys(keys_file, [entry(), entry(OTHER_KEY, id="new", owner="newcomer")])
        deadline = time.monotonic() + 5
        while True:
            try:
                assert authenticator.authenticate(OTHER_KEY).subject == "newcomer"
                break
            except InvalidApiKeyError:
                assert time.monotonic() < deadline, "the new key was not picked up"
                time.sleep(0.01)
    finally:
        authenticator.stop()
