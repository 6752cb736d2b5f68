"""CheckRequest -> AuthRequest: the one place a request is normalized (pure, no I/O).

Envoy sends ``:path`` raw, query included. Policies must match what the upstream will act on, so
anything an upstream could decode into something else is refused rather than guessed at: encoded
``/``, ``\\``, ``;``, ``?``, ``#`` or ``%``, dot segments after decoding, empty segments, NUL and
control characters, path parameters, invalid escapes and invalid UTF-8.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from ext_authz._proto.envoy.config.core.v3 import base_pb2
from ext_authz._proto.envoy.service.auth.v3 import external_auth_pb2
from ext_authz.errors import InvalidRequestError
from ext_authz.models import AuthRequest

__all__ = ["normalize_target", "parse_query", "request_id_of", "to_auth_request"]

_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
# Bytes that must never appear decoded in a path: they change how upstreams split or decode it.
_FORBIDDEN_DECODED_PATH = frozenset(b"/\\;?#%") | frozenset(range(0x20)) | {0x7F}
_FORBIDDEN_DECODED_QUERY = frozenset(range(0x20)) | {0x7F}
# Raw characters allowed in a path (RFC 3986 pchar plus "/"), minus ";" (path parameters).
_PATH_CHARS = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,=:@/%]*")
# No raw ";": some upstreams split the query on it too (`?x=1;include=drafts`).
_QUERY_CHARS = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,=:@/?%]*")
# Unicode category Cc: the C0 controls, DEL and the C1 controls.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
# Most routes set no context extensions: one shared empty map.
_NO_EXTENSIONS: Mapping[str, str] = MappingProxyType({})
# Frameworks that honour these would run another method than the one the policy allowed.
METHOD_OVERRIDE_HEADERS = ("x-http-method-override", "x-http-method", "x-method-override")


def _percent_decode(text: str, forbidden: frozenset[int], where: str, *, plus: bool) -> str:
    if "%" not in text and not (plus and "+" in text) and text.isascii() and text.isprintable():
        return text  # nothing to decode and no control character: the common case, cheaply
    raw = text.encode("ascii")
    if plus:
        raw = raw.replace(b"+", b" ")
    if b"%" in _ESCAPE.sub(b"", raw):
        raise InvalidRequestError(f"{where}: malformed percent-escape")
    out = bytearray()
    pos = 0
    for match in _ESCAPE.finditer(raw):
        out += raw[pos : match.start()]
        byte = int(match.group(1), 16)
        if byte in forbidden:
            raise InvalidRequestError(f"{where}: encoded character %{byte:02X} is not allowed")
        out.append(byte)
        pos = match.end()
    out += raw[pos:]
    try:
        decoded = out.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequestError(f"{where}: escapes do not decode to UTF-8") from exc
    if _CONTROL.search(decoded):
        raise InvalidRequestError(f"{where}: control characters are not allowed")
    return decoded


def _normalize_path(raw: str) -> str:
    if not raw.startswith("/"):
        raise InvalidRequestError("path must start with '/'")
    if not _PATH_CHARS.fullmatch(raw):
        raise InvalidRequestError(
            "path contains a character that is not allowed (';', '\\', space, control or non-ASCII)"
        )
    path = _percent_decode(raw, _FORBIDDEN_DECODED_PATH, "path", plus=False)
    # Only a path with a dot can have a dot segment: most have none, and skip the split.
    if "." in path and any(segment in (".", "..") for segment in path.split("/")):
        raise InvalidRequestError("path contains a '.' or '..' segment")
    if "//" in path:  # an empty segment before the last
        raise InvalidRequestError("path contains an empty segment ('//')")
    return path


def parse_query(raw: str) -> tuple[tuple[str, str], ...]:
    """Decode a raw query string into (name, value) pairs, in order; refuses what is ambiguous."""
    if not raw:
        return ()
    if not _QUERY_CHARS.fullmatch(raw):
        raise InvalidRequestError("query contains a character that is not allowed")
    pairs = []
    for item in raw.split("&"):
        if not item:
            continue
        name, _, value = item.partition("=")
        pairs.append(
            (
                _percent_decode(name, _FORBIDDEN_DECODED_QUERY, "query", plus=True),
                _percent_decode(value, _FORBIDDEN_DECODED_QUERY, "query", plus=True),
            )
        )
    return tuple(pairs)


def normalize_target(target: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """Split a raw request target into the normalized path and the decoded query pairs."""
    if "#" in target:
        raise InvalidRequestError("request target contains a fragment ('#')")
    path, _, query = target.partition("?")
    return _normalize_path(path), parse_query(query)


def request_id_of(check: external_auth_pb2.CheckRequest) -> str:
    """The request id, also for a request too ambiguous to become an AuthRequest."""
    http = check.attributes.request.http
    return http.headers.get("x-request-id") or http.id


def to_auth_request(check: external_auth_pb2.CheckRequest) -> AuthRequest:
    """Build the AuthRequest for a CheckRequest; raises InvalidRequestError when ambiguous."""
    attributes = check.attributes
    http = attributes.request.http
    # Pseudo-headers (:path, :authority, ...) only stand in for fields Envoy left empty.
    pseudo: Mapping[str, str] = http.headers
    headers = {
        name.lower(): value for name, value in http.headers.items() if not name.startswith(":")
    }
    if not http.headers and http.header_map.headers:
        # Envoy fills header_map instead of headers when encode_raw_headers is set.
        pseudo = _joined(http.header_map.headers)
        headers = {name: value for name, value in pseudo.items() if not name.startswith(":")}
    target = http.path or pseudo.get(":path", "")
    if not http.method:
        raise InvalidRequestError("request has no method")
    path, query = normalize_target(target)
    overrides = [name for name in METHOD_OVERRIDE_HEADERS if name in headers]
    if overrides:
        raise InvalidRequestError(f"method override header {overrides[0]!r} is not accepted")
    return AuthRequest(
        method=http.method,
        path=path,
        query=query,
        headers=MappingProxyType(headers),
        host=http.host or pseudo.get(":authority", ""),
        scheme=http.scheme or pseudo.get(":scheme", ""),
        source_address=attributes.source.address.socket_address.address,
        peer_principal=attributes.source.principal,
        # x-request-id (which Envoy generates) ties our log to Envoy's; http.id is a stream id.
        request_id=headers.get("x-request-id") or http.id,
        context_extensions=(
            MappingProxyType(dict(extensions))
            if (extensions := attributes.context_extensions)
            else _NO_EXTENSIONS
        ),
    )


def _joined(raw: Iterable[base_pb2.HeaderValue]) -> dict[str, str]:
    """Raw header entries as one lowercase-name map, repeated names comma-joined as Envoy does."""
    headers: dict[str, str] = {}
    for header in raw:
        value = header.raw_value.decode("utf-8", "replace") or header.value
        name = header.key.lower()
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    return headers
