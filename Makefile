# ext-authz: `make help` lists the targets. Everything runs from the project's own .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.DEFAULT_GOAL := help
.PHONY: help setup demo proto lint chromium review test e2e bench bench-throughput

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

REVIEW := $(BIN)/ext-authz review --suppressions deploy/review-suppressions.yaml --fail-on medium

review: setup  ## security review of the shipped Envoy config, service config and policies
	$(REVIEW) --envoy envoy/envoy.yaml --config deploy/compose/ext-authz.yaml --policies policies
	$(REVIEW) --model policies/model.conf --policy policies/examples/saas/policy.csv
	$(REVIEW) --model policies/model.conf --policy policies/examples/internal-admin/policy.csv

test: lint chromium review  ## lint, review, the shipped policy cases, then every test (e2e included)
	$(BIN)/ext-authz policy test policies/
	$(BIN)/python -m pytest

e2e: setup  ## only the end-to-end tests
	$(BIN)/python -m pytest -m e2e

bench: setup  ## benchmarks (bench/); prints tables, writes bench/*.json
	$(BIN)/python bench/policy_scaling.py --json bench/policy_scaling.json

bench-throughput: setup  ## Envoy alone / native filters / hand-rolled / ext-authz side by side (needs wrk, h2load); writes bench/throughput.json
	$(BIN)/python -m bench.throughput --json bench/throughput.json
