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

# The UI tests drive a headless Chromium: the system one, else the distribution's package
# (as root with apt), else Playwright's own download.
CHROMIUM_STAMP := $(VENV)/.chromium
$(CHROMIUM_STAMP): $(STAMP)
	@if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && apt-get install -y -qq chromium; \
	else $(BIN)/python -m playwright install chromium || \
		echo "warning: no Chromium for the UI tests (install your distribution's chromium)"; fi
	@touch $@

test: install $(CHROMIUM_STAMP)
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
