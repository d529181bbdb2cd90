# Audit Log Service — every target installs what it needs into .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install run dev-setup migrate test test-unit test-integration lint bench bench-quick peers-setup bench-peers clean

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install the service with dev tools

run: $(STAMP) ## Start the service (embedded PostgreSQL + NATS unless AUDIT_*_URL are set)
	$(BIN)/auditlog run

dev-setup: $(STAMP) ## Install and apply migrations (local development set-up)
	$(BIN)/auditlog migrate

migrate: $(STAMP) ## Apply SQL migrations
	$(BIN)/auditlog migrate

test: $(STAMP) ## Run the whole test suite (starts its own PostgreSQL and NATS)
	$(BIN)/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test-unit: $(STAMP) ## Run the offline unit tests only
	$(BIN)/pytest -q tests/unit $(PYTEST_ARGS)

test-integration: $(STAMP) ## Run the integration tests only
	$(BIN)/pytest -q tests/integration $(PYTEST_ARGS)

lint: $(STAMP) ## ruff, mypy and the layer contracts (import-linter)
	$(BIN)/ruff check schemas infra pipeline query_api auditlog tests benchmarks
	$(BIN)/ruff format --check schemas infra pipeline query_api auditlog tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

bench: $(STAMP) ## Full benchmark (embedded servers unless AUDIT_BENCH_* are set)
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

bench-quick: $(STAMP) ## Short benchmark for day-to-day use
	$(BIN)/python -m benchmarks.run --quick $(BENCH_ARGS)

PEERS_VENV ?= .venv-peers

peers-setup: ## Make .venv-peers with the benchmark's peers (mq-bridge, Pathway; ~1.7 GB)
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install -q -r benchmarks/peers-requirements.txt

bench-peers: $(STAMP) peers-setup ## Ours vs mq-bridge vs Pathway on one preloaded stream
	$(BIN)/python -m benchmarks.peers $(BENCH_ARGS)

clean: ## Remove the virtualenvs and local state
	rm -rf $(VENV) $(PEERS_VENV) .auditlog .pytest_cache
