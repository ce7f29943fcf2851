"""The engine across real `celery worker` subprocesses on the test database and the test Redis.

Each worker is started as `python -m celery -A awaken_project worker` in its own process group
(`start_new_session=True`), so a test can `kill -9` a whole worker (main process and pool children) the
way an OOM killer or a lost node would. The test process submits through the service (its doorbells go
to the same Redis broker) and reads the durable truth (dispatch rows, run records, event streams). It
never relies on Celery redelivery for recovery (docs/pitfalls.md §1): it drives `maintenance.sweep()` the way
celery beat does, in a loop with a deadline.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings as django_settings
from django.db import connection

from awaken_project.celery import app as celery_app
from mailbox_app import doorbells, events, maintenance, service, store
from mailbox_app.config import MailboxConfig
from mailbox_app.contract.ids import now_ms
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchRecord, DispatchStatus
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import RunRequest
from mailbox_app.contract.storage import RunRecord
from mailbox_app.contract.suspension import ToolCallResume
from mailbox_app.worker.registry import find_local_run
from runs_app import store as run_store
from tests.support.agents import TEST_AGENTS
from tests.support.servers import database_url_of_test_db as _test_database_url
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MAILBOX_ENV = {
    "AWAKEN_MAILBOX_LEASE_MS": "3000",
    "AWAKEN_MAILBOX_LEASE_RENEWAL_INTERVAL_MS": "500",
    "AWAKEN_MAILBOX_DEFAULT_RETRY_DELAY_MS": "50",
    "AWAKEN_MAILBOX_MAX_RETRY_DELAY_MS": "500",
}
MP_CONFIG = MailboxConfig.from_env(MAILBOX_ENV)  # the same mailbox config in the test process
SIGNAL_ENV = {
    "AWAKEN_DISPATCH_SIGNAL_NACK_BASE_DELAY_MS": "50",
    "AWAKEN_DISPATCH_SIGNAL_NACK_MAX_DELAY_MS": "500",
}
READY_TIMEOUT_S = 45.0
STOP_TIMEOUT_S = 8.0
LOG_TAIL_CHARS = 4000
FAULT_POINTS = ("after_claim", "mid_run", "before_finish")


# --- worker subprocesses -----------------------------------------------------------------------------


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


@dataclass
class Worker:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def nodename(self) -> str:
        return f"{self.name}@{socket.gethostname()}"

    @property
    def pgid(self) -> int:
        return self.proc.pid  # start_new_session: the worker's main process leads its own group

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill_group(self) -> None:
        """`kill -9` the whole worker: main process and every pool child, then reap it."""
        _signal_group(self.pgid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        wait_until(lambda: not _group_members(self.pgid), timeout=10, what=f"{self.name} group gone")

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        except OSError:
            return ""


@dataclass
class WorkerFarm:
    log_dir: Path
    env: dict[str, str]
    workers: list[Worker] = field(default_factory=list)

    def start(self, name: str, *, pool: str = "threads", concurrency: int = 2, fault: str = "") -> Worker:
        """Spawn `celery worker` and wait until it answers a ping (it consumes the queue then)."""
        worker = self.spawn(name, pool=pool, concurrency=concurrency, fault=fault)
        self.wait_ready(worker)
        return worker

    def spawn(
        self,
        name: str,
        *,
        pool: str = "threads",
        concurrency: int = 2,
        fault: str = "",
        standby: bool = False,
    ) -> Worker:
        """Start a worker without waiting. A `standby` worker boots but consumes only a private queue
        until `join` (booting takes seconds; several boot in parallel, each joins when its turn comes)."""
        env = dict(self.env)
        if fault:
            env["AWAKEN_FAULT_POINT"] = fault
        command = [
            sys.executable, "-m", "celery", "-A", "awaken_project", "worker",
            "--pool", pool, "--concurrency", str(concurrency), "-n", f"{name}@%h",
            "--loglevel", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        if standby:
            command += ["--queues", f"standby-{name}"]
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                command,
                cwd=PROJECT_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = Worker(name, proc, log_path)
        self.workers.append(worker)
        return worker

    def wait_ready(self, *workers: Worker) -> None:
        for worker in workers:

            def pong(worker: Worker = worker) -> bool:
                if not worker.alive():
                    raise AssertionError(f"{worker.name} exited early:\n{worker.log_tail()}")
                replies = celery_app.control.ping(destination=[worker.nodename], timeout=0.3)
                return any(worker.nodename in reply for reply in replies)

            wait_until(pong, timeout=READY_TIMEOUT_S, interval=0.1, what=f"{worker.name} answers ping")

    def join(self, worker: Worker) -> None:
        """A standby worker starts consuming the task queue (confirmed by its reply)."""
        queue = celery_app.conf.task_default_queue
        replies = celery_app.control.add_consumer(queue, destination=[worker.nodename], reply=True, timeout=5)
        assert any("ok" in reply.get(worker.nodename, {}) for reply in replies), replies

    def stop_all(self) -> None:
        """SIGTERM every group, wait, SIGKILL the leftovers, and check that no process is left."""
        for worker in self.workers:
            if worker.alive():
                _signal_group(worker.pgid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for worker in self.workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        for worker in self.workers:  # also reaches pool children left behind by their main process
            _signal_group(worker.pgid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.proc.wait(timeout=10)
        for worker in self.workers:
            wait_until(lambda w=worker: not _group_members(w.pgid), timeout=10, what=f"{worker.name} gone")

    def print_logs(self) -> None:
        for worker in self.workers:
            tail = worker.log_tail()
            if tail.strip():
                print(f"--- {worker.name} (exit {worker.proc.returncode}) ---\n{tail}")


@pytest.fixture
def mp_settings(engine_settings: Any) -> Any:
    """The in-process settings equal the workers' (the test process submits, claims inline, sweeps)."""
    engine_settings.AWAKEN_MAILBOX = MP_CONFIG
    engine_settings.AWAKEN_DISPATCH_SIGNAL_NACK_BASE_DELAY_MS = int(
        SIGNAL_ENV["AWAKEN_DISPATCH_SIGNAL_NACK_BASE_DELAY_MS"]
    )
    engine_settings.AWAKEN_DISPATCH_SIGNAL_NACK_MAX_DELAY_MS = int(
        SIGNAL_ENV["AWAKEN_DISPATCH_SIGNAL_NACK_MAX_DELAY_MS"]
    )
    return engine_settings


