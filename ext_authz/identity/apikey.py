"""API keys: a hot-reloaded file of key hashes (never the keys), each with an owner and roles.

A presented key is hashed with SHA-256 and looked up by digest, so the file holds nothing that
lets a reader call the API. Keys are high-entropy random strings, which is why a plain (unsalted,
fast) hash is enough: there is no dictionary to guess from.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import yaml

from ext_authz.errors import ConfigError, InvalidApiKeyError
from ext_authz.identity.values import header_safety_problem
from ext_authz.models import Identity
from ext_authz.settings import ApiKeySettings
from ext_authz.watch import WatchedFile
from ext_authz.yaml_strict import StrictLoader

__all__ = [
    "KEY_PREFIX",
    "MAX_KEY_BYTES",
    "ApiKey",
    "ApiKeyAuthenticator",
    "ApiKeyEntryError",
    "ApiKeyTable",
    "check_key_shape",
    "hash_api_key",
    "load_api_keys",
    "new_api_key",
    "parse_api_key_entry",
]

KEY_PREFIX = "eak_"  # recognizable in leaked-secret scanners and in a paste
MAX_KEY_BYTES = 512

_FIELDS = frozenset({"id", "hash", "owner", "roles", "expires"})
_REQUIRED = ("id", "hash", "owner")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # appears in logs and issuer names
_HASH = re.compile(r"sha256:([0-9a-fA-F]{64})")
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]+")
_NO_DIGEST = bytes(32)  # compared against on a miss so hit and miss do the same work


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One entry of the keys file; ``digest`` is the raw SHA-256 of the key."""

    id: str
    digest: bytes
    owner: str
    roles: tuple[str, ...] = ()
    expires: float | None = None  # Unix time; None never expires


@dataclass(frozen=True, slots=True)
class ApiKeyTable:
    """The keys file as loaded: entries by digest, in file order."""

    by_digest: Mapping[bytes, ApiKey]

    def __len__(self) -> int:
        return len(self.by_digest)

    def ids(self) -> frozenset[str]:
        return frozenset(entry.id for entry in self.by_digest.values())


class ApiKeyEntryError(ConfigError):
    """One field of one keys-file entry is invalid; ``field`` names it ("" for the whole entry)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


def new_api_key() -> str:
    """A new random key: 256 bits of entropy, URL-safe, with a recognizable prefix."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """The ``sha256:<hex>`` form stored in the keys file; refuses keys that could never be
    accepted (see check_key_shape)."""
    check_key_shape(key)
    return "sha256:" + _digest(key).hex()


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("ascii")).digest()


def check_key_shape(key: str) -> None:
    """Refuse empty, over-long or non-printable-ASCII keys before any hashing.

    The length is checked first so a huge header costs nothing; messages never quote the key.
    """
    if not key:
        raise InvalidApiKeyError("API key is empty")
    if len(key) > MAX_KEY_BYTES:
        raise InvalidApiKeyError(f"API key is longer than {MAX_KEY_BYTES} bytes")
    if not _PRINTABLE_ASCII.fullmatch(key):
        raise InvalidApiKeyError("API key has characters outside printable ASCII")


# --- the keys file -----------------------------------------------------------------------------


def _string(raw: Mapping[str, object], field: str) -> str:
    value = raw[field]
    if not isinstance(value, str) or not value:
        raise ApiKeyEntryError(field, "must be a non-empty string")
    return value


def _header_safe(value: object, field: str) -> str:
    """Owner and roles go upstream in identity headers (roles comma-joined)."""
    if not isinstance(value, str) or not value:
        raise ApiKeyEntryError(field, "must be a non-empty string")
    problem = header_safety_problem(value)
    if problem:
        raise ApiKeyEntryError(field, problem)
    return value


def _roles(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ApiKeyEntryError("roles", "must be a list of strings")
    return tuple(_header_safe(role, f"roles[{index}]") for index, role in enumerate(value))


def _expires(value: object) -> float:
    if isinstance(value, str):  # YAML leaves quoted timestamps as strings
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ApiKeyEntryError("expires", "is not an ISO 8601 date and time") from None
    if not isinstance(value, datetime):
        # A bare date is refused too: "which midnight?" has no safe answer.
        kind = "a date without a time" if isinstance(value, date) else "not a date and time"
        raise ApiKeyEntryError("expires", f"is {kind}; use e.g. 2027-01-01T00:00:00Z")
    if value.utcoffset() is None:
        raise ApiKeyEntryError("expires", "has no timezone; add Z or an offset like +02:00")
    return value.timestamp()


def parse_api_key_entry(raw: object) -> ApiKey:
    """Validate one entry mapping; raises ApiKeyEntryError naming the field."""
    if not isinstance(raw, dict):
        raise ApiKeyEntryError("", "expected a mapping with id, hash and owner")
    for field in raw:
        if field not in _FIELDS:
            raise ApiKeyEntryError(str(field), "unknown field")
    for field in _REQUIRED:
        if field not in raw:
            raise ApiKeyEntryError(field, "missing (required)")
    key_id = _string(raw, "id")
    if not _ID.fullmatch(key_id):
        raise ApiKeyEntryError("id", "use letters, digits, '.', '_' and '-' (at most 128)")
    match = _HASH.fullmatch(_string(raw, "hash"))
    if match is None:
        raise ApiKeyEntryError("hash", "expected sha256: followed by 64 hex digits")
    return ApiKey(
        id=key_id,
        digest=bytes.fromhex(match.group(1)),
        owner=_header_safe(raw["owner"], "owner"),
        roles=_roles(raw["roles"]) if "roles" in raw else (),
        expires=_expires(raw["expires"]) if "expires" in raw else None,
    )


def _parse_yaml(text: str) -> tuple[object, yaml.Node | None]:
    """The document and its node tree (the tree gives line numbers for errors)."""
    loader = StrictLoader(text)
    try:
        node = loader.get_single_node()
        return (None if node is None else loader.construct_document(node)), node
    finally:
        loader.dispose()


def _entry_lines(root: yaml.Node | None) -> list[dict[str, int]]:
    """Per entry: the 1-based line of each field's value, and of the entry itself under ''."""
    keys = None
    if isinstance(root, yaml.MappingNode):
        keys = next((v for k, v in root.value if k.value == "keys"), None)
    if not isinstance(keys, yaml.SequenceNode):
        return []
    result = []
    for item in keys.value:
        lines = {"": item.start_mark.line + 1}
        if isinstance(item, yaml.MappingNode):
            lines.update({str(k.value): v.start_mark.line + 1 for k, v in item.value})
        result.append(lines)
    return result


