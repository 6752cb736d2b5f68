"""credentials.py: the bearer token, or None; a malformed credential is refused, never ignored."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from ext_authz.credentials import extract_bearer_token
from ext_authz.errors import InvalidTokenError, MissingCredentialError
from ext_authz.models import AuthRequest

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln"


def request_with(headers: dict[str, str]) -> AuthRequest:
    return AuthRequest("GET", "/", headers=MappingProxyType(headers))


def test_no_authorization_header_means_no_token() -> None:
    assert extract_bearer_token(request_with({"cookie": "a=b"})) is None


@pytest.mark.parametrize(
    ("value", "token"),
    [
        (f"Bearer {JWT}", JWT),
        (f"bearer {JWT}", JWT),
        (f"BeArEr {JWT}", JWT),
        (f"BEARER {JWT}", JWT),
        (f"  Bearer {JWT}  ", JWT),
        ("Bearer abc-._~+/==", "abc-._~+/=="),
    ],
)
def test_bearer_token_is_extracted(value: str, token: str) -> None:
    assert extract_bearer_token(request_with({"authorization": value})) == token


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "Bearer",
        "Bearer ",
        f"Basic {JWT}",
        f"Token {JWT}",
        JWT,
        f"Bearer  {JWT}",
        f"Bearer\t{JWT}",
        f"Bearer {JWT} extra",
        f"Bearer {JWT},Bearer {JWT}",
        f"Bearer a,Bearer {JWT}",
        f"Bearer {JWT}, Bearer other",
        f"Bearer {JWT};",
        f'Bearer "{JWT}"',
        f"Bearer {JWT}\x00",
        f"Bearer {JWT}\r\nX-Injected: 1",
        "Bearer =abc",
        "Bearer ab=c",
        "Bearer tøken",
    ],
)
def test_malformed_authorization_is_an_invalid_token_not_anonymous(value: str) -> None:
    with pytest.raises(InvalidTokenError) as caught:
        extract_bearer_token(request_with({"authorization": value}))
    assert not isinstance(caught.value, MissingCredentialError)


def test_refusal_message_does_not_repeat_the_credential() -> None:
    with pytest.raises(InvalidTokenError) as caught:
        extract_bearer_token(request_with({"authorization": f"Basic {JWT}"}))
    assert JWT not in str(caught.value)
