"""End-to-end benchmark through Celery with real worker subprocesses, against a raw Celery baseline.

    DATA=... bash scripts/with-services.sh .venv/bin/python bench/e2e_bench.py [--pool threads|prefork]

Needs DATABASE_URL / REDIS_URL. Both are treated as scratch: the database is migrated and its mailbox
and runs tables are truncated, the Redis database is flushed. Starts `--workers` (2) Celery worker
processes (`celery -A awaken_project worker --pool threads --concurrency 8`, plus the raw baseline
tasks of bench/e2e_tasks.py) in their own process groups, and stops those groups on exit, error or
signal. Measures:

  (a) raw Celery: N no-op tasks (acks_late, same broker/queue/workers), each INCRs a Redis counter;
      tasks/s = N / (first send -> counter == N).
  (b) mailbox: N no-op dispatches (agent `noop`) over 100 threads, submitted with
      `mailbox.submit_background` from this process by `--submitters` threads, so the submission
      throughput (run + message + dispatch written, inline claim, doorbell) is part of the number;
      dispatches/s = N / (first submit -> all N acked, polled with count_dispatches_by_status).
      Target: (b) ≥ 0.65 × (a).
  (c) drain: 500 dispatches queued on ONE thread (runs prepared and dispatches enqueued exactly as
      submit_background does, but without its inline claim and doorbell), then one doorbell;
      dispatches/s = 500 / (doorbell -> all acked). Target ≥ 300/s.
  (d) latency, one sample in flight at a time, raw and mailbox samples alternating: raw =
      send_task -> task entry (time.time() written to Redis by the task); mailbox =
      submit_background call -> agent entry (time.time() written to Redis by the `stamp` agent).
      After each mailbox sample we wait for its ack, so samples do not queue behind each other.
      Target: p50 ≤ 2×, p99 ≤ 3× raw, nothing above 100 ms.

  (d) takes up to --samples (2,000) pairs but stops at --latency-budget (120 s) so the whole bench
      stays near 5 minutes; it prints how many pairs it got.

Pool: threads. In paired runs on the 2-core box (2 workers × concurrency 8, same broker) the raw no-op
rate was 362-437 tasks/s with threads against 185-386 with prefork, and never higher with prefork;
drain rate and latency were within noise of each other. Prefork pays a pipe round trip parent <-> child
per task and 16 children + PostgreSQL context-switching on 2 cores; two worker processes already
give two GILs, one per core, and the mailbox's own work is mostly waiting on PostgreSQL and Redis.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
AGENTS = {
    "noop": "bench.agents.NoopAgent",
    "count": "bench.agents.CountingAgent",
    "stamp": "bench.agents.StampAgent",
}
os.environ["AWAKEN_AGENTS"] = json.dumps({**json.loads(os.environ.get("AWAKEN_AGENTS") or "{}"), **AGENTS})
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "awaken_project.settings")

import django

django.setup()

from django.core.management import call_command
from django.db import connection, transaction

from awaken_project.celery import app
from bench.agents import MAILBOX_DONE_KEY, MAILBOX_START_KEY
from bench.e2e_tasks import (
    FLOOR_DONE_KEY,
    FLOOR_INDEX,
    FLOOR_SUBMIT,
    FLOOR_TABLE,
    FLOOR_TASK,
    NOOP_TASK,
    RAW_DONE_KEY,
    RAW_START_KEY,
    STAMP_TASK,
)
from mailbox_app import store
from mailbox_app.contract.ids import uuid7
from mailbox_app.contract.mailbox import DispatchStatus
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import RunRequest, normalize_mailbox_run_mode, validate_run_inputs
from mailbox_app.realtime import doorbells
from mailbox_app.realtime.redis_client import get_redis
from mailbox_app.services import mailbox
from mailbox_app.services.preparation import build_dispatch, prepare_run_for_dispatch
from mailbox_app.store import conformance

THREADS = 100
CELERY_QUEUE = "celery"
TARGET_B_OVER_A = 0.65
TARGET_B_OVER_FLOOR = 0.8
TARGET_DRAIN = 300.0
TARGET_P50_RATIO = 2.0
TARGET_P99_RATIO = 3.0
TARGET_MAX_MS = 100.0


# --- worker processes --------------------------------------------------------------------------------


class Workers:
    """Celery worker subprocesses, each the leader of its own process group (prefork children too)."""

    def __init__(self, count: int, pool: str, concurrency: int, log_dir: Path) -> None:
        self.count, self.pool, self.concurrency, self.log_dir = count, pool, concurrency, log_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.names = [f"bench{i}-{os.getpid()}@localhost" for i in range(count)]

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        app_module = "awaken_project"
        for i, name in enumerate(self.names):
            command = [
                sys.executable, "-m", "celery", "-A", app_module, "worker",
                "--pool", self.pool, "--concurrency", str(self.concurrency),
                "--loglevel", "WARNING", "-I", "bench.e2e_tasks", "-n", name,
                "--without-gossip", "--without-mingle", "--without-heartbeat",
            ]  # fmt: skip
            with open(self.log_dir / f"worker{i}.log", "wb") as log:
                self.procs.append(
                    subprocess.Popen(
                        command,
                        cwd=ROOT,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            replies = app.control.ping(destination=self.names, timeout=0.5) or []
            if {name for reply in replies for name in reply} >= set(self.names):
                return
        raise RuntimeError(f"workers not ready after {timeout_s:.0f} s; logs in {self.log_dir}")

    def check_alive(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc.poll() is not None:
                tail = (self.log_dir / f"worker{i}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"worker {i} exited with {proc.returncode}:\n{tail}")

    def stop(self) -> None:
        """SIGTERM every group (warm shutdown), then SIGKILL whatever is left of them."""
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the clean-up
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        for proc in self.procs:  # the group may outlive its leader (prefork children)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self.procs.clear()


def _exit_on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through the `finally` that stops the workers


# --- helpers -------------------------------------------------------------------------------------------


def reset_state() -> None:
    """Scratch database and Redis: migrate, truncate the mailbox/runs tables, flush Redis."""
    call_command("migrate", verbosity=0, interactive=False)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            r" AND (tablename LIKE 'mailbox\_%%' OR tablename LIKE 'runs\_%%')"
        )
        tables = [row[0] for row in cursor.fetchall()]
        cursor.execute(f"TRUNCATE {', '.join(tables)} CASCADE")
        cursor.execute(FLOOR_TABLE)
        cursor.execute(FLOOR_INDEX)
        cursor.execute("TRUNCATE bench_floor_job")
    get_redis().flushdb()


def request(thread_id: str, agent_id: str) -> RunRequest:
    return RunRequest(thread_id=thread_id, messages=[ChatMessage.user("go")], agent_id=agent_id)


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str, poll_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)


def quiesce(workers: Workers) -> None:
    """No queued or claimed dispatch, and the broker queue empty."""
    redis = get_redis()

    def idle() -> bool:
        workers.check_alive()
        busy = conformance.count_dispatches_by_status(DispatchStatus.QUEUED)
        busy += conformance.count_dispatches_by_status(DispatchStatus.CLAIMED)
        return busy == 0 and int(redis.llen(CELERY_QUEUE)) == 0

    wait_until(idle, 120, "the system to go idle", 0.05)
    time.sleep(0.3)


@contextlib.contextmanager
def in_threads(count: int, target: Callable[[int, threading.Event], None]) -> Iterator[list[Exception]]:
    """Run `target(k, stop)` for k in range(count) on threads (each closes its DB connection); yields
    their errors. On leaving (normally or not) `stop` is set, so the threads end their loops."""
    errors: list[Exception] = []
    stop = threading.Event()

    def body(k: int) -> None:
        try:
            target(k, stop)
        except Exception as exc:  # noqa: BLE001 - re-raised by the caller
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=body, args=(k,), daemon=True) for k in range(count)]
    for t in threads:
        t.start()
    try:
        yield errors
    finally:
        stop.set()
        deadline = time.monotonic() + 30
        for t in threads:
            t.join(timeout=max(deadline - time.monotonic(), 0.1))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


# --- (a) raw Celery / (b) mailbox throughput -------------------------------------------------------------


def raw_throughput(workers: Workers, n: int, senders: int) -> float:
    redis = get_redis()
    redis.set(RAW_DONE_KEY, 0)

    def send(k: int, stop: threading.Event) -> None:
        for _ in range(n // senders + (1 if k < n % senders else 0)):
            if stop.is_set():
                return
            app.send_task(NOOP_TASK)

    started = time.perf_counter()
    with in_threads(senders, send) as errors:
        wait_until(lambda: int(redis.get(RAW_DONE_KEY) or 0) >= n, 120, f"{n} raw tasks", 0.002)
        elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"raw send failed: {errors[0]!r}")
    workers.check_alive()
    return n / elapsed


@dataclass
class MailboxRate:
    rate: float  # dispatches acked per second, from first submit
    submit_rate: float  # submissions per second (submission alone)
    cpu_ms: dict[str, float]  # CPU ms per dispatch by process kind (load-independent, unlike the rate)


def _proc_stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name (field 3, the state, is index 0)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _cpu_s(pid: int, *, children: bool = False) -> float:
    """User + system CPU seconds of a process (its threads and its reaped children included), plus its
    live children's when asked (PostgreSQL backends still connected). Linux /proc; 0 when it is gone."""
    tick = os.sysconf("SC_CLK_TCK")
    try:
        fields = _proc_stat(pid)
    except OSError:
        return 0.0
    total = sum(int(f) for f in fields[11:15]) / tick  # utime, stime, cutime, cstime
    if children:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, IndexError):
                child = _proc_stat(int(entry.name))
                if int(child[1]) == pid:  # ppid
                    total += (int(child[11]) + int(child[12])) / tick
    return total


