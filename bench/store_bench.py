"""Store benchmark: the mailbox hot path against PostgreSQL's raw commit rate, on ONE connection.

    DATA=... bash scripts/with-services.sh .venv/bin/python bench/store_bench.py [--cycles N] [--reps R]

Needs DATABASE_URL / REDIS_URL (scripts/with-services.sh provides embedded servers). The database is
treated as a scratch database: it is migrated, and the mailbox tables are truncated first.

Measured side by side, interleaved `--reps` times (the median is reported):
  (a) raw: `UPDATE bench_counter SET n = n + 1 WHERE id = 1` in autocommit -> commits/s, the ceiling;
  (b) store cycles/s: claim -> fenced start -> fenced settle (result + ack in one statement), the
      dispatch-row statements of an attempt, per dispatch through `mailbox_app.store` (enqueue is NOT
      timed: the dispatches are enqueued before the clock starts),
      (b1) all dispatches on one thread, (b2) spread over 100 threads and claimed round-robin;
  and for each, what one cycle costs in commits (see `CommitCounter`). Target: cycles/s ÷ raw ≥ 0.3.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "awaken_project.settings")

import django

django.setup()

from django.core.management import call_command
from django.db import connection

from mailbox_app import store
from mailbox_app.contract.ids import now_ms, uuid7
from mailbox_app.contract.mailbox import DispatchRecord, RunDispatchResult

TARGET_RATIO = 0.3
FAN_OUT_THREADS = 100
CONSUMER = "store-bench"
LEASE_MS = 30_000


# --- commit accounting -----------------------------------------------------------------------------


class CommitCounter:
    """Counts transactions between two points on this (the only) connection.

    Two sources, both read on the measured connection itself:
      * `pg_stat_database.xact_commit`: every committed transaction, read-only ones included. Since
        PostgreSQL 15 a backend keeps its counters in local memory and flushes them to shared memory
        at most once a second when it goes idle, so a plain read right after the work undercounts.
        `pg_stat_force_next_flush()` makes the backend flush when this statement's transaction ends
        (before the next query is read), and every later read runs in its own autocommit
        transaction, so its stats snapshot is fresh (we still call `pg_stat_clear_snapshot()`). If
        that is not enough (a server older than 15), we poll until the counter stops moving, with a
        2 s deadline. The reads themselves are transactions too: `overhead` is measured on an empty
        interval at start-up and subtracted.
      * the transaction-id counter (`pg_current_xact_id()`): advances only for transactions that
        write (these are the ones that flush WAL, i.e. wait for fsync), and is exact with no lag.
        The "after" read allocates one id itself, so writes = delta - 1. Nothing else writes to this
        private server while we measure (autovacuum does not allocate transaction ids).
    """

    def __init__(self) -> None:
        self.overhead = 0
        a = self.snapshot()
        b = self.snapshot()
        self.overhead = b[0] - a[0]

    @staticmethod
    def _read_commits() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_stat_force_next_flush()")
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
            row = cursor.fetchone()
        assert row is not None
        return int(row[0])

    def snapshot(self) -> tuple[int, int]:
        commits = self._read_commits()
        deadline = time.monotonic() + 2.0
        while True:  # settle: two consecutive reads differ only by our own read transactions
            again = self._read_commits()
            if again - commits <= 3 or time.monotonic() > deadline:
                commits = again
                break
            commits = again
            time.sleep(0.05)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_current_xact_id()::text::bigint")
            row = cursor.fetchone()
        assert row is not None
        return commits, int(row[0])

    def delta(self, before: tuple[int, int], after: tuple[int, int]) -> tuple[int, int]:
        """(committed transactions, write transactions) between two snapshots."""
        return after[0] - before[0] - self.overhead, after[1] - before[1] - 1


# --- workloads ---------------------------------------------------------------------------------------


def setup_schema() -> None:
    call_command("migrate", verbosity=0, interactive=False)
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS bench_counter (id integer PRIMARY KEY, n bigint NOT NULL)")
        cursor.execute("INSERT INTO bench_counter (id, n) VALUES (1, 0) ON CONFLICT (id) DO NOTHING")
        cursor.execute("TRUNCATE mailbox_dispatch, mailbox_thread_epoch")
    connection.close()  # start the measured connection fresh, after the migration's work


def raw_updates(n: int) -> Callable[[], int]:
    def run() -> int:
        for _ in range(n):
            with connection.cursor() as cursor:
                cursor.execute("UPDATE bench_counter SET n = n + 1 WHERE id = 1")
        return n

    return run


def enqueue_all(thread_ids: list[str], per_thread: int) -> None:
    """Not timed. Dispatch ids are minted round-robin, so each thread's queue is in creation order."""
    for _ in range(per_thread):
        for thread_id in thread_ids:
            now = now_ms()
            store.enqueue(
                DispatchRecord(
                    dispatch_id=uuid7(),
                    thread_id=thread_id,
                    run_id=uuid7(),
                    available_at=now,
                    created_at=now,
                    updated_at=now,
                )
            )


