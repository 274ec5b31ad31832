# sevisflow — every set-up step is here; `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-12s %s\n", $$1, $$2}'

# the modules mypyc compiles (setup.py's COMPILED_CORE; sevisflow/processors is a link to processors/)
CORE_SOURCES := $(shell sed -n -e 's|^ *"sevisflow/\(processors/[a-z_/]*\.py\)",$$|\1|p' -e 's|^ *"\(sevisflow/core/[a-z_/]*\.py\)",$$|\1|p' setup.py)

$(VENV)/.installed: pyproject.toml setup.py  # the C decoder and the compiled core are built by pip install -e
	@echo "==> creating $(VENV)"
	@$(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	@echo "==> installing sevisflow, its dependencies and the test tools into $(VENV) (about a minute the first time)"
	@$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]"
	@echo "==> $(VENV) ready"
	@touch $@ $(VENV)/.compiled

# An editable install imports a compiled module before its .py: after an edit to one of them (or to the
# C decoder) the build runs again, or the tests would run the old code.
$(VENV)/.compiled: $(VENV)/.installed $(CORE_SOURCES) connectors/postgres/_pgtuple.c
	@echo "==> compiling the C decoder and the processors' core again (a source changed; about a minute)"
	@$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	@touch $@

venv: $(VENV)/.installed $(VENV)/.compiled ## create .venv with sevisflow and its test tools

deps: venv ## install the local stack's parts: PostgreSQL server (apt) and Kafka jars (Maven)
	@echo "==> checking the PostgreSQL server and Kafka's jars (the first time: apt-get and a Maven download, 1-3 minutes)"
	@$(PY) -c "from sevisflow.deploy.local.stack import ensure_pg_installed, ensure_kafka_jars; print('PostgreSQL:', ensure_pg_installed()); print('Kafka jars:', ensure_kafka_jars())"

lint: venv ## ruff (lint + format check), mypy (strict on the core) and the import contracts: seconds, no services
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

test: lint deps ## lint, then run unit and integration tests against a real local Kafka + PostgreSQL (15-25 min on 2 cores)
	@echo "==> running every test against a real Kafka and PostgreSQL, in two workers: 15-25 minutes on 2 cores"
	$(PY) -m pytest tests -n 2 --dist loadfile --durations=30 $(PYTEST_ARGS)
	@$(MAKE) --no-print-directory unit-interpreted

unit: venv ## run only the unit tests (no services)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

# The processors' core is compiled by mypyc at install (setup.py); where it cannot be, it runs interpreted.
# This runs the unit tests on a copy of the tree without the compiled core, so both ways are tested.
unit-interpreted: venv ## run the unit tests with the processors' core interpreted (as without a C compiler)
	@echo "==> the unit tests again, the processors' core interpreted (a copy of the tree without its compiled modules)"
	@d=$$(mktemp -d) && trap 'rm -rf "$$d"' EXIT && mkdir "$$d/p" && ln -s "$(abspath ..)/shared" "$$d/shared" \
	  && tar --exclude=./.venv --exclude=./.local --exclude=./build -cf - . | tar -xf - -C "$$d/p" \
	  && find "$$d/p" -name '*.so' ! -name '_pgtuple*' -delete \
	  && cd "$$d/p" && SEVISFLOW_INTERPRETED=1 PYTHONPATH="$$d/p" "$(abspath $(PY))" -m pytest tests/unit -n 2 --dist loadfile $(PYTEST_ARGS)

demo: deps ## run the whole pipeline end to end on a generated school
	$(VENV)/bin/sevisflow demo

bench: deps ## run the benchmarks (results in bench/README.md)
	$(PY) -m bench.run

duplicates: ## show repeated code
	duplicates --most 20

clean: ## remove local stacks, outbox and caches (not the Kafka jar cache)
	rm -rf .local .pytest_cache .hypothesis .mypy_cache .ruff_cache

.PHONY: help venv deps lint test unit unit-interpreted demo bench duplicates clean
