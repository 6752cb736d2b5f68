"""Every row of the demo table through the real Envoy, and its neighbours denied."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e

# (who, roles, method, path, expected status); who=None sends no token.
CASES = [
    # anyone, no token
    (None, (), "GET", "/public/hello", 200),
    (None, (), "GET", "/public/a/b/c.txt", 200),
    (None, (), "GET", "/healthz", 200),
    (None, (), "POST", "/public/hello", 401),
    (None, (), "GET", "/api/books", 401),
    (None, (), "GET", "/admin/stats", 401),
    (None, (), "GET", "/api/users/anonymous/profile", 401),
    (None, (), "GET", "/publicity", 401),
    # viewer
    ("alice", ("viewer",), "GET", "/api/books", 200),
    ("alice", ("viewer",), "GET", "/api/books?page=2", 200),
    ("alice", ("viewer",), "GET", "/api/books/42", 200),
    ("alice", ("viewer",), "GET", "/public/hello", 200),
    ("alice", ("viewer",), "GET", "/api/books?include=drafts", 403),
    ("alice", ("viewer",), "GET", "/api/books?include=Drafts", 403),
    ("alice", ("viewer",), "GET", "/api/books?include=published,drafts", 403),
    ("alice", ("viewer",), "GET", "/api/books?page=1&include=drafts", 403),
    ("alice", ("viewer",), "GET", "/api/books/42?include=drafts", 403),
    ("alice", ("viewer",), "POST", "/api/books", 403),
    ("alice", ("viewer",), "PUT", "/api/books/42", 403),
    ("alice", ("viewer",), "DELETE", "/api/books/42", 403),
    ("alice", ("viewer",), "GET", "/api/books/42/secrets", 403),
    ("alice", ("viewer",), "GET", "/admin/stats", 403),
    # editor
    ("erin", ("editor",), "GET", "/api/books", 200),
    ("erin", ("editor",), "GET", "/api/books/42", 200),
    ("erin", ("editor",), "GET", "/api/books?include=drafts", 200),
    ("erin", ("editor",), "POST", "/api/books", 200),
    ("erin", ("editor",), "PUT", "/api/books/42", 200),
    ("erin", ("editor",), "PUT", "/api/books", 403),
    ("erin", ("editor",), "DELETE", "/api/books/42", 403),
    ("erin", ("editor",), "POST", "/api/books/42", 403),
    ("erin", ("editor",), "GET", "/admin/stats", 403),
    # admin
    ("ada", ("admin",), "DELETE", "/api/books/42", 200),
    ("ada", ("admin",), "GET", "/api/books?include=drafts", 200),
    ("ada", ("admin",), "PATCH", "/api/anything/at/all", 200),
    ("ada", ("admin",), "GET", "/admin/stats", 200),
    ("ada", ("admin",), "POST", "/admin", 200),
    ("ada", ("admin",), "GET", "/api/users/bob/profile", 200),
    ("ada", ("admin",), "GET", "/internal/metrics", 403),
    # any signed-in user, own profile only
    ("bob", (), "GET", "/api/users/bob/profile", 200),
    ("bob", (), "PUT", "/api/users/bob/profile", 200),
    ("bob", (), "GET", "/api/users/alice/profile", 403),
    ("bob", (), "PUT", "/api/users/alice/profile", 403),
    ("bob", (), "DELETE", "/api/users/bob/profile", 403),
    ("bob", (), "GET", "/api/users/bob/profile/extra", 403),
    ("bob", (), "GET", "/api/users/bob", 403),
    ("bob", (), "GET", "/api/books", 403),
    # a token role named like a built-in principal grants nothing extra
    ("mallory", ("anonymous", "user:bob", "authenticated"), "GET", "/api/users/bob/profile", 403),
]


def _param(who, roles, method, path, status):
    name = f"{who or 'anonymous'}{'+' + '+'.join(roles) if roles else ''}-{method}-{path}-{status}"
    return pytest.param(who, roles, method, path, status, id=name)


@pytest.mark.parametrize(
    ("who", "roles", "method", "path", "status"), [_param(*case) for case in CASES]
)
def test_demo_table(client, stack, token_for, who, roles, method, path, status) -> None:
    token = token_for(who, *roles) if who else None
    before = stack.upstream_requests
    body = b'{"title": "x"}' if method in ("POST", "PUT", "PATCH") else None
    reply = client.send(method, path, token=token, body=body)
    assert reply.status == status, reply.body
    if status == 200:
        echoed = reply.json()
        assert echoed["method"] == method
        assert echoed["path"] == path
        assert echoed["headers"]["x-auth-subject"] == (who or "anonymous")
        if roles:
            assert echoed["headers"]["x-auth-roles"] == ",".join(roles)
        else:
            assert "x-auth-roles" not in echoed["headers"]
        assert stack.upstream_requests == before + 1
    else:
        denial = reply.json()
        assert denial["reason"] == ("missing_credential" if status == 401 else "access_denied")
        assert reply.headers["content-type"] == "application/json"
        assert stack.upstream_requests == before, "a denied request reached the upstream"
    if status == 401:
        assert reply.headers["www-authenticate"] == 'Bearer realm="ext-authz"'
