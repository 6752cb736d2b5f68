"""Outbound HTTP for the identity sources (JWKS, OIDC discovery, token introspection).

Every URL is configured, never negotiated: https only (plain http only to a loopback address,
which never goes through a proxy), no redirect followed, at most ``MAX_BODY_BYTES`` read, and the
whole exchange bounded by the timeout.
"""

from __future__ import annotations

import http.client
import ipaddress
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from email.message import Message
from typing import IO
from urllib.parse import urlsplit

__all__ = ["MAX_BODY_BYTES", "FetchError", "fetch_url", "is_https_or_loopback", "post_form"]

MAX_BODY_BYTES = 1 << 20  # a JWKS, discovery or introspection document is a few KiB; more is not


class FetchError(OSError):
    """Raised when an exchange fails for a reason of ours (scheme, status, size, time), not the
    socket's."""


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_https_or_loopback(url: str) -> bool:
    """Keys and tokens travel over https only; plain http only to a loopback address (tests,
    sidecars)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    if parts.scheme == "https":
        return bool(parts.hostname)
    return parts.scheme == "http" and _is_loopback(parts.hostname)


def _require_https_or_loopback(url: str) -> None:
    if not is_https_or_loopback(url):
        raise FetchError(f"{url}: https only (plain http only on loopback)")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirect (possibly off https, or to a host an attacker controls) surfaces as an
    # HTTPError instead of being followed.
    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Message,
        newurl: str,
    ) -> None:
        return None


def _opener(url: str) -> urllib.request.OpenerDirector:
    handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
    if _is_loopback(urlsplit(url).hostname):
        handlers.append(urllib.request.ProxyHandler({}))  # loopback never goes through a proxy
    return urllib.request.build_opener(*handlers)


def _exchange(
    request: urllib.request.Request, timeout: float
) -> tuple[int, bytes, Mapping[str, str]]:
    """Send ``request``; a 2xx answer's status, body and lower-cased headers. A non-2xx
    status is urllib's HTTPError."""
    url = request.full_url
    deadline = time.monotonic() + timeout
    with _opener(url).open(request, timeout=timeout) as response:
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            raise FetchError(f"{url}: body of {length} bytes exceeds {MAX_BODY_BYTES}")
        chunks: list[bytes] = []
        size = 0
        # read1 returns after one socket read, so a server dripping bytes meets the deadline.
        while chunk := response.read1(65536):
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise FetchError(f"{url}: body exceeds {MAX_BODY_BYTES} bytes")
            if time.monotonic() > deadline:
                raise FetchError(f"{url}: response took longer than the timeout")
            chunks.append(chunk)
        return response.status, b"".join(chunks), _lower_headers(response.headers)


def _lower_headers(message: Message) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in message.items():
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


def fetch_url(url: str, timeout: float) -> tuple[bytes, Mapping[str, str]]:
    """GET ``url`` as JSON: 200 only. Returns the body and the lower-cased headers; raises
    OSError (a FetchError saying why)."""
    _require_https_or_loopback(url)
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310 - scheme checked above
    try:
        status, body, response_headers = _exchange(request, timeout)
    except FetchError:
        raise
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the connection
        why = "redirects are not followed" if 300 <= exc.code < 400 else "expected 200"
        raise FetchError(f"{url}: HTTP {exc.code}; {why}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise FetchError(f"{url}: {exc}") from exc
    if status != 200:
        raise FetchError(f"{url}: HTTP {status}; expected 200")
    return body, response_headers


def post_form(
    url: str, body: bytes, headers: Mapping[str, str], timeout: float
) -> tuple[int, bytes]:
    """POST ``body`` to ``url``. Returns (status, body); a non-2xx status (3xx included) comes
    back with an empty body (an error page is of no use). Raises OSError when there is no
    answer."""
    _require_https_or_loopback(url)
    request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")  # noqa: S310 - scheme checked above
    try:
        status, data, _ = _exchange(request, timeout)
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the connection
        return exc.code, b""
    except http.client.HTTPException as exc:
        # Only the type: the message of a malformed answer could echo anything back.
        raise OSError(f"{url}: {type(exc).__name__}") from None
    return status, data