@pytest.fixture
def farm(
    transactional_db: None, mp_settings: Any, clean_redis: redis.Redis, tmp_path: Path
) -> Iterator[WorkerFarm]:
    """Starts `celery worker` subprocesses on demand; stops every one of them (and its children)."""
    env = {k: v for k, v in os.environ.items() if k != "AWAKEN_FAULT_POINT"}
    env |= MAILBOX_ENV | SIGNAL_ENV
    env |= {
        "DATABASE_URL": _test_database_url(),
        "REDIS_URL": django_settings.REDIS_URL,
        "CELERY_BROKER_URL": django_settings.CELERY_BROKER_URL,
        "AWAKEN_AGENTS": json.dumps(TEST_AGENTS),
        "AWAKEN_LIVE_SUSPEND_HOLD_MS": "0",
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }
    workers = WorkerFarm(tmp_path, env)
    try:
        yield workers
    finally:
        workers.stop_all()
        workers.print_logs()  # shown by pytest only when the test failed


# --- helpers -----------------------------------------------------------------------------------------


def _request(thread_id: str, text: str, agent_id: str = "echo") -> RunRequest:
    return RunRequest(thread_id=thread_id, messages=[ChatMessage.user(text)], agent_id=agent_id)


def _dispatch(dispatch_id: str) -> DispatchRecord:
    dispatch = store.load_dispatch(dispatch_id)
    assert dispatch is not None
    return dispatch


