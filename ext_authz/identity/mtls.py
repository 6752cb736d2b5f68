"""mTLS identity: the client certificate Envoy verified, mapped to a subject and roles.

Where the principal comes from, in order:

1. ``source.principal`` (``AuthRequest.peer_principal``). Envoy fills it from the certificate it
   verified in the TLS handshake of this very connection: the first URI SAN (e.g. a SPIFFE ID),
   else the first DNS SAN, else the subject. Nothing a client sends over HTTP can change it.
2. The ``x-forwarded-client-cert`` header (XFCC), only with ``trust_forwarded_client_cert: true``
   and only when there is no peer principal: for deployments where TLS from the client ends at
   another proxy and Envoy sees that proxy's connection. XFCC is an ordinary request header, so
   unless the proxy in front removes every client-sent copy and writes its own (Envoy does with
   ``forward_client_cert_details: SANITIZE_SET``), any client could send
   ``URI=spiffe://example.org/admin`` and be believed. That is why it is off by default. Where
   several proxies append elements (``APPEND_FORWARD``), the last one was added by the hop closest
   to us; earlier ones repeat whatever the client and farther hops sent, so they are never used.

Envoy writes URI and DNS values unquoted even when they contain ``,`` ``;`` or ``=``, so such a
value cannot be read back unambiguously. Parsing is therefore strict: an unknown key, a part
without ``=``, an empty element or a stray quote refuses the request (InvalidRequestError, 400)
instead of reading a truncated identity (``URI=spiffe://td/admin;x=y`` must not become
``spiffe://td/admin``). A SAN containing ``,URI=`` could still forge an element: trust XFCC only
from a proxy whose client CA never issues such SANs, and prefer ``source.principal``.

A principal is sent upstream as the subject header, so one that is not header-safe (controls,
commas, leading or trailing space) is refused with InvalidClientCertificateError, a 401: the
request itself is well-formed, it is the credential (a certificate a trusted CA did issue) whose
identity cannot be passed on faithfully, and bad credentials are refused, never downgraded to
anonymous. Its own code names the cause in decision logs and metrics.
"""

from __future__ import annotations

import re
from typing import NoReturn

from ext_authz.errors import ConfigError, InvalidClientCertificateError, InvalidRequestError
from ext_authz.identity.values import header_safety_problem
from ext_authz.models import AuthRequest, Identity
from ext_authz.settings import MtlsSettings

__all__ = [
    "XFCC_HEADER",
    "MtlsAuthenticator",
    "compile_principal_pattern",
    "forwarded_principal",
    "parse_xfcc",
]

XFCC_HEADER = "x-forwarded-client-cert"
# Every key Envoy writes. Anything else means we are not reading what Envoy wrote (often a SAN
# with a raw ';' in it), so it is refused rather than skipped.
_XFCC_KEYS = frozenset({"by", "hash", "cert", "chain", "subject", "uri", "dns"})
# Envoy writes one of these per SAN; the other keys appear at most once per element.
_XFCC_REPEATABLE = frozenset({"by", "uri", "dns"})
_XFCC_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def compile_principal_pattern(pattern: str) -> re.Pattern[str]:
    """Compile an identity pattern, matched against the whole principal.

    ``*`` matches any run of characters within one ``/``-separated segment, ``**`` any run
    including ``/``; everything else is literal (and case-sensitive).
    """
    if "***" in pattern:
        raise ConfigError(f"mTLS identity principal {pattern!r}: '***' is ambiguous; use * or **")
    regex = "".join(
        ".*" if part == "**" else "[^/]*" if part == "*" else re.escape(part)
        for part in re.split(r"(\*\*|\*)", pattern)
    )
    return re.compile(regex, re.DOTALL)


def _malformed(reason: str) -> NoReturn:
    raise InvalidRequestError(f"{XFCC_HEADER} is malformed: {reason}")


