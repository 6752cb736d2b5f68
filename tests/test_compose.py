"""The docker-compose stack, checked statically: no Docker engine is needed (or used).

docker-compose.yml, the Dockerfile, the configs under deploy/compose/ and envoy/envoy.yaml are
written by hand and have to agree with each other: every mounted file exists, every address
Envoy dials is a compose service listening on that port, the keys `init` writes are where Envoy
and ext-authz read them and are readable by the uid they run as, spans reach Jaeger through the
collector, and only Envoy (and Jaeger's UI) is published, on loopback.
The shipped Envoy config is run through the real `envoy --mode validate`.
"""

from __future__ import annotations

import ast
import ipaddress
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from importlib.metadata import packages_distributions
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from dockerfile_stages import dockerfile_stages, exec_form, last
from envoy_validate import envoy_validate

from ext_authz.demo.envoy_config import walk_mappings
from ext_authz.demo.keys import CLIENT_CA_CERT, JWKS, TLS_CERT, TLS_KEY, ensure_demo_keys
from ext_authz.demo.stack import find_envoy
from ext_authz.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENVOY_CONFIG = ROOT / "envoy" / "envoy.yaml"
SERVICE_CONFIG = ROOT / "deploy" / "compose" / "ext-authz.yaml"
COLLECTOR_CONFIG = ROOT / "deploy" / "compose" / "otel-collector.yaml"

STATE_VOLUME = "state"
INIT = "init"  # writes the keys into the state volume, once
EXT_AUTHZ = "ext-authz"
ENVOY = "envoy"
COLLECTOR = "otel-collector"
JAEGER = "jaeger"
JAEGER_UI_PORT = 16686
DASHBOARD_PORTS = {"prometheus": 9090, "grafana": 3000}
DATA_VOLUMES = {"prometheus": "prometheus", "grafana": "grafana"}
# Where envoy.yaml expects the files `init` generates.
ENVOY_STATE_PREFIX = "/etc/ext-authz/state/"
EXT_AUTHZ_FILTER = "envoy.filters.http.ext_authz"
HCM_FILTER = "envoy.filters.network.http_connection_manager"
ROOT_USERS = {"0", "root"}


# --- parsing helpers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Mount:
    source: str  # a host path (bind mount) or a named volume
    target: PurePosixPath
    read_only: bool

    @property
    def is_bind(self) -> bool:
        return self.source.startswith((".", "/", "~"))


@dataclass(frozen=True)
class PublishedPort:
    host_ip: str
    published: int | None
    target: int


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _mounts(service: dict[str, Any]) -> list[Mount]:
    mounts = []
    for entry in service.get("volumes", []):
        if isinstance(entry, dict):  # long syntax
            mounts.append(
                Mount(
                    source=str(entry["source"]),
                    target=PurePosixPath(entry["target"]),
                    read_only=bool(entry.get("read_only", False)),
                )
            )
            continue
        source, target, *options = str(entry).split(":")
        flags = options[0].split(",") if options else []
        mounts.append(Mount(source, PurePosixPath(target), read_only="ro" in flags))
    return mounts


def _published_ports(service: dict[str, Any]) -> list[PublishedPort]:
    ports = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):  # long syntax
            published = entry.get("published")
            ports.append(
                PublishedPort(
                    host_ip=str(entry.get("host_ip", "")),
                    published=int(published) if published is not None else None,
                    target=int(entry["target"]),
                )
            )
            continue
        spec = str(entry).split("/", 1)[0]  # drop "/tcp"
        parts = spec.rsplit(":", 2)
        if len(parts) == 3:
            ports.append(PublishedPort(parts[0], int(parts[1]), int(parts[2])))
        elif len(parts) == 2:
            ports.append(PublishedPort("", int(parts[0]), int(parts[1])))
        else:
            ports.append(PublishedPort("", None, int(parts[0])))
    return ports


