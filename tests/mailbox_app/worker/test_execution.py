"""Claim -> execute -> settle (mailbox_app/worker/execution.py) on real Celery workers: results, dead
letters, lease renewal, wakes, shutdown and drains.
"""

from __future__ import annotations

import json
from typing import Any

from mailbox_app import store
from mailbox_app.contract.ids import consumer_id, now_ms
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchRecord, DispatchStatus
from mailbox_app.contract.requests import AdapterKind, RunMode, RunOrigin
from mailbox_app.contract.storage import RunRecord
from mailbox_app.contract.suspension import RunWaitingState
from mailbox_app.realtime import doorbells, events
from mailbox_app.services import mailbox
from mailbox_app.services.selectors import mailbox_overview
from mailbox_app.worker.execution import DispatchAttempt, drain_thread, execute_claimed
from mailbox_app.worker.registry import local_runs
from runs_app import store as run_store
from tests.support.agents import BACKGROUND_ERRORS, RECORDER
from tests.support.dispatches import FAST
from tests.support.engine import calls_for, dispatch_in, dispatch_when, fast_polling_worker, run_in
from tests.support.runs import enqueue_prepared, fresh_thread_id, user_request
from tests.support.waiting import wait_until


def test_worker_shutdown_quiesces_and_a_new_worker_takes_over(engine: Any) -> None:
    """seed: lifecycle_shutdown_waits_for_maintenance_to_quiesce
    seed: start_lifecycle_explicit_abort_allows_restart

    A warm worker shutdown returns only once its in-flight execution has settled (acked, run done,
    nothing left in the local registry); work submitted while no worker runs is taken by the next one.
    """
    with fast_polling_worker() as first_worker:
        inflight = mailbox.submit_background(
            user_request(fresh_thread_id("thread-quiesce"), "sleep 0.4", agent_id="echo")
        )
        run_in(inflight.run_id, RunStatus.RUNNING)
        first_worker.stop(in_sighandler=False)  # warm shutdown
        # once shutdown returns, the in-flight execution has settled and nothing runs any more
        assert store.load_dispatch(inflight.dispatch_id).status is DispatchStatus.ACKED  # type: ignore[union-attr]
        assert run_store.load_run(run_id=inflight.run_id).status is RunStatus.DONE  # type: ignore[union-attr]
        assert local_runs() == []

    later = mailbox.submit_background(user_request(fresh_thread_id("thread-restart"), "after restart"))
    with fast_polling_worker():
        dispatch_in(later.dispatch_id, DispatchStatus.ACKED)
    assert calls_for(later.dispatch_id) == 1


def test_background_submit_delivers_scheduled_policy_context(worker: Any) -> None:
    """seed: submit_background_delivers_scheduled_policy_context"""
    result = mailbox.submit_background(
        user_request(
            fresh_thread_id("thread-policy-bg"), "hello", agent_id="counting", adapter=AdapterKind.ACP
        )
    )
    acked = dispatch_in(result.dispatch_id, DispatchStatus.ACKED)
    with RECORDER.lock:
        requests = list(RECORDER.calls)
    assert len(requests) == 1
    seen = requests[0]
    assert seen.run_mode is RunMode.SCHEDULED
    assert seen.adapter is AdapterKind.ACP
    assert seen.dispatch_id == result.dispatch_id
    assert seen.session_id is not None and seen.session_id == acked.dispatch_instance_id
    assert seen.messages_already_persisted is True
    assert [m.text for m in seen.messages] == ["hello"]


def test_background_success_records_run_result_with_distinct_ids(worker: Any) -> None:
    """seed: background_success_records_run_result_and_keeps_dispatch_id_separate_from_run_id"""
    result = mailbox.submit_background(user_request(fresh_thread_id("thread-run-result"), "go"))
    acked = dispatch_when(
        result.dispatch_id,
        lambda d: d.status is DispatchStatus.ACKED and d.run_status == "done",
        "acked with run result",
    )
    assert acked.run_id == result.run_id and acked.run_id != acked.dispatch_id
    assert acked.dispatch_instance_id is not None
    assert isinstance(acked.termination, dict) and acked.termination["type"] == "natural_end"
    assert acked.run_response == "counted"
    assert acked.run_error is None
    assert acked.completed_at is not None and acked.completed_at >= acked.created_at
    run = run_in(result.run_id, RunStatus.DONE)
    assert run.dispatch_id == result.dispatch_id
    assert run.session_id == acked.dispatch_instance_id


