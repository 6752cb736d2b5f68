"""The shipped Envoy config and its demo rendering: fail closed, normalized paths, loopback only,
an mTLS listener whose verified client identity reaches ext-authz, and tracing that carries the
trace context into the Check call and exports Envoy's spans (checked with the real Envoy)."""

from __future__ import annotations

import contextlib
import copy
import http.client
import socket
import ssl
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from envoy_validate import envoy_validate
from forged_certs import forge_client_certificate
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from ext_authz._proto.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from ext_authz.assets import bundled_path
from ext_authz.demo.envoy_config import (
    DemoPorts,
    load_envoy_config,
    render_demo_config,
    walk_mappings,
)
from ext_authz.demo.keys import DEMO_CLIENT_URI, DemoKeys, ensure_demo_keys
from ext_authz.demo.stack import find_envoy
from ext_authz.errors import ConfigError
from ext_authz.identity.mtls import MtlsAuthenticator, forwarded_principal
from ext_authz.models import AuthRequest
from ext_authz.request import to_auth_request
from ext_authz.settings import MtlsSettings

PORTS = DemoPorts(
    https=18443, http=18080, grpc=19191, admin=19901, upstream=18000, mtls=18444, otlp=14317
)
SHIPPED_STATE_DIR = "/etc/ext-authz/state"
EXT_AUTHZ_FILTER = "envoy.filters.http.ext_authz"
XFCC = "x-forwarded-client-cert"
SPOOFED_XFCC = "URI=spiffe://evil.example/admin"


def shipped_path() -> Path:
    return bundled_path("envoy") / "envoy.yaml"


@pytest.fixture(scope="module")
def shipped() -> dict[str, Any]:
    return load_envoy_config(shipped_path())