def _option(argv: list[str], flag: str) -> str:
    assert flag in argv, f"{flag} missing from {argv}"
    return argv[argv.index(flag) + 1]


def _port_of(listen: str) -> int:
    return int(listen.rsplit(":", 1)[1])


def _connection_managers(envoy: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        node["typed_config"]
        for node in walk_mappings(envoy["static_resources"]["listeners"])
        if node.get("name") == HCM_FILTER
    ]


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = _load_yaml(COMPOSE_FILE)
    assert isinstance(document, dict) and isinstance(document.get("services"), dict)
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


@pytest.fixture(scope="module")
def envoy_config() -> dict[str, Any]:
    document = _load_yaml(ENVOY_CONFIG)
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings(SERVICE_CONFIG)


@pytest.fixture(scope="module")
def runtime_stage() -> list[tuple[str, str]]:
    stages = dockerfile_stages(DOCKERFILE.read_text(encoding="utf-8"))
    assert len(stages) >= 2, "expected a multi-stage build (builder + runtime)"
    return stages[-1]


@pytest.fixture(scope="module")
def image_user(runtime_stage: list[tuple[str, str]]) -> str:
    return last(runtime_stage, "USER")


@pytest.fixture(scope="module")
def envoy_binary() -> Path:
    return find_envoy()


def _built_from_dockerfile(service: dict[str, Any]) -> bool:
    build = service.get("build")
    if build is None:
        return False
    context = build if isinstance(build, str) else build.get("context", ".")
    dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    return (ROOT / context / dockerfile).resolve() == DOCKERFILE


def _uid(service: dict[str, Any], image_user: str) -> str:
    """The uid a service's process runs as: compose `user`, else (our image) the Dockerfile's."""
    user = service.get("user")
    if user is None:
        assert _built_from_dockerfile(service), f"no `user` for {service.get('image')}"
        user = image_user
    return str(user).split(":", 1)[0]


def _command(service: dict[str, Any], runtime_stage: list[tuple[str, str]]) -> list[str]:
    """Entrypoint + command as the container runs them (compose overrides the image)."""
    entrypoint = service.get("entrypoint") or exec_form(last(runtime_stage, "ENTRYPOINT"))
    command = service.get("command")
    if command is None:
        command = exec_form(last(runtime_stage, "CMD"))
    return [*entrypoint, *command]


def _host_path(service: dict[str, Any], container_path: PurePosixPath) -> Path | None:
    """The repository file a container path is bind-mounted from, if any."""
    for mount in _mounts(service):
        if mount.is_bind and container_path.is_relative_to(mount.target):
            return ROOT / mount.source / container_path.relative_to(mount.target)
    return None


def _state_mount(service: dict[str, Any]) -> Mount | None:
    return next((m for m in _mounts(service) if m.source == STATE_VOLUME), None)


def _endpoint(url: str) -> tuple[str, int]:
    """(host, port) of ``host:port`` or ``scheme://host:port``."""
    host, port = url.split("://", 1)[-1].rsplit(":", 1)
    return host, int(port)