def _read_document(path: Path) -> tuple[object, list[dict[str, int]]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read API keys file: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: API keys file is not UTF-8: {exc.reason}") from exc
    try:
        data, root = _parse_yaml(text)
    except (yaml.YAMLError, TypeError, ValueError) as exc:  # ValueError: e.g. month 13
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return data, _entry_lines(root)


def _entries(path: Path, data: object) -> list[object]:
    if not isinstance(data, dict):
        # An empty file too: on reload it is more likely a half-written file than "revoke all".
        raise ConfigError(f"{path}: expected a mapping with a 'keys' list")
    for name in data:
        if name != "keys":
            raise ConfigError(f"{path}: {name}: unknown key")
    if "keys" not in data:
        raise ConfigError(f"{path}: keys: missing (a list of entries)")
    entries = data["keys"]
    if entries is None:
        return []  # `keys:` with every entry removed or commented out
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: keys: expected a list of entries")
    return entries


def load_api_keys(path: Path) -> ApiKeyTable:
    """Read and validate a keys file; raises ConfigError naming the file, entry and line."""
    data, lines = _read_document(path)
    by_digest: dict[bytes, ApiKey] = {}
    first_index: dict[str, int] = {}
    for index, raw in enumerate(_entries(path, data)):
        line = lines[index] if index < len(lines) else {}
        try:
            entry = parse_api_key_entry(raw)
            if entry.id in first_index:
                raise ApiKeyEntryError("id", f"duplicate of keys[{first_index[entry.id]}]")
            if entry.digest in by_digest:
                earlier = by_digest[entry.digest].id
                raise ApiKeyEntryError("hash", f"same key as entry {earlier!r}")
        except ApiKeyEntryError as exc:
            where = line.get(exc.field.split("[")[0], line.get(""))
            at = f" (line {where})" if where else ""
            entry_name = f"keys[{index}]" + (f".{exc.field}" if exc.field else "")
            raise ConfigError(f"{path}: {entry_name}{at}: {exc.message}") from None
        by_digest[entry.digest] = entry
        first_index[entry.id] = index
    return ApiKeyTable(by_digest)


# --- authentication ----------------------------------------------------------------------------


class ApiKeyAuthenticator:
    """Authenticates API keys against the keys file, which is re-read when it changes.

    A bad file at start is a ConfigError; a bad rewrite later keeps the last good keys.
    """

    def __init__(
        self,
        settings: ApiKeySettings,
        clock: Callable[[], float] = time.time,
        interval: float = 1.0,
    ) -> None:
        self.header = settings.header  # lower-case, as Envoy sends header names
        self._keys = WatchedFile(settings.file, load_api_keys, interval)
        self._clock = clock

    def start(self) -> None:
        self._keys.start()

    def stop(self) -> None:
        self._keys.stop()

    def check(self) -> bool:
        """Reload now if the file changed; True when new keys were loaded."""
        return self._keys.check()

    def authenticate(self, key: str) -> Identity:
        """The key's owner as an Identity; raises InvalidApiKeyError (never quoting the key)."""
        check_key_shape(key)
        digest = _digest(key)
        entry = self._keys.current().by_digest.get(digest)
        # The dict lookup finds the candidate; compare_digest confirms it in constant time over
        # two fixed-length digests, so nothing about the presented key shapes the timing.
        expected = _NO_DIGEST if entry is None else entry.digest
        if not hmac.compare_digest(expected, digest) or entry is None:
            raise InvalidApiKeyError("unknown API key")
        if entry.expires is not None and self._clock() >= entry.expires:
            raise InvalidApiKeyError("API key has expired")
        return Identity(
            subject=entry.owner,
            roles=entry.roles,
            method="api_key",
            issuer=f"api-key:{entry.id}",
        )
