# media-service: every target installs what it needs into .venv first (idempotent, quick when done).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PORT ?= 8000
PYTEST_ARGS ?=
# pytest-xdist processes for `make test` (2: this project's CI machine has two cores; 0 = serial).
TEST_WORKERS ?= 2

.DEFAULT_GOAL := help
.PHONY: help install run test lint fmt typecheck bench clean backends test-backends stack

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)  ## Create .venv and install the service with test and dev tools

run: $(STAMP)  ## Serve on the embedded default (SQLite + files under ./var) at 127.0.0.1:$PORT
	PORT=$(PORT) $(BIN)/gunicorn --config config/gunicorn.conf.py app:app

test: $(STAMP)  ## Run the whole test suite
	$(BIN)/python -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

backends: $(STAMP)  ## Build/install MinIO, FerretDB and Ceph RGW into .tools/ (pinned; quick when there)
	$(BIN)/python -m realservers install

test-backends: backends  ## Run the real-backend suite on FerretDB + MinIO, then Ceph RGW
	$(BIN)/python -m realservers test $(PYTEST_ARGS)

stack: backends  ## Serve on FerretDB + MinIO at 127.0.0.1:$PORT (the compose topology, no Docker)
	PORT=$(PORT) $(BIN)/python -m realservers stack

lint: $(STAMP)  ## ruff check and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: $(STAMP)  ## Format and autofix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: $(STAMP)  ## mypy on the package
	$(BIN)/mypy

bench: $(STAMP)  ## Run the benchmarks and write docs/benchmarks.md (installs nginx and wrk with apt)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench.run_all

clean:  ## Remove .venv and caches (keeps ./var data)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