def cpu_snapshot(workers: Workers) -> dict[str, float]:
    """CPU seconds used so far by this process (the submitters), the worker processes, the PostgreSQL
    server (postmaster, its backends and the backends that exited) and the Redis server."""
    with connection.cursor() as cursor:
        cursor.execute("SHOW data_directory")
        row = cursor.fetchone()
    postmaster = int((Path(str(row[0] if row else "")) / "postmaster.pid").read_text().split()[0])
    redis_pid = int(get_redis().info("server")["process_id"])
    return {
        "submitters": _cpu_s(os.getpid()),
        "workers": sum(_cpu_s(p.pid, children=True) for p in workers.procs),
        "postgres": _cpu_s(postmaster, children=True),
        "redis": _cpu_s(redis_pid),
    }


def mailbox_throughput(workers: Workers, per_thread: int, senders: int, tag: str) -> MailboxRate:
    thread_ids = [f"bench-{tag}-{i:03d}-{uuid7()}" for i in range(THREADS)]
    n = per_thread * THREADS
    redis = get_redis()
    redis.set(MAILBOX_DONE_KEY, 0)
    submitted_at: list[float] = []

    def submit(k: int, stop: threading.Event) -> None:
        mine = thread_ids[k::senders]
        for _ in range(per_thread):
            for thread_id in mine:
                if stop.is_set():
                    return
                mailbox.submit_background(request(thread_id, "count"))
        submitted_at.append(time.perf_counter())

    cpu0 = cpu_snapshot(workers)
    started = time.perf_counter()
    with in_threads(senders, submit) as errors:

        def all_done() -> bool:
            if errors:
                raise RuntimeError(f"submit failed: {errors[0]!r}")
            workers.check_alive()
            return int(redis.get(MAILBOX_DONE_KEY) or 0) >= n

        wait_until(all_done, 180, f"{n} dispatches to run", 0.003)
        elapsed = time.perf_counter() - started
    cpu1 = cpu_snapshot(workers)
    cpu_ms = {kind: (cpu1[kind] - cpu0[kind]) * 1000 / n for kind in cpu0}
    return MailboxRate(n / elapsed, n / (max(submitted_at) - started), cpu_ms)