def _listening_port(
    name: str, services: dict[str, dict[str, Any]], runtime_stage: list[tuple[str, str]]
) -> int:
    """The port a compose service listens on, read from its own command or config file."""
    if name == COLLECTOR:  # OTLP/gRPC, from the collector's config file
        config = _collector_config(services)
        return _endpoint(config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"])[1]
    argv = _command(services[name], runtime_stage)
    if "serve" in argv:
        config = _host_path(services[name], PurePosixPath(_option(argv, "--config")))
        assert config is not None, f"{name}: its --config is not mounted from the repository"
        return _port_of(load_settings(config).listen)
    return int(_option(argv, "--port"))


def _collector_config(services: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The collector's config, read from the repository file its --config is mounted from."""
    (argument,) = [a for a in services[COLLECTOR]["command"] if a.startswith("--config=")]
    path = _host_path(services[COLLECTOR], PurePosixPath(argument.split("=", 1)[1]))
    assert path is not None, f"{COLLECTOR}: its --config is not mounted from the repository"
    assert path.resolve() == COLLECTOR_CONFIG
    config = _load_yaml(path)
    assert isinstance(config, dict)
    return config


# --- the compose file and the repository -------------------------------------------------------


def test_every_file_compose_mounts_exists(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    declared_volumes = set(compose.get("volumes") or {})
    for name, service in services.items():
        for mount in _mounts(service):
            if mount.is_bind:
                assert (ROOT / mount.source).exists(), f"{name}: {mount.source} does not exist"
            else:
                assert mount.source in declared_volumes, f"{name}: volume {mount.source} undeclared"


def test_every_built_service_builds_the_repository_dockerfile(
    services: dict[str, dict[str, Any]],
) -> None:
    built = {name for name, service in services.items() if "build" in service}
    assert built == {INIT, EXT_AUTHZ, "upstream"}
    for name in built:
        assert _built_from_dockerfile(services[name]), f"{name} builds another Dockerfile"
    # One tag for all three, so the image is built once and reused.
    assert len({services[name].get("image") for name in built}) == 1


def test_ext_authz_serves_the_compose_config_file(
    services: dict[str, dict[str, Any]], runtime_stage: list[tuple[str, str]]
) -> None:
    argv = _command(services[EXT_AUTHZ], runtime_stage)
    assert argv[:2] == ["ext-authz", "serve"]
    config = _host_path(services[EXT_AUTHZ], PurePosixPath(_option(argv, "--config")))
    assert config is not None and config.resolve() == SERVICE_CONFIG
    # The image's default command reads the same path, so `docker run -v cfg:...` works alike.
    default = exec_form(last(runtime_stage, "CMD"))
    assert _option(default, "--config") == _option(argv, "--config")


def test_service_config_files_resolve_through_the_compose_mounts(
    services: dict[str, dict[str, Any]], settings: Settings
) -> None:
    service = services[EXT_AUTHZ]
    for container_path in (settings.policy.model, settings.policy.policy):
        host = _host_path(service, PurePosixPath(container_path))
        assert host is not None, f"{container_path} is not mounted into {EXT_AUTHZ}"
        assert host.is_file(), f"{container_path} maps to {host}, which is not a file"


def test_service_reads_the_jwks_init_writes_into_the_state_volume(
    services: dict[str, dict[str, Any]],
    settings: Settings,
    runtime_stage: list[tuple[str, str]],
) -> None:
    reader = _state_mount(services[EXT_AUTHZ])
    assert reader is not None, f"{EXT_AUTHZ} does not mount the {STATE_VOLUME} volume"
    (provider,) = settings.providers
    assert PurePosixPath(provider.jwks_file) == reader.target / JWKS
    writer = _state_mount(services[INIT])
    assert writer is not None and not writer.read_only
    argv = _command(services[INIT], runtime_stage)
    assert argv[:2] == ["ext-authz", "demo"] and "--init-only" in argv
    assert PurePosixPath(_option(argv, "--state-dir")) == writer.target


def test_envoy_reads_the_tls_files_init_writes_into_the_state_volume(
    services: dict[str, dict[str, Any]], envoy_config: dict[str, Any]
) -> None:
    mount = _state_mount(services[ENVOY])
    assert mount is not None, f"{ENVOY} does not mount the {STATE_VOLUME} volume"
    assert str(mount.target) + "/" == ENVOY_STATE_PREFIX
    files = {
        PurePosixPath(node["filename"])
        for node in walk_mappings(envoy_config)
        if isinstance(node.get("filename"), str)
    }
    assert files == {mount.target / TLS_CERT, mount.target / TLS_KEY, mount.target / CLIENT_CA_CERT}
    (config_mount,) = [m for m in _mounts(services[ENVOY]) if m.is_bind]
    assert (ROOT / config_mount.source).resolve() == ENVOY_CONFIG
    assert PurePosixPath(_option(services[ENVOY]["command"], "-c")) == config_mount.target


def test_only_init_can_write_a_mounted_path(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for mount in _mounts(service):
            if name == INIT and mount.source == STATE_VOLUME:
                continue
            if DATA_VOLUMES.get(name) == mount.source:  # their own storage, nothing of ours
                continue
            assert mount.read_only, f"{name}: {mount.source} is mounted writable"
    for name in (INIT, EXT_AUTHZ, "upstream", COLLECTOR, JAEGER):
        assert services[name].get("read_only") is True, f"{name}: root filesystem is writable"


def test_services_reading_the_state_volume_wait_for_init(
    services: dict[str, dict[str, Any]],
) -> None:
    readers = [n for n, s in services.items() if n != INIT and _state_mount(s) is not None]
    assert sorted(readers) == [ENVOY, EXT_AUTHZ]
    for name in readers:
        condition = services[name]["depends_on"][INIT]["condition"]
        assert condition == "service_completed_successfully", name


def test_envoy_starts_once_ext_authz_is_healthy(services: dict[str, dict[str, Any]]) -> None:
    depends = services[ENVOY]["depends_on"]
    assert depends[EXT_AUTHZ]["condition"] == "service_healthy"
    assert depends["upstream"]["condition"] in {"service_started", "service_healthy"}


def test_containers_reading_the_keys_run_as_the_uid_that_owns_them(
    services: dict[str, dict[str, Any]],
    image_user: str,
    runtime_stage: list[tuple[str, str]],
) -> None:
    # tls.key and issuer.key are 0600 and the volume 0700, owned by whoever runs init: Envoy
    # (whose image would otherwise drop to uid 101) and ext-authz must run as that same uid.
    owner = _uid(services[INIT], image_user)
    assert owner not in ROOT_USERS
    for name, service in services.items():
        if _state_mount(service) is not None:
            assert _uid(service, image_user) == owner, f"{name} cannot read the 0600 keys"
    # The image creates each mount point of the volume owned by that uid: Docker copies the
    # owner (and mode) of the image's directory onto a new, empty named volume, which is what
    # lets a non-root init write into it.
    commands = [
        command.split()
        for instruction, arguments in runtime_stage
        if instruction == "RUN"
        for command in re.split(r"&&|;|\|\|", arguments)
    ]
    for name, service in services.items():
        mount = _state_mount(service)
        if mount is None or not _built_from_dockerfile(service):
            continue
        assert any(
            words[0] in {"chown", "install"}
            and str(mount.target) in words
            and any(word.split(":", 1)[0] == owner for word in words)
            for words in commands
            if words
        ), f"the image does not give {mount.target} ({name}) to uid {owner}"


def test_no_container_runs_as_root(services: dict[str, dict[str, Any]], image_user: str) -> None:
    for name, service in services.items():
        assert _uid(service, image_user) not in ROOT_USERS, f"{name} runs as root"


# --- ports: what Envoy listens on and dials, what compose publishes ----------------------------


def test_compose_publishes_envoys_listener_ports_on_loopback_only(
    services: dict[str, dict[str, Any]], envoy_config: dict[str, Any]
) -> None:
    listeners = {
        listener["address"]["socket_address"]["port_value"]
        for listener in envoy_config["static_resources"]["listeners"]
    }
    published = _published_ports(services[ENVOY])
    assert {port.target for port in published} == listeners
    for port in published:
        assert port.host_ip == "127.0.0.1", f"{port.target} is published beyond loopback"
        # Same number outside: the http listener's redirect names the https port.
        assert port.published == port.target
    redirects = [
        node["port_redirect"] for node in walk_mappings(envoy_config) if "port_redirect" in node
    ]
    assert redirects and set(redirects) <= {port.published for port in published}


def test_only_envoy_and_the_dashboards_are_reachable_from_the_host(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        if name not in {ENVOY, JAEGER, *DASHBOARD_PORTS}:
            assert not service.get("ports"), f"{name} publishes {service['ports']}"
        assert service.get("network_mode") != "host", f"{name} uses the host network"
    # Jaeger: its UI only (not its OTLP receiver), on loopback; likewise the metrics UIs.
    assert _published_ports(services[JAEGER]) == [
        PublishedPort("127.0.0.1", JAEGER_UI_PORT, JAEGER_UI_PORT)
    ]
    for name, port in DASHBOARD_PORTS.items():
        assert _published_ports(services[name]) == [PublishedPort("127.0.0.1", port, port)]


def test_prometheus_scrapes_the_admin_port_ext_authz_listens_on(
    services: dict[str, dict[str, Any]],
) -> None:
    scrape = yaml.safe_load((ROOT / "deploy" / "compose" / "prometheus.yaml").read_text())
    targets = [
        t for job in scrape["scrape_configs"] for c in job["static_configs"] for t in c["targets"]
    ]
    settings = load_settings(SERVICE_CONFIG)
    assert settings.admin.listen is not None
    admin_port = int(settings.admin.listen.rsplit(":", 1)[1])
    assert f"ext-authz:{admin_port}" in targets
    assert "prometheus" in services and "grafana" in services


def test_envoy_clusters_dial_compose_services_on_the_ports_they_listen_on(
    services: dict[str, dict[str, Any]],
    envoy_config: dict[str, Any],
    runtime_stage: list[tuple[str, str]],
) -> None:
    endpoints = [
        node["socket_address"]
        for cluster in envoy_config["static_resources"]["clusters"]
        for node in walk_mappings(cluster)
        if "socket_address" in node
    ]
    dialled = {(ep["address"], ep["port_value"]) for ep in endpoints}
    assert dialled == {(EXT_AUTHZ, 9191), ("upstream", 8000), (COLLECTOR, 4317)}
    for address, port in dialled:
        assert address in services, f"Envoy dials {address}, which is no compose service"
        assert _listening_port(address, services, runtime_stage) == port, address


def test_service_listens_on_all_interfaces_of_its_container(settings: Settings) -> None:
    # Envoy connects from another container: a loopback bind would refuse it.
    host = settings.listen.rsplit(":", 1)[0].strip("[]")
    assert ipaddress.ip_address(host).is_unspecified, settings.listen


# --- the image ---------------------------------------------------------------------------------


def test_image_runs_ext_authz_as_a_non_root_user(
    runtime_stage: list[tuple[str, str]], image_user: str
) -> None:
    uid = image_user.split(":", 1)[0]
    # Numeric, so Kubernetes' runAsNonRoot can verify it without an /etc/passwd lookup.
    assert uid.isdigit() and uid not in ROOT_USERS, image_user
    assert exec_form(last(runtime_stage, "ENTRYPOINT")) == ["ext-authz"]


def test_image_exposes_the_port_the_service_listens_on(
    runtime_stage: list[tuple[str, str]], settings: Settings
) -> None:
    exposed = {
        int(port.split("/", 1)[0])
        for instruction, arguments in runtime_stage
        if instruction == "EXPOSE"
        for port in arguments.split()
    }
    assert _port_of(settings.listen) in exposed


def test_image_never_writes_bytecode_at_run_time(runtime_stage: list[tuple[str, str]]) -> None:
    env = " ".join(arguments for instruction, arguments in runtime_stage if instruction == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env


def test_healthchecks_probe_the_port_each_service_listens_on(
    services: dict[str, dict[str, Any]],
    runtime_stage: list[tuple[str, str]],
    settings: Settings,
) -> None:
    grpc_target = f"127.0.0.1:{_port_of(settings.listen)}"
    image_check = last(runtime_stage, "HEALTHCHECK")
    probe = image_check.split(" CMD ", 1)[1]
    assert grpc_target in probe and "HealthStub" in probe
    compose_check = services[EXT_AUTHZ]["healthcheck"]["test"]
    assert compose_check[0] == "CMD" and compose_check[1:] == exec_form(probe)
    upstream_check = " ".join(services["upstream"]["healthcheck"]["test"])
    upstream_port = _listening_port("upstream", services, runtime_stage)
    assert f"127.0.0.1:{upstream_port}" in upstream_check
    # A one-shot job inherits the image's gRPC probe, which would report it unhealthy.
    assert services[INIT]["healthcheck"] == {"disable": True}


def test_ext_authz_drains_before_compose_kills_it(
    services: dict[str, dict[str, Any]], settings: Settings
) -> None:
    match = re.fullmatch(r"(\d+)s", str(services[EXT_AUTHZ].get("stop_grace_period", "10s")))
    assert match is not None
    assert int(match.group(1)) > settings.grace_period


def _third_party_imports(package: Path) -> set[str]:
    """Top-level modules imported by the package at run time (not under TYPE_CHECKING)."""
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if "TYPE_CHECKING" in ast.unparse(node.test):
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            found.update(alias.name.split(".", 1)[0] for alias in node.names)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.level == 0 and node.module:
                found.add(node.module.split(".", 1)[0])

    sources = sorted(package.rglob("*.py"))
    assert sources, f"no Python sources under {package}"
    for source in sources:
        Visitor().visit(ast.parse(source.read_text(encoding="utf-8")))
    return found - set(sys.stdlib_module_names) - {"__future__", package.name}


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_image_installs_every_third_party_module_ext_authz_imports() -> None:
    # The image installs the wheel with its declared dependencies only (no dev extras), so an
    # import satisfied here by a dev tool's dependency would fail in the container.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    # The distribution name ends where extras, a version or a marker begin.
    declared = {
        _normalized(re.split(r"[\s\[<>=!~;@(]", requirement, maxsplit=1)[0])
        for requirement in project["dependencies"]
    }
    distributions = packages_distributions()
    undeclared = {
        module: distributions.get(module, ["(not installed)"])
        for module in sorted(_third_party_imports(ROOT / "ext_authz"))
        if not declared & {_normalized(name) for name in distributions.get(module, [])}
    }
    assert not undeclared, f"imported but not in [project].dependencies: {undeclared}"


# --- the shipped Envoy config, as compose runs it ----------------------------------------------


def test_shipped_envoy_config_validates_with_generated_certificates(
    tmp_path: Path, envoy_binary: Path
) -> None:
    keys = ensure_demo_keys(tmp_path / "state")
    text = ENVOY_CONFIG.read_text(encoding="utf-8")
    # tls.crt and tls.key (shared by https and mtls), client-ca.crt (mtls), nothing else.
    assert text.count(ENVOY_STATE_PREFIX) == 3
    config = tmp_path / "envoy.yaml"
    config.write_text(text.replace(ENVOY_STATE_PREFIX, f"{keys.tls_cert.parent}/"))
    result = envoy_validate(config)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_runs_the_envoy_release_the_config_is_validated_with(
    services: dict[str, dict[str, Any]], envoy_binary: Path
) -> None:
    image = services[ENVOY]["image"]
    pinned = re.fullmatch(r"envoyproxy/envoy:v(\d+)\.(\d+)(?:\.\d+)?(?:-latest)?", image)
    assert pinned is not None, f"{image} does not pin an Envoy release line"
    result = subprocess.run(
        [str(envoy_binary), "--version"], capture_output=True, text=True, timeout=60, check=True
    )
    local = re.search(r"/(\d+)\.(\d+)\.\d+/", result.stdout)
    assert local is not None, result.stdout
    assert pinned.groups() == local.groups()


def test_ext_authz_filter_fails_closed(envoy_config: dict[str, Any]) -> None:
    filters = [node for node in walk_mappings(envoy_config) if node.get("name") == EXT_AUTHZ_FILTER]
    assert filters
    for node in filters:
        assert node["typed_config"]["failure_mode_allow"] is False


def test_every_route_to_an_upstream_passes_ext_authz_first(envoy_config: dict[str, Any]) -> None:
    authz_clusters = {
        grpc["envoy_grpc"]["cluster_name"]
        for node in walk_mappings(envoy_config)
        if node.get("name") == EXT_AUTHZ_FILTER
        for grpc in walk_mappings(node)
        if "envoy_grpc" in grpc
    }
    assert authz_clusters == {"ext_authz"}
    for manager in _connection_managers(envoy_config):
        routed = {
            node["route"]["cluster"]
            for node in walk_mappings(manager["route_config"])
            if isinstance(node.get("route"), dict)
        }
        if routed:
            assert manager["http_filters"][0]["name"] == EXT_AUTHZ_FILTER, manager["stat_prefix"]
        # A route to the authz cluster would let clients call Check themselves.
        assert not routed & authz_clusters, manager["stat_prefix"]


# --- traces: Envoy and ext-authz -> collector -> Jaeger ----------------------------------------


def test_envoy_traces_every_proxied_request_to_the_collector(envoy_config: dict[str, Any]) -> None:
    clusters = {c["name"] for c in envoy_config["static_resources"]["clusters"]}
    for manager in _connection_managers(envoy_config):
        routes_upstream = any(
            isinstance(node.get("route"), dict) for node in walk_mappings(manager["route_config"])
        )
        if not routes_upstream:
            continue  # the http listener only redirects
        provider = manager["tracing"]["provider"]
        assert provider["name"] == "envoy.tracers.opentelemetry", manager["stat_prefix"]
        cluster = provider["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"]
        assert cluster == "otel_collector" and cluster in clusters


def test_ext_authz_exports_its_spans_to_the_collectors_otlp_grpc_port(
    services: dict[str, dict[str, Any]], runtime_stage: list[tuple[str, str]]
) -> None:
    environment = services[EXT_AUTHZ]["environment"]
    assert environment["OTEL_SERVICE_NAME"] == EXT_AUTHZ
    assert environment.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc") == "grpc"
    # With an endpoint and no OTEL_TRACES_EXPORTER, ext-authz exports over OTLP.
    assert environment.get("OTEL_TRACES_EXPORTER", "otlp") == "otlp"
    host, port = _endpoint(environment["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert host == COLLECTOR
    assert port == _listening_port(COLLECTOR, services, runtime_stage)


def test_collector_forwards_traces_to_jaeger_over_otlp(
    services: dict[str, dict[str, Any]],
) -> None:
    config = _collector_config(services)
    pipeline = config["service"]["pipelines"]["traces"]
    assert pipeline["receivers"] == ["otlp"]
    for kind in ("receivers", "processors", "exporters"):
        assert set(pipeline[kind]) <= set(config[kind]), f"undefined {kind} in the pipeline"
    (exporter,) = pipeline["exporters"]
    assert exporter.split("/", 1)[0] == "otlp"
    assert _endpoint(config["exporters"][exporter]["endpoint"]) == (JAEGER, 4317)
    assert services[JAEGER]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    assert services[COLLECTOR]["depends_on"][JAEGER]["condition"] == "service_started"


def test_collector_strips_query_strings_from_span_urls(
    services: dict[str, dict[str, Any]],
) -> None:
    # Envoy's server span carries http.url with the query, where a credential can be.
    config = _collector_config(services)
    assert "transform/redact_query" in config["service"]["pipelines"]["traces"]["processors"]
    (group,) = config["processors"]["transform/redact_query"]["trace_statements"]
    (statement,) = group["statements"]
    match = re.fullmatch(r'replace_pattern\(attributes\["http\.url"\], "(.*)", ""\)', statement)
    assert group["context"] == "span" and match is not None, statement
    pattern = match.group(1).replace("\\\\", "\\")  # the OTTL string literal, unescaped
    url = "https://api.example/api/books?access_token=SECRET&page=2"
    assert re.sub(pattern, "", url) == "https://api.example/api/books"
