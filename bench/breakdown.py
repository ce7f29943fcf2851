"""Where one dispatch's time goes, in-process (no Celery): the submit path and the worker's execute path.

    DATA=... bash scripts/with-services.sh .venv/bin/python bench/breakdown.py [--n 100]

Wraps the steps of `mailbox.submit_background` and of `execution.drain_thread` with timers and counts,
per step, the SQL round trips (BEGIN / COMMIT / SAVEPOINT included), transactions (commits,
read-only ones included) and Redis round trips;
then submits N no-op dispatches to idle threads and drains N dispatches queued on one thread.
Times are exclusive (a step's nested steps are reported on their own lines) and are averages per
dispatch; on a busy machine they inflate, the round-trip counts do not. Scratch database and Redis.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ["AWAKEN_AGENTS"] = json.dumps({"noop": "bench.agents.NoopAgent"})
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "awaken_project.settings")

import django

django.setup()

import redis
from django.core.management import call_command
from django.db import connection, transaction

from mailbox_app import store
from mailbox_app.contract.ids import uuid7
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import RunRequest, normalize_mailbox_run_mode
from mailbox_app.realtime import doorbells, events, live
from mailbox_app.realtime.locks import ThreadLock
from mailbox_app.realtime.redis_client import get_redis
from mailbox_app.services import mailbox, preparation
from mailbox_app.store.ports import run_store
from mailbox_app.store.runs_tables import attempt as runs_tables_attempt
from mailbox_app.store.runs_tables import submit as runs_tables_submit
from mailbox_app.worker import attempt, execution, lease, runtime


@dataclass
class Step:
    calls: int = 0
    seconds: float = 0.0  # exclusive
    sql: int = 0
    commits: int = 0
    redis: int = 0


class CountingLog:
    """Stands in for `connection.queries_log` (a bounded deque): counts statements and transactions
    (an explicit COMMIT, or a statement run in autocommit mode outside any atomic block)."""

    def __init__(self) -> None:
        self.statements = 0
        self.commits = 0

    def append(self, entry: dict[str, Any]) -> None:
        self.statements += 1
        sql = str(entry.get("sql", "")).lstrip().upper()
        control = sql.startswith(("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE"))
        self.commits += sql.startswith("COMMIT") or (not control and not connection.in_atomic_block)

    def clear(self) -> None:
        pass

    def __len__(self) -> int:
        return 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(())


LOG = CountingLog()


@dataclass
class Recorder:
    steps: dict[str, Step] = field(default_factory=dict)
    stack: list[str] = field(default_factory=list)
    redis_calls: int = 0

    def sql_count(self) -> tuple[int, int]:
        return LOG.statements, LOG.commits

    @contextmanager
    def step(self, label: str) -> Iterator[None]:
        step = self.steps.setdefault(label, Step())
        step.calls += 1
        self.stack.append(label)
        sql0, commits0 = self.sql_count()
        redis0 = self.redis_calls
        t0 = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - t0
            sql1, commits1 = self.sql_count()
            self.stack.pop()
            step.seconds += elapsed
            step.sql += sql1 - sql0
            step.commits += commits1 - commits0
            step.redis += self.redis_calls - redis0
            if self.stack:  # make the parent's numbers exclusive
                parent = self.steps[self.stack[-1]]
                parent.seconds -= elapsed
                parent.sql -= sql1 - sql0
                parent.commits -= commits1 - commits0
                parent.redis -= self.redis_calls - redis0


REC = Recorder()


def wrap(owner: Any, name: str, label: str) -> None:
    original: Callable[..., Any] = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with REC.step(label):
            return original(*args, **kwargs)

    setattr(owner, name, wrapper)


def instrument() -> None:
    original_execute: Callable[..., Any] = redis.Redis.execute_command
    original_pipeline_execute: Callable[..., Any] = redis.client.Pipeline.execute

    def execute_command(self: Any, *args: Any, **kwargs: Any) -> Any:
        REC.redis_calls += 1
        return original_execute(self, *args, **kwargs)

    def pipeline_execute(self: Any, *args: Any, **kwargs: Any) -> Any:
        REC.redis_calls += 1  # one round trip
        return original_pipeline_execute(self, *args, **kwargs)

    redis.Redis.execute_command = execute_command  # type: ignore[method-assign]
    redis.client.Pipeline.execute = pipeline_execute  # type: ignore[method-assign]
    # runs_app.store is reached through ports.run_store(); every caller shares the module
    runs = run_store()
    for name in ("load_thread", "latest_run", "load_run", "checkpoint", "load_message_record"):
        wrap(runs, name, f"runs.{name}")
    for name in ("enqueue", "claim", "claim_dispatch", "try_start", "try_settle", "load_dispatch"):
        wrap(store, name, f"store.{name}")
    wrap(runs_tables_submit, "submit", "awaken_submit (one statement)")
    wrap(runs_tables_attempt, "start", "awaken_start (one statement)")
    wrap(runs_tables_attempt, "finish", "awaken_finish (one statement)")
    wrap(mailbox, "prepare_run_for_dispatch", "prepare_run_for_dispatch (rest)")
    wrap(preparation, "reusable_waiting_run_id", "reusable_waiting_run_id (rest)")
    wrap(doorbells, "send_doorbell", "celery publish (doorbell)")
    wrap(execution, "close_old_connections", "close_old_connections")
    wrap(attempt, "reconstruct_from", "reconstruct_from (rest)")
    wrap(attempt, "start", "attempt.start (rest)")
    wrap(attempt, "finish", "attempt.finish (rest)")
    wrap(execution, "call_agent", "call_agent (rest)")
    wrap(runtime, "resolve_agent", "resolve_agent (import + instantiate)")
    wrap(events, "append_event", "events.append_event")
    wrap(events, "append_fenced", "events.append_fenced")
    wrap(ThreadLock, "acquire", "redis lock acquire")
    wrap(ThreadLock, "release", "redis lock release")
    wrap(live.LiveSubscription, "__init__", "LiveSubscription open")
    wrap(live.LiveSubscription, "close", "LiveSubscription close")
    wrap(lease.Renewer, "hold", "lease renewer hold")
    wrap(lease.Renewer, "release", "lease renewer release")


def report(title: str, n: int, elapsed: float, cpu: float) -> None:
    print(
        f"\n{title}: {n} dispatches, {elapsed / n * 1000:.2f} ms each ({n / elapsed:.0f}/s); "
        f"this process's CPU {cpu / n * 1000:.2f} ms each"
    )
    print(f"  {'step (exclusive)':44s}{'calls':>7s}{'ms':>8s}{'SQL':>7s}{'txns':>6s}{'redis':>7s}")
    total = Step()
    for label, s in sorted(REC.steps.items(), key=lambda kv: -kv[1].seconds):
        print(
            f"  {label:44s}{s.calls / n:7.2f}{s.seconds / n * 1000:8.2f}{s.sql / n:7.1f}"
            f"{s.commits / n:6.2f}{s.redis / n:7.1f}"
        )
        total.seconds += s.seconds
        total.sql += s.sql
        total.commits += s.commits
        total.redis += s.redis
    other = elapsed - total.seconds
    print(f"  {'(not in a step)':44s}{'':7s}{other / n * 1000:8.2f}")
    print(
        f"  {'total per dispatch':44s}{'':7s}{elapsed / n * 1000:8.2f}{total.sql / n:7.1f}"
        f"{total.commits / n:6.2f}{total.redis / n:7.1f}"
    )
    REC.steps.clear()


def request(thread_id: str) -> RunRequest:
    return RunRequest(thread_id=thread_id, messages=[ChatMessage.user("go")], agent_id="noop")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--n", type=int, default=100)
    args = parser.parse_args()
    call_command("migrate", verbosity=0, interactive=False)
    with connection.cursor() as cursor:  # scratch: a fair claim would take over an earlier run's leftovers
        cursor.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            r" AND (tablename LIKE 'mailbox\_%%' OR tablename LIKE 'runs\_%%')"
        )
        cursor.execute(f"TRUNCATE {', '.join(row[0] for row in cursor.fetchall())} CASCADE")
    get_redis().flushdb()
    connection.force_debug_cursor = True  # log every statement (and BEGIN/COMMIT) ...
    connection.queries_log = LOG  # type: ignore[assignment]  # ... into our counter
    instrument()
    # warm up: imports, plans, the agent module
    warm = f"bd-warm-{uuid7()}"
    mailbox.submit_background(request(warm))
    execution.drain_thread(warm)
    REC.steps.clear()

    # submit path, each to an idle thread (inline claim + hand-over message)
    t0, c0 = time.perf_counter(), time.process_time()
    thread_ids = [f"bd-sub-{uuid7()}" for _ in range(args.n)]
    for thread_id in thread_ids:
        with REC.step("submit_background (rest)"):
            mailbox.submit_background(request(thread_id))
    report("submit_background to an idle thread", args.n, time.perf_counter() - t0, time.process_time() - c0)
    get_redis().delete("celery")
    # Those claims were taken inline and their hand-over doorbells dropped: drop them, or a fair claim of
    # the drain below takes them over (past the unstarted-claim grace) and the drain counts them too.
    with connection.cursor() as cursor:
        cursor.execute(
            "DELETE FROM mailbox_dispatch WHERE thread_id = ANY(%s) AND status = 'claimed'",
            [thread_ids],
        )

    # worker path: N dispatches queued on one thread, drained in this process
    thread_id = f"bd-drain-{uuid7()}"
    for _ in range(args.n):
        req = normalize_mailbox_run_mode(request(thread_id), background=True)
        with transaction.atomic():
            prepared, _ = preparation.prepare_run_for_dispatch(req, thread_id, list(req.messages))
            store.enqueue(preparation.build_dispatch(prepared, thread_id))
    REC.steps.clear()
    t0, c0 = time.perf_counter(), time.process_time()
    with REC.step("drain_thread (rest)"):
        execution.drain_thread(thread_id)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    report("worker path: drain_thread of one thread's backlog", args.n, elapsed, cpu)
    print(f"\nload average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    connection.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
