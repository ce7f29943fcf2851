"""Raw Celery baseline tasks for e2e_bench.py, loaded into the bench workers with `-I bench.e2e_tasks`.

Same app, broker, queue and settings (acks_late, prefetch 1) as the mailbox's own tasks.
"""

from __future__ import annotations

import time
import uuid

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


# --- the durable floor ------------------------------------------------------------------------------------
# The least durable per-thread queue this stack allows (issue 19): submit = one INSERT commit + one Celery
# message; worker = the thread's Redis lock (SET NX PX / compare-and-delete), a claim UPDATE commit of the
# thread's oldest queued job stamped with a token, the no-op, a finish UPDATE commit fenced by that token,
# release. Three commits a job, as the mailbox's submit, start and finish. Same app, broker, workers,
# Django connection and Redis client as the mailbox: only the transitions differ.
FLOOR_TASK = "bench.floor_drain"
FLOOR_DONE_KEY = "bench:floor:done"
FLOOR_TABLE = """
CREATE TABLE IF NOT EXISTS bench_floor_job (
    id bigserial PRIMARY KEY, thread_id text NOT NULL, status text NOT NULL DEFAULT 'queued', token text,
    payload jsonb, created_at bigint NOT NULL, started_at bigint, finished_at bigint)
"""
FLOOR_INDEX = (
    "CREATE INDEX IF NOT EXISTS bench_floor_queued ON bench_floor_job (thread_id, id) WHERE status = 'queued'"
)
FLOOR_SUBMIT = "INSERT INTO bench_floor_job (thread_id, payload, created_at) VALUES (%s, %s, %s)"
FLOOR_CLAIM = """
UPDATE bench_floor_job SET status = 'running', token = %(token)s, started_at = %(now)s
 WHERE id = (SELECT id FROM bench_floor_job WHERE thread_id = %(thread)s AND status = 'queued'
              ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING id
"""
FLOOR_FINISH = """
UPDATE bench_floor_job SET status = 'done', finished_at = %(now)s WHERE id = %(id)s AND token = %(token)s
"""
FLOOR_ANY_QUEUED = "SELECT 1 FROM bench_floor_job WHERE thread_id = %(thread)s AND status = 'queued' LIMIT 1"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"


@app.task(name=FLOOR_TASK, acks_late=True, ignore_result=True)
def floor_drain(thread: str) -> int:
    """Drain the thread's queued floor jobs under its lock (one doorbell may run many jobs)."""
    from django.db import connection

    redis = get_redis()
    done = 0
    while True:
        token = uuid.uuid4().hex
        if not redis.set(f"bench:floor:lock:{thread}", token, nx=True, px=30_000):
            return done  # the holder drains this thread
        try:
            with connection.cursor() as cursor:
                while True:
                    cursor.execute(FLOOR_CLAIM, {"token": token, "thread": thread, "now": time.time_ns()})
                    row = cursor.fetchone()
                    if row is None:
                        break
                    # the agent: a no-op
                    cursor.execute(FLOOR_FINISH, {"id": row[0], "token": token, "now": time.time_ns()})
                    redis.incr(FLOOR_DONE_KEY)
                    done += 1
        finally:
            redis.eval(_RELEASE, 1, f"bench:floor:lock:{thread}", token)
        with connection.cursor() as cursor:  # a submit that rang while we held the lock: look once more
            cursor.execute(FLOOR_ANY_QUEUED, {"thread": thread})
            if cursor.fetchone() is None:
                return done
