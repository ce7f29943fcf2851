"""The engine across real `celery worker` subprocesses on the test database and the test Redis.

Each worker is started as `python -m celery -A awaken_project worker` in its own process group
(`start_new_session=True`), so a test can `kill -9` a whole worker (main process and pool children) the
way an OOM killer or a lost node would. The test process submits through the service (its doorbells go
to the same Redis broker) and reads the durable truth (dispatch rows, run records, event streams). It
never relies on Celery redelivery for recovery (docs/pitfalls.md §1): it drives `maintenance.sweep()` the way
celery beat does, in a loop with a deadline.
"""

from __future__ import annotations

import itertools
import signal
import threading
import time
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.db import connection

from awaken_project.celery import app as celery_app
from mailbox_app import store
from mailbox_app.contract.ids import now_ms
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchRecord, DispatchStatus, LiveRunTarget
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import RunRequest
from mailbox_app.contract.suspension import ToolCallResume
from mailbox_app.realtime import doorbells, events
from mailbox_app.services import mailbox, maintenance
from mailbox_app.worker.registry import find_local_run
from runs_app import store as run_store
from tests.support.runs import thread_texts
from tests.support.waiting import wait_until
from tests.support.worker_farm import (
    MP_CONFIG,
    WorkerFarm,
    dispatch_of,
    echo_request,
    probe_workers,
    run_of,
    signal_group,
    sweep_until,
    wait_dispatch_status,
    wait_run_status,
)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

FAULT_POINTS = ("after_claim", "mid_run", "before_finish")


def _event_types(run_id: str) -> list[str]:
    return [event.type for event in events.read_events(run_id)]


# --- (a) per-thread exclusivity across processes -----------------------------------------------------


def test_two_worker_processes_never_overlap_runs_of_one_thread(farm: WorkerFarm) -> None:
    """seed: concurrent_submit_background_same_thread_only_one_runs

    3 threads × 30 background `sleep 0.05` dispatches, submitted concurrently (two submitters per
    thread) while two worker processes (prefork and threads pools) drain them. Overlap is judged on the
    durable run records: `started_at` is stamped by the Running checkpoint before the agent is entered
    and `finished_at` by the Done checkpoint after it returned (mailbox_app/worker/runtime.py), so the
    interval covers the whole execution; touching intervals (end == start, ms resolution) do not overlap.
    """
    workers = [farm.spawn("w0", pool="prefork"), farm.spawn("w1", pool="threads")]
    farm.wait_ready(*workers)
    probe_workers()
    thread_ids = ["t-mp-a", "t-mp-b", "t-mp-c"]
    submitted: list[mailbox.SubmitResult] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def submitter(thread_id: str, count: int) -> None:
        try:
            for _ in range(count):
                result = mailbox.submit_background(echo_request(thread_id, "sleep 0.05"))
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
        runs = [run_of(d.run_id) for d in dispatches]
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
    probe_workers()
    thread_id = "t-crash"
    submitted = mailbox.submit_background(echo_request(thread_id, "sleep 5"))
    wait_run_status(submitted.run_id, RunStatus.RUNNING)
    farm.join(survivor)
    running = dispatch_of(submitted.dispatch_id)
    assert running.status is DispatchStatus.CLAIMED and running.dispatch_instance_id is not None

    doomed.kill_group()
    assert dispatch_of(submitted.dispatch_id).status is DispatchStatus.CLAIMED  # nobody released it

    acked = sweep_until(submitted.dispatch_id, DispatchStatus.ACKED, timeout=30)
    assert acked.attempt_count == 1
    assert acked.dispatch_instance_id not in (None, running.dispatch_instance_id)
    assert acked.run_response == "slept 5"
    run = run_of(submitted.run_id)
    assert run.status is RunStatus.DONE and run.final_output == "slept 5"
    assert run.termination_reason is not None and run.termination_reason.type == "natural_end"
    assert run.session_id == acked.dispatch_instance_id
    kinds = _event_types(submitted.run_id)
    assert kinds.count("run_start") == 2 and kinds.count("run_finish") == 1
    assert thread_texts(thread_id) == ["sleep 5", "slept 5"]

    # Late redelivery of the old doorbells (both kinds, same ids), then a marker on another thread
    # behind them in the survivor's single slot: once the marker ran, both late doorbells were handled.
    celery_app.send_task(doorbells.DISPATCH_TASK, args=[thread_id, submitted.dispatch_id])
    celery_app.send_task(doorbells.RUN_CLAIMED_TASK, args=[thread_id, submitted.dispatch_id])
    marker = mailbox.submit_background(echo_request("t-crash-marker", "marker"))
    wait_dispatch_status(marker.dispatch_id, DispatchStatus.ACKED)
    assert dispatch_of(submitted.dispatch_id) == acked  # not a single field changed
    assert run_of(submitted.run_id) == run
    assert _event_types(submitted.run_id) == kinds  # no new activation
    assert survivor.alive()


# --- lease renewal across processes ------------------------------------------------------------------