def floor_throughput(workers: Workers, per_thread: int, senders: int) -> MailboxRate:
    """The durable floor (bench/e2e_tasks.py), the same shape as (b): jobs over THREADS threads."""
    thread_ids = [f"floor-{i:03d}-{uuid7()}" for i in range(THREADS)]
    n = per_thread * THREADS
    redis = get_redis()
    redis.set(FLOOR_DONE_KEY, 0)
    submitted_at: list[float] = []
    payload = json.dumps({"messages": [{"role": "user", "content": "count"}]})

    def submit(k: int, stop: threading.Event) -> None:
        mine = thread_ids[k::senders]
        with connection.cursor() as cursor:
            for _ in range(per_thread):
                for thread_id in mine:
                    if stop.is_set():
                        return
                    cursor.execute(FLOOR_SUBMIT, [thread_id, payload, time.time_ns()])
                    app.send_task(FLOOR_TASK, args=[thread_id])
        connection.close()
        submitted_at.append(time.perf_counter())

    cpu0 = cpu_snapshot(workers)
    started = time.perf_counter()
    with in_threads(senders, submit) as errors:

        def all_done() -> bool:
            if errors:
                raise RuntimeError(f"floor submit failed: {errors[0]!r}")
            workers.check_alive()
            return int(redis.get(FLOOR_DONE_KEY) or 0) >= n

        wait_until(all_done, 180, f"{n} floor jobs to run", 0.003)
        elapsed = time.perf_counter() - started
    cpu1 = cpu_snapshot(workers)
    cpu_ms = {kind: (cpu1[kind] - cpu0[kind]) * 1000 / n for kind in cpu0}
    return MailboxRate(n / elapsed, n / (max(submitted_at) - started), cpu_ms)


