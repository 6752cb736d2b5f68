# syntax=docker/dockerfile:1
#
# ext-authz image: `ext-authz serve` by default; docker-compose also runs `ext-authz demo
# --init-only` (key generation) and the demo echo upstream from it.
#
#   docker build -t ext-authz .
#   docker run --read-only -v ./config.yaml:/etc/ext-authz/config.yaml:ro \
#       -v ./policies:/etc/ext-authz/policies:ro ext-authz
#
# Config and policies are mounted from outside at /etc/ext-authz/config.yaml and
# /etc/ext-authz/policies (Kubernetes: deploy/kubernetes/, ConfigMaps); nothing is written at run
# time, so the root filesystem can be read-only.
#
# Both stages use the same base image: the venv's interpreter is a symlink to the base image's
# /usr/local/bin/python3.11, so it must exist at the same path in the runtime stage.
ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: a wheel of the project, installed with its dependencies into /opt/venv ----------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

RUN python -m venv /opt/venv

WORKDIR /src
# Only what the wheel is built from (pyproject force-includes envoy/ and policies/ into it).
COPY pyproject.toml README.md ./
COPY ext_authz ./ext_authz
COPY envoy ./envoy
COPY policies ./policies

# A wheel rather than `pip install .`: the runtime gets exactly what a user's `pip install
# ext-authz` gets (bundled envoy/ and policies/ included), not the source tree.
RUN /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/venv/bin/pip install /wheels/*.whl \
 && /opt/venv/bin/ext-authz --version

# --- runtime ----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="ext-authz" \
      org.opencontainers.image.description="Envoy external authorization (ext_authz v3 gRPC) server" \
      org.opencontainers.image.licenses="Apache-2.0"

# PYTHONDONTWRITEBYTECODE: the venv's .pyc files were compiled at install time and the container
# may run with a read-only root filesystem, so the interpreter must never try to write any.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# A fixed numeric uid/gid (10001, no login, no home) so that orchestrators can verify
# runAsNonRoot, and so that other containers (compose's envoy) can be run as the same uid to read
# the 0600 keys this image writes.
#
# The state directories are created here, owned by that uid and 0700: when a new, empty named
# volume is mounted on one of them, Docker copies the directory's owner and mode onto the volume,
# so the non-root `demo --init-only` can write into it and nobody else can read it.
RUN groupadd --gid 10001 ext-authz \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin --no-log-init ext-authz \
 && mkdir -p /etc/ext-authz/state /etc/ext-authz/policies /state \
 && chown 10001:10001 /etc/ext-authz/state /state \
 && chmod 0700 /etc/ext-authz/state /state

COPY --from=builder /opt/venv /opt/venv

USER 10001:10001

# 9191: gRPC Check + grpc.health.v1 (`listen`); 9902: the admin port (`admin.listen`: /metrics,
# the live view) when a config turns it on, as the Kubernetes and compose configs do.
EXPOSE 9191 9902

# gRPC health (grpc.health.v1, service "") on the port the default config listens on: SERVING
# once every issuer's keys are loaded, NOT_SERVING while draining. The start period covers a
# provider's keys.initial_wait (30 s by default), during which the port is not open yet. The
# proxy is disabled so an HTTP(S)_PROXY in the environment cannot send the probe elsewhere.
# (Kubernetes ignores HEALTHCHECK: deploy/kubernetes/deployment.yaml probes the same service
# with native gRPC probes.)
HEALTHCHECK --interval=10s --timeout=5s --start-period=40s --retries=3 \
    CMD ["python", "-c", "import sys, grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; c = grpc.insecure_channel('127.0.0.1:9191', options=[('grpc.enable_http_proxy', 0)]); r = g.HealthStub(c).Check(h.HealthCheckRequest(service=''), timeout=3); sys.exit(r.status != h.HealthCheckResponse.SERVING)"]

ENTRYPOINT ["ext-authz"]
CMD ["serve", "--config", "/etc/ext-authz/config.yaml"]
