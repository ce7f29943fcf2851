"""Doorbell handling (mailbox_app/worker/dispatch_signals.py): the `mailbox.dispatch_thread` task's
decision (ACK / RETRY) on real Celery workers; claim errors injected through PostgreSQL locks.
"""

from __future__ import annotations

from typing import Any

from mailbox_app import store
from mailbox_app.contract.config import ClaimPolicy
from mailbox_app.contract.ids import now_ms
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchStatus
from mailbox_app.realtime import doorbells
from mailbox_app.services import mailbox
from mailbox_app.store import conformance
from mailbox_app.worker import dispatch_signals
from mailbox_app.worker.execution import DispatchAttempt
from tests.support.agents import RECORDER
from tests.support.engine import HeldLock, calls_for, dispatch_in, lock_timeout, run_in
from tests.support.runs import enqueue_prepared, fresh_thread_id, user_request


def test_doorbell_claims_and_executes_a_queued_dispatch(worker: Any) -> None:
    """seed: dispatch_signal_loop_claims_and_executes_queued_dispatch"""
    thread_id = fresh_thread_id("thread-signal-loop")
    dispatch = enqueue_prepared(thread_id, "wake")
    doorbells.ring_on_commit(thread_id, dispatch.dispatch_id)

    acked = dispatch_in(dispatch.dispatch_id, DispatchStatus.ACKED)
    assert acked.run_status == "done"
    assert calls_for(dispatch.dispatch_id) == 1
    duplicate = dispatch_signals.handle_dispatch_signal(thread_id, dispatch.dispatch_id, deliveries=2)
    assert duplicate.action is dispatch_signals.SignalAction.ACK, "a duplicate doorbell is acked"
    assert duplicate.attempt is DispatchAttempt.NO_ELIGIBLE
    assert calls_for(dispatch.dispatch_id) == 1, "and runs nothing again"


def test_doorbell_retries_after_a_claim_error_then_runs(engine: Any) -> None:
    """seed: dispatch_signal_loop_nacks_and_redelivers_after_claim_error"""
    thread_id = fresh_thread_id("thread-signal-redeliver")
    dispatch = enqueue_prepared(thread_id, "wake")
    epoch_row = "SELECT current_epoch FROM mailbox_thread_epoch WHERE thread_id = %s FOR UPDATE"

    with lock_timeout(), HeldLock(epoch_row, [thread_id]):
        failed = dispatch_signals.handle_dispatch_signal(thread_id, dispatch.dispatch_id, deliveries=1)
    assert failed.action is dispatch_signals.SignalAction.RETRY
    assert failed.attempt is DispatchAttempt.TRANSIENT_ERROR
    assert failed.retry_after_ms == engine.AWAKEN_DISPATCH_SIGNAL_NACK_BASE_DELAY_MS
    untouched = store.load_dispatch(dispatch.dispatch_id)
    assert untouched is not None and untouched.status is DispatchStatus.QUEUED
    assert untouched.attempt_count == 0, "a failed claim is not an attempt"

    redelivered = dispatch_signals.handle_dispatch_signal(thread_id, dispatch.dispatch_id, deliveries=2)
    assert redelivered.action is dispatch_signals.SignalAction.ACK
    assert redelivered.attempt is DispatchAttempt.CLAIMED
    assert store.load_dispatch(dispatch.dispatch_id).status is DispatchStatus.ACKED  # type: ignore[union-attr]
    assert calls_for(dispatch.dispatch_id) == 1


def test_doorbell_blocked_by_another_consumers_claim_retries_until_released(engine: Any, worker: Any) -> None:
    """seed: dispatch_signal_loop_nacks_when_signal_is_blocked_by_active_claim"""
    # The remote claim stands for another consumer's live run: never "unstarted" here, however slow the
    # machine (with the default 100 ms grace a loaded machine let the fair claim take it over).
    engine.AWAKEN_CLAIM_POLICY = ClaimPolicy(unstarted_claim_grace_ms=600_000)
    thread_id = fresh_thread_id("thread-signal-blocked")
    active = enqueue_prepared(thread_id, "active")
    claimed = store.claim(thread_id, "remote-owner", 30_000, now_ms())
    assert len(claimed) == 1 and claimed[0].claim_token
    queued = enqueue_prepared(thread_id, "queued")

    blocked = dispatch_signals.handle_dispatch_signal(thread_id, queued.dispatch_id, deliveries=1)
    assert blocked.action is dispatch_signals.SignalAction.RETRY
    assert blocked.attempt is DispatchAttempt.NO_ELIGIBLE
    assert blocked.retry_after_ms == engine.AWAKEN_DISPATCH_SIGNAL_NACK_BASE_DELAY_MS
    doorbells.ring_on_commit(thread_id, queued.dispatch_id)  # the Celery doorbell keeps retrying
    before_release = store.load_dispatch(queued.dispatch_id)
    assert before_release is not None and before_release.status is DispatchStatus.QUEUED

    conformance.ack(active.dispatch_id, claimed[0].claim_token, now_ms())
    dispatch_in(queued.dispatch_id, DispatchStatus.ACKED)
    assert calls_for(queued.dispatch_id) == 1
    assert calls_for(active.dispatch_id) == 0, "the other consumer's dispatch was never run here"


def test_busy_thread_doorbell_never_steals_and_queued_runs_after_current(worker: Any) -> None:
    """seed: dispatch_signal_busy_ack_still_runs_queued_dispatch_after_current_finishes

    Ours retries the busy doorbell (the claim may belong to another process) where the reference acks;
    either way the doorbell claims nothing while the thread is busy and the queued dispatch runs next.
    """
    thread_id = fresh_thread_id("thread-signal-busy")
    first = mailbox.submit_background(user_request(thread_id, "first", agent_id="blocking"))
    assert RECORDER.started.wait(10)
    second = mailbox.submit_background(user_request(thread_id, "second", agent_id="blocking"))
    assert second.status is mailbox.SubmitStatus.QUEUED

    busy = dispatch_signals.handle_dispatch_signal(thread_id, second.dispatch_id, deliveries=1)
    assert busy.attempt is DispatchAttempt.NO_ELIGIBLE
    assert busy.action is dispatch_signals.SignalAction.RETRY
    waiting = store.load_dispatch(second.dispatch_id)
    assert waiting is not None and waiting.status is DispatchStatus.QUEUED and waiting.claim_token is None
    assert store.load_dispatch(first.dispatch_id).status is DispatchStatus.CLAIMED  # type: ignore[union-attr]

    RECORDER.release.set()
    dispatch_in(first.dispatch_id, DispatchStatus.ACKED)
    dispatch_in(second.dispatch_id, DispatchStatus.ACKED)
    first_run = run_in(first.run_id, RunStatus.DONE)
    second_run = run_in(second.run_id, RunStatus.DONE)
    assert first_run.finished_at is not None and second_run.started_at is not None
    assert first_run.finished_at <= second_run.started_at
    assert dispatch_signals.handle_dispatch_signal(thread_id, second.dispatch_id, deliveries=2).action is (
        dispatch_signals.SignalAction.ACK
    )
