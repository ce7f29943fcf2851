#!/usr/bin/env bash
# Run a command with DATABASE_URL/REDIS_URL set: the given ones, or embedded servers under .data/tool
# (started for the command and stopped afterwards).
set -euo pipefail
PY=${PY:-.venv/bin/python}
if [[ -z "${DATABASE_URL:-}" || -z "${REDIS_URL:-}" ]]; then
  DATA=.data/tool
  eval "$($PY -m awaken_project.embedded start "$DATA")"
  trap '$PY -m awaken_project.embedded stop "$DATA"' EXIT
fi
"$@"