# --- (c) one thread's backlog ------------------------------------------------------------------------------


def drain_rate(workers: Workers, n: int) -> tuple[float, float]:
    """(dispatches/s draining, seconds spent enqueueing)."""
    thread_id = f"bench-drain-{uuid7()}"
    t0 = time.perf_counter()
    for _ in range(n):  # what submit_background writes, minus its inline claim and doorbell
        req = normalize_mailbox_run_mode(request(thread_id, "noop"), background=True)
        tid, messages = validate_run_inputs(req.thread_id, req.messages, allow_empty=False)
        with transaction.atomic():
            prepared, _ = prepare_run_for_dispatch(req.with_(thread_id=tid), tid, messages)
            store.enqueue(build_dispatch(prepared, tid))
    enqueue_s = time.perf_counter() - t0
    started = time.perf_counter()
    app.send_task(doorbells.DISPATCH_TASK, args=[thread_id, None])  # the one doorbell

    def drained() -> bool:
        workers.check_alive()
        return store.count_thread_dispatches(thread_id, [DispatchStatus.ACKED]) >= n

    wait_until(drained, 120, f"{n} dispatches of one thread to drain", 0.01)
    return n / (time.perf_counter() - started), enqueue_s


# --- (d) submit -> start latency ------------------------------------------------------------------------


def _wait_stamp(key: str, sample: str, timeout_s: float = 10.0) -> float:
    redis = get_redis()
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        popped: Any = redis.blpop([key], timeout=max(left, 0.01))
        if popped is None:
            break
        name, _, entered = popped[1].decode().partition(" ")
        if name == sample:
            return float(entered)
    raise RuntimeError(f"no start stamp for {sample} on {key} within {timeout_s:.0f} s")


@dataclass
class Latencies:
    raw: list[float]
    mailbox: list[float]
    submit_call: list[float]  # how long submit_background itself took