def _run(run_id: str) -> RunRecord:
    run = run_store.load_run(run_id=run_id)
    assert run is not None
    return run


def _wait_status(dispatch_id: str, status: DispatchStatus, *, timeout: float = 20.0) -> DispatchRecord:
    def reached() -> DispatchRecord | None:
        dispatch = store.load_dispatch(dispatch_id)
        return dispatch if dispatch is not None and dispatch.status is status else None

    found = wait_until(reached, timeout=timeout, what=f"dispatch {dispatch_id} {status.value}")
    assert found is not None
    return found


def _wait_run(run_id: str, status: RunStatus, *, timeout: float = 20.0) -> RunRecord:
    def reached() -> RunRecord | None:
        run = run_store.load_run(run_id=run_id)
        return run if run is not None and run.status is status else None

    found = wait_until(reached, timeout=timeout, what=f"run {run_id} {status.value}")
    assert found is not None
    return found


def _sweep_until(dispatch_id: str, status: DispatchStatus, *, timeout: float) -> DispatchRecord:
    """Play celery beat: sweep every 100 ms until the dispatch reaches `status`."""

    def swept() -> DispatchRecord | None:
        maintenance.sweep()
        dispatch = store.load_dispatch(dispatch_id)
        return dispatch if dispatch is not None and dispatch.status is status else None

    found = wait_until(swept, timeout=timeout, interval=0.1, what=f"sweep: {dispatch_id} {status.value}")
    assert found is not None
    return found


def _probe_workers() -> None:
    """A no-op dispatch acked by a worker proves it reads and writes the test database."""
    probe = service.submit_background(_request(f"t-probe-{now_ms()}", "probe", agent_id="noop"))
    _wait_status(probe.dispatch_id, DispatchStatus.ACKED, timeout=30)


def _event_types(run_id: str) -> list[str]:
    return [event.type for event in events.read_events(run_id)]


def _thread_texts(thread_id: str) -> list[str]:
    return [m.text for m in run_store.load_messages(thread_id=thread_id) or []]


# --- (a) per-thread exclusivity across processes -----------------------------------------------------


def test_two_worker_processes_never_overlap_runs_of_one_thread(farm: WorkerFarm) -> None:
    """seed: concurrent_submit_background_same_thread_only_one_runs

    3 threads × 30 background `sleep 0.05` dispatches, submitted concurrently (two submitters per
    thread) while two worker processes (prefork and threads pools) drain them. Overlap is judged on the
    durable run records: `started_at` is stamped by the Running checkpoint before the agent is entered
    and `finished_at` by the Done checkpoint after it returned (mailbox_app/runtime.py), so the interval
    covers the whole execution; touching intervals (end == start, ms resolution) do not overlap.
    """
    workers = [farm.spawn("w0", pool="prefork"), farm.spawn("w1", pool="threads")]
    farm.wait_ready(*workers)
    _probe_workers()
    thread_ids = ["t-mp-a", "t-mp-b", "t-mp-c"]
    submitted: list[service.SubmitResult] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def submitter(thread_id: str, count: int) -> None:
        try:
            for _ in range(count):
                result = service.submit_background(_request(thread_id, "sleep 0.05"))
                with lock:
                    submitted.append(result)
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            errors.append(exc)
        finally:
            connection.close()

    submitters = [threading.Thread(target=submitter, args=(t, 15)) for t in thread_ids for _ in range(2)]
    for t in submitters:
        t.start()
    for t in submitters:
        t.join(timeout=60)
    assert not errors, errors
    assert len(submitted) == 90

    for thread_id in thread_ids:
        wait_until(
            lambda t=thread_id: store.count_thread_dispatches(t, [DispatchStatus.ACKED]) == 30,
            timeout=60,
            interval=0.1,
            what=f"30 acked dispatches on {thread_id}",
        )
    for thread_id in thread_ids:
        dispatches = store.list_dispatches(thread_id, limit=100)
        assert len(dispatches) == 30
        assert {d.status for d in dispatches} == {DispatchStatus.ACKED}
        retried = [(d.attempt_count, d.last_error) for d in dispatches if d.attempt_count]
        assert not retried, retried  # no retry, no spurious lock-busy nack
        runs = [_run(d.run_id) for d in dispatches]
        assert all(r.status is RunStatus.DONE and r.final_output == "slept 0.05" for r in runs)
        spans: list[tuple[int, int, str]] = []
        for r in runs:
            assert r.started_at is not None and r.finished_at is not None
            assert r.finished_at - r.started_at >= 50  # the interval covers the 50 ms of work
            spans.append((r.started_at, r.finished_at, r.run_id))
        spans.sort()
        for (_, prev_end, prev_id), (next_start, _, next_id) in itertools.pairwise(spans):
            assert prev_end <= next_start, f"{prev_id} overlaps {next_id} on {thread_id}"
    assert all(w.alive() for w in workers)


