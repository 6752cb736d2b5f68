"""An Envoy bootstrap (YAML or JSON) parsed strictly into envoy-data-plane's typed messages.

envoy-data-plane (betterproto2 dataclasses) refuses an unknown field, but its error names neither
the file nor where in it, and it resolves a ``typed_config``'s ``@type`` only when the module
defining that message happens to be imported. So the raw document is first walked against the
message classes, importing each ``@type``'s module on demand: an unknown field (with a "did you
mean"), a value of the wrong type, an unknown enum name, two members of one oneof or an
unresolvable ``@type`` is a ConfigError naming the file, the line (YAML) and the path, e.g.
``static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0]
.typed_config.failure_mode_alow: unknown field in ExtAuthz``. The library then builds the typed
``Bootstrap``; rules read it, unpacking each ``Any`` with :func:`unpack`.

Paths use the proto field names (snake_case, whatever casing the file used), ``[i]`` for list
items and ``["key"]`` for map keys. Lines are known for YAML only (JSON is read with the json
module, which keeps no positions).
"""

from __future__ import annotations

import difflib
import importlib
import json
import re
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import betterproto2
import yaml
from betterproto2.casing import safe_snake_case

from ext_authz.errors import ConfigError
from ext_authz.review.findings import Location
from ext_authz.yaml_strict import StrictLoader


@contextmanager
def quiet_envoy_data_plane() -> Iterator[None]:
    """envoy-data-plane's generated modules warn as they load (pydantic deprecations) and its
    messages warn when built with a deprecated field: neither is the reader's concern here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


with quiet_envoy_data_plane():
    from envoy_data_plane.envoy.config.bootstrap.v3 import Bootstrap
    from envoy_data_plane.google.protobuf import Any as AnyMessage
    from envoy_data_plane.google.protobuf import Duration, Timestamp
    from envoy_data_plane.message_pool import default_message_pool

__all__ = [
    "MAX_VALUES",
    "EnvoyBootstrap",
    "item_path",
    "key_path",
    "load_bootstrap",
    "quiet_envoy_data_plane",
    "unpack",
]

MAX_VALUES = 200_000  # more is YAML aliases expanding without bound, not a real bootstrap
_TYPE_URL_PREFIX = "type.googleapis.com/"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_LAST_SEGMENT = re.compile(r'(?:\.[^.\[]+|\[\d+\]|\["(?:[^"\\]|\\.)*"\]|\A[^.\[]+)\Z')
_INT_TYPES = frozenset(betterproto2.INT_64_TYPES) | {
    betterproto2.TYPE_INT32,
    betterproto2.TYPE_UINT32,
    betterproto2.TYPE_SINT32,
    betterproto2.TYPE_FIXED32,
    betterproto2.TYPE_SFIXED32,
}
_FLOAT_TYPES = frozenset({betterproto2.TYPE_FLOAT, betterproto2.TYPE_DOUBLE})
_NUMBER_TEXT = re.compile(r"-?\d+(\.\d*)?([eE][-+]?\d+)?\Z|NaN\Z|-?Infinity\Z")


def item_path(parent: str, index: int) -> str:
    return f"{parent}[{index}]"


def key_path(parent: str, key: str) -> str:
    """A map entry: ``typed_per_filter_config["envoy.filters.http.ext_authz"]``."""
    return f"{parent}[{json.dumps(key)}]"


def _field_path(parent: str, name: str) -> str:
    return f"{parent}.{name}" if parent else name


@dataclass(frozen=True, slots=True)
class EnvoyBootstrap:
    """A parsed bootstrap; ``file`` is shown in locations, ``lines`` maps a path to its line."""

    file: str
    bootstrap: Bootstrap
    lines: Mapping[str, int]

    def location(self, path: str) -> Location:
        """Where ``path`` is; an unset field gets the line of its nearest written ancestor."""
        return Location(self.file, path, _nearest_line(self.lines, path))


def _nearest_line(lines: Mapping[str, int], path: str) -> int | None:
    while path:
        if path in lines:
            return lines[path]
        match = _LAST_SEGMENT.search(path)
        path = path[: match.start()] if match else ""
    return None


def load_bootstrap(path: Path) -> EnvoyBootstrap:
    """Read ``path`` (``.json``: JSON, otherwise YAML); raises ConfigError naming file and path."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read Envoy config: {exc}") from exc
    data = _parse_json(path, text) if path.suffix.lower() == ".json" else _parse_yaml(path, text)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected an Envoy bootstrap (a mapping) at the top level")
    checker = _Checker(str(path))
    with quiet_envoy_data_plane():
        checker.message(Bootstrap, data, "")
        try:
            bootstrap = Bootstrap.from_dict(data)
        except (ValueError, TypeError, KeyError) as exc:  # what the walk above does not cover
            raise ConfigError(f"{path}: not a valid Envoy bootstrap: {exc}") from exc
    return EnvoyBootstrap(str(path), bootstrap, checker.lines)