def latency(workers: Workers, samples: int, budget_s: float) -> Latencies:
    redis = get_redis()
    redis.delete(RAW_START_KEY, MAILBOX_START_KEY)
    thread_ids = [f"bench-lat-{i:03d}-{uuid7()}" for i in range(THREADS)]
    out = Latencies([], [], [])

    def raw_sample(i: int) -> None:
        sample = f"raw-{i}"
        sent = time.time()
        app.send_task(STAMP_TASK, args=[sample])
        out.raw.append(_wait_stamp(RAW_START_KEY, sample) - sent)

    def mailbox_sample(i: int) -> None:
        called = time.time()
        submitted = mailbox.submit_background(request(thread_ids[i % THREADS], "stamp"))
        out.submit_call.append(time.time() - called)
        out.mailbox.append(_wait_stamp(MAILBOX_START_KEY, submitted.run_id) - called)

        def acked() -> bool:
            current = store.load_dispatch(submitted.dispatch_id)
            return current is not None and current.status is DispatchStatus.ACKED

        wait_until(acked, 10, f"dispatch {submitted.dispatch_id} to be acked", 0.005)

    deadline = time.monotonic() + budget_s
    for i in range(samples):
        if i % 50 == 0:
            workers.check_alive()
            if time.monotonic() > deadline:
                print(f"    (d) stopped at its {budget_s:.0f} s budget after {i} of {samples} samples")
                break
        first, second = (raw_sample, mailbox_sample) if i % 2 == 0 else (mailbox_sample, raw_sample)
        first(i)
        second(i)
    return out