# --- (b) kill -9 of a whole worker mid-run -----------------------------------------------------------


def test_kill_9_worker_mid_run_is_reclaimed_by_sweep_and_rerun_elsewhere(farm: WorkerFarm) -> None:
    """seed: start_lifecycle_reclaims_expired_claimed_dispatches_and_executes_them

    One worker runs `sleep 5`; a second worker joins the queue (it booted alongside, on standby); the
    first is killed with SIGKILL (whole group). After the lease expires the sweep reclaims the dispatch
    (attempt 1) and rings the thread; the survivor re-runs it to `acked`. A late redelivery of the old
    doorbells is then a no-op.
    """
    doomed = farm.spawn("w-doomed", pool="prefork")
    # concurrency 1: the survivor handles its messages strictly one after another, in queue order
    survivor = farm.spawn("w-survivor", pool="threads", concurrency=1, standby=True)
    farm.wait_ready(doomed, survivor)
    _probe_workers()
    thread_id = "t-crash"
    submitted = service.submit_background(_request(thread_id, "sleep 5"))
    _wait_run(submitted.run_id, RunStatus.RUNNING)
    farm.join(survivor)
    running = _dispatch(submitted.dispatch_id)
    assert running.status is DispatchStatus.CLAIMED and running.dispatch_instance_id is not None

    doomed.kill_group()
    assert _dispatch(submitted.dispatch_id).status is DispatchStatus.CLAIMED  # nobody released it

    acked = _sweep_until(submitted.dispatch_id, DispatchStatus.ACKED, timeout=30)
    assert acked.attempt_count == 1
    assert acked.dispatch_instance_id not in (None, running.dispatch_instance_id)
    assert acked.run_response == "slept 5"
    run = _run(submitted.run_id)
    assert run.status is RunStatus.DONE and run.final_output == "slept 5"
    assert run.termination_reason is not None and run.termination_reason.type == "natural_end"
    assert run.session_id == acked.dispatch_instance_id
    kinds = _event_types(submitted.run_id)
    assert kinds.count("run_start") == 2 and kinds.count("run_finish") == 1
    assert _thread_texts(thread_id) == ["sleep 5", "slept 5"]

    # Late redelivery of the old doorbells (both kinds, same ids), then a marker on another thread
    # behind them in the survivor's single slot: once the marker ran, both late doorbells were handled.
    celery_app.send_task(doorbells.DISPATCH_TASK, args=[thread_id, submitted.dispatch_id])
    celery_app.send_task(doorbells.RUN_CLAIMED_TASK, args=[thread_id, submitted.dispatch_id])
    marker = service.submit_background(_request("t-crash-marker", "marker"))
    _wait_status(marker.dispatch_id, DispatchStatus.ACKED)
    assert _dispatch(submitted.dispatch_id) == acked  # not a single field changed
    assert _run(submitted.run_id) == run
    assert _event_types(submitted.run_id) == kinds  # no new activation
    assert survivor.alive()


