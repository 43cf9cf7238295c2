# `make run` and `make test` work on a fresh machine: both install what is missing first.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install run test lint format bench docs clean

TEST_TOOLS := $(VENV)/.test-tools

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install.sh tests/clients/package.json
	bash scripts/install.sh
	touch $(STAMP)

# The browser and editors the end-to-end tests drive (Chromium, Emacs with eglot and lsp-mode).
$(TEST_TOOLS): scripts/install.sh | $(STAMP)
	bash scripts/install.sh --test-tools
	touch $(TEST_TOOLS)

run: install
	$(VENV)/bin/editloop run

# pytest exits 5 when it collected nothing: that is a failure, not a pass.
test: install $(TEST_TOOLS)
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests were collected: failing"; exit 1; fi; exit $$rc

lint: install
	$(VENV)/bin/ruff check editloop tests benchmarks
	$(VENV)/bin/ruff format --check editloop tests benchmarks
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff check --fix editloop tests benchmarks
	$(VENV)/bin/ruff format editloop tests benchmarks

bench: install
	$(PY) benchmarks/starter.py

# docs/configuration.md from the Settings object (tests/test_settings_doc.py fails when it is stale)
docs: install
	$(PY) -m editloop.settings_doc

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