def unpack(value: AnyMessage | None) -> betterproto2.Message | None:
    """The message inside a ``typed_config``; None when unset. Its module was imported by
    :func:`load_bootstrap`, which resolved every ``@type``."""
    if value is None or not value.type_url:
        return None
    with quiet_envoy_data_plane():
        return value.unpack()


class _LinedDict(dict[object, object]):
    """A YAML mapping that remembers the line of each of its keys."""

    key_lines: dict[object, int]


class _LineLoader(StrictLoader):
    def construct_lined_map(self, node: yaml.MappingNode) -> Iterator[_LinedDict]:
        data = _LinedDict()
        yield data  # first, so aliases and recursive nodes resolve to this object
        data.update(self.construct_mapping(node))
        # construct_mapping flattened "<<" merges into node.value, explicit keys last (they win)
        data.key_lines = {
            self.construct_object(key): key.start_mark.line + 1 for key, _ in node.value
        }


_LineLoader.add_constructor("tag:yaml.org,2002:map", _LineLoader.construct_lined_map)


def _parse_yaml(path: Path, text: str) -> object:
    loader = _LineLoader(text)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    finally:
        loader.dispose()


def _parse_json(path: Path, text: str) -> object:
    def unique(pairs: list[tuple[str, object]]) -> dict[str, object]:
        keys = [key for key, _ in pairs]
        duplicates = sorted({key for key in keys if keys.count(key) > 1})
        if duplicates:
            raise ConfigError(f"{path}: duplicate key {duplicates[0]!r}")
        return dict(pairs)

    try:
        return json.loads(text, object_pairs_hook=unique)
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from exc


def _message_class(type_url: str) -> type[betterproto2.Message] | None:
    """The class registered for ``type_url``, importing envoy-data-plane's module for it."""
    if not type_url.startswith(_TYPE_URL_PREFIX):
        return None
    name = type_url.removeprefix(_TYPE_URL_PREFIX)
    parts = name.split(".")
    if type_url not in default_message_pool.url_to_type and all(
        _IDENTIFIER.match(part) for part in parts
    ):
        # a.b.v3.Message, or a.b.v3.Outer.Inner: the module is the longest importable prefix
        for end in range(len(parts) - 1, 0, -1):
            try:
                importlib.import_module(".".join(["envoy_data_plane", *parts[:end]]))
            except ImportError:
                continue
            break
    return default_message_pool.url_to_type.get(type_url)


def _has_custom_json(cls: type) -> bool:
    """Well-known types (Duration, wrappers, Struct...) have a JSON form of their own."""
    return getattr(cls, "to_dict", None) is not betterproto2.Message.to_dict


def _meta(cls: type) -> betterproto2.ProtoClassMetadata:
    """The library's table of a message class's fields."""
    meta: betterproto2.ProtoClassMetadata = cls._betterproto  # type: ignore[attr-defined]
    return meta


def _is_walked(field: betterproto2.FieldMetadata, cls: type) -> bool:
    """Messages are walked field by field, Any included; other values are checked whole."""
    return field.proto_type == betterproto2.TYPE_MESSAGE and (
        cls is AnyMessage or not (field.unwrap or _has_custom_json(cls))
    )


def _scalar_fits(proto_type: str, value: object) -> bool:
    """Whether ``value`` is JSON for a scalar of ``proto_type`` (proto3 JSON mapping)."""
    if proto_type == betterproto2.TYPE_BOOL:
        return isinstance(value, bool)
    if proto_type in (betterproto2.TYPE_STRING, betterproto2.TYPE_BYTES):
        return isinstance(value, str)
    if isinstance(value, bool):
        return False
    if proto_type == betterproto2.TYPE_ENUM:
        return isinstance(value, str | int)
    if proto_type in _INT_TYPES:
        return (
            isinstance(value, int)
            or (isinstance(value, float) and value.is_integer())
            or (isinstance(value, str) and re.fullmatch(r"-?\d+", value) is not None)
        )
    if proto_type in _FLOAT_TYPES:
        return isinstance(value, int | float) or (
            isinstance(value, str) and _NUMBER_TEXT.match(value) is not None
        )
    return True


def _describe(error: Exception) -> str:
    if hasattr(error, "errors"):  # pydantic's ValidationError: its first message
        details = error.errors()
        if details:
            return str(details[0]["msg"])
    return str(error)