# --- lease renewal across processes ------------------------------------------------------------------


def test_lease_renewal_keeps_a_run_longer_than_the_lease_from_being_reclaimed(farm: WorkerFarm) -> None:
    """seed: mailbox_lease_renewal_is_wired_and_prevents_reclaim

    `sleep 5` with a 3000 ms lease renewed every 500 ms by the worker process; the test process sweeps
    every 100 ms, well past the first lease's end, and never reclaims it.
    """
    farm.start("w0", pool="prefork")
    _probe_workers()
    submitted = service.submit_background(_request("t-renew", "sleep 5"))
    _wait_run(submitted.run_id, RunStatus.RUNNING)
    first_lease = _dispatch(submitted.dispatch_id).lease_until
    assert first_lease is not None
    wait_until(
        lambda: (_dispatch(submitted.dispatch_id).lease_until or 0) > first_lease,
        timeout=5,
        what="lease renewed",
    )
    reclaimed: list[int] = []
    swept_at: list[int] = []

    def swept() -> DispatchRecord | None:
        swept_at.append(now_ms())
        reclaimed.append(maintenance.sweep().reclaimed)
        dispatch = _dispatch(submitted.dispatch_id)
        assert dispatch.status in {DispatchStatus.CLAIMED, DispatchStatus.ACKED}
        return dispatch if dispatch.status is DispatchStatus.ACKED else None

    acked = wait_until(swept, timeout=20, interval=0.1, what="acked while sweeping")
    assert sum(reclaimed) == 0
    assert max(swept_at) > first_lease + 500  # the sweep ran after the first lease had ended
    assert acked.attempt_count == 0 and acked.run_response == "slept 5"
    run = _run(submitted.run_id)
    assert run.status is RunStatus.DONE and run.final_output == "slept 5"
    assert run.started_at is not None and run.finished_at is not None
    assert run.finished_at - run.started_at > MP_CONFIG.lease_ms


# --- (c) named fault points --------------------------------------------------------------------------


def test_workers_dying_at_each_fault_point_are_recovered_exactly_once(farm: WorkerFarm) -> None:
    """For each named fault point a solo-pool worker with AWAKEN_FAULT_POINT=<point> takes the queue,
    gets one dispatch and `os._exit`s at that step. Then a healthy worker joins and the sweep recovers
    every dispatch: acked with attempt_count 1, and its run completed exactly once (one run_finish event,
    one reply in the thread log). The workers boot in parallel on standby and join one at a time."""
    faulty = {p: farm.spawn(f"w-{p}", pool="solo", fault=p, standby=True) for p in FAULT_POINTS}
    healthy = farm.spawn("w-healthy", pool="threads", standby=True)
    farm.wait_ready(*faulty.values(), healthy)
    submitted: dict[str, service.SubmitResult] = {}
    for point, worker in faulty.items():
        farm.join(worker)  # the only consumer of the task queue now
        submitted[point] = service.submit_background(_request(f"t-fault-{point}", f"hello {point}"))
        wait_until(lambda w=worker: not w.alive(), timeout=20, what=f"{worker.name} dies at {point}")
        assert worker.proc.returncode == 137, (point, worker.log_tail())
        worker.kill_group()  # reap it; nothing of it may linger

        crashed = _dispatch(submitted[point].dispatch_id)
        assert crashed.status is DispatchStatus.CLAIMED and crashed.attempt_count == 0, (point, crashed)
        run = _run(submitted[point].run_id)
        if point == "after_claim":  # died holding the claim, before the runtime start was recorded
            assert crashed.dispatch_instance_id is None and run.status is RunStatus.CREATED
        elif point == "mid_run":  # the fenced start committed (dispatch and run), the agent never entered
            assert crashed.run_status == "running" and run.status is RunStatus.RUNNING
        else:  # the agent returned; the finish transaction (result, ack, run, reply) never committed
            assert crashed.run_status == "running" and crashed.run_response is None
            assert run.status is RunStatus.RUNNING
            assert _thread_texts(f"t-fault-{point}") == [f"hello {point}"], "no reply landed"

    farm.join(healthy)
    for point, result in submitted.items():
        text = f"hello {point}"
        acked = _sweep_until(result.dispatch_id, DispatchStatus.ACKED, timeout=30)
        assert acked.attempt_count == 1, (point, acked)
        assert acked.run_status == "done" and acked.run_response == f"echo: {text}", (point, acked)
        run = _run(result.run_id)
        assert run.status is RunStatus.DONE and run.final_output == f"echo: {text}", (point, run)
        assert run.termination_reason is not None and run.termination_reason.type == "natural_end"
        assert run.session_id == acked.dispatch_instance_id, point
        assert _event_types(result.run_id).count("run_finish") == 1, point
        assert _thread_texts(f"t-fault-{point}") == [text, f"echo: {text}"], point
    assert healthy.alive()