def test_reconstruct_failure_dead_letters_and_next_queued_still_runs(worker: Any) -> None:
    """seed: reconstruct_failure_cleans_worker_and_dispatches_next_queued"""
    thread_id = fresh_thread_id("thread-reconstruct-next")
    now = now_ms()
    missing = store.enqueue(
        DispatchRecord(
            dispatch_id=f"dispatch-missing-run-{thread_id}",
            thread_id=thread_id,
            run_id="missing-run",
            priority=10,
            max_attempts=3,
            available_at=now,
            created_at=now,
            updated_at=now,
        )
    )
    following = enqueue_prepared(thread_id, "next", priority=20, created_at=now + 1, updated_at=now + 1)
    doorbells.ring_on_commit(thread_id, missing.dispatch_id)

    dead = dispatch_in(missing.dispatch_id, DispatchStatus.DEAD_LETTER)
    assert dead.last_error is not None and "missing-run" in dead.last_error
    assert dead.attempt_count == 0, "a reconstruction failure is permanent, not retried"
    dispatch_in(following.dispatch_id, DispatchStatus.ACKED)
    assert calls_for(following.dispatch_id) == 1
    assert calls_for(missing.dispatch_id) == 0, "the executor never saw the broken dispatch"


def test_lease_renewal_keeps_a_long_run_from_being_reclaimed(engine: Any, worker: Any) -> None:
    """seed: mailbox_lease_renewal_is_wired_and_prevents_reclaim"""
    engine.AWAKEN_MAILBOX = FAST.model_copy(update={"lease_ms": 500, "lease_renewal_interval_ms": 100})
    result = mailbox.submit_background(
        user_request(fresh_thread_id("thread-lease-renewal"), "go", agent_id="blocking")
    )
    assert RECORDER.started.wait(10)
    initial = store.load_dispatch(result.dispatch_id)
    assert initial is not None and initial.lease_until is not None

    original_end = initial.lease_until

    def renewed_past_original() -> DispatchRecord | None:
        now = now_ms()
        current = store.load_dispatch(result.dispatch_id)
        if now <= original_end + 100 or current is None or current.lease_until is None:
            return None
        return current if current.lease_until > now + 200 else None

    renewed = wait_until(renewed_past_original, what="the original lease over, a renewed one running")
    assert renewed.status is DispatchStatus.CLAIMED and renewed.claim_token == initial.claim_token
    assert store.reclaim_expired_leases(now_ms(), 10) == [], "a renewed lease is not reclaimed"

    RECORDER.release.set()
    acked = dispatch_in(result.dispatch_id, DispatchStatus.ACKED)
    assert acked.attempt_count == 0


def test_dispatch_timestamps_and_depth_are_observable(worker: Any) -> None:
    """seed: mailbox_execution_records_dispatch_latency_metrics

    We export no metrics registry; latency is derivable from the dispatch timestamps and queue depth /
    claims come from `mailbox_overview` (the `mailbox_status` command and the admin).
    """
    thread_id = fresh_thread_id("thread-metrics")
    first = mailbox.submit_background(user_request(thread_id, "first", agent_id="blocking"))
    assert RECORDER.started.wait(10)
    second = mailbox.submit_background(user_request(thread_id, "second", agent_id="blocking"))

    busy = mailbox_overview()
    assert busy.counts["claimed"] == 1 and busy.counts["queued"] == 1
    assert busy.oldest_queued_age_ms is not None and busy.oldest_queued_age_ms >= 0
    assert [c["dispatch_id"] for c in busy.claims] == [first.dispatch_id]
    assert busy.claims[0]["claimed_by"] == consumer_id()
    assert busy.claims[0]["lease_left_ms"] > 0

    RECORDER.release.set()
    done = [dispatch_in(r.dispatch_id, DispatchStatus.ACKED) for r in (first, second)]
    idle = mailbox_overview()
    assert idle.counts["acked"] == 2 and idle.counts["queued"] == 0 and idle.counts["claimed"] == 0
    assert idle.oldest_queued_age_ms is None and idle.claims == []
    for dispatch in done:
        assert dispatch.created_at <= dispatch.available_at <= dispatch.updated_at
        assert dispatch.completed_at is not None and dispatch.completed_at >= dispatch.created_at


def test_waiting_thread_is_reactivated_by_incoming_message(worker: Any) -> None:
    """seed: waiting_thread_is_reactivated_by_incoming_message"""
    thread_id = fresh_thread_id("thread-waiting")
    run_store.checkpoint(
        thread_id=thread_id,
        messages=[],
        run=RunRecord(
            run_id=f"run-waiting-{thread_id}",
            thread_id=thread_id,
            agent_id="counting",
            status=RunStatus.WAITING,
            waiting=RunWaitingState(reason="background_tasks"),
            created_at=1,
            updated_at=1,
            steps=2,
        ),
        now=1,
    )
    submitted = mailbox.submit_background(user_request(thread_id, "poke"))
    assert submitted.run_id == f"run-waiting-{thread_id}"
    run = run_in(submitted.run_id, RunStatus.DONE)
    assert run.updated_at > 1 and run.final_output == "counted"
    with RECORDER.lock:
        assert [c.continue_run_id for c in RECORDER.calls] == [submitted.run_id]
    assert run_store.list_runs(thread_id=thread_id).total == 1


