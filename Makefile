# The single source of the commands the README, docs/operations.md and CI use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# What running needs (requirements/base.txt) and, on top, the test and lint tools (requirements/dev.txt):
# `make run` installs only the first.
BASE_STAMP := $(VENV)/.installed-base
DEV_STAMP := $(VENV)/.installed-dev
DATA ?= .data/dev
PORT ?= 8000
ARGS ?=
# `make manage|shell|celery` reach the servers of `make run` under $(DATA) (awaken_project/devrun.py)
WITH_RUN_ENV := $(PY) -m awaken_project.devrun exec --data $(DATA) --

.PHONY: install install-base run manage shell celery test lint docs services stop-services status bench clean

$(BASE_STAMP): requirements/base.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/base.txt
	touch $(BASE_STAMP)

$(DEV_STAMP): $(BASE_STAMP) requirements/dev.txt
	$(PY) -m pip install --quiet -r requirements/dev.txt
	touch $(DEV_STAMP)

install-base: $(BASE_STAMP)
install: $(DEV_STAMP)

# The official AI SDK / AG-UI clients the front-end protocol tests run (pinned by the lockfile); without
# npm those tests are skipped, saying so.
NODE_STAMP := tests/frontends/node_modules/.installed
$(NODE_STAMP): tests/frontends/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix tests/frontends --no-audit --no-fund && touch $(NODE_STAMP); \
	else echo "npm not found: the front-end client tests will be skipped"; fi

## make run: the Procfile's release step, then web + worker + beat under honcho, on embedded PostgreSQL +
## Redis under $(DATA) unless DATABASE_URL / REDIS_URL are set. Ctrl-C stops it.
run: $(BASE_STAMP)
	$(PY) -m awaken_project.devrun run --data $(DATA) --port $(PORT)

## make manage ARGS="mailbox_status": a management command against `make run`'s servers
manage: $(BASE_STAMP)
	$(WITH_RUN_ENV) $(PY) manage.py $(ARGS)

shell: $(BASE_STAMP)
	$(WITH_RUN_ENV) $(PY) manage.py shell $(ARGS)

## make celery ARGS="inspect active": the celery CLI against `make run`'s broker
celery: $(BASE_STAMP)
	$(WITH_RUN_ENV) $(PY) -m celery -A awaken_project $(ARGS)

## make test: the whole suite against real PostgreSQL, Redis and Celery workers. Three pytest-xdist
## processes, each with servers of its own (tests/harness.py), a file's tests in one of them; one process:
## make test PYTEST_ARGS=
PYTEST_ARGS ?= -n 3 --dist loadfile
test: $(DEV_STAMP) $(NODE_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(DEV_STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy .
	$(VENV)/bin/lint-imports
	bash scripts/with-services.sh $(PY) manage.py check --fail-level WARNING
	bash scripts/with-services.sh $(PY) manage.py makemigrations --check --dry-run

## make docs: the documentation site into site/ (warnings are errors); its tools only here, not in `make run`
DOCS_STAMP := $(VENV)/.docs-installed
$(DOCS_STAMP): requirements/docs.txt $(DEV_STAMP)
	$(PY) -m pip install --quiet -r requirements/docs.txt
	touch $(DOCS_STAMP)

# The OpenAPI schema needs no database or Redis (settings only); the API reference page renders it.
docs: $(DEV_STAMP) $(DOCS_STAMP)
	$(PY) manage.py spectacular --file docs/api/openapi.yaml --validate --fail-on-warn
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

bench: $(DEV_STAMP)
	bash scripts/with-services.sh bash -c '$(PY) bench/store_bench.py && $(PY) bench/e2e_bench.py && $(PY) bench/http_bench.py && $(PY) bench/fairness_bench.py'

services: $(BASE_STAMP)
	$(PY) -m awaken_project.embedded start $(DATA)

status: $(BASE_STAMP)
	$(PY) -m awaken_project.embedded status $(DATA)

stop-services:
	$(PY) -m awaken_project.embedded stop $(DATA)

clean:
	-$(PY) -m awaken_project.embedded stop $(DATA)
	rm -rf $(VENV) .data .mypy_cache .ruff_cache .pytest_cache