def parse_xfcc(value: str) -> list[list[tuple[str, str]]]:
    """Split an XFCC header into elements of (lower-case key, value) pairs, in order.

    Elements are separated by ``,``, pairs by ``;``; a value may be double-quoted, with ``\\"``
    for a quote inside it. Raises InvalidRequestError on anything else.
    """
    if _XFCC_CONTROL.search(value):
        _malformed("control character")
    elements: list[list[tuple[str, str]]] = []
    pairs: list[tuple[str, str]] = []
    pos, end = 0, len(value)
    while True:
        equals = pos
        while equals < end and value[equals] not in '=;,"':
            equals += 1
        if equals == end or value[equals] != "=":
            _malformed("expected key=value")
        key = value[pos:equals].lower()
        if key not in _XFCC_KEYS:
            _malformed(f"unknown key {value[pos:equals]!r}")
        if key not in _XFCC_REPEATABLE and any(key == seen for seen, _ in pairs):
            _malformed(f"duplicate key {value[pos:equals]!r}")
        pos = equals + 1
        if pos < end and value[pos] == '"':
            text, pos = _quoted(value, pos + 1)
        else:
            start = pos
            while pos < end and value[pos] not in ';,"':
                pos += 1
            text = value[start:pos]
        pairs.append((key, text))
        if pos == end:
            elements.append(pairs)
            return elements
        separator = value[pos]
        pos += 1
        if separator == ",":
            elements.append(pairs)
            pairs = []
            # Intermediaries that join header copies may add list whitespace after the comma.
            while pos < end and value[pos] in " \t":
                pos += 1
        elif separator != ";":
            _malformed("a quote inside an unquoted value, or text after a closing quote")


def _quoted(value: str, pos: int) -> tuple[str, int]:
    """The quoted value starting at ``pos`` (just past the opening quote), and where it ends."""
    text: list[str] = []
    while pos < len(value):
        char = value[pos]
        if char == "\\" and value.startswith('"', pos + 1):
            text.append('"')
            pos += 2
        elif char == '"':
            return "".join(text), pos + 1
        else:
            text.append(char)
            pos += 1
    _malformed("unterminated quoted value")


def forwarded_principal(value: str) -> str | None:
    """The principal in an XFCC header: the last element's first URI, else its first DNS name.

    None when that element names neither (e.g. Envoy's empty ``URI=`` for a certificate without
    a URI SAN and no DNS SAN). Raises InvalidRequestError when the header is malformed.
    """
    closest = parse_xfcc(value)[-1]
    for wanted in ("uri", "dns"):
        found = next((text for key, text in closest if key == wanted and text), None)
        if found is not None:
            return found
    return None


class MtlsAuthenticator:
    """Maps the verified client-certificate principal to an Identity (patterns compiled once)."""

    def __init__(self, settings: MtlsSettings) -> None:
        self._trust_forwarded = settings.trust_forwarded_client_cert
        rules: list[tuple[re.Pattern[str], tuple[str, ...]]] = []
        for entry in settings.identities:
            unsafe = [role for role in entry.roles if header_safety_problem(role)]
            if unsafe:
                raise ConfigError(
                    f"mTLS identity {entry.principal!r}: role {unsafe[0]!r} is not header-safe "
                    "(no commas, control characters, or leading/trailing spaces)"
                )
            rules.append((compile_principal_pattern(entry.principal), entry.roles))
        self._rules = tuple(rules)

    def principal(self, request: AuthRequest) -> str | None:
        """The caller's certificate principal, or None when it presented no certificate.

        Raises InvalidRequestError when a trusted XFCC header is malformed.
        """
        if request.peer_principal:
            return request.peer_principal
        if not self._trust_forwarded:
            return None  # a client-supplied XFCC header proves nothing
        header = request.headers.get(XFCC_HEADER, "")
        return forwarded_principal(header) if header.strip() else None

    def authenticate(self, principal: str) -> Identity:
        """The identity for ``principal``: roles of every identity pattern it matches.

        A principal no pattern matches is still authenticated, with no roles: policies decide.
        Raises InvalidClientCertificateError when it cannot be sent upstream safely.
        """
        if header_safety_problem(principal):
            raise InvalidClientCertificateError(
                "the client certificate's identity contains a comma, a control character or "
                "leading/trailing spaces and cannot be used"
            )
        roles: dict[str, None] = {}  # ordered, without duplicates
        for pattern, granted in self._rules:
            if pattern.fullmatch(principal):
                roles.update(dict.fromkeys(granted))
        return Identity(subject=principal, roles=tuple(roles), method="mtls", issuer="mtls")