@pytest.fixture
def rendered(shipped: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    return render_demo_config(shipped, PORTS, tmp_path / "state")


def by_name(config: dict[str, Any], section: str, name: str) -> dict[str, Any]:
    items = config["static_resources"][section]
    (item,) = [item for item in items if item["name"] == name]
    return item  # type: ignore[no-any-return]


def hcm(config: dict[str, Any], listener: str) -> dict[str, Any]:
    (manager,) = [
        node["typed_config"]
        for node in walk_mappings(by_name(config, "listeners", listener))
        if node.get("name") == "envoy.filters.network.http_connection_manager"
    ]
    return manager  # type: ignore[no-any-return]


def ext_authz_filter(config: dict[str, Any], listener: str = "https") -> dict[str, Any]:
    filters = hcm(config, listener)["http_filters"]
    (found,) = [f["typed_config"] for f in filters if f["name"] == EXT_AUTHZ_FILTER]
    return found  # type: ignore[no-any-return]


def socket_address(node: dict[str, Any]) -> tuple[str, int]:
    address = node["address"]["socket_address"]
    return address["address"], address["port_value"]


def endpoints(cluster: dict[str, Any]) -> list[tuple[str, int]]:
    return [
        socket_address(lb["endpoint"])
        for group in cluster["load_assignment"]["endpoints"]
        for lb in group["lb_endpoints"]
    ]


def tls_files(config: dict[str, Any], listener: str) -> list[str]:
    return [
        cert[key]["filename"]
        for node in walk_mappings(by_name(config, "listeners", listener))
        for cert in node.get("tls_certificates", [])
        for key in ("certificate_chain", "private_key")
    ]


def tls_context(config: dict[str, Any], listener: str) -> dict[str, Any]:
    (context,) = [
        chain["transport_socket"]["typed_config"]
        for chain in by_name(config, "listeners", listener)["filter_chains"]
    ]
    return context  # type: ignore[no-any-return]


# --- the shipped config ---------------------------------------------------------------------


def test_shipped_config_passes_envoy_validate_when_only_tls_paths_change(tmp_path: Path) -> None:
    # Validate opens and checks the TLS files, so point them at real ones; nothing else changes.
    keys = ensure_demo_keys(tmp_path / "state")
    text = shipped_path().read_text(encoding="utf-8")
    assert text.count(SHIPPED_STATE_DIR) == 3  # tls.crt, tls.key, client-ca.crt
    config_file = tmp_path / "shipped.yaml"
    config_file.write_text(text.replace(SHIPPED_STATE_DIR, str(keys.tls_cert.parent)))
    result = envoy_validate(config_file)
    assert result.returncode == 0, result.stderr[-2000:]


def test_shipped_config_fails_closed_when_ext_authz_is_unavailable(shipped: dict[str, Any]) -> None:
    authz = ext_authz_filter(shipped)
    assert authz["failure_mode_allow"] is False
    assert authz["status_on_error"] == {"code": "ServiceUnavailable"}
    assert authz["transport_api_version"] == "V3"
    assert authz["grpc_service"]["envoy_grpc"]["cluster_name"] == "ext_authz"


def test_shipped_config_runs_ext_authz_before_the_router(shipped: dict[str, Any]) -> None:
    names = [f["name"] for f in hcm(shipped, "https")["http_filters"]]
    assert names == [EXT_AUTHZ_FILTER, "envoy.filters.http.router"]


def test_shipped_config_routes_through_https_only(shipped: dict[str, Any]) -> None:
    # The plain listener may only redirect: a route to a cluster there would bypass ext_authz.
    http_routes = [n for n in walk_mappings(by_name(shipped, "listeners", "http")) if "match" in n]
    assert http_routes
    assert all("route" not in r and r["redirect"]["https_redirect"] is True for r in http_routes)


def test_shipped_config_accepts_only_strong_tls(shipped: dict[str, Any]) -> None:
    every_params = [n["tls_params"] for n in walk_mappings(shipped) if "tls_params" in n]
    assert len(every_params) == 2  # https and mtls
    for params in every_params:
        assert params["tls_minimum_protocol_version"] == "TLSv1_2"
        for suite in params["cipher_suites"]:
            assert suite.startswith("ECDHE-"), suite
            assert "GCM" in suite or "CHACHA20-POLY1305" in suite, suite


def test_shipped_mtls_listener_requires_a_certificate_from_the_client_ca(
    shipped: dict[str, Any],
) -> None:
    context = tls_context(shipped, "mtls")
    assert context["require_client_certificate"] is True
    validation = context["common_tls_context"]["validation_context"]
    assert validation == {"trusted_ca": {"filename": f"{SHIPPED_STATE_DIR}/client-ca.crt"}}
    # Same server certificate, TLS parameters and ALPN as https; only client auth is added.
    https = tls_context(shipped, "https")["common_tls_context"]
    mtls = dict(context["common_tls_context"])
    mtls.pop("validation_context")
    assert mtls == https
    assert "validation_context" not in https and "require_client_certificate" not in https


def test_shipped_mtls_listener_handles_http_exactly_like_https(shipped: dict[str, Any]) -> None:
    mtls_chains = by_name(shipped, "listeners", "mtls")["filter_chains"]
    https_chains = by_name(shipped, "listeners", "https")["filter_chains"]
    assert [c["filters"] for c in mtls_chains] == [c["filters"] for c in https_chains]
    authz = ext_authz_filter(shipped, "mtls")
    assert authz["failure_mode_allow"] is False
    # source.principal and the certificate are what ext-authz derives the mTLS identity from.
    assert authz["include_peer_certificate"] is True
    # Default SANITIZE: a client's own x-forwarded-client-cert never reaches ext-authz.
    assert "forward_client_cert_details" not in hcm(shipped, "mtls")


def test_shipped_admin_listens_on_loopback_only(shipped: dict[str, Any]) -> None:
    assert socket_address(shipped["admin"])[0] == "127.0.0.1"


# --- the rendered demo config ---------------------------------------------------------------


def test_rendered_demo_config_passes_envoy_validate(
    shipped: dict[str, Any], tmp_path: Path
) -> None:
    keys = ensure_demo_keys(tmp_path / "state")
    config = render_demo_config(shipped, PORTS, keys.tls_cert.parent)
    config_file = tmp_path / "demo.yaml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = envoy_validate(config_file)
    assert result.returncode == 0, result.stderr[-2000:]


def test_rendered_config_binds_every_listener_to_loopback(rendered: dict[str, Any]) -> None:
    listeners = rendered["static_resources"]["listeners"]
    assert {socket_address(listener)[0] for listener in listeners} == {"127.0.0.1"}
    assert socket_address(rendered["admin"])[0] == "127.0.0.1"


def test_rendered_config_uses_the_requested_ports(rendered: dict[str, Any]) -> None:
    assert socket_address(by_name(rendered, "listeners", "https"))[1] == PORTS.https
    assert socket_address(by_name(rendered, "listeners", "http"))[1] == PORTS.http
    assert socket_address(by_name(rendered, "listeners", "mtls"))[1] == PORTS.mtls
    assert socket_address(rendered["admin"])[1] == PORTS.admin


def test_rendered_http_listener_redirects_to_the_demo_https_port(rendered: dict[str, Any]) -> None:
    redirects = [
        n["redirect"]
        for n in walk_mappings(by_name(rendered, "listeners", "http"))
        if "redirect" in n
    ]
    assert redirects == [{"https_redirect": True, "port_redirect": PORTS.https}]


def test_rendered_clusters_are_static_on_loopback(rendered: dict[str, Any]) -> None:
    expected = {
        "ext_authz": PORTS.grpc,
        "upstream": PORTS.upstream,
        "otel_collector": PORTS.otlp,
    }
    assert {c["name"] for c in rendered["static_resources"]["clusters"]} == set(expected)
    for name, port in expected.items():
        cluster = by_name(rendered, "clusters", name)
        assert cluster["type"] == "STATIC", name
        assert endpoints(cluster) == [("127.0.0.1", port)], name


def test_demo_exports_envoys_spans_to_the_standard_otlp_port_by_default() -> None:
    # A local collector or Jaeger on 4317 receives them; with none there Envoy drops them.
    assert DemoPorts().otlp == 4317


def test_rendered_config_keeps_grpc_on_http2_to_ext_authz(rendered: dict[str, Any]) -> None:
    options = by_name(rendered, "clusters", "ext_authz")["typed_extension_protocol_options"]
    http_options = options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in http_options["explicit_http_config"]


def test_rendered_tls_files_are_absolute_paths_in_the_state_dir(
    shipped: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = render_demo_config(shipped, PORTS, Path("relative-state"))
    state_dir = (tmp_path / "relative-state").resolve()
    for listener in ("https", "mtls"):
        assert tls_files(config, listener) == [
            str(state_dir / "tls.crt"),
            str(state_dir / "tls.key"),
        ]
    validation = tls_context(config, "mtls")["common_tls_context"]["validation_context"]
    assert validation == {"trusted_ca": {"filename": str(state_dir / "client-ca.crt")}}


def test_rendered_listeners_share_no_objects_and_the_yaml_has_no_anchors(
    rendered: dict[str, Any],
) -> None:
    # The shipped file shares sections through YAML aliases; the rendering copies them apart.
    https, mtls = (by_name(rendered, "listeners", name) for name in ("https", "mtls"))
    https_ids = {id(node) for node in walk_mappings(https)}
    assert not any(id(node) in https_ids for node in walk_mappings(mtls))
    assert "&id" not in yaml.safe_dump(rendered)


def test_rendered_config_keeps_fail_closed_and_path_normalization(
    rendered: dict[str, Any],
) -> None:
    authz = ext_authz_filter(rendered)
    assert authz["failure_mode_allow"] is False
    assert authz["include_peer_certificate"] is True
    manager = hcm(rendered, "https")
    assert manager["normalize_path"] is True
    assert manager["merge_slashes"] is True
    assert manager["path_with_escaped_slashes_action"] == "REJECT_REQUEST"
    protocol = manager["common_http_protocol_options"]
    assert protocol["headers_with_underscores_action"] == "REJECT_REQUEST"
    assert manager["use_remote_address"] is True
    assert manager["xff_num_trusted_hops"] == 0


def _without_rendered_fields(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` minus exactly what rendering is allowed to change."""
    stripped = copy.deepcopy(config)
    stripped["admin"].pop("address")
    for listener in stripped["static_resources"]["listeners"]:
        listener.pop("address")
    for cluster in stripped["static_resources"]["clusters"]:
        cluster.pop("type")
        cluster.pop("load_assignment")
    for node in walk_mappings(stripped):
        # pop(..., None): aliased nodes of the shipped file are visited once per listener.
        if isinstance(node.get("redirect"), dict):
            node["redirect"].pop("port_redirect", None)
        for cert in node.get("tls_certificates", []):
            cert.pop("certificate_chain", None)
            cert.pop("private_key", None)
        if isinstance(node.get("validation_context"), dict):
            node["validation_context"].pop("trusted_ca", None)
    return stripped


def test_render_changes_only_addresses_ports_and_tls_paths(
    shipped: dict[str, Any], rendered: dict[str, Any]
) -> None:
    assert _without_rendered_fields(rendered) == _without_rendered_fields(shipped)


def test_render_leaves_the_base_config_untouched(shipped: dict[str, Any], tmp_path: Path) -> None:
    before = copy.deepcopy(shipped)
    render_demo_config(shipped, PORTS, tmp_path)
    assert shipped == before


@pytest.mark.parametrize(
    ("section", "name"), [("listeners", "https"), ("listeners", "http"), ("listeners", "mtls")]
)
def test_render_refuses_a_config_without_an_expected_listener(
    shipped: dict[str, Any], tmp_path: Path, section: str, name: str
) -> None:
    config = copy.deepcopy(shipped)
    items = config["static_resources"][section]
    config["static_resources"][section] = [i for i in items if i["name"] != name]
    with pytest.raises(ConfigError, match=f"listener named '{name}'"):
        render_demo_config(config, PORTS, tmp_path)


@pytest.mark.parametrize("name", ["ext_authz", "upstream", "otel_collector"])
def test_render_refuses_a_config_without_an_expected_cluster(
    shipped: dict[str, Any], tmp_path: Path, name: str
) -> None:
    config = copy.deepcopy(shipped)
    clusters = config["static_resources"]["clusters"]
    config["static_resources"]["clusters"] = [c for c in clusters if c["name"] != name]
    with pytest.raises(ConfigError, match=f"cluster named '{name}'"):
        render_demo_config(config, PORTS, tmp_path)


def test_render_refuses_an_https_listener_without_tls(
    shipped: dict[str, Any], tmp_path: Path
) -> None:
    config = copy.deepcopy(shipped)
    for chain in by_name(config, "listeners", "https")["filter_chains"]:
        chain.pop("transport_socket")
    with pytest.raises(ConfigError, match="tls_certificates"):
        render_demo_config(config, PORTS, tmp_path)


def test_render_refuses_an_mtls_listener_without_a_client_ca(
    shipped: dict[str, Any], tmp_path: Path
) -> None:
    config = copy.deepcopy(shipped)
    tls_context(config, "mtls")["common_tls_context"].pop("validation_context")
    with pytest.raises(ConfigError, match="trusted_ca"):
        render_demo_config(config, PORTS, tmp_path)


# --- the mtls listener, through the real Envoy ---------------------------------------------


class CheckRecorder(external_auth_pb2_grpc.AuthorizationServicer):
    """A Check service that records every request (and its gRPC metadata) and denies it (403):
    no upstream needed."""

    def __init__(self) -> None:
        self.requests: list[external_auth_pb2.CheckRequest] = []
        self.metadata: list[dict[str, str | bytes]] = []

    def Check(  # noqa: N802 - the gRPC method name
        self, request: external_auth_pb2.CheckRequest, context: grpc.ServicerContext
    ) -> external_auth_pb2.CheckResponse:
        self.requests.append(request)
        self.metadata.append(dict(context.invocation_metadata()))
        return external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=code_pb2.PERMISSION_DENIED)
        )


class SpanRecorder(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC collector that keeps every span it receives."""

    def __init__(self) -> None:
        self.spans: list[Any] = []

    def Export(  # noqa: N802 - the gRPC method name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.spans.extend(
            span
            for resource in request.resource_spans
            for scope in resource.scope_spans
            for span in scope.spans
        )
        return trace_service_pb2.ExportTraceServiceResponse()


@dataclass(frozen=True)
class RunningEnvoy:
    ports: DemoPorts
    keys: DemoKeys
    recorder: CheckRecorder
    collector: SpanRecorder


def free_ports(count: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def wait_until_ready(envoy: subprocess.Popen[bytes], admin_port: int, log: Path) -> None:
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        if envoy.poll() is not None:
            pytest.fail(f"envoy exited with {envoy.returncode}:\n{log.read_text()[-2000:]}")
        connection = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=0.5)
        try:
            connection.request("GET", "/ready")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass  # not listening yet
        finally:
            connection.close()
        time.sleep(0.05)
    pytest.fail(f"envoy did not become ready:\n{log.read_text()[-2000:]}")


@contextlib.contextmanager
def demo_envoy(
    tmp_path: Path, adjust: Callable[[dict[str, Any]], None] | None = None
) -> Iterator[RunningEnvoy]:
    """The rendered demo config (changed by ``adjust``) in the real Envoy, a CheckRecorder
    as ext-authz and a SpanRecorder as the OTLP collector (one gRPC server, both services)."""
    keys = ensure_demo_keys(tmp_path / "state")
    recorder = CheckRecorder()
    collector = SpanRecorder()
    executor = ThreadPoolExecutor(max_workers=4)
    server = grpc.server(executor)
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(recorder, server)
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    https, http_, admin, upstream, mtls = free_ports(5)
    ports = DemoPorts(https, http_, grpc_port, admin, upstream, mtls, otlp=grpc_port)
    config = render_demo_config(load_envoy_config(shipped_path()), ports, keys.tls_cert.parent)
    # Export every span at once instead of in batches of 5 or every 5 s.
    config["layered_runtime"] = {
        "layers": [{"name": "flush", "static_layer": {"tracing.opentelemetry.min_flush_spans": 1}}]
    }
    if adjust is not None:
        adjust(config)
    config_file = tmp_path / "envoy.yaml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    log = tmp_path / "envoy.log"
    argv = [str(find_envoy()), "-c", str(config_file), "--disable-hot-restart"]
    server.start()
    try:
        with log.open("wb") as out:
            envoy = subprocess.Popen(
                [*argv, "--concurrency", "1", "-l", "warning"], stdout=out, stderr=out
            )
            try:
                wait_until_ready(envoy, admin, log)
                yield RunningEnvoy(ports, keys, recorder, collector)
            finally:
                envoy.terminate()
                try:
                    envoy.wait(5)
                except subprocess.TimeoutExpired:
                    envoy.kill()
                    envoy.wait()
    finally:
        server.stop(None).wait()
        executor.shutdown()


def https_get(
    port: int,
    keys: DemoKeys,
    client: tuple[Path, Path] | None = None,
    headers: dict[str, str] | None = None,
) -> int:
    context = ssl.create_default_context(cafile=str(keys.tls_cert))
    if client is not None:
        context.load_cert_chain(str(client[0]), str(client[1]))
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=3)
    try:
        connection.request("GET", "/api/books", headers=headers or {})
        return connection.getresponse().status
    finally:
        connection.close()


def untrusted_client_pair(directory: Path) -> tuple[Path, Path]:
    """A client certificate for the demo client's URI, self-signed: not from the client CA."""
    return forge_client_certificate(directory, "impostor", DEMO_CLIENT_URI)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEnvoy]:
    with demo_envoy(tmp_path_factory.mktemp("envoy")) as envoy:
        yield envoy


@pytest.fixture
def envoy(running: RunningEnvoy) -> RunningEnvoy:
    running.recorder.requests.clear()
    running.recorder.metadata.clear()
    running.collector.spans.clear()
    return running


CLIENT_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN_ID = "b7ad6b7169203331"


def test_envoy_sends_its_trace_context_to_ext_authz_in_the_grpc_metadata(
    envoy: RunningEnvoy,
) -> None:
    traceparent = f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01"
    assert https_get(envoy.ports.https, envoy.keys, headers={"traceparent": traceparent}) == 403
    (metadata,) = envoy.recorder.metadata
    version, trace_id, span_id, flags = str(metadata["traceparent"]).split("-")
    # The client's trace continues; the parent is Envoy's own span for the Check call.
    assert (version, trace_id, flags) == ("00", CLIENT_TRACE_ID, "01")
    assert span_id != CLIENT_SPAN_ID
    # Envoy exports its spans to the otel_collector cluster: its server span (child of the
    # client's) and the span of the Check call, whose id ext-authz received as the parent.
    deadline = time.monotonic() + 10
    while len(envoy.collector.spans) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    spans = {span.span_id.hex(): span for span in envoy.collector.spans}
    check_call = spans[span_id]
    server = spans[check_call.parent_span_id.hex()]
    assert {check_call.trace_id.hex(), server.trace_id.hex()} == {CLIENT_TRACE_ID}
    assert server.parent_span_id.hex() == CLIENT_SPAN_ID
    assert "Authorization.Check" in check_call.name


def test_envoy_starts_a_trace_for_a_request_without_one(envoy: RunningEnvoy) -> None:
    assert https_get(envoy.ports.https, envoy.keys) == 403
    (metadata,) = envoy.recorder.metadata
    _, trace_id, _, flags = str(metadata["traceparent"]).split("-")
    assert int(trace_id, 16) != 0 and flags == "01"  # sampled: random_sampling is 100%


def test_mtls_listener_sends_the_client_certificate_uri_san_as_source_principal(
    envoy: RunningEnvoy,
) -> None:
    client = (envoy.keys.client_cert, envoy.keys.client_key)
    status = https_get(envoy.ports.mtls, envoy.keys, client, headers={XFCC: SPOOFED_XFCC})
    assert status == 403  # the recorder's answer: Envoy called Check and obeyed it
    (check,) = envoy.recorder.requests
    assert check.attributes.source.principal == DEMO_CLIENT_URI
    # include_peer_certificate: the URL-encoded PEM of the verified certificate comes along.
    pem = urllib.parse.unquote(check.attributes.source.certificate).encode()
    assert pem == envoy.keys.client_cert.read_bytes()
    # The client's own XFCC header was stripped (SANITIZE), so it could not be believed.
    assert XFCC not in check.attributes.request.http.headers
    authenticator = MtlsAuthenticator(MtlsSettings(trust_forwarded_client_cert=True))
    assert authenticator.principal(to_auth_request(check)) == DEMO_CLIENT_URI


def test_mtls_listener_refuses_a_client_without_a_certificate_in_the_tls_handshake(
    envoy: RunningEnvoy,
) -> None:
    # TLS 1.3: the client finishes its side first; the server's alert arrives on the first read.
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        https_get(envoy.ports.mtls, envoy.keys)
    assert envoy.recorder.requests == []


def test_mtls_listener_refuses_a_certificate_the_client_ca_did_not_sign(
    envoy: RunningEnvoy, tmp_path: Path
) -> None:
    impostor = untrusted_client_pair(tmp_path)
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        https_get(envoy.ports.mtls, envoy.keys, impostor)
    assert envoy.recorder.requests == []


def test_https_listener_asks_for_no_client_certificate_and_sends_no_principal(
    envoy: RunningEnvoy,
) -> None:
    client = (envoy.keys.client_cert, envoy.keys.client_key)
    assert https_get(envoy.ports.https, envoy.keys, client, headers={XFCC: SPOOFED_XFCC}) == 403
    (check,) = envoy.recorder.requests
    assert check.attributes.source.principal == ""
    assert check.attributes.source.certificate == ""
    assert XFCC not in check.attributes.request.http.headers


def _sanitize_set_on_mtls(config: dict[str, Any]) -> None:
    manager = hcm(config, "mtls")
    manager["forward_client_cert_details"] = "SANITIZE_SET"
    manager["set_current_client_cert_details"] = {"subject": True, "uri": True, "dns": True}


def test_an_xfcc_header_envoy_sets_parses_to_the_principal_envoy_verified(
    tmp_path: Path,
) -> None:
    # The deployment trust_forwarded_client_cert is for: an Envoy that replaces the client's
    # XFCC with the certificate it verified. Our parser must read back what Envoy writes.
    with demo_envoy(tmp_path, _sanitize_set_on_mtls) as envoy:
        client = (envoy.keys.client_cert, envoy.keys.client_key)
        https_get(envoy.ports.mtls, envoy.keys, client, headers={XFCC: SPOOFED_XFCC})
        (check,) = envoy.recorder.requests
    xfcc = check.attributes.request.http.headers[XFCC]
    assert "evil" not in xfcc
    assert forwarded_principal(xfcc) == check.attributes.source.principal == DEMO_CLIENT_URI
    without_peer = AuthRequest(method="GET", path="/", headers={XFCC: xfcc})
    authenticator = MtlsAuthenticator(MtlsSettings(trust_forwarded_client_cert=True))
    assert authenticator.principal(without_peer) == DEMO_CLIENT_URI


# --- loading --------------------------------------------------------------------------------


def test_load_names_the_file_and_line_of_a_yaml_error(tmp_path: Path) -> None:
    broken = tmp_path / "envoy.yaml"
    broken.write_text("admin:\n  address: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"{broken}:3:1: invalid YAML"):
        load_envoy_config(broken)


def test_load_names_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=str(missing)):
        load_envoy_config(missing)


def test_load_refuses_a_document_that_is_not_a_mapping(tmp_path: Path) -> None:
    listed = tmp_path / "envoy.yaml"
    listed.write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="mapping"):
        load_envoy_config(listed)


# --- bundled_path ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["envoy", "policies"])
def test_bundled_path_finds_the_shipped_folders(name: str) -> None:
    assert bundled_path(name).is_dir()
    assert bundled_path(name).name == name


def test_bundled_path_raises_config_error_for_an_unknown_folder() -> None:
    with pytest.raises(ConfigError, match="not found"):
        bundled_path("no-such-folder")


@pytest.mark.parametrize("name", ["", "..", "../etc", "envoy/sub"])
def test_bundled_path_refuses_anything_but_a_plain_folder_name(name: str) -> None:
    with pytest.raises(ConfigError, match="invalid"):
        bundled_path(name)