# --- (d) foreground interrupt across processes -------------------------------------------------------


def test_foreground_submit_cancels_a_run_in_another_process_over_redis(farm: WorkerFarm) -> None:
    """seed: foreground_submit_sends_live_cancel_for_remote_active_dispatch

    A background `sleep 10` runs in a worker subprocess and another dispatch is queued behind it; a
    foreground submit from this process bumps the epoch (superseding the queued one), sends the live
    cancel over Redis (no local run here), waits for the remote claim to go, and its own run completes.
    """
    farm.start("w0", pool="prefork")
    _probe_workers()
    thread_id = "t-remote-fg"
    first = service.submit_background(_request(thread_id, "sleep 10"))
    _wait_run(first.run_id, RunStatus.RUNNING)
    queued = service.submit_background(_request(thread_id, "later"))
    assert queued.status is service.SubmitStatus.QUEUED
    assert find_local_run(first.dispatch_id) is None  # the active run lives in the worker process

    started = time.monotonic()
    fg = service.submit(_request(thread_id, "now"))
    assert time.monotonic() - started < django_settings.AWAKEN_REMOTE_CANCEL_WAIT_MS / 1000
    assert fg.status is service.SubmitStatus.RUNNING and fg.dispatch_id != first.dispatch_id

    first_run = _wait_run(first.run_id, RunStatus.DONE)
    assert first_run.termination_reason is not None and first_run.termination_reason.type == "cancelled"
    assert first_run.started_at is not None and first_run.finished_at is not None
    assert first_run.finished_at - first_run.started_at < 10_000  # cancelled, not slept out
    assert _wait_status(first.dispatch_id, DispatchStatus.SUPERSEDED).attempt_count == 0
    assert _dispatch(queued.dispatch_id).status is DispatchStatus.SUPERSEDED
    queued_run = _run(queued.run_id)
    assert queued_run.status is RunStatus.DONE
    assert queued_run.termination_reason is not None and queued_run.termination_reason.type == "cancelled"
    fg_run = _wait_run(fg.run_id, RunStatus.DONE)
    assert fg_run.final_output == "echo: now"
    _wait_status(fg.dispatch_id, DispatchStatus.ACKED)
    assert "echo: later" not in _thread_texts(thread_id)


# --- (e) a paused worker resumed after its claim was re-run ------------------------------------------


def _durable_snapshot(thread_id: str, run_id: str) -> tuple[Any, ...]:
    messages, _ = run_store.list_message_records(thread_id=thread_id, limit=200, include_internal=True)
    thread = run_store.load_thread(thread_id=thread_id)
    return (
        _run(run_id).model_dump_json(),
        None if thread is None else thread.model_dump_json(),
        [m.model_dump_json() for m in messages],
        [(e.id, e.type, e.data) for e in events.read_events(run_id)],
    )


