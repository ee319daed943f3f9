# wagate: `make run` serves, `make test` runs the whole suite. Both set everything up first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
WEB_STAMP := web/node_modules/.installed

.PHONY: run test lint format bench install clean

install: $(STAMP) $(WEB_STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "wagate needs Python 3.11 or newer (set PYTHON=...)")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# The web UI's npm packages, only when the UI declares some.
$(WEB_STAMP): $(wildcard web/package.json)
	@if [ -f web/package.json ]; then \
		command -v npm >/dev/null || { echo "npm is needed for the web UI's packages"; exit 1; }; \
		cd web && npm install --no-audit --no-fund --loglevel=error && touch node_modules/.installed; \
	else mkdir -p web/node_modules && touch $(WEB_STAMP); fi

run: install
	exec $(BIN)/python run.py serve

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy gateway sessions db run.py

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) web/node_modules .pytest_cache .mypy_cache .ruff_cache
