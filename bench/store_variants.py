"""Experiments for the store hot path: what would a cycle cost with prepared statements, or fewer commits?

    DATA=... bash scripts/with-services.sh .venv/bin/python bench/store_variants.py [--cycles 500]

Same cycle as store_bench.py (claim -> start -> result -> ack over 100 threads, enqueue not timed), on
one connection at a time, variants interleaved `--reps` times (median reported), against the raw
single-row UPDATE commit rate:

  today          mailbox_app.store as it is: Django's default client-side binding, 4 commits.
  prepared       the same functions on a connection with OPTIONS server_side_binding=True,
                 prepare_threshold=0 (psycopg prepares each statement once and re-uses the plan).
  3 commits      prepared + record_run_result and ack as ONE fenced UPDATE (a "settle"), which is what
                 execution._settle does back to back for a completed run.
  2 commits      3 commits + record_dispatch_start folded into the claim's transaction (changes the
                 order of execute_claimed: the start is recorded before the Redis lock is taken).
  3 commits,     3 commits + the claim as ONE call of a VOLATILE PL/pgSQL function running today's
  1-call claim   LOCK_EPOCH then CLAIM (each statement still gets its own snapshot, as in READ
                 COMMITTED today): 1 round trip instead of 4 (BEGIN, LOCK_EPOCH, CLAIM, COMMIT).
  … + no stale   the same, but CLAIM's "stale" CTE is skipped when the thread's epoch is 0 (no queued
  scan at 0      row can be older than epoch 0). Today that CTE reads every queued row of the whole
                 table through dispatch_available_idx on every claim (EXPLAIN shows "Rows Removed by
                 Filter" = all queued rows), so claim cost grows with the global backlog.

Nothing here is used by the application; the SQL below is the prototype of the suggested change.
Scratch database: the mailbox tables are truncated first.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "awaken_project.settings")

import django

django.setup()

from django.core.management import call_command
from django.db import connection, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.utils import load_backend

from bench.store_bench import enqueue_all
from mailbox_app import store
from mailbox_app.contract.ids import now_ms, uuid7
from mailbox_app.contract.mailbox import DispatchRecord, RunDispatchResult
from mailbox_app.store import sql

THREADS = 100
LEASE_MS = 30_000

SETTLE_ACK = f"""
UPDATE {sql.DISPATCH} d
   SET dispatch_instance_id = %(instance_id)s, run_status = %(run_status)s, termination = %(termination)s,
       run_response = %(response)s, run_error = %(error)s,
       status = 'acked', {sql.CLEAR_CLAIM}, completed_at = %(now)s, updated_at = %(now)s
{sql.FENCE} RETURNING {sql.D_COLS}
"""


# sql.CLAIM, its final UPDATE turned into a CTE, parameters bound to the function's arguments
_FINAL_UPDATE = f"\nUPDATE {sql.DISPATCH} d\n"
_CLAIM_QUERY = (
    sql.CLAIM.replace(_FINAL_UPDATE, f", claimed AS ({_FINAL_UPDATE}")
    .replace(f"RETURNING {sql.D_COLS}", "RETURNING d.*\n) SELECT * FROM claimed")
    .replace("%(thread_id)s", "p_thread")
    .replace("%(epoch)s", "v_epoch")
    .replace("%(now)s", "p_now")
    .replace("%(token)s", "p_token")
    .replace("%(consumer_id)s", "p_consumer")
    .replace("%(lease_until)s", "p_lease_until")
)
# Without the "stale" CTE, which scans every queued row of the table through dispatch_available_idx
# (EXPLAIN: "Rows Removed by Filter" = all queued rows). At epoch 0 no row can be stale.
_CLAIM_QUERY_EPOCH0 = "WITH pick AS (" + _CLAIM_QUERY.split("), pick AS (", 1)[1]


def _claim_function(name: str, epoch0_query: str) -> str:
    return f"""
CREATE OR REPLACE FUNCTION {name}(
    p_thread varchar, p_now bigint, p_token varchar, p_consumer varchar, p_lease_until bigint
) RETURNS SETOF {sql.DISPATCH} LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE v_epoch bigint;
BEGIN
    SELECT current_epoch INTO v_epoch FROM {sql.EPOCH} WHERE thread_id = p_thread FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF v_epoch > 0 THEN
        RETURN QUERY {_CLAIM_QUERY};
    ELSE
        RETURN QUERY {epoch0_query};
    END IF;
