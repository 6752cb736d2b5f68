"""credentials.py: which credential a request carries; two credentials are refused, never chosen."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType

import pytest

from ext_authz.credentials import Credential, CredentialExtractor, CredentialKind
from ext_authz.errors import InvalidTokenError
from ext_authz.models import AuthRequest
from ext_authz.settings import ApiKeySettings, BearerSettings, CredentialSettings

# Distinctive values: an error message that quoted a credential would contain one of them.
TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJTRUNSRVQifQ.U0VDUkVUc2ln"
OTHER_TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJPVEhFUiJ9.T1RIRVJzaWc"
API_KEY = "eak_SECRETapikeySECRETapikeySECRETapikey0000000"
PRINCIPAL = "spiffe://cluster.local/ns/shop/sa/checkout"


def request(
    headers: dict[str, str] | None = None,
    query: tuple[tuple[str, str], ...] = (),
    principal: str = "",
) -> AuthRequest:
    return AuthRequest(
        "GET",
        "/api/books",
        query=query,
        headers=MappingProxyType(headers or {}),
        peer_principal=principal,
    )


def peer_principal(req: AuthRequest) -> str | None:
    return req.peer_principal or None


@pytest.fixture
def make_extractor(tmp_path: Path) -> Callable[..., CredentialExtractor]:
    """``make_extractor(cookie=..., query_parameter=..., header=..., api_keys=True, mtls=True)``."""

    def make(
        *,
        api_keys: bool = False,
        api_key_header: str = "x-api-key",
        mtls: bool = False,
        **bearer: object,
    ) -> CredentialExtractor:
        settings = CredentialSettings(
            bearer=BearerSettings(**bearer),  # type: ignore[arg-type]
            api_keys=(
                ApiKeySettings(file=tmp_path / "keys.yaml", header=api_key_header)
                if api_keys
                else None
            ),
        )
        return CredentialExtractor(settings, peer_principal if mtls else None)

    return make


# --- the Authorization header (the default) ---------------------------------------------------


def test_default_settings_read_the_authorization_header(make_extractor) -> None:
    credential = make_extractor().extract(request({"authorization": f"Bearer {TOKEN}"}))
    assert credential == Credential(CredentialKind.BEARER, TOKEN, "Authorization header")


def test_default_settings_ignore_cookies_and_query_parameters(make_extractor) -> None:
    req = request(
        {"cookie": f"access_token={TOKEN}; token={TOKEN}"},
        query=(("access_token", TOKEN), ("token", TOKEN)),
    )
    assert make_extractor().extract(req) is None


def test_default_settings_use_the_header_token_beside_an_unconfigured_cookie(
    make_extractor,
) -> None:
    req = request({"authorization": f"Bearer {TOKEN}", "cookie": f"access_token={OTHER_TOKEN}"})
    assert make_extractor().extract(req).value == TOKEN


def test_request_without_any_credential_has_none(make_extractor) -> None:
    extractor = make_extractor(cookie="access_token", query_parameter="access_token", mtls=True)
    assert extractor.extract(request({"cookie": "theme=dark"}, (("page", "2"),))) is None


def test_authorization_header_is_ignored_when_the_header_source_is_off(make_extractor) -> None:
    extractor = make_extractor(header=False, cookie="access_token")
    req = request({"authorization": f"Bearer {OTHER_TOKEN}", "cookie": f"access_token={TOKEN}"})
    credential = extractor.extract(req)
    assert (credential.value, credential.source) == (TOKEN, "cookie 'access_token'")


# --- cookie -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cookie",
    [
        f"access_token={TOKEN}",
        f"theme=dark; access_token={TOKEN}; lang=en",
        f"theme=dark;access_token={TOKEN}",
        f'access_token="{TOKEN}"',
        f"x_access_token=other; access_token_old=other; access_token={TOKEN}",
    ],
)
def test_token_is_read_from_the_configured_cookie(make_extractor, cookie: str) -> None:
    credential = make_extractor(cookie="access_token").extract(request({"cookie": cookie}))
    assert credential == Credential(CredentialKind.BEARER, TOKEN, "cookie 'access_token'")


def test_cookie_with_another_name_is_not_a_credential(make_extractor) -> None:
    extractor = make_extractor(cookie="access_token")
    req = request({"cookie": f"Access_Token={TOKEN}; access_token_old={TOKEN}"})
    assert extractor.extract(req) is None


@pytest.mark.parametrize(
    "cookie",
    [
        f"access_token={TOKEN}; access_token={TOKEN}",
        f"access_token={TOKEN}; theme=dark; access_token={OTHER_TOKEN}",
        # Two Cookie headers, as Envoy joins them.
        f"access_token={TOKEN}; access_token=",
    ],
)
def test_cookie_sent_twice_is_refused(make_extractor, cookie: str) -> None:
    with pytest.raises(InvalidTokenError, match="more than once"):
        make_extractor(cookie="access_token").extract(request({"cookie": cookie}))


@pytest.mark.parametrize(
    "value",
    ["", '""', "SECRET token", "SECRET,token", "SECRET\ttoken", "SECRETtøken", "=SECRET"],
)
def test_malformed_cookie_token_is_refused(make_extractor, value: str) -> None:
    with pytest.raises(InvalidTokenError, match="malformed") as caught:
        make_extractor(cookie="access_token").extract(request({"cookie": f"access_token={value}"}))
    assert "SECRET" not in str(caught.value)


# --- query parameter --------------------------------------------------------------------------


def test_query_parameter_is_ignored_unless_configured(make_extractor) -> None:
    req = request(query=(("access_token", TOKEN),))
    assert make_extractor().extract(req) is None
    assert make_extractor(cookie="access_token").extract(req) is None


def test_token_is_read_from_the_configured_query_parameter(make_extractor) -> None:
    extractor = make_extractor(query_parameter="access_token")
    credential = extractor.extract(request(query=(("page", "2"), ("access_token", TOKEN))))
    assert credential == Credential(CredentialKind.BEARER, TOKEN, "query parameter 'access_token'")


def test_query_parameter_sent_twice_is_refused(make_extractor) -> None:
    extractor = make_extractor(query_parameter="access_token")
    req = request(query=(("access_token", TOKEN), ("access_token", TOKEN)))
    with pytest.raises(InvalidTokenError, match="more than once"):
        extractor.extract(req)


@pytest.mark.parametrize("value", ["", "SECRET token", "SECRET\x00", "SECRET;x"])
def test_malformed_query_token_is_refused(make_extractor, value: str) -> None:
    extractor = make_extractor(query_parameter="access_token")
    with pytest.raises(InvalidTokenError, match="malformed") as caught:
        extractor.extract(request(query=(("access_token", value),)))
    assert "SECRET" not in str(caught.value)


# --- one credential per request ---------------------------------------------------------------


def test_token_in_cookie_and_header_is_refused(make_extractor) -> None:
    req = request({"authorization": f"Bearer {TOKEN}", "cookie": f"access_token={TOKEN}"})
    with pytest.raises(InvalidTokenError, match="more than one credential") as caught:
        make_extractor(cookie="access_token").extract(req)
    assert "Authorization header" in str(caught.value)
    assert "cookie 'access_token'" in str(caught.value)


def test_token_in_query_and_header_is_refused(make_extractor) -> None:
    req = request({"authorization": f"Bearer {TOKEN}"}, (("access_token", OTHER_TOKEN),))
    with pytest.raises(InvalidTokenError, match="more than one credential"):
        make_extractor(query_parameter="access_token").extract(req)


def test_token_in_cookie_and_query_is_refused(make_extractor) -> None:
    extractor = make_extractor(header=False, cookie="session", query_parameter="access_token")
    req = request({"cookie": f"session={TOKEN}"}, (("access_token", TOKEN),))
    with pytest.raises(InvalidTokenError, match="more than one credential"):
        extractor.extract(req)


def test_bearer_and_api_key_is_refused_naming_both_sources(make_extractor) -> None:
    req = request({"authorization": f"Bearer {TOKEN}", "x-api-key": API_KEY})
    with pytest.raises(InvalidTokenError) as caught:
        make_extractor(api_keys=True).extract(req)
    message = str(caught.value)
    assert "Authorization header" in message
    assert "x-api-key header" in message
    assert TOKEN not in message
    assert API_KEY not in message


def test_cookie_token_and_api_key_is_refused(make_extractor) -> None:
    req = request({"cookie": f"access_token={TOKEN}", "x-api-key": API_KEY})
    with pytest.raises(InvalidTokenError, match="more than one credential"):
        make_extractor(cookie="access_token", api_keys=True).extract(req)


def test_api_key_header_alone_is_an_api_key_credential(make_extractor) -> None:
    credential = make_extractor(api_keys=True).extract(request({"x-api-key": API_KEY}))
    assert credential == Credential(CredentialKind.API_KEY, API_KEY, "x-api-key header")


def test_api_key_is_read_from_the_configured_header(make_extractor) -> None:
    extractor = make_extractor(api_keys=True, api_key_header="X-Service-Key")
    assert extractor.extract(request({"x-api-key": API_KEY})) is None
    credential = extractor.extract(request({"x-service-key": API_KEY}))
    assert (credential.kind, credential.source) == (CredentialKind.API_KEY, "x-service-key header")


def test_api_key_header_is_ignored_when_api_keys_are_not_configured(make_extractor) -> None:
    assert make_extractor().extract(request({"x-api-key": API_KEY})) is None


# --- client certificate -----------------------------------------------------------------------


def test_mtls_principal_is_the_credential_without_token_or_api_key(make_extractor) -> None:
    credential = make_extractor(mtls=True, api_keys=True).extract(request(principal=PRINCIPAL))
    assert credential == Credential(
        CredentialKind.CLIENT_CERTIFICATE, PRINCIPAL, "client certificate"
    )


def test_token_wins_over_the_mtls_principal(make_extractor) -> None:
    req = request({"authorization": f"Bearer {TOKEN}"}, principal=PRINCIPAL)
    assert make_extractor(mtls=True).extract(req).kind is CredentialKind.BEARER


def test_api_key_wins_over_the_mtls_principal(make_extractor) -> None:
    req = request({"x-api-key": API_KEY}, principal=PRINCIPAL)
    assert make_extractor(mtls=True, api_keys=True).extract(req).kind is CredentialKind.API_KEY


def test_principal_is_ignored_when_mtls_is_not_configured(make_extractor) -> None:
    assert make_extractor().extract(request(principal=PRINCIPAL)) is None


def test_bad_token_beside_a_principal_is_refused_not_downgraded_to_mtls(make_extractor) -> None:
    req = request({"authorization": "Basic dXNlcjpwYXNz"}, principal=PRINCIPAL)
    with pytest.raises(InvalidTokenError):
        make_extractor(mtls=True).extract(req)


# --- secrecy ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "headers", "query"),
    [
        ({"cookie": "c"}, {"authorization": f"Bearer {TOKEN}", "cookie": f"c={TOKEN}"}, ()),
        ({"cookie": "c"}, {"cookie": f"c={TOKEN}; c={OTHER_TOKEN}"}, ()),
        ({"cookie": "c"}, {"cookie": f"c={TOKEN} {API_KEY}"}, ()),
        ({"query_parameter": "q"}, {}, (("q", TOKEN), ("q", OTHER_TOKEN))),
        ({"query_parameter": "q"}, {}, (("q", f"{TOKEN} {API_KEY}"),)),
        ({"query_parameter": "q"}, {"authorization": f"Bearer {TOKEN}"}, (("q", OTHER_TOKEN),)),
        ({"api_keys": True}, {"authorization": f"Bearer {TOKEN}", "x-api-key": API_KEY}, ()),
        ({}, {"authorization": f"Bearer {TOKEN}, Bearer {OTHER_TOKEN}"}, ()),
        ({}, {"authorization": f"Bearer {TOKEN} {API_KEY}"}, ()),
    ],
)
def test_error_messages_never_contain_the_credential_values(
    make_extractor, settings, headers, query
) -> None:
    with pytest.raises(InvalidTokenError) as caught:
        make_extractor(**settings).extract(request(headers, query))
    text = f"{caught.value} {caught.value!r}"
    for secret in (TOKEN, OTHER_TOKEN, API_KEY, "SECRET"):
        assert secret not in text


@pytest.mark.parametrize(
    ("headers", "value"),
    [({"authorization": f"Bearer {TOKEN}"}, TOKEN), ({"x-api-key": API_KEY}, API_KEY)],
    ids=["bearer", "api_key"],
)
def test_credential_repr_never_shows_the_value(make_extractor, headers, value: str) -> None:
    """A Credential that reaches a log line, a traceback or a failed assertion stays secret."""
    credential = make_extractor(api_keys=True).extract(request(headers))
    assert credential is not None and credential.value == value
    assert value not in repr(credential) and value not in str(credential)
    assert "source=" in repr(credential)