def test_lease_renewal_keeps_a_run_longer_than_the_lease_from_being_reclaimed(farm: WorkerFarm) -> None:
    """seed: mailbox_lease_renewal_is_wired_and_prevents_reclaim

    `sleep 5` with a 3000 ms lease renewed every 500 ms by the worker process; the test process sweeps
    every 100 ms, well past the first lease's end, and never reclaims it.
    """
    farm.start("w0", pool="prefork")
    probe_workers()
    submitted = mailbox.submit_background(echo_request("t-renew", "sleep 5"))
    wait_run_status(submitted.run_id, RunStatus.RUNNING)
    first_lease = dispatch_of(submitted.dispatch_id).lease_until
    assert first_lease is not None
    wait_until(
        lambda: (dispatch_of(submitted.dispatch_id).lease_until or 0) > first_lease,
        timeout=5,
        what="lease renewed",
    )
    reclaimed: list[int] = []
    swept_at: list[int] = []

    def swept() -> DispatchRecord | None:
        swept_at.append(now_ms())
        reclaimed.append(maintenance.sweep().reclaimed)
        dispatch = dispatch_of(submitted.dispatch_id)
        assert dispatch.status in {DispatchStatus.CLAIMED, DispatchStatus.ACKED}
        return dispatch if dispatch.status is DispatchStatus.ACKED else None

    acked = wait_until(swept, timeout=20, interval=0.1, what="acked while sweeping")
    assert sum(reclaimed) == 0
    assert max(swept_at) > first_lease + 500  # the sweep ran after the first lease had ended
    assert acked.attempt_count == 0 and acked.run_response == "slept 5"
    run = run_of(submitted.run_id)
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
    submitted: dict[str, mailbox.SubmitResult] = {}
    for point, worker in faulty.items():
        farm.join(worker)  # the only consumer of the task queue now
        submitted[point] = mailbox.submit_background(echo_request(f"t-fault-{point}", f"hello {point}"))
        wait_until(lambda w=worker: not w.alive(), timeout=20, what=f"{worker.name} dies at {point}")
        assert worker.proc.returncode == 137, (point, worker.log_tail())
        worker.kill_group()  # reap it; nothing of it may linger

        crashed = dispatch_of(submitted[point].dispatch_id)
        assert crashed.status is DispatchStatus.CLAIMED and crashed.attempt_count == 0, (point, crashed)
        run = run_of(submitted[point].run_id)
        if point == "after_claim":  # died holding the claim, before the runtime start was recorded
            assert crashed.dispatch_instance_id is None and run.status is RunStatus.CREATED
        elif point == "mid_run":  # the fenced start committed (dispatch and run), the agent never entered
            assert crashed.run_status == "running" and run.status is RunStatus.RUNNING
        else:  # the agent returned; the finish transaction (result, ack, run, reply) never committed
            assert crashed.run_status == "running" and crashed.run_response is None
            assert run.status is RunStatus.RUNNING
            assert thread_texts(f"t-fault-{point}") == [f"hello {point}"], "no reply landed"

    farm.join(healthy)
    for point, result in submitted.items():
        text = f"hello {point}"
        acked = sweep_until(result.dispatch_id, DispatchStatus.ACKED, timeout=30)
        assert acked.attempt_count == 1, (point, acked)
        assert acked.run_status == "done" and acked.run_response == f"echo: {text}", (point, acked)
        run = run_of(result.run_id)
        assert run.status is RunStatus.DONE and run.final_output == f"echo: {text}", (point, run)
        assert run.termination_reason is not None and run.termination_reason.type == "natural_end"
        assert run.session_id == acked.dispatch_instance_id, point
        assert _event_types(result.run_id).count("run_finish") == 1, point
        assert thread_texts(f"t-fault-{point}") == [text, f"echo: {text}"], point
    assert healthy.alive()


# --- (d) foreground interrupt across processes -------------------------------------------------------


def test_foreground_submit_cancels_a_run_in_another_process_over_redis(farm: WorkerFarm) -> None:
    """seed: foreground_submit_sends_live_cancel_for_remote_active_dispatch

    A background `sleep 10` runs in a worker subprocess and another dispatch is queued behind it; a
    foreground submit from this process bumps the epoch (superseding the queued one), sends the live
    cancel over Redis (no local run here), waits for the remote claim to go, and its own run completes.
    """
    farm.start("w0", pool="prefork")
    probe_workers()
    thread_id = "t-remote-fg"
    first = mailbox.submit_background(echo_request(thread_id, "sleep 10"))
    wait_run_status(first.run_id, RunStatus.RUNNING)
    queued = mailbox.submit_background(echo_request(thread_id, "later"))
    assert queued.status is mailbox.SubmitStatus.QUEUED
    assert (
        find_local_run(LiveRunTarget(thread_id, first.run_id, first.dispatch_id)) is None
    )  # the active run lives in the worker process

    started = time.monotonic()
    fg = mailbox.submit(echo_request(thread_id, "now"))
    assert time.monotonic() - started < django_settings.AWAKEN_REMOTE_CANCEL_WAIT_MS / 1000
    assert fg.status is mailbox.SubmitStatus.RUNNING and fg.dispatch_id != first.dispatch_id

    first_run = wait_run_status(first.run_id, RunStatus.DONE)
    assert first_run.termination_reason is not None and first_run.termination_reason.type == "cancelled"
    assert first_run.started_at is not None and first_run.finished_at is not None
    assert first_run.finished_at - first_run.started_at < 10_000  # cancelled, not slept out
    assert wait_dispatch_status(first.dispatch_id, DispatchStatus.SUPERSEDED).attempt_count == 0
    assert dispatch_of(queued.dispatch_id).status is DispatchStatus.SUPERSEDED
    queued_run = run_of(queued.run_id)
    assert queued_run.status is RunStatus.DONE
    assert queued_run.termination_reason is not None and queued_run.termination_reason.type == "cancelled"
    fg_run = wait_run_status(fg.run_id, RunStatus.DONE)
    assert fg_run.final_output == "echo: now"
    wait_dispatch_status(fg.dispatch_id, DispatchStatus.ACKED)
    assert "echo: later" not in thread_texts(thread_id)


