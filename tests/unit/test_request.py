"""request.py: CheckRequest -> AuthRequest, and the path/query normalization it relies on."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ext_authz.errors import InvalidRequestError
from ext_authz.request import normalize_target, parse_query, to_auth_request

# --- normalize_target: what is accepted, and what it becomes ---------------------------------


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        ("/", "/", ()),
        ("/api/books", "/api/books", ()),
        ("/api/books/", "/api/books/", ()),
        ("/api/books?include=drafts", "/api/books", (("include", "drafts"),)),
        ("/api/books?", "/api/books", ()),
        ("/a?x=1&y=2&x=3", "/a", (("x", "1"), ("y", "2"), ("x", "3"))),
        ("/a?flag", "/a", (("flag", ""),)),
        ("/a?x=1&&y=2", "/a", (("x", "1"), ("y", "2"))),
        ("/a?x=a=b", "/a", (("x", "a=b"),)),
        ("/a?q=a+b%2Bc", "/a", (("q", "a b+c"),)),
        ("/a?q=%26%3D%3F%2F%23", "/a", (("q", "&=?/#"),)),
        ("/a?next=/b?c", "/a", (("next", "/b?c"),)),
        ("/%61pi/b%6F%6Fks", "/api/books", ()),
        ("/api/%7Euser", "/api/~user", ()),
        ("/a%20b", "/a b", ()),
        ("/caf%C3%A9", "/café", ()),
        ("/a+b", "/a+b", ()),
        ("/a/...", "/a/...", ()),
        ("/a/.well-known", "/a/.well-known", ()),
        ("/a:b@c!$&'()*,=", "/a:b@c!$&'()*,=", ()),
    ],
)
def test_target_is_split_and_decoded(
    target: str, path: str, query: tuple[tuple[str, str], ...]
) -> None:
    assert normalize_target(target) == (path, query)


@pytest.mark.parametrize(
    "target",
    [
        # encoded characters that change how an upstream splits or decodes the path
        "/api%2Fadmin",
        "/api%2fadmin",
        "/api%5Cadmin",
        "/api%5cadmin",
        "/api/books%3Bjsessionid=x",
        "/api/books%3b",
        "/api/books%3F.json",
        "/api/books%23x",
        "/api/%252e%252e/admin",
        "/api/%25",
        # dot segments, raw or after decoding
        "/api/../admin",
        "/api/./books",
        "/..",
        "/.",
        "/api/%2e%2e/admin",
        "/api/%2E%2E/admin",
        "/api/.%2e/admin",
        "/api/%2e./admin",
        "/api/%2e/books",
        "/api/books/..",
        "/public/..%2fapi",
        # empty segments
        "//api/books",
        "/api//books",
        "/api/books//",
        # NUL and control characters, raw and encoded
        "/api/books\x00",
        "/api/%00books",
        "/api/books%0a",
        "/api/books%0D%0A",
        "/api/books%09",
        "/api/books%1f",
        "/api/books%7f",
        "/api/\tbooks",
        "/api/books\x7f",
        # raw ';' path parameters (Tomcat, Jetty, Spring)
        "/api/books;jsessionid=x",
        "/api/books/1;x",
        "/public/..;/api/books",
        "/public/%2e%2e;/api",
        "/api/books;",
        # other raw characters an upstream could read differently
        "/api\\admin",
        "/api books",
        "/api/café",
        "/api/books\r\n",
        '/api/"x"',
        "/api/<x>",
        "/api/books#frag",
        "/api/books?x=1#frag",
        # invalid escapes
        "/api/%zz",
        "/api/%4",
        "/api/books%",
        "/api/%%34%31",
        "/api/%G0",
        # invalid UTF-8 after decoding
        "/api/%FF",
        "/api/%C3",
        "/api/%C0%AE%C0%AE/admin",
        "/api/%ED%A0%80",
        "/api/%E0%80%AF",
        # not origin-form
        "",
        "api/books",
        "http://api.test/api/books",
        "*",
    ],
)
def test_ambiguous_target_is_refused(target: str) -> None:
    with pytest.raises(InvalidRequestError):
        normalize_target(target)


@pytest.mark.parametrize("target", ["/api/books%C2%85", "/api/%C2%9Bbooks"])
def test_encoded_c1_control_character_in_path_is_refused(target: str) -> None:
    with pytest.raises(InvalidRequestError):
        normalize_target(target)


@pytest.mark.parametrize(
    "query",
    [
        "x=%00",
        "x=%0a",
        "x%0d=1",
        "x=%7F",
        "x=%zz",
        "x=%4",
        "x=%",
        "x=%FF",
        "x=a b",
        "x=\x00",
        "x=é",
        'x="a"',
        "x=<a>",
        "x=a\\b",
        "x=`a`",
        "x={a}",
        "x=a|b",
    ],
)
def test_ambiguous_query_is_refused(query: str) -> None:
    with pytest.raises(InvalidRequestError):
        parse_query(query)


def test_query_keeps_repeated_names_in_order_and_decodes_plus_as_space() -> None:
    assert parse_query("b=2&a=1&b=%33+4") == (("b", "2"), ("a", "1"), ("b", "3 4"))


def test_query_name_is_decoded_like_its_value() -> None:
    assert parse_query("%69nclude=dr%61fts") == (("include", "drafts"),)


# A mix of the characters that matter, so examples reach the interesting branches.
TARGET_PIECES = st.sampled_from(
    [
        "/",
        "/",
        "a",
        "b",
        ".",
        "..",
        "%2e",
        "%2E",
        "%2f",
        "%5c",
        "%25",
        "%3b",
        "%00",
        "%41",
        "%c3",
        "%a9",
        "%zz",
        "%",
        ";",
        "\\",
        "?",
        "&",
        "=",
        "+",
        "#",
        " ",
        "\x00",
        "\x85",
        "é",
        "~",
        ":",
    ]
)
TARGETS = st.one_of(
    st.text(max_size=40),
    st.lists(TARGET_PIECES, max_size=12).map("".join),
    st.lists(TARGET_PIECES, max_size=12).map(lambda pieces: "/" + "".join(pieces)),
)


@settings(max_examples=300, database=None, deadline=None)
@given(target=TARGETS)
def test_any_target_is_refused_or_normalized_unambiguously(target: str) -> None:
    try:
        path, query = normalize_target(target)
    except InvalidRequestError:
        return
    assert path.startswith("/")
    assert not set(path) & set("%;?#\\")
    assert not any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path)
    segments = path.split("/")[1:]
    assert "." not in segments
    assert ".." not in segments
    assert "" not in segments[:-1]
    for name, value in query:
        assert not any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name + value)


# --- to_auth_request ----------------------------------------------------------------------------


def test_check_request_becomes_a_normalized_auth_request(make_check_request) -> None:
    check = make_check_request(
        "PUT",
        "/api/b%6Foks/1?include=drafts&x=%2F",
        {"authorization": "Bearer t", "x-custom": "abc"},
        "192.0.2.7",
        host="books.example",
        scheme="https",
        request_id="req-42",
        principal="spiffe://cluster.local/ns/default/sa/web",
        context_extensions={"route": "books"},
    )

    request = to_auth_request(check)

    assert request.method == "PUT"
    assert request.path == "/api/books/1"
    assert request.query == (("include", "drafts"), ("x", "/"))
    assert dict(request.headers) == {"authorization": "Bearer t", "x-custom": "abc"}
    assert request.host == "books.example"
    assert request.scheme == "https"
    assert request.source_address == "192.0.2.7"
    assert request.peer_principal == "spiffe://cluster.local/ns/default/sa/web"
    assert request.request_id == "req-42"
    assert dict(request.context_extensions) == {"route": "books"}


def test_request_id_is_envoys_x_request_id_when_sent(make_check_request) -> None:
    check = make_check_request(headers={"x-request-id": "envoy-rid"}, request_id="stream-7")

    assert to_auth_request(check).request_id == "envoy-rid"


def test_header_names_are_lowercased_and_pseudo_headers_left_out(make_check_request) -> None:
    check = make_check_request(headers={"Authorization": "Bearer t", "X-Custom": "v"})

    request = to_auth_request(check)

    assert dict(request.headers) == {"authorization": "Bearer t", "x-custom": "v"}
    assert not any(name.startswith(":") for name in request.headers)


def test_auth_request_headers_cannot_be_mutated(make_check_request) -> None:
    request = to_auth_request(make_check_request(headers={"x": "1"}))

    with pytest.raises(TypeError):
        request.headers["x"] = "2"  # type: ignore[index]


def test_path_comes_from_the_path_pseudo_header_when_http_path_is_empty(make_check_request) -> None:
    check = make_check_request(path="/api/books?include=drafts")
    check.attributes.request.http.path = ""
    check.attributes.request.http.host = ""
    check.attributes.request.http.scheme = ""

    request = to_auth_request(check)

    assert (request.path, request.query) == ("/api/books", (("include", "drafts"),))
    assert request.host == "api.test"
    assert request.scheme == "https"


def test_header_map_is_used_when_headers_is_empty(make_check_request) -> None:
    check = make_check_request(
        path="/api/books?x=1",
        header_map=[("Authorization", "Bearer a"), ("authorization", "Bearer b"), ("X-A", "1")],
    )
    check.attributes.request.http.path = ""

    request = to_auth_request(check)

    assert request.path == "/api/books"
    assert request.query == (("x", "1"),)
    assert dict(request.headers) == {"authorization": "Bearer a,Bearer b", "x-a": "1"}


def test_header_map_value_falls_back_to_value_when_raw_value_is_empty(make_check_request) -> None:
    check = make_check_request(header_map=[])
    check.attributes.request.http.header_map.headers.add(key="x-a", value="plain")

    assert dict(to_auth_request(check).headers) == {"x-a": "plain"}


def test_request_without_method_is_refused(make_check_request) -> None:
    check = make_check_request()
    check.attributes.request.http.method = ""

    with pytest.raises(InvalidRequestError):
        to_auth_request(check)


def test_request_without_any_path_is_refused(make_check_request) -> None:
    check = make_check_request()
    check.attributes.request.http.path = ""
    del check.attributes.request.http.headers[":path"]

    with pytest.raises(InvalidRequestError):
        to_auth_request(check)


@pytest.mark.parametrize(
    "path", ["/api/books;jsessionid=x", "/public/..%3b/api/books", "/api%2fadmin", "/a/%2e%2e/b"]
)
def test_check_request_with_ambiguous_path_is_refused(make_check_request, path: str) -> None:
    with pytest.raises(InvalidRequestError):
        to_auth_request(make_check_request(path=path))


def test_empty_check_request_is_refused() -> None:
    from ext_authz._proto.envoy.service.auth.v3 import external_auth_pb2

    with pytest.raises(InvalidRequestError):
        to_auth_request(external_auth_pb2.CheckRequest())


@pytest.mark.parametrize("header", ["x-http-method-override", "x-http-method", "x-method-override"])
def test_method_override_headers_are_refused(make_check_request, header: str) -> None:
    with pytest.raises(InvalidRequestError, match=header):
        to_auth_request(make_check_request(headers={header: "DELETE"}))
