# `make run` and `make test` work on a fresh machine: both install what is missing first.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install run test lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install.sh tests/clients/package.json
	bash scripts/install.sh
	touch $(STAMP)

run: install
	$(VENV)/bin/editloop run

# pytest exits 5 when it collected nothing: that is a failure, not a pass.
test: install
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests were collected: failing"; exit 1; fi; exit $$rc

lint: install
	$(VENV)/bin/ruff check editloop tests benchmarks
	$(VENV)/bin/ruff format --check editloop tests benchmarks

format: install
	$(VENV)/bin/ruff check --fix editloop tests benchmarks
	$(VENV)/bin/ruff format editloop tests benchmarks

bench: install
	$(PY) benchmarks/starter.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