# --- (e) a paused worker resumed after its claim was re-run ------------------------------------------


def _durable_snapshot(thread_id: str, run_id: str) -> tuple[Any, ...]:
    messages, _ = run_store.list_message_records(thread_id=thread_id, limit=200, include_internal=True)
    thread = run_store.load_thread(thread_id=thread_id)
    return (
        run_of(run_id).model_dump_json(),
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
    probe_workers()
    thread_id = f"t-sigstop-{round_}"
    submitted = mailbox.submit_background(echo_request(thread_id, "sleep 2"))
    wait_run_status(submitted.run_id, RunStatus.RUNNING)
    signal_group(paused.pgid, signal.SIGSTOP)
    try:
        live = farm.start("w-live", pool="threads")
        acked = sweep_until(submitted.dispatch_id, DispatchStatus.ACKED, timeout=40)
        assert acked.attempt_count == 1 and acked.claimed_by is None
        # the live attempt appends its run_finish right after its commit: killed in between, the reconcile
        # re-emits it later (docs/streams.md), so the snapshot waits for it to be there first
        wait_until(
            lambda: any(e.type == events.RUN_FINISH for e in events.read_events(submitted.run_id)),
            timeout=30,
            what="the live attempt's run_finish",
        )
        settled = _durable_snapshot(thread_id, submitted.run_id)
        assert thread_texts(thread_id) == ["sleep 2", "slept 2"]
        live.kill_group()
    finally:
        signal_group(paused.pgid, signal.SIGCONT)
    marker = mailbox.submit_background(echo_request(f"t-sigstop-marker-{round_}", "marker"))
    sweep_until(marker.dispatch_id, DispatchStatus.ACKED, timeout=30)
    assert paused.alive()
    assert _durable_snapshot(thread_id, submitted.run_id) == settled
    assert dispatch_of(submitted.dispatch_id) == acked


# --- (f) live commands delivered to a run in another process -----------------------------------------


def test_steering_a_decision_and_a_cancel_reach_a_run_in_another_process(farm: WorkerFarm) -> None:
    """No run executes in this process, so each command goes over Redis to the worker process: steering
    is appended to the reply, a decision resumes a run suspended in its live hold, a cancel stops it."""
    farm.env["AWAKEN_LIVE_SUSPEND_HOLD_MS"] = "20000"
    farm.start("w0", pool="prefork")
    probe_workers()

    steered = mailbox.submit_background(echo_request("t-mp-steer", "sleep 1.5"))
    wait_run_status(steered.run_id, RunStatus.RUNNING)
    assert find_local_run(LiveRunTarget("t-mp-steer", steered.run_id, steered.dispatch_id)) is None
    answer = mailbox.submit_live_then_queue(
        RunRequest(thread_id="t-mp-steer", messages=[ChatMessage.user("also this")])
    )
    assert answer.status is mailbox.SubmitStatus.RUNNING and answer.run_id == steered.run_id
    assert wait_run_status(steered.run_id, RunStatus.DONE).final_output == "slept 1.5 | steered: also this"

    asked = mailbox.submit_background(echo_request("t-mp-decide", "ask ok?"))
    start = wait_until(
        lambda: next((e for e in events.read_events(asked.run_id) if e.type == "tool_call_start"), None),
        what="the tool call",
    )
    resume = ToolCallResume(decision_id="d-mp", action="resume", result={"ok": 1})
    assert mailbox.send_decision(mailbox.RunTarget(asked.run_id), start.data["tool_call_id"], resume)
    decided = wait_run_status(asked.run_id, RunStatus.DONE)
    assert decided.final_output == 'approved: {"ok": 1}'
    assert [d.status for d in store.list_dispatches("t-mp-decide")] == [DispatchStatus.ACKED]

    cancelled = mailbox.submit_background(echo_request("t-mp-cancel", "sleep 20"))
    wait_run_status(cancelled.run_id, RunStatus.RUNNING)
    began = time.monotonic()
    assert mailbox.cancel(mailbox.RunTarget(cancelled.run_id))
    run = wait_run_status(cancelled.run_id, RunStatus.DONE)
    assert time.monotonic() - began < 10
    assert run.termination_reason is not None and run.termination_reason.type == "cancelled"
