# Audit Log Service — every target installs what it needs into .venv first: the service's
# runtime dependencies for run/migrate, the dev tools as well for test/lint/bench.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
RUNTIME_STAMP := $(VENV)/.installed-runtime
DEV_STAMP     := $(VENV)/.installed-dev
# The service's state (database, keys, secrets): see README "What the state dir holds".
STATE_DIR ?= $(or $(AUDIT_STATE_DIR),.auditlog)

.DEFAULT_GOAL := help
.PHONY: help install install-dev run dev-setup migrate test test-unit test-integration test-pure lint bench bench-quick peers-setup bench-peers clean destroy-state

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'
	@echo "  No target but destroy-state touches the state dir ($(STATE_DIR)): back it up (README)."

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The service and its runtime dependencies only (what a deployment installs). The install
# also builds the C extension pipeline._fastpath in place (setup.py) when a C compiler is
# there, so a changed C source reinstalls.
$(RUNTIME_STAMP): pyproject.toml setup.py pipeline/_fastpath.c | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	@touch $@

# The service with the dev tools (pytest, ruff, mypy, moto, schemathesis, tansu, ...);
# a superset of the runtime install, so it satisfies that stamp too.
$(DEV_STAMP): pyproject.toml setup.py pipeline/_fastpath.c | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@ $(RUNTIME_STAMP)

install: $(RUNTIME_STAMP) ## Create .venv and install the service (runtime dependencies only)

install-dev: $(DEV_STAMP) ## Create .venv and install the service with the dev tools

run: $(RUNTIME_STAMP) ## Start the service (embedded PostgreSQL + NATS unless AUDIT_*_URL are set)
	$(BIN)/auditlog run

dev-setup: $(RUNTIME_STAMP) ## Install and apply migrations (local development set-up)
	$(BIN)/auditlog migrate

migrate: $(RUNTIME_STAMP) ## Apply SQL migrations
	$(BIN)/auditlog migrate

test: $(DEV_STAMP) ## Run the whole test suite (starts its own PostgreSQL and NATS)
	$(BIN)/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test-unit: $(DEV_STAMP) ## Run the offline unit tests only
	$(BIN)/pytest -q tests/unit $(PYTEST_ARGS)

test-integration: $(DEV_STAMP) ## Run the integration tests only
	$(BIN)/pytest -q tests/integration $(PYTEST_ARGS)

# `make test` runs the pipeline on the compiled hot path (built at install) and compares
# both paths (tests/unit/test_fastpath.py); this runs the pipeline's own tests again on
# the pure Python path.
PURE_TESTS ?= tests/unit/test_stages.py tests/unit/test_worker.py tests/unit/test_chain.py \
	tests/integration/test_pipeline.py tests/integration/test_storage.py \
	tests/integration/test_chain_verify.py tests/integration/test_hostile.py
test-pure: $(DEV_STAMP) ## The pipeline's tests on the pure Python path (AUDIT_PURE_PYTHON=1)
	AUDIT_PURE_PYTHON=1 $(BIN)/pytest -q -p no:cacheprovider $(PURE_TESTS) $(PYTEST_ARGS)

lint: $(DEV_STAMP) ## ruff, mypy, the layer contracts (import-linter), the deployment files
	$(BIN)/ruff check schemas infra ledger pipeline query_api auditlog sql tests benchmarks deploy
	$(BIN)/ruff format --check schemas infra ledger pipeline query_api auditlog sql tests benchmarks deploy
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	$(BIN)/python deploy/validate.py
	$(BIN)/pytest -q -p no:cacheprovider tests/unit/test_deploy.py

bench: $(DEV_STAMP) ## Full benchmark (embedded servers unless AUDIT_BENCH_* are set)
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

bench-quick: $(DEV_STAMP) ## Short benchmark for day-to-day use
	$(BIN)/python -m benchmarks.run --quick $(BENCH_ARGS)

PEERS_VENV ?= .venv-peers

peers-setup: ## Make .venv-peers with the benchmark's peers (mq-bridge, Pathway; ~1.7 GB)
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install -q -r benchmarks/peers-requirements.txt

bench-peers: $(DEV_STAMP) peers-setup ## Ours vs mq-bridge vs Pathway on one preloaded stream
	$(BIN)/python -m benchmarks.peers $(BENCH_ARGS)

clean: ## Remove the virtualenvs, caches and build output (never the state dir)
	rm -rf $(VENV) $(PEERS_VENV) .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info \
	  clients/typescript/node_modules clients/typescript/dist
	find schemas infra pipeline query_api auditlog sql tests benchmarks -name __pycache__ -type d -prune -exec rm -rf {} +
	@echo "kept $(STATE_DIR) (the audit log and its keys); deleting it: make destroy-state"

# Deletes the audit log and the means to verify it, so it never runs by habit: it asks for
# the word on a terminal; without one (scripts, CI=true) it needs CONFIRM=destroy-state.
destroy-state: ## DELETE the state dir: database, signing key, secrets (asks; CONFIRM=destroy-state)
	@state='$(STATE_DIR)'; \
	case "$$state" in ''|/|.|..|./|"$$HOME"|"$$HOME/") echo "refusing: STATE_DIR=$$state" >&2; exit 1;; esac; \
	if [ ! -e "$$state" ]; then echo "nothing to delete: $$state does not exist"; exit 0; fi; \
	for pidfile in "$$state/pg/data/postmaster.pid" "$$state/nats/nats-server.pid"; do \
	  pid=$$(head -n 1 "$$pidfile" 2>/dev/null); \
	  if [ -n "$$pid" ] && { kill -0 "$$pid" 2>/dev/null || [ -d "/proc/$$pid" ]; }; then \
	    echo "refusing: a server (pid $$pid, $$pidfile) still runs on $$state; stop auditlog first" >&2; \
	    exit 1; \
	  fi; \
	done; \
	if [ "$(CONFIRM)" != destroy-state ]; then \
	  if [ "$${CI:-}" = true ]; then \
	    echo "refusing under CI=true: make destroy-state CONFIRM=destroy-state deletes $$state" >&2; \
	    exit 1; \
	  fi; \
	  if [ ! -t 0 ]; then \
	    echo "refusing: stdin is not a terminal; make destroy-state CONFIRM=destroy-state deletes $$state" >&2; \
	    exit 1; \
	  fi; \
	  echo "This deletes $$state: the embedded PostgreSQL data (every audit event), the NATS"; \
	  echo "store, the signing key, the known verifier keys, the runtime password, the token"; \
	  echo "secret and the admin tokens. There is no undo; back it up first (README)."; \
	  printf 'Type destroy-state to delete it: '; \
	  read -r answer || answer=; \
	  if [ "$$answer" != destroy-state ]; then echo "not confirmed: nothing deleted" >&2; exit 1; fi; \
	fi; \
	rm -rf -- "$$state"; \
	echo "deleted $$state"
