# Developer entry points. Everything runs from the project's virtualenv in .venv, created
# on first use; `pip install -e '.[dev]'` reruns only when pyproject.toml is newer than the
# stamp file inside .venv.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# `make test` runs the suite on this many pytest-xdist workers, each with embedded servers of
# its own (tests/conftest.py); 0 runs it in one process, as `pytest` alone does.
TEST_WORKERS ?= 2

# flask, gunicorn and honcho from the venv for every child process.
export PATH := $(BIN):$(PATH)

.PHONY: run test test-fast lint migrate bench venv stop-embedded

run: $(STAMP)
	$(BIN)/python scripts/run

test: $(STAMP)
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

# The unit tier: no servers, seconds.
test-fast: $(STAMP)
	$(BIN)/pytest -q tests/unit $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

# Starts (then stops) the embedded servers when DATABASE_URL / REDIS_URL are unset.
migrate: $(STAMP)
	$(BIN)/python scripts/run --migrate-only

bench: $(STAMP)
	$(BIN)/python scripts/bench

# Stops embedded servers left running under DATA_DIR (default ./.data), e.g. after a crash.
stop-embedded: $(STAMP)
	$(BIN)/python scripts/embedded.py stop

venv: $(STAMP)

$(VENV)/bin/python:
	@test -n "$(PYTHON)" || { echo "need python3.11 or python3 on PATH" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)
