#!/usr/bin/env bash
# scripts/metrics-dir.sh SERVICE COMMAND...: run COMMAND with its own prometheus_client multiprocess
# directory, PROMETHEUS_MULTIPROC_DIR=$AWAKEN_METRICS_DIR/SERVICE, emptied first (the client's docs:
# wipe it before the service starts). Every process of the service (gunicorn's workers, Celery's pool
# children) writes its figures there; GET /metrics merges every service's directory under
# AWAKEN_METRICS_DIR, so one scrape of the web sees the workers of the same host too (README, Metrics).
set -euo pipefail
service=${1:?usage: scripts/metrics-dir.sh SERVICE COMMAND...}
shift
export AWAKEN_METRICS_DIR=${AWAKEN_METRICS_DIR:-${TMPDIR:-/tmp}/awaken-metrics}
export PROMETHEUS_MULTIPROC_DIR="$AWAKEN_METRICS_DIR/$service"
rm -rf -- "$PROMETHEUS_MULTIPROC_DIR"
mkdir -p -- "$PROMETHEUS_MULTIPROC_DIR"
exec "$@"