# --- main ------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pool", choices=["threads", "prefork"], default="threads")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--raw-tasks", type=int, default=4000, help="(a) tasks per measurement")
    parser.add_argument("--per-thread", type=int, default=5, help="(b) dispatches per thread (× 100)")
    parser.add_argument("--submitters", type=int, default=8, help="(a)/(b) sending threads in this process")
    parser.add_argument("--reps", type=int, default=2, help="(a)/(b) interleaved repetitions (median)")
    parser.add_argument("--drain", type=int, default=500, help="(c) dispatches queued on one thread")
    parser.add_argument("--samples", type=int, default=2000, help="(d) latency samples of each kind")
    parser.add_argument(
        "--latency-budget", type=float, default=120, help="(d) stop sampling after this many seconds"
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--only", default="abcd", help="subset of the measurements to run, e.g. 'ab'")
    args = parser.parse_args()

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    began = time.monotonic()
    reset_state()
    log_dir = Path(tempfile.mkdtemp(prefix="awaken-e2e-bench-"))
    workers = Workers(args.workers, args.pool, args.concurrency, log_dir)
    ok = True
    try:
        workers.start()
        workers.wait_ready()
        print(
            f"e2e bench: {args.workers} workers × --pool {args.pool} --concurrency {args.concurrency}; "
            f"{os.cpu_count()} CPUs; load average at start {os.getloadavg()[0]:.2f}"
        )
        # warm-up: imports, connections, first-query plans in every worker thread
        raw_throughput(workers, 400, args.submitters)
        mailbox_throughput(workers, 2, args.submitters, "warm")
        quiesce(workers)
        ok = run_measurements(workers, args)
    finally:
        workers.stop()
    shutil.rmtree(log_dir, ignore_errors=True)
    print(f"total {time.monotonic() - began:.0f} s; load average at end {os.getloadavg()[0]:.2f}")
    return 1 if args.strict and not ok else 0


def run_measurements(workers: Workers, args: argparse.Namespace) -> bool:
    ok = True
    if "a" in args.only or "b" in args.only:
        raws: list[float] = []
        mailboxes: list[MailboxRate] = []
        floors: list[MailboxRate] = []
        n_b = args.per_thread * THREADS
        for rep in range(args.reps):
            if "a" in args.only:
                raws.append(raw_throughput(workers, args.raw_tasks, args.submitters))
                print(
                    f"  rep {rep + 1} (a) raw Celery no-op: {raws[-1]:7.0f} tasks/s ({args.raw_tasks} tasks)"
                )
                quiesce(workers)
            if "b" in args.only:
                floors.append(floor_throughput(workers, args.per_thread, args.submitters))
                _print_rate(rep, "durable floor:  ", floors[-1], n_b, "jobs")
                quiesce(workers)
                mailboxes.append(mailbox_throughput(workers, args.per_thread, args.submitters, f"b{rep}"))
                _print_rate(rep, "(b) mailbox no-op:", mailboxes[-1], n_b, "dispatches")
                quiesce(workers)
        ok &= _report_throughput(raws, mailboxes, floors, args.submitters)
    if "c" in args.only:
        rate, enqueue_s = drain_rate(workers, args.drain)
        ok &= rate >= TARGET_DRAIN
        print(
            f"(c) one thread, {args.drain} queued, drained at {rate:.0f} dispatches/s "
            f"(enqueued in {enqueue_s:.1f} s)   "
            f"target ≥ {TARGET_DRAIN:.0f}/s: {verdict(rate >= TARGET_DRAIN)}"
        )
        quiesce(workers)
    if "d" in args.only:
        lat = latency(workers, args.samples, args.latency_budget)
        ok &= report_latency(lat)
    return ok


def _print_rate(rep: int, label: str, rate: MailboxRate, n: int, unit: str) -> None:
    cpu = rate.cpu_ms
    print(
        f"  rep {rep + 1} {label} {rate.rate:7.0f} {unit}/s ({n} over {THREADS} threads; submission alone "
        f"{rate.submit_rate:.0f}/s); CPU ms per {unit[:-1]} {sum(cpu.values()):.2f}: "
        + ", ".join(f"{kind} {ms:.2f}" for kind, ms in cpu.items())
    )


def _report_throughput(
    raws: list[float], mailboxes: list[MailboxRate], floors: list[MailboxRate], submitters: int
) -> bool:
    ok = True
    raw = statistics.median(raws) if raws else float("nan")
    if raws:
        print(f"(a) raw Celery no-op tasks/s (median of {len(raws)}):         {raw:8.0f}")
    if not mailboxes:
        return ok
    rate = statistics.median(m.rate for m in mailboxes)
    floor = statistics.median(f.rate for f in floors)
    submit_rate = statistics.median(m.submit_rate for m in mailboxes)
    print(f"    durable floor jobs/s, 100 threads (median):          {floor:8.0f}")
    print(
        f"(b) mailbox no-op dispatches/s, 100 threads (median):  {rate:8.0f}"
        f"   (submission alone {submit_rate:.0f}/s, {submitters} submitting threads)"
    )
    ratio = rate / floor
    ok &= ratio >= TARGET_B_OVER_FLOOR
    verdict_text = verdict(ratio >= TARGET_B_OVER_FLOOR)
    print(f"    (b) / floor = {ratio:.3f}   target ≥ {TARGET_B_OVER_FLOOR}: {verdict_text}")
    if raws:
        print(f"    (b) / (a) = {rate / raw:.3f}   floor / (a) = {floor / raw:.3f}")
    return ok


def report_latency(lat: Latencies) -> bool:
    def ms(values: list[float], q: float) -> float:
        return 1000 * (max(values) if q >= 1 else percentile(values, q))

    print(f"(d) submit -> start latency, {len(lat.raw)} samples each, one in flight:")
    print(f"    {'':30s}{'p50 ms':>9s}{'p99 ms':>9s}{'max ms':>9s}")
    for label, values in (
        ("raw Celery send -> task entry", lat.raw),
        ("mailbox submit -> agent entry", lat.mailbox),
        ("  of which submit_background", lat.submit_call),
    ):
        print(f"    {label:30s}{ms(values, 0.5):9.2f}{ms(values, 0.99):9.2f}{ms(values, 1):9.2f}")
    p50_ratio = ms(lat.mailbox, 0.5) / ms(lat.raw, 0.5)
    p99_ratio = ms(lat.mailbox, 0.99) / ms(lat.raw, 0.99)
    worst = ms(lat.mailbox, 1)
    over = sum(1 for v in lat.mailbox if v * 1000 > TARGET_MAX_MS)
    for label, ratio, target in (("p50", p50_ratio, TARGET_P50_RATIO), ("p99", p99_ratio, TARGET_P99_RATIO)):
        print(f"    {label} ratio {ratio:.2f}   target ≤ {target}: {verdict(ratio <= target)}")
    print(
        f"    max {worst:.1f} ms, {over} samples above {TARGET_MAX_MS:.0f} ms   "
        f"target none: {verdict(over == 0)}"
    )
    return p50_ratio <= TARGET_P50_RATIO and p99_ratio <= TARGET_P99_RATIO and over == 0


if __name__ == "__main__":
    sys.exit(main())