@pytest.mark.parametrize("round_", range(2))
def test_a_sigstopped_worker_resumed_after_reclaim_writes_nothing(farm: WorkerFarm, round_: int) -> None:
    """A solo worker runs `sleep 2` and is SIGSTOPped (its renewer too) past its 3 s lease; the sweep
    reclaims, a second worker re-runs and acks. The second worker is killed, the first resumed (SIGCONT):
    its attempt ends fenced out. A marker dispatch, which the solo worker can take only after that
    attempt's task returned, proves it is over; the run record, the thread, its log and the run's event
    stream are byte-for-byte what the live attempt left."""
    paused = farm.start("w-paused", pool="solo")
    _probe_workers()
    thread_id = f"t-sigstop-{round_}"
    submitted = service.submit_background(_request(thread_id, "sleep 2"))
    _wait_run(submitted.run_id, RunStatus.RUNNING)
    _signal_group(paused.pgid, signal.SIGSTOP)
    try:
        live = farm.start("w-live", pool="threads")
        acked = _sweep_until(submitted.dispatch_id, DispatchStatus.ACKED, timeout=40)
        assert acked.attempt_count == 1 and acked.claimed_by is None
        settled = _durable_snapshot(thread_id, submitted.run_id)
        assert _thread_texts(thread_id) == ["sleep 2", "slept 2"]
        live.kill_group()
    finally:
        _signal_group(paused.pgid, signal.SIGCONT)
    marker = service.submit_background(_request(f"t-sigstop-marker-{round_}", "marker"))
    _sweep_until(marker.dispatch_id, DispatchStatus.ACKED, timeout=30)
    assert paused.alive()
    assert _durable_snapshot(thread_id, submitted.run_id) == settled
    assert _dispatch(submitted.dispatch_id) == acked


# --- (f) live commands delivered to a run in another process -----------------------------------------


def test_steering_a_decision_and_a_cancel_reach_a_run_in_another_process(farm: WorkerFarm) -> None:
    """No run executes in this process, so each command goes over Redis to the worker process: steering
    is appended to the reply, a decision resumes a run suspended in its live hold, a cancel stops it."""
    farm.env["AWAKEN_LIVE_SUSPEND_HOLD_MS"] = "20000"
    farm.start("w0", pool="prefork")
    _probe_workers()

    steered = service.submit_background(_request("t-mp-steer", "sleep 1.5"))
    _wait_run(steered.run_id, RunStatus.RUNNING)
    assert find_local_run(steered.run_id) is None
    answer = service.submit_live_then_queue(
        RunRequest(thread_id="t-mp-steer", messages=[ChatMessage.user("also this")])
    )
    assert answer.status is service.SubmitStatus.RUNNING and answer.run_id == steered.run_id
    assert _wait_run(steered.run_id, RunStatus.DONE).final_output == "slept 1.5 | steered: also this"

    asked = service.submit_background(_request("t-mp-decide", "ask ok?"))
    start = wait_until(
        lambda: next((e for e in events.read_events(asked.run_id) if e.type == "tool_call_start"), None),
        what="the tool call",
    )
    resume = ToolCallResume(decision_id="d-mp", action="resume", result={"ok": 1})
    assert service.send_decision(asked.run_id, start.data["tool_call_id"], resume)
    decided = _wait_run(asked.run_id, RunStatus.DONE)
    assert decided.final_output == 'approved: {"ok": 1}'
    assert [d.status for d in store.list_dispatches("t-mp-decide")] == [DispatchStatus.ACKED]

    cancelled = service.submit_background(_request("t-mp-cancel", "sleep 20"))
    _wait_run(cancelled.run_id, RunStatus.RUNNING)
    began = time.monotonic()
    assert service.cancel(cancelled.run_id)
    run = _wait_run(cancelled.run_id, RunStatus.DONE)
    assert time.monotonic() - began < 10
    assert run.termination_reason is not None and run.termination_reason.type == "cancelled"