class _Checker:
    """Walks raw data against message classes; records each written path's line."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[str, int] = {}
        self._values = 0

    def fail(self, path: str, message: str) -> ConfigError:
        line = _nearest_line(self.lines, path)
        where = f"{self.file}:{line}" if line else self.file
        return ConfigError(f"{where}: {path or '(top level)'}: {message}")

    def _count(self, path: str) -> None:
        self._values += 1
        if self._values > MAX_VALUES:
            raise self.fail(path, f"more than {MAX_VALUES} values (YAML aliases expanding?)")

    def message(
        self, cls: type[betterproto2.Message], data: object, path: str, skip: str = ""
    ) -> None:
        """Check ``data`` as a ``cls``; ``skip`` is a key that is not a field (an Any's @type)."""
        self._count(path)
        if not isinstance(data, Mapping):
            raise self.fail(path, f"expected a mapping for {cls.__name__}, got {data!r}")
        if cls is AnyMessage:
            self._any(data, path)
            return
        meta = _meta(cls)
        key_lines = getattr(data, "key_lines", {})
        written: list[str] = []
        for key, value in data.items():
            if key == skip:
                continue
            if not isinstance(key, str):
                raise self.fail(path, f"field names are text, got {key!r}")
            name = safe_snake_case(key)
            field_path = _field_path(path, name if name in meta.meta_by_field_name else key)
            if key in key_lines:
                self.lines[field_path] = key_lines[key]
            if name not in meta.meta_by_field_name:
                hint = difflib.get_close_matches(name, meta.meta_by_field_name, n=1)
                suggestion = f" (did you mean {hint[0]}?)" if hint else ""
                raise self.fail(field_path, f"unknown field in {cls.__name__}{suggestion}")
            if value is None:
                continue  # as the library does: null means unset
            written.append(name)
            self._field(cls, name, value, field_path)
        for group, fields in meta.oneof_field_by_group.items():
            both = sorted(field.name for field in fields if field.name in written)
            if len(both) > 1:
                raise self.fail(path, f"only one of {', '.join(both)} may be set (oneof {group})")

    def _field(self, cls: type[betterproto2.Message], name: str, value: object, path: str) -> None:
        meta = _meta(cls)
        field = meta.meta_by_field_name[name]
        field_cls = meta.cls_by_field[name]
        if _is_walked(field, field_cls):
            if field.repeated:
                for index, item in enumerate(self._list(value, path)):
                    self.message(field_cls, item, item_path(path, index))
            else:
                self.message(field_cls, value, path)
            return
        if field.proto_type == betterproto2.TYPE_MAP:
            value_cls = meta.cls_by_field[f"{name}.value"]
            assert field.map_meta is not None  # noqa: S101 - every map field has entry types
            value_meta = field.map_meta[1]
            if not isinstance(value, Mapping):
                raise self.fail(path, f"expected a mapping, got {value!r}")
            if _is_walked(value_meta, value_cls):
                key_lines = getattr(value, "key_lines", {})
                for key, item in value.items():
                    entry_path = key_path(path, str(key))
                    if key in key_lines:
                        self.lines[entry_path] = key_lines[key]
                    self.message(value_cls, item, entry_path)
                return
        else:
            items = self._list(value, path) if field.repeated else [value]
            for index, item in enumerate(items):
                self._scalar(
                    field, field_cls, item, item_path(path, index) if field.repeated else path
                )
        # Scalars, enums, wrappers, durations, structs: the library's own conversion decides.
        self._count(path)
        try:
            cls.from_dict({name: value})
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise self.fail(path, f"invalid value {value!r}: {_describe(exc)}") from exc

    def _scalar(
        self, field: betterproto2.FieldMetadata, field_cls: type, value: object, path: str
    ) -> None:
        proto_type = field.proto_type
        if field.unwrap:  # google.protobuf.BoolValue & co: JSON is the bare value
            wrapper = field.unwrap()
            if wrapper in (Duration, Timestamp):
                if not isinstance(value, str):
                    raise self.fail(path, f'expected text such as "1.5s", got {value!r}')
                return  # the library parses the text
            proto_type = _meta(wrapper).meta_by_field_name["value"].proto_type
        if proto_type == betterproto2.TYPE_MESSAGE:
            return  # a well-known type with its own JSON form
        if not _scalar_fits(proto_type, value):
            raise self.fail(path, f"expected {proto_type}, got {value!r}")
        if isinstance(value, str) and issubclass(field_cls, betterproto2.Enum):
            names = [member.name for member in field_cls if member.name]
            if (
                value not in names
                and value not in field_cls.betterproto_renamed_proto_names_to_value()
            ):
                raise self.fail(path, f"{value!r} is not one of {', '.join(names)}")

    def _list(self, value: object, path: str) -> list[object]:
        if not isinstance(value, list):
            raise self.fail(path, f"expected a list, got {value!r}")
        return value

    def _any(self, data: Mapping[object, object], path: str) -> None:
        type_path = _field_path(path, "@type")
        key_lines = getattr(data, "key_lines", {})
        if "@type" in key_lines:
            self.lines[type_path] = key_lines["@type"]
        type_url = data.get("@type")
        if not isinstance(type_url, str):
            raise self.fail(type_path, "missing: a typed_config needs its message's type URL")
        message_cls = _message_class(type_url)
        if message_cls is None:
            raise self.fail(type_path, f"unknown type {type_url!r}")
        if not _has_custom_json(message_cls):
            self.message(message_cls, data, path, skip="@type")
            return
        value_path = _field_path(path, "value")
        if set(data) != {"@type", "value"}:
            raise self.fail(path, f"a {message_cls.__name__} is written as {{'@type', 'value'}}")
        try:
            message_cls.from_dict(data["value"])
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise self.fail(value_path, f"invalid value: {_describe(exc)}") from exc
