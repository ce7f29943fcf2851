#!/usr/bin/env bash
# `make run`: start the system (web + Celery worker + Celery beat) on real services.
# DATABASE_URL/REDIS_URL set -> those servers; unset -> embedded PostgreSQL + Redis under $DATA,
# reused across restarts and stopped on exit.
set -euo pipefail
PY=${PY:-.venv/bin/python}
DATA=${DATA:-.data/dev}
PORT=${PORT:-8000}
started_embedded=0
if [[ -z "${DATABASE_URL:-}" || -z "${REDIS_URL:-}" ]]; then
  eval "$($PY -m awaken_project.embedded start "$DATA")"
  started_embedded=1
fi
export DATABASE_URL REDIS_URL
pids=()
cleanup() {
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [[ $started_embedded == 1 ]]; then $PY -m awaken_project.embedded stop "$DATA"; fi
}
trap cleanup EXIT INT TERM

$PY manage.py migrate --noinput
$PY manage.py collectstatic --noinput >/dev/null
$PY manage.py ensure_dev_user --port "$PORT"

$PY -m gunicorn awaken_project.wsgi:application --bind "127.0.0.1:$PORT" --workers 2 --threads 8 \
  --timeout 0 --access-logfile - & pids+=($!)
$PY -m celery -A awaken_project worker --loglevel INFO --concurrency 2 & pids+=($!)
$PY -m celery -A awaken_project beat --loglevel INFO \
  --scheduler django_celery_beat.schedulers:DatabaseScheduler & pids+=($!)

echo "awaken-mailbox is up: http://127.0.0.1:$PORT/  (readiness: http://127.0.0.1:$PORT/readyz)"
wait -n "${pids[@]}"
