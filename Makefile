# The single source of the commands the README and CI use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA ?= .data/dev
PORT ?= 8000

.PHONY: install run test lint docs services stop-services bench clean

$(STAMP): requirements/base.txt requirements/dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/dev.txt
	touch $(STAMP)

install: $(STAMP)

# The official AI SDK / AG-UI clients the front-end protocol tests run (pinned by the lockfile); without
# npm those tests are skipped, saying so.
NODE_STAMP := tests/frontends/node_modules/.installed
$(NODE_STAMP): tests/frontends/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix tests/frontends --no-audit --no-fund && touch $(NODE_STAMP); \
	else echo "npm not found: the front-end client tests will be skipped"; fi

## make run: embedded PostgreSQL + Redis (unless DATABASE_URL/REDIS_URL are set), migrate, web + worker + beat
run: install
	DATA=$(DATA) PORT=$(PORT) PY=$(PY) bash scripts/run.sh

## make test: the whole suite against real PostgreSQL, Redis and Celery workers
test: install $(NODE_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy .
	$(VENV)/bin/lint-imports
	bash scripts/with-services.sh $(PY) manage.py check --fail-level WARNING
	bash scripts/with-services.sh $(PY) manage.py makemigrations --check --dry-run

## make docs: the documentation site into site/ (warnings are errors); its tools only here, not in `make run`
DOCS_STAMP := $(VENV)/.docs-installed
$(DOCS_STAMP): requirements/docs.txt $(STAMP)
	$(PY) -m pip install --quiet -r requirements/docs.txt
	touch $(DOCS_STAMP)

# The OpenAPI schema needs no database or Redis (settings only); the API reference page renders it.
docs: install $(DOCS_STAMP)
	$(PY) manage.py spectacular --file docs/api/openapi.yaml --validate --fail-on-warn
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

bench: install
	bash scripts/with-services.sh bash -c '$(PY) bench/store_bench.py && $(PY) bench/e2e_bench.py && $(PY) bench/http_bench.py && $(PY) bench/fairness_bench.py'

services: install
	$(PY) -m awaken_project.embedded start $(DATA)

stop-services:
	$(PY) -m awaken_project.embedded stop $(DATA)

clean:
	-$(PY) -m awaken_project.embedded stop $(DATA)
	rm -rf $(VENV) .data .mypy_cache .ruff_cache .pytest_cache