def test_background_task_completion_enqueues_an_internal_wake(worker: Any) -> None:
    """seed: background_task_completion_should_enqueue_internal_wake_message"""
    thread_id = fresh_thread_id("thread-bg")
    submitted = mailbox.submit_background(user_request(thread_id, "start", agent_id="bgtask"))

    run = run_in(submitted.run_id, RunStatus.DONE)
    assert BACKGROUND_ERRORS == []
    assert run.final_output == "woken", "the wake resumed the same run"
    dispatches = store.list_dispatches(thread_id)
    assert len(dispatches) >= 2
    assert {d.run_id for d in dispatches} == {submitted.run_id}
    wake_messages = [
        m
        for m in run_store.load_messages(thread_id=thread_id) or []
        if m.role.value == "user" and m.visibility.value == "internal"
    ]
    assert len(wake_messages) == 1
    text = wake_messages[0].text
    assert "task-1" in text
    with RECORDER.lock:
        wake = RECORDER.calls[-1]
    assert wake.continue_run_id == submitted.run_id and wake.origin is RunOrigin.INTERNAL
    problems = []
    try:
        payload = json.loads(text[text.index("{") : text.rindex("}") + 1])
    except ValueError:
        payload = None
    if payload != {"done": True}:
        problems.append(f"the task result must be JSON in the wake message, got {text!r}")
    if wake.run_mode is not RunMode.INTERNAL_WAKE:
        problems.append(f"a background-task wake must run as internal_wake, got {wake.run_mode.value}")
    assert not problems, problems


def test_interrupt_between_claim_and_start_supersedes_without_running(engine: Any) -> None:
    """seed: interrupt_between_claim_and_execution_supersedes_without_runtime_start"""
    thread_id = fresh_thread_id("thread-epoch-race")
    dispatch = enqueue_prepared(thread_id, "go")
    claimed = store.claim(thread_id, consumer_id(), 1_000, now_ms())
    assert [d.dispatch_id for d in claimed] == [dispatch.dispatch_id]

    details = mailbox.interrupt_detailed(thread_id)
    assert details.active_dispatch is not None and details.active_dispatch.dispatch_id == dispatch.dispatch_id

    report = execute_claimed(claimed[0])
    assert report.final_status == "superseded"
    assert RECORDER.calls == [], "a stale dispatch never enters the executor"
    loaded = store.load_dispatch(dispatch.dispatch_id)
    assert loaded is not None and loaded.status is DispatchStatus.SUPERSEDED
    assert loaded.claim_token is None and loaded.lease_until is None
    assert loaded.dispatch_instance_id is None
    run = run_store.load_run(run_id=dispatch.run_id)
    assert run is not None and run.status is RunStatus.DONE
    assert run.termination_reason is not None and run.termination_reason.type == "cancelled"
    assert run.dispatch_id == dispatch.dispatch_id
    # no run_start was ever emitted; the run's end is, so a stream following it closes
    assert [
        (e.type, e.data["status"], e.data["termination"]["type"]) for e in events.read_events(dispatch.run_id)
    ] == [("run_finish", "done", "cancelled")]


def test_drain_on_a_claimed_thread_leaves_the_claim_and_run_untouched(engine: Any) -> None:
    """seed: worker_status_not_corrupted_after_empty_claim

    The doorbell/drain path on a thread whose dispatch is claimed (running elsewhere) claims nothing and
    leaves that claim exactly as it was.
    """

    thread_id = fresh_thread_id("thread-guard")
    result = mailbox.submit_background(user_request(thread_id, "a"))
    before = store.load_dispatch(result.dispatch_id)
    assert before is not None and before.status is DispatchStatus.CLAIMED
    queued = enqueue_prepared(thread_id, "b")

    assert drain_thread(thread_id) is DispatchAttempt.NO_ELIGIBLE
    assert store.claim_dispatch(queued.dispatch_id, "another-worker", 30_000, now_ms()) is None
    assert store.load_dispatch(result.dispatch_id) == before
    assert store.load_dispatch(queued.dispatch_id).status is DispatchStatus.QUEUED  # type: ignore[union-attr]
    assert RECORDER.calls == []