END
$fn$
"""


CREATE_CLAIM_FUNCTIONS = [
    _claim_function("bench_mailbox_claim", _CLAIM_QUERY),
    _claim_function("bench_mailbox_claim_lean", _CLAIM_QUERY_EPOCH0),
]


def claim_one_call(thread_id: str, function: str = "bench_mailbox_claim") -> DispatchRecord:
    now = now_ms()
    params = {
        "thread_id": thread_id,
        "now": now,
        "token": uuid7(),
        "consumer_id": "variants",
        "lease_until": now + LEASE_MS,
    }
    call = (
        f"SELECT {sql.COLS} FROM {function}("
        "%(thread_id)s, %(now)s, %(token)s, %(consumer_id)s, %(lease_until)s)"
    )
    claimed = store._fetch_one(call, params)
    if claimed is None:
        raise RuntimeError(f"nothing claimable on {thread_id}")
    return claimed


def wrapper(prepared: bool) -> BaseDatabaseWrapper:
    settings_dict = copy.deepcopy(connections["default"].settings_dict)
    if prepared:
        settings_dict["OPTIONS"].update(server_side_binding=True, prepare_threshold=0)
    backend: Any = load_backend(settings_dict["ENGINE"])
    db: BaseDatabaseWrapper = backend.DatabaseWrapper(settings_dict, alias="default")
    return db


def settle_ack(d: DispatchRecord, instance: str) -> None:
    params = {
        "dispatch_id": d.dispatch_id,
        "token": d.claim_token,
        "now": now_ms(),
        "instance_id": instance,
        "run_status": "done",
        "termination": json.dumps({"type": "natural_end"}),
        "response": None,
        "error": None,
    }
    if store._fetch_one(SETTLE_ACK, params) is None:
        raise RuntimeError("settle lost its fence")


def cycle_today(thread_id: str) -> None:
    d = store.claim(thread_id, "variants", LEASE_MS, now_ms())[0]
    token, instance = d.claim_token or "", uuid7()
    store.record_dispatch_start(d.dispatch_id, token, instance, now_ms())
    result = RunDispatchResult(run_id=d.run_id, dispatch_instance_id=instance, status="done")
    store.record_run_result(d.dispatch_id, token, result, now_ms())
    store.ack(d.dispatch_id, token, now_ms())


def cycle_three(thread_id: str) -> None:
    d = store.claim(thread_id, "variants", LEASE_MS, now_ms())[0]
    instance = uuid7()
    store.record_dispatch_start(d.dispatch_id, d.claim_token or "", instance, now_ms())
    settle_ack(d, instance)


def cycle_three_one_call(thread_id: str) -> None:
    d = claim_one_call(thread_id)
    instance = uuid7()
    store.record_dispatch_start(d.dispatch_id, d.claim_token or "", instance, now_ms())
    settle_ack(d, instance)


def cycle_three_lean_claim(thread_id: str) -> None:
    d = claim_one_call(thread_id, "bench_mailbox_claim_lean")
    instance = uuid7()
    store.record_dispatch_start(d.dispatch_id, d.claim_token or "", instance, now_ms())
    settle_ack(d, instance)


def cycle_two(thread_id: str) -> None:
    instance = uuid7()
    with transaction.atomic():
        d = store.claim(thread_id, "variants", LEASE_MS, now_ms())[0]  # its atomic() nests
        store.record_dispatch_start(d.dispatch_id, d.claim_token or "", instance, now_ms())
    settle_ack(d, instance)


def measure(db: BaseDatabaseWrapper, cycle: Callable[[str], None], per_thread: int, plain: Any) -> float:
    thread_ids = [f"variants-{i:03d}-{uuid7()}" for i in range(THREADS)]
    # Not timed, and on the plain connection: INSERT_DISPATCH uses %(thread_id)s as both text and
    # varchar, which server-side binding rejects ("inconsistent types deduced for parameter").
    connections["default"] = plain
    enqueue_all(thread_ids, per_thread)
    connections["default"] = db
    t0 = time.perf_counter()
    for _ in range(per_thread):
        for thread_id in thread_ids:
            cycle(thread_id)
    return per_thread * THREADS / (time.perf_counter() - t0)


def raw_commits(n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        with connection.cursor() as cursor:
            cursor.execute("UPDATE bench_counter SET n = n + 1 WHERE id = 1")
    return n / (time.perf_counter() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--cycles", type=int, default=500)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    per_thread = max(args.cycles // THREADS, 1)
    call_command("migrate", verbosity=0, interactive=False)
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS bench_counter (id integer PRIMARY KEY, n bigint NOT NULL)")
        cursor.execute("INSERT INTO bench_counter (id, n) VALUES (1, 0) ON CONFLICT (id) DO NOTHING")
        cursor.execute("TRUNCATE mailbox_dispatch, mailbox_thread_epoch")  # scratch database
        for create in CREATE_CLAIM_FUNCTIONS:
            cursor.execute(create)
    connection.close()
    plain, prepared = wrapper(prepared=False), wrapper(prepared=True)
    variants: list[tuple[str, BaseDatabaseWrapper, Callable[[str], None]]] = [
        ("today (4 commits)", plain, cycle_today),
        ("prepared (4 commits)", prepared, cycle_today),
        ("prepared, 3 commits", prepared, cycle_three),
        ("prepared, 2 commits", prepared, cycle_two),
        ("prepared, 3, 1-call claim", prepared, cycle_three_one_call),
        ("… + no stale scan at epoch 0", prepared, cycle_three_lean_claim),
    ]
    raws: list[float] = []
    rates: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    for _ in range(args.reps):
        connections["default"] = plain
        raws.append(raw_commits(2000))
        for name, db, cycle in variants:
            rates[name].append(measure(db, cycle, per_thread, plain))
    raw = statistics.median(raws)
    print(f"raw UPDATE autocommit: {raw:.0f} commits/s (median of {args.reps})", end="")
    print(f"; load average {os.getloadavg()[0]:.2f}")
    today = statistics.median(rates[variants[0][0]])
    for name, _, _ in variants:
        rate = statistics.median(rates[name])
        print(
            f"  {name:30s}{rate:7.0f} cycles/s  ÷ raw {rate / raw:.3f}  "
            f"{1e6 / rate:6.0f} µs/cycle  × today {rate / today:.2f}"
        )
    for db in (plain, prepared):
        db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
