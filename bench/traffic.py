"""The benchmark's traffic: RS256 tokens for a pool of distinct demo users and a mix of allowed and
denied requests over the demo routes, with the status the demo's rules give each one.

The same requests feed wrk (through Envoy, as a Lua table) and the direct gRPC load (as
pre-serialized, gRPC-framed CheckRequests for h2load).
"""

from __future__ import annotations

import random
import secrets
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from jose import jwk, jwt

from ext_authz._proto.envoy.config.core.v3 import base_pb2
from ext_authz._proto.envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2
from ext_authz.demo.issuer import DEMO_AUDIENCE, DEMO_ISSUER
from ext_authz.demo.keys import ensure_demo_keys

# (role, share of users). "" is a signed-in user with no role.
ROLE_SHARES = (("viewer", 0.6), ("editor", 0.25), ("admin", 0.1), ("", 0.05))
# (route kind, share of requests)
ROUTE_SHARES = (
    ("public", 0.15),
    ("books_anonymous", 0.05),
    ("books", 0.25),
    ("book", 0.05),
    ("drafts", 0.10),
    ("post_book", 0.10),
    ("own_profile", 0.10),
    ("other_profile", 0.05),
    ("admin", 0.10),
    ("bad_token", 0.05),
)


@dataclass(frozen=True, slots=True)
class User:
    sub: str
    role: str
    token: str


@dataclass(frozen=True, slots=True)
class Request:
    kind: str
    method: str
    path: str  # with the query
    token: str | None
    role: str  # of the user the token belongs to ("" also without a token)
    expected: int  # the HTTP status the demo's rules give

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"} if self.token else {}


def make_users(state_dir: Path, count: int, rng: random.Random) -> list[User]:
    """``count`` users with RS256 tokens from the demo issuer (valid for two hours), with the
    claims `ext-authz token` gives. The key is parsed once: parsing it per token takes ~50 ms."""
    keys = ensure_demo_keys(state_dir)
    key = jwk.construct(keys.issuer_key.read_text(encoding="ascii"), "RS256")
    roles = rng.choices([r for r, _ in ROLE_SHARES], [s for _, s in ROLE_SHARES], k=count)
    now = int(time.time())
    users = []
    for index, role in enumerate(roles):
        sub = f"user{index:04d}"
        claims = {
            "iss": DEMO_ISSUER,
            "aud": DEMO_AUDIENCE,
            "sub": sub,
            "iat": now,
            "nbf": now,
            "exp": now + 7200,
            "roles": [role] if role else [],
            "jti": secrets.token_urlsafe(12),
        }
        token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": keys.kid})
        users.append(User(sub, role, token))
    return users


def _expected(kind: str, role: str) -> int:
    """The demo table (README), per route kind and role."""
    at_least = {"": 0, "viewer": 1, "editor": 2, "admin": 3}[role]
    if kind == "public" or kind == "own_profile":
        return 200
    if kind in ("books_anonymous", "bad_token"):
        return 401
    if kind in ("books", "book"):
        return 200 if at_least >= 1 else 403
    if kind in ("drafts", "post_book"):
        return 200 if at_least >= 2 else 403
    return 200 if at_least >= 3 else 403  # other_profile, admin


def _tampered(token: str) -> str:
    """The same token with a broken signature (verified, then refused: never cached)."""
    head, payload, signature = token.split(".")
    flipped = "A" if signature[5] != "A" else "B"
    return f"{head}.{payload}.{signature[:5]}{flipped}{signature[6:]}"


