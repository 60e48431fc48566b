# coin-for-rich — developer commands. `make test` is the one command CI runs.

PYTHON ?= $(shell for p in python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && echo $$p && break; done)
VENV   := .venv
PY     := $(VENV)/bin/python
TEST_WORKERS ?= 2
# Test files run on TEST_WORKERS processes (a file's tests stay together on one): most of the
# suite waits on simulated clocks and child processes, so two share two cores. TEST_WORKERS=0 runs
# them in this one process.
PYTEST_PARALLEL := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)
STAMP  := $(VENV)/.installed-$(shell cat requirements.txt requirements-test.txt | cksum | cut -d' ' -f1)

.PHONY: help deps system-deps python-deps node-deps web test test-unit lint format init-db up demo status down \
	bench bench-deps clean

help:
	@echo "make test         install what is missing, then run the whole test suite"
	@echo "make deps         only install (Debian packages if absent, Python packages into .venv)"
	@echo "make test-unit    only the pure unit tests (fast)"
	@echo "make lint         ruff: lint rules and formatting (part of make test)"
	@echo "make format       let ruff fix what it can and reformat"
	@echo "make init-db      apply the schema to the database configured in .env"
	@echo "make web          serve the web app on WEB_HOST:WEB_PORT (127.0.0.1:8000)"
	@echo "make up           run the whole platform here without Docker (PostgreSQL, Redis, every process)"
	@echo "make demo         the same against the bundled exchange simulator (works offline)"
	@echo "make status       what runs"
	@echo "make down         stop exactly what make up / make demo started"
	@echo "make bench        run every benchmark, one table of figures and targets (BENCH_ARGS=--quick:"
	@echo "                  a smoke run; BENCH_ARGS='--markdown docs/benchmarks.md' updates the docs)"

deps: system-deps python-deps node-deps

# The pages' JavaScript libraries, exactly as pinned in package-lock.json (served from node_modules/).
node-deps: node_modules/.package-lock.json

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error

system-deps:
	@bash scripts/local/install_system_deps.sh

python-deps: $(STAMP)

$(STAMP): requirements.txt requirements-test.txt
	@test -n "$(PYTHON)" || { echo "error: Python 3.11+ is required" >&2; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-test.txt
	@rm -f $(VENV)/.installed-*
	@touch $@

test: deps lint
	$(PY) -m pytest $(PYTEST_PARALLEL)

lint: python-deps
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: python-deps
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

test-unit: python-deps
	$(PY) -m pytest -m unit

web: python-deps node-deps
	$(PY) -m web

init-db: python-deps
	$(PY) -m scripts.database init

up: deps
	$(PY) -m scripts.local.stack up

demo: deps
	$(PY) -m scripts.local.stack up --demo

status: python-deps
	$(PY) -m scripts.local.stack status

down: python-deps
	$(PY) -m scripts.local.stack down

# The web benchmark drives the app with wrk (a native HTTP load generator, Debian package `wrk`).
bench-deps: deps
	@bash scripts/local/install_system_deps.sh wrk

bench: bench-deps
	$(PY) -m benchmarks.all $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
