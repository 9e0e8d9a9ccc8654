# The two commands a fresh clone needs: `make demo` and `make test`. Each sets up its own venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest bench bench-smoke bench-peers bench-peers-sqlite clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "statestream needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m statestream.demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy src

pytest: $(STAMP)
	$(BIN)/pytest

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python -m bench $(ARGS)

bench-smoke: $(STAMP)
	$(BIN)/python -m bench --quick $(ARGS)

# DBOS side by side (its own venv: its dependencies stay out of the project's).
PEERS_VENV := .venv-peers

$(PEERS_VENV)/.installed:
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet 'dbos==3.4.0'
	@touch $@

# statestream (postgres when available, and sqlite) and DBOS on PostgreSQL, alternating.
bench-peers: $(STAMP) $(PEERS_VENV)/.installed
	$(PEERS_VENV)/bin/python bench/peers/side_by_side.py --ours-python $(BIN)/python $(ARGS)

# DBOS on its SQLite system database alone.
bench-peers-sqlite: $(PEERS_VENV)/.installed
	$(PEERS_VENV)/bin/python bench/peers/dbos_sqlite.py $(ARGS)

clean:
	rm -rf $(VENV) $(PEERS_VENV) build dist .mypy_cache .pytest_cache .ruff_cache