def make_requests(users: list[User], count: int, rng: random.Random) -> list[Request]:
    kinds = rng.choices([k for k, _ in ROUTE_SHARES], [s for _, s in ROUTE_SHARES], k=count)
    requests = []
    for kind in kinds:
        user = rng.choice(users)
        other = rng.choice(users)
        book = rng.randrange(1, 500)
        token: str | None = user.token
        method, path = (
            "GET",
            {
                "public": f"/public/item-{book}",
                "books_anonymous": "/api/books",
                "books": "/api/books",
                "book": f"/api/books/{book}",
                "drafts": "/api/books?include=drafts",
                "post_book": "/api/books",
                "own_profile": f"/api/users/{user.sub}/profile",
                "other_profile": f"/api/users/{other.sub if other is not user else 'x'}/profile",
                "admin": "/admin/stats",
                "bad_token": "/api/books",
            }[kind],
        )
        if kind == "post_book":
            method = "POST"
        if kind in ("public", "books_anonymous"):
            token = None
        if kind == "bad_token":
            token = _tampered(user.token)
        role = user.role if token else ""
        requests.append(Request(kind, method, path, token, role, _expected(kind, user.role)))
    return requests


def denied_share(requests: list[Request]) -> float:
    return sum(r.expected >= 400 for r in requests) / len(requests)


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def wrk_script(requests: list[Request]) -> str:
    """A wrk Lua script: each thread sends the requests in a random order. With
    WRK_MEAN_DELAY_MS set, each connection waits an exponentially distributed delay of that mean
    before its next request (a target rate); done() writes the figures as JSON to
    WRK_RESULT_FILE."""
    rows = ",\n".join(
        "{"
        + ", ".join((_lua_string(r.method), _lua_string(r.path), _lua_string(r.token or "")))
        + "}"
        for r in requests
    )
    return WRK_LUA.replace("--ROWS--", rows)


WRK_LUA = """
local rows = {
--ROWS--
}
local built = {}
local mean_delay = tonumber(os.getenv("WRK_MEAN_DELAY_MS") or "0")

function init(args)
  for i, row in ipairs(rows) do
    local headers = {}
    if row[3] ~= "" then headers["Authorization"] = "Bearer " .. row[3] end
    built[i] = wrk.format(row[1], row[2], headers, nil)
  end
  math.randomseed(os.time() * 1000 + math.floor(os.clock() * 1e6))
end

function request()
  return built[math.random(#built)]
end

if mean_delay > 0 then
  function delay()
    return -math.log(1 - math.random()) * mean_delay
  end
end

function done(summary, latency, requests)
  local file = io.open(os.getenv("WRK_RESULT_FILE"), "w")
  local e = summary.errors
  file:write(string.format(
    '{"duration_us": %d, "requests": %d, "bytes": %d, "non_2xx": %d, "connect_errors": %d,'
    .. ' "read_errors": %d, "write_errors": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d,'
    .. ' "p99_us": %d, "max_us": %d, "mean_us": %.1f}',
    summary.duration, summary.requests, summary.bytes, e.status, e.connect, e.read, e.write,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
  file:close()
end
"""


def check_request(
    request: Request, host: str = "127.0.0.1:10000"
) -> external_auth_pb2.CheckRequest:
    """A CheckRequest like the one Envoy sends for ``request`` (pseudo headers, raw :path)."""
    headers = {
        ":authority": host,
        ":method": request.method,
        ":path": request.path,
        ":scheme": "http",
        "user-agent": "bench",
        "x-forwarded-proto": "http",
        "x-request-id": "6b3b3f3e-1d2c-4f44-9d3f-bench0000000",
        **request.headers,
    }
    http = attribute_context_pb2.AttributeContext.HttpRequest(
        id="1234567890",
        method=request.method,
        path=request.path,
        host=host,
        scheme="http",
        protocol="HTTP/1.1",
        headers=headers,
    )

    def peer(port: int) -> attribute_context_pb2.AttributeContext.Peer:
        socket = base_pb2.SocketAddress(address="127.0.0.1", port_value=port)
        return attribute_context_pb2.AttributeContext.Peer(
            address=base_pb2.Address(socket_address=socket)
        )

    attributes = attribute_context_pb2.AttributeContext(
        source=peer(51000),
        destination=peer(10000),
        request=attribute_context_pb2.AttributeContext.Request(http=http),
    )
    return external_auth_pb2.CheckRequest(attributes=attributes)


def grpc_frame(message: bytes) -> bytes:
    """The gRPC length-prefixed message: uncompressed flag, 4-byte big-endian length, bytes."""
    return struct.pack(">BI", 0, len(message)) + message
