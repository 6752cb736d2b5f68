"""mTLS identity: peer principal first, XFCC only when trusted and strictly parsed, patterns."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

import pytest

from ext_authz._proto.envoy.service.auth.v3 import external_auth_pb2
from ext_authz.errors import (
    AuthenticationError,
    ConfigError,
    InvalidClientCertificateError,
    InvalidRequestError,
)
from ext_authz.identity.mtls import (
    MtlsAuthenticator,
    compile_principal_pattern,
    forwarded_principal,
    parse_xfcc,
)
from ext_authz.models import AuthRequest
from ext_authz.request import to_auth_request
from ext_authz.settings import MtlsIdentitySettings, MtlsSettings

DEMO_CLIENT = "spiffe://demo.ext-authz.local/client/demo-client"
HASH = "e6bcce8df4bc062ccdb76836688181d16da66a08f7ec0fea605a3ebaac997ef0"
# What Envoy 1.40 wrote with forward_client_cert_details SANITIZE_SET and subject/uri/dns on.
ENVOY_XFCC = f'Hash={HASH};Subject="CN=demo-client";URI={DEMO_CLIENT}'
# ... and with APPEND_FORWARD, after the client had sent its own XFCC header.
ENVOY_APPENDED_XFCC = f"URI=spiffe://evil.example/admin,{ENVOY_XFCC}"
# ... for a certificate whose first URI SAN holds ';', ',' and '=' (Envoy does not quote it).
ENVOY_UNQUOTED_SAN_XFCC = (
    f'Hash={HASH};Subject="O=Org,CN=odd\\, \\"q\\"\\; x=y";URI=spiffe://a/b;c=d,e;'
    "URI=spiffe://second;DNS=one.example;DNS=two.example"
)


def request(peer: str = "", xfcc: str | None = None) -> AuthRequest:
    headers: Mapping[str, str] = MappingProxyType(
        {} if xfcc is None else {"x-forwarded-client-cert": xfcc}
    )
    return AuthRequest(method="GET", path="/api/books", headers=headers, peer_principal=peer)


def authenticator(trust_xfcc: bool = False) -> MtlsAuthenticator:
    return MtlsAuthenticator(MtlsSettings(trust_forwarded_client_cert=trust_xfcc))


def with_rules(*rules: tuple[str, tuple[str, ...]]) -> MtlsAuthenticator:
    return MtlsAuthenticator(
        MtlsSettings(identities=tuple(MtlsIdentitySettings(principal=p, roles=r) for p, r in rules))
    )


# --- where the principal comes from ----------------------------------------------------------


def test_principal_is_the_peer_principal_envoy_verified() -> None:
    assert authenticator().principal(request(peer=DEMO_CLIENT)) == DEMO_CLIENT


def test_peer_principal_reaches_the_authenticator_from_a_check_request(
    make_check_request: Callable[..., external_auth_pb2.CheckRequest],
) -> None:
    auth_request = to_auth_request(make_check_request(principal=DEMO_CLIENT))
    assert authenticator().principal(auth_request) == DEMO_CLIENT


def test_no_certificate_means_no_principal() -> None:
    assert authenticator().principal(request()) is None
    assert authenticator(trust_xfcc=True).principal(request()) is None


def test_xfcc_is_ignored_unless_trusted() -> None:
    spoofed = request(xfcc="URI=spiffe://evil.example/admin")
    assert authenticator().principal(spoofed) is None


def test_malformed_xfcc_is_ignored_too_unless_trusted() -> None:
    assert authenticator().principal(request(xfcc='URI="unterminated')) is None


def test_trusted_xfcc_gives_the_principal_when_there_is_no_peer_certificate() -> None:
    assert authenticator(trust_xfcc=True).principal(request(xfcc=ENVOY_XFCC)) == DEMO_CLIENT


def test_peer_principal_wins_over_a_trusted_xfcc() -> None:
    both = request(peer=DEMO_CLIENT, xfcc="URI=spiffe://evil.example/admin")
    assert authenticator(trust_xfcc=True).principal(both) == DEMO_CLIENT


def test_peer_principal_wins_even_over_a_malformed_trusted_xfcc() -> None:
    both = request(peer=DEMO_CLIENT, xfcc="garbage")
    assert authenticator(trust_xfcc=True).principal(both) == DEMO_CLIENT


def test_empty_trusted_xfcc_means_no_principal() -> None:
    assert authenticator(trust_xfcc=True).principal(request(xfcc="")) is None


def test_malformed_trusted_xfcc_is_an_invalid_request() -> None:
    with pytest.raises(InvalidRequestError, match="x-forwarded-client-cert"):
        authenticator(trust_xfcc=True).principal(request(xfcc="URI"))


# --- XFCC parsing ----------------------------------------------------------------------------


def test_xfcc_elements_and_pairs_are_split_in_order_with_lowercase_keys() -> None:
    assert parse_xfcc("By=spiffe://proxy;Hash=ab;URI=spiffe://a,hash=cd;dns=b.example") == [
        [("by", "spiffe://proxy"), ("hash", "ab"), ("uri", "spiffe://a")],
        [("hash", "cd"), ("dns", "b.example")],
    ]


def test_quoted_values_keep_commas_semicolons_and_equals_inside_the_quotes() -> None:
    (element,) = parse_xfcc('Subject="CN=a, O=b; OU=c";URI=spiffe://x')
    assert element == [("subject", "CN=a, O=b; OU=c"), ("uri", "spiffe://x")]


def test_escaped_quotes_inside_a_quoted_value_are_unescaped() -> None:
    (element,) = parse_xfcc(r'Subject="CN=say \"hi\", O=x";URI=spiffe://x')
    assert element[0] == ("subject", 'CN=say "hi", O=x')


def test_other_backslashes_in_a_quoted_value_are_kept() -> None:
    (element,) = parse_xfcc(r'Subject="CN=a\, b"')
    assert element == [("subject", r"CN=a\, b")]


def test_a_quoted_uri_may_hold_separators() -> None:
    assert forwarded_principal('Hash=ab;URI="spiffe://x/a;b,c"') == "spiffe://x/a;b,c"


def test_envoy_written_xfcc_gives_the_uri_san() -> None:
    assert forwarded_principal(ENVOY_XFCC) == DEMO_CLIENT


def test_the_last_element_is_used_it_was_added_by_the_closest_hop() -> None:
    assert forwarded_principal(ENVOY_APPENDED_XFCC) == DEMO_CLIENT
    assert forwarded_principal("URI=spiffe://far,URI=spiffe://near") == "spiffe://near"


def test_a_uri_in_an_earlier_element_is_never_used() -> None:
    assert forwarded_principal("URI=spiffe://evil.example/admin,Hash=ab;DNS=b.example") == (
        "b.example"
    )


def test_the_first_uri_of_the_element_is_used_like_envoys_source_principal() -> None:
    assert forwarded_principal("Hash=ab;URI=spiffe://one;URI=spiffe://two") == "spiffe://one"


def test_dns_is_used_when_the_element_has_no_uri() -> None:
    assert forwarded_principal("Hash=ab;URI=;DNS=client.example;DNS=other") == "client.example"


def test_an_element_without_uri_or_dns_gives_no_principal() -> None:
    assert forwarded_principal('Hash=ab;Subject="CN=x";URI=') is None


def test_whitespace_after_an_element_comma_is_list_whitespace() -> None:
    assert forwarded_principal("URI=spiffe://far, URI=spiffe://near") == "spiffe://near"


def test_unquoted_value_may_contain_equals() -> None:
    assert forwarded_principal("URI=spiffe://x/a=b") == "spiffe://x/a=b"


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("URI", id="no-equals"),
        pytest.param("URI=a;", id="trailing-semicolon"),
        pytest.param("URI=a,", id="trailing-comma"),
        pytest.param(",URI=a", id="leading-comma"),
        pytest.param("URI=a,,URI=b", id="empty-element"),
        pytest.param("URI=a;;Hash=b", id="empty-pair"),
        pytest.param("=a", id="empty-key"),
        pytest.param('URI="a', id="unterminated-quote"),
        pytest.param('URI="a\\"', id="escaped-closing-quote"),
        pytest.param('URI="a"b', id="text-after-closing-quote"),
        pytest.param('URI=a"b"', id="quote-inside-unquoted-value"),
        pytest.param("Foo=bar;URI=spiffe://x", id="unknown-key"),
        pytest.param("Hash=a;Hash=b;URI=spiffe://x", id="duplicate-single-key"),
        pytest.param("URI=spiffe://x\nURI=spiffe://y", id="control-character"),
        pytest.param(" URI=spiffe://x", id="leading-space-in-key"),
        # A SAN with a raw ';' must not be read back truncated to "spiffe://td/admin".
        pytest.param("Hash=ab;URI=spiffe://td/admin;x=y", id="truncating-san"),
        pytest.param(ENVOY_UNQUOTED_SAN_XFCC, id="envoy-unquoted-san"),
    ],
)
def test_malformed_xfcc_is_refused_not_guessed(value: str) -> None:
    with pytest.raises(InvalidRequestError, match="malformed"):
        forwarded_principal(value)


# --- patterns --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "principal", "matches"),
    [
        ("spiffe://td/client/demo", "spiffe://td/client/demo", True),
        ("spiffe://td/client/*", "spiffe://td/client/demo", True),
        ("spiffe://td/client/*", "spiffe://td/client/team/demo", False),
        ("spiffe://td/client/**", "spiffe://td/client/team/demo", True),
        ("spiffe://td/*/demo", "spiffe://td/client/demo", True),
        ("spiffe://td/*/demo", "spiffe://td/a/b/demo", False),
        ("spiffe://td/**/demo", "spiffe://td/a/b/demo", True),
        ("spiffe://td/client-*", "spiffe://td/client-7", True),
        ("spiffe://td/client-*", "spiffe://td/client-7/x", False),
        # Anchored at both ends.
        ("spiffe://td/client", "spiffe://td/client/demo", False),
        ("spiffe://td/client", "xspiffe://td/client", False),
        ("td/client/*", "spiffe://td/client/demo", False),
        # Everything but '*' is literal: '.' and '?' are not regex or glob metacharacters.
        ("spiffe://td.example/a", "spiffe://tdXexample/a", False),
        ("spiffe://td/a?", "spiffe://td/ab", False),
        ("spiffe://td/a?", "spiffe://td/a?", True),
        # Case-sensitive.
        ("spiffe://td/Admin", "spiffe://td/admin", False),
        ("*.example.com", "api.example.com", True),
        ("*.example.com", "example.com", False),
    ],
)
def test_single_star_stays_within_a_segment_double_star_crosses_them(
    pattern: str, principal: str, matches: bool
) -> None:
    assert bool(compile_principal_pattern(pattern).fullmatch(principal)) is matches


def test_a_triple_star_pattern_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"\*\*\*"):
        compile_principal_pattern("spiffe://td/***")


# --- the identity ----------------------------------------------------------------------------


def test_identity_has_the_principal_as_subject_and_mtls_as_method() -> None:
    identity = authenticator().authenticate(DEMO_CLIENT)
    assert identity.subject == DEMO_CLIENT
    assert identity.authenticated is True
    assert (identity.method, identity.issuer) == ("mtls", "mtls")


def test_roles_are_the_union_of_every_matching_identity_in_config_order() -> None:
    mtls = with_rules(
        ("spiffe://demo.ext-authz.local/**", ("viewer",)),
        ("spiffe://demo.ext-authz.local/client/*", ("editor", "viewer")),
        ("spiffe://demo.ext-authz.local/client/demo-client", ("admin",)),
        ("spiffe://other/**", ("auditor",)),
    )
    assert mtls.authenticate(DEMO_CLIENT).roles == ("viewer", "editor", "admin")


def test_a_principal_no_identity_matches_is_authenticated_without_roles() -> None:
    identity = with_rules(("spiffe://other/*", ("admin",))).authenticate(DEMO_CLIENT)
    assert identity.roles == ()
    assert identity.authenticated is True


@pytest.mark.parametrize(
    "principal",
    [
        pytest.param("spiffe://td/a,admin", id="comma"),
        pytest.param("CN=demo,O=org", id="subject-dn"),
        pytest.param("spiffe://td/a\r\nx-auth-roles: admin", id="crlf"),
        pytest.param("spiffe://td/a\x00", id="nul"),
        pytest.param("spiffe://td/a\x7f", id="del"),
        pytest.param(" spiffe://td/a", id="leading-space"),
        pytest.param("spiffe://td/a ", id="trailing-space"),
        pytest.param("", id="empty"),
    ],
)
def test_a_principal_that_is_not_header_safe_is_refused(principal: str) -> None:
    mtls = with_rules(("**", ("admin",)))
    with pytest.raises(InvalidClientCertificateError) as caught:
        mtls.authenticate(principal)
    # A refused credential: 401 (never anonymous), with its own reason code.
    assert isinstance(caught.value, AuthenticationError)
    assert caught.value.code == "invalid_client_certificate"


def test_a_role_that_is_not_header_safe_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="header-safe"):
        with_rules(("spiffe://td/*", ("viewer,admin",)))
