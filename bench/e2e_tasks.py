"""Raw Celery baseline tasks for e2e_bench.py, loaded into the bench workers with `-I bench.e2e_tasks`.

Same app, broker, queue and settings (acks_late, prefetch 1) as the mailbox's own tasks.
"""

from __future__ import annotations

import time

from awaken_project.celery import app
from mailbox_app.realtime.redis_client import get_redis

RAW_DONE_KEY = "bench:raw:done"
RAW_START_KEY = "bench:lat:raw"
NOOP_TASK = "bench.noop"
STAMP_TASK = "bench.stamp"


@app.task(name=NOOP_TASK, acks_late=True, ignore_result=True)
def noop() -> None:
    """Counts itself, so the bench can tell when N tasks have run."""
    get_redis().incr(RAW_DONE_KEY)


@app.task(name=STAMP_TASK, acks_late=True, ignore_result=True)
def stamp(sample: str) -> None:
    """Records when it was entered: "<sample> <unix seconds>"."""
    entered = time.time()
    get_redis().rpush(RAW_START_KEY, f"{sample} {entered:.6f}")
