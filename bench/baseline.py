"""Baseline ext_authz servicers the benchmark compares ext-authz with.

    python -m bench.baseline trivial --port N [--threads 16] [--aio]
    python -m bench.baseline naive --port N --jwks FILE [--threads 16]

- ``trivial``: allows everything with one prebuilt response (the Python gRPC ceiling);
  ``--aio`` serves it with grpc.aio instead of the thread-pool server.
- ``naive``: what people hand-roll: python-jose decodes the bearer token on every request and a
  stock ``casbin.Enforcer`` decides over a plain RBAC rendering of the demo rules, no caching.

Both print ``ready`` once serving and stop on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import casbin
import grpc
from google.rpc import code_pb2, status_pb2
from jose import JWTError, jwt

from ext_authz._proto.envoy.config.core.v3 import base_pb2
from ext_authz._proto.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from ext_authz._proto.envoy.type.v3 import http_status_pb2
from ext_authz.demo.issuer import DEMO_AUDIENCE, DEMO_ISSUER

# The demo's rules in a model a stock Enforcer understands: one enforce per principal
# (everyone, anonymous/authenticated, each role) until one allows.
NAIVE_MODEL = """
[request_definition]
r = sub, role, obj, act, drafts

[policy_definition]
p = role, obj, act, drafts, own

[role_definition]
g = _, _

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = g(r.role, p.role) && keyMatch2(r.obj, p.obj) && regexMatch(r.act, p.act) \
&& (p.drafts == "any" || p.drafts == r.drafts) \
&& (p.own == "any" || r.obj == "/api/users/" + r.sub + "/profile")
"""
NAIVE_POLICY = """
p, everyone, /public/*, ^GET$, any, any
p, everyone, /healthz, ^GET$, any, any
p, viewer, /api/books, ^GET$, no, any
p, viewer, /api/books/:id, ^GET$, no, any
p, editor, /api/books, ^(GET|POST)$, any, any
p, editor, /api/books/:id, ^(GET|PUT)$, any, any
p, admin, /api/*, .*, any, any
p, admin, /admin/*, .*, any, any
p, authenticated, /api/users/:id/profile, ^(GET|PUT)$, any, own
g, editor, viewer
g, admin, editor
"""

_ALLOW = external_auth_pb2.CheckResponse(status=status_pb2.Status(code=code_pb2.OK))


class TrivialServicer(external_auth_pb2_grpc.AuthorizationServicer):
    def Check(self, request: Any, context: Any) -> external_auth_pb2.CheckResponse:
        return _ALLOW


class AioTrivialServicer(external_auth_pb2_grpc.AuthorizationServicer):
    async def Check(self, request: Any, context: Any) -> external_auth_pb2.CheckResponse:  # type: ignore[override]
        return _ALLOW


def _denied(status: int, code: int, reason: str) -> external_auth_pb2.CheckResponse:
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=code, message=reason),
        denied_response=external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=status),
            body=json.dumps({"error": reason}),
        ),
    )


class NaiveServicer(external_auth_pb2_grpc.AuthorizationServicer):
    def __init__(self, jwks: dict[str, Any], workdir: Path) -> None:
        self._keys = {key["kid"]: key for key in jwks["keys"]}
        model, policy = workdir / "model.conf", workdir / "policy.csv"
        model.write_text(NAIVE_MODEL)
        policy.write_text(NAIVE_POLICY)
        self._enforcer = casbin.Enforcer(str(model), str(policy))

    def Check(self, request: Any, context: Any) -> external_auth_pb2.CheckResponse:
        http = request.attributes.request.http
        path, _, query = http.path.partition("?")
        principals = ["everyone"]
        subject = ""
        authorization = http.headers.get("authorization", "")
        if authorization:
            token = authorization.removeprefix("Bearer ")
            try:
                kid = jwt.get_unverified_header(token).get("kid")
                claims = jwt.decode(
                    token,
                    self._keys[kid],
                    algorithms=["RS256"],
                    audience=DEMO_AUDIENCE,
                    issuer=DEMO_ISSUER,
                )
            except (JWTError, KeyError):
                return _denied(401, code_pb2.UNAUTHENTICATED, "invalid_token")
            subject = claims["sub"]
            principals += ["authenticated", *claims.get("roles", [])]
        else:
            principals.append("anonymous")
        drafts = "yes" if "include=drafts" in query else "no"
        for principal in principals:
            if self._enforcer.enforce(subject, principal, path, http.method, drafts):
                header = base_pb2.HeaderValueOption(
                    header=base_pb2.HeaderValue(key="x-auth-subject", value=subject),
                    append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
                )
                return external_auth_pb2.CheckResponse(
                    status=status_pb2.Status(code=code_pb2.OK),
                    ok_response=external_auth_pb2.OkHttpResponse(headers=[header]),
                )
        if not subject:
            return _denied(401, code_pb2.UNAUTHENTICATED, "missing_credential")
        return _denied(403, code_pb2.PERMISSION_DENIED, "access_denied")


def serve_until_signalled(server: grpc.Server, port: int) -> None:
    """Serve on 127.0.0.1:``port``, print ``ready``, and stop on SIGTERM or SIGINT."""
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    print("ready", flush=True)
    stop.wait()
    server.stop(1).wait()


def _serve_sync(servicer: Any, port: int, threads: int) -> None:
    server = grpc.server(ThreadPoolExecutor(max_workers=threads))
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(servicer, server)
    serve_until_signalled(server, port)


async def _serve_aio(port: int) -> None:
    server = grpc.aio.server()
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(AioTrivialServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("trivial", "naive"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--aio", action="store_true", help="grpc.aio server (trivial only)")
    parser.add_argument("--jwks", type=Path, help="the demo issuer's jwks.json (naive)")
    args = parser.parse_args()
    if args.aio:
        asyncio.run(_serve_aio(args.port))
    elif args.kind == "trivial":
        _serve_sync(TrivialServicer(), args.port, args.threads)
    else:
        with tempfile.TemporaryDirectory() as workdir:
            servicer = NaiveServicer(json.loads(args.jwks.read_text()), Path(workdir))
            _serve_sync(servicer, args.port, args.threads)


if __name__ == "__main__":
    main()
