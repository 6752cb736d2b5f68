"""A minimal OTLP/gRPC trace receiver: accepts every export and drops it unparsed, so the spans
Envoy and ext-authz export cost them what a real collector would, and the sink itself little.

    python -m bench.otlp_sink --port N

Prints ``ready``; on SIGTERM prints ``exports=N bytes=M`` and exits.
"""

from __future__ import annotations

import argparse
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from bench.baseline import serve_until_signalled

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    lock = threading.Lock()
    totals = {"exports": 0, "bytes": 0}

    def export(request: bytes, context: Any) -> bytes:
        with lock:
            totals["exports"] += 1
            totals["bytes"] += len(request)
        return b""  # an empty ExportTraceServiceResponse: everything accepted

    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Export": grpc.unary_unary_rpc_method_handler(export)}
    )
    server = grpc.server(ThreadPoolExecutor(max_workers=2), handlers=[handler])
    serve_until_signalled(server, args.port)
    print(f"exports={totals['exports']} bytes={totals['bytes']}", flush=True)


if __name__ == "__main__":
    main()
