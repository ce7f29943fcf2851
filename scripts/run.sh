#!/usr/bin/env bash
# `make run`: start the system (web + Celery worker + webhooks worker + Celery beat) on real services.
# DATABASE_URL/REDIS_URL set -> those servers; unset -> embedded PostgreSQL + Redis under $DATA,
# reused across restarts and stopped on exit. Ctrl-C stops everything within STOP_TIMEOUT (+ ~2 s for
# the embedded servers) and leaves no process behind.
set -euo pipefail
PY=${PY:-.venv/bin/python}
DATA=${DATA:-.data/dev}
PORT=${PORT:-8000}
STOP_TIMEOUT=${STOP_TIMEOUT:-5}  # seconds between SIGTERM and SIGKILL
mkdir -p "$DATA"
# A private SECRET_KEY for this checkout (kept across restarts so admin sessions survive).
if [[ -z "${SECRET_KEY:-}" ]]; then
  if [[ ! -s "$DATA/secret_key" ]]; then
    (umask 077 && $PY -c 'import secrets; print(secrets.token_urlsafe(50))' >"$DATA/secret_key")
  fi
  SECRET_KEY=$(<"$DATA/secret_key")
fi
export SECRET_KEY
started_embedded=0
if [[ -z "${DATABASE_URL:-}" || -z "${REDIS_URL:-}" ]]; then
  eval "$($PY -m awaken_project.embedded start "$DATA")"
  started_embedded=1
fi
export DATABASE_URL REDIS_URL
# Metrics: each service writes to its own subdirectory (scripts/metrics-dir.sh); /metrics merges them.
AWAKEN_METRICS_DIR=${AWAKEN_METRICS_DIR:-$(cd "$DATA" && pwd)/metrics}
export AWAKEN_METRICS_DIR
pids=()
alive() {
  local pid
  for pid in "${pids[@]}"; do kill -0 -- "-$pid" 2>/dev/null && return 0; done
  return 1
}
cleanup() {
  trap - EXIT INT TERM
  local pid deadline=$((SECONDS + STOP_TIMEOUT))
  # each service runs in its own process group (setsid): signal the group, workers included
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  while alive && ((SECONDS < deadline)); do sleep 0.2; done
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [[ $started_embedded == 1 ]]; then $PY -m awaken_project.embedded stop "$DATA"; fi
}
trap cleanup EXIT INT TERM

$PY manage.py migrate --noinput
$PY manage.py collectstatic --noinput >/dev/null  # served by whitenoise from STATIC_ROOT
$PY manage.py ensure_dev_user --port "$PORT"

# ASGI: gunicorn process management, uvicorn workers (event loop: thousands of open SSE streams).
# --graceful-timeout: open SSE streams would otherwise hold a stop for gunicorn's default 30 s
setsid bash scripts/metrics-dir.sh web $PY -m gunicorn awaken_project.asgi:application --worker-class uvicorn_worker.UvicornWorker \
  --bind "127.0.0.1:$PORT" --workers 2 --timeout 0 --graceful-timeout 3 --access-logfile - & pids+=($!)
setsid bash scripts/metrics-dir.sh worker $PY -m celery -A awaken_project worker --loglevel INFO --concurrency 2 & pids+=($!)
setsid bash scripts/metrics-dir.sh webhooks $PY -m celery -A awaken_project worker --queues webhooks \
  --hostname webhooks@%h --pool threads --concurrency 16 --loglevel INFO & pids+=($!)
setsid $PY -m celery -A awaken_project beat --loglevel INFO \
  --scheduler django_celery_beat.schedulers:DatabaseScheduler & pids+=($!)

echo "awaken-mailbox is up: http://127.0.0.1:$PORT/  (readiness: http://127.0.0.1:$PORT/readyz)"
wait -n "${pids[@]}"