def store_cycles(thread_ids: list[str], per_thread: int) -> Callable[[], int]:
    def run() -> int:
        done = 0
        for _ in range(per_thread):
            for thread_id in thread_ids:  # round-robin over the threads
                claimed = store.claim(thread_id, CONSUMER, LEASE_MS, now_ms())
                if not claimed:
                    raise RuntimeError(f"nothing claimable on {thread_id}")
                d = claimed[0]
                token = d.claim_token or ""
                instance = uuid7()
                if store.try_start(d.dispatch_id, token, instance, CONSUMER, now_ms()) is None:
                    raise RuntimeError(f"start of {d.dispatch_id} fenced out")
                result = RunDispatchResult(run_id=d.run_id, dispatch_instance_id=instance, status="done")
                if store.try_settle(d.dispatch_id, token, store.Settle.ACK, result, now_ms()) is None:
                    raise RuntimeError(f"ack of {d.dispatch_id} fenced out")
                done += 1
        return done

    return run


@dataclass
class Sample:
    rate: float  # operations per second
    commits_per_op: float
    writes_per_op: float


def measure(counter: CommitCounter, work: Callable[[], int]) -> Sample:
    before = counter.snapshot()
    t0 = time.perf_counter()
    ops = work()
    elapsed = time.perf_counter() - t0
    commits, writes = counter.delta(before, counter.snapshot())
    return Sample(ops / elapsed, commits / ops, writes / ops)


def median(samples: list[Sample], attr: str) -> float:
    return float(statistics.median(getattr(s, attr) for s in samples))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--raw-commits", type=int, default=2000, help="UPDATEs per raw measurement")
    parser.add_argument("--cycles", type=int, default=600, help="store cycles per measurement")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions (median reported)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    per_thread = max(args.cycles // FAN_OUT_THREADS, 1)
    fan_cycles = per_thread * FAN_OUT_THREADS

    started = time.monotonic()
    setup_schema()
    with connection.cursor() as cursor:
        cursor.execute("SELECT version(), current_setting('synchronous_commit'), current_setting('fsync')")
        version, sync_commit, fsync = cursor.fetchone() or ("?", "?", "?")
    counter = CommitCounter()
    print(f"store bench: {str(version).split(',')[0]}; synchronous_commit={sync_commit} fsync={fsync}")
    print(
        f"one connection; {args.reps} interleaved reps; raw {args.raw_commits} UPDATEs, "
        f"b1 {args.cycles} cycles on 1 thread, b2 {fan_cycles} cycles over {FAN_OUT_THREADS} threads "
        f"(read overhead {counter.overhead} txns/snapshot pair, subtracted)"
    )
    results: dict[str, list[Sample]] = {"raw": [], "b1": [], "b2": []}
    for rep in range(args.reps):
        one = [f"bench-one-{rep}-{uuid7()}"]
        fan = [f"bench-fan-{rep}-{i:03d}-{uuid7()}" for i in range(FAN_OUT_THREADS)]
        enqueue_all(one, args.cycles)
        enqueue_all(fan, per_thread)
        for name, work in (
            ("raw", raw_updates(args.raw_commits)),
            ("b1", store_cycles(one, args.cycles)),
            ("b2", store_cycles(fan, per_thread)),
        ):
            sample = measure(counter, work)
            results[name].append(sample)
            print(
                f"  rep {rep + 1} {name:3s}: {sample.rate:8.0f}/s  "
                f"{sample.commits_per_op:.2f} commits/op  {sample.writes_per_op:.2f} write txns/op"
            )
    raw = median(results["raw"], "rate")
    print()
    print(f"{'':34s}{'median/s':>10s}{'÷ raw':>8s}{'commits/op':>12s}{'writes/op':>11s}")
    print(
        f"{'(a)  raw UPDATE autocommit commits':34s}{raw:10.0f}{1.0:8.2f}"
        f"{median(results['raw'], 'commits_per_op'):12.2f}{median(results['raw'], 'writes_per_op'):11.2f}"
    )
    verdicts = []
    for name, label in (("b1", "(b1) store cycles, 1 thread"), ("b2", "(b2) store cycles, 100 threads")):
        rate = median(results[name], "rate")
        ratio = rate / raw
        verdicts.append(ratio >= TARGET_RATIO)
        print(
            f"{label:34s}{rate:10.0f}{ratio:8.2f}"
            f"{median(results[name], 'commits_per_op'):12.2f}{median(results[name], 'writes_per_op'):11.2f}"
            f"   target ÷ raw ≥ {TARGET_RATIO}: {'MET' if ratio >= TARGET_RATIO else 'MISSED'}"
        )
    for name in ("b1", "b2"):
        us = 1e6 / median(results[name], "rate")
        print(f"  {name}: {us:.0f} µs per cycle = {us / 1e6 * raw:.2f} raw commit times")
    print(f"total {time.monotonic() - started:.1f} s")
    connection.close()
    return 1 if args.strict and not all(verdicts) else 0


if __name__ == "__main__":
    sys.exit(main())
