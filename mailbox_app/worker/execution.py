"""The execution flow of one claimed dispatch, and draining a thread (spec §4.12).

claim -> per-thread Redis lock (value = claim token) -> fenced start (record start, run -> Running, read
the dispatch's input: one transaction) -> executor beside a lease renewer and a live-command listener ->
inbox closed -> fenced finish (result, ack / nack / dead letter, run, produced messages, leftover live
input, the thread's next claim: one transaction) -> next. Nothing correct depends on this process's
memory: PostgreSQL fences every write with the claim token and the epoch (see `attempt.py`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from enum import StrEnum

from django.db import close_old_connections

from mailbox_app import store
from mailbox_app.agents.base import MailboxRunOutcome, OutcomeKind, RunResult
from mailbox_app.conf import awaken_settings
from mailbox_app.contract.ids import consumer_id, now_ms, uuid7
from mailbox_app.contract.mailbox import DispatchRecord, DispatchStatus, LiveRunTarget
from mailbox_app.contract.storage import NotFound, VersionConflict
from mailbox_app.observability import log_context, metrics, tracing
from mailbox_app.realtime import doorbells
from mailbox_app.realtime.live import LiveSubscription
from mailbox_app.realtime.locks import ThreadLock
from mailbox_app.worker import attempt, lease
from mailbox_app.worker.registry import local_runs, register, unregister
from mailbox_app.worker.runtime import ActiveRun, call_agent, final_run

log = logging.getLogger(__name__)
MAX_DRAIN = 1000  # dispatches one drain runs before handing the thread back to a fresh doorbell
SHUTTING_DOWN = threading.Event()  # this process's worker is shutting down (hand_back_local_runs)

__all__ = ["DispatchAttempt", "ExecutionReport", "drain_thread", "execute_claimed", "hand_back_local_runs"]


class DispatchAttempt(StrEnum):
    CLAIMED = "claimed"
    BUSY = "busy"
    NO_ELIGIBLE = "no_eligible"
    TRANSIENT_ERROR = "transient_error"


def fault(point: str) -> None:
    """Test hook: die at a named step when AWAKEN_FAULT_POINT names it (crash-recovery tests)."""
    if point == awaken_settings.FAULT_POINT:
        os._exit(137)


# Test hook: a callable run at a named step (`before_finish`: the agent returned, the inbox is closed,
# the finish transaction has not begun). Tests hold a step here to provoke a race deterministically.
step_hook: dict[str, object] = {}


def _at(point: str, active: ActiveRun) -> None:
    hook = step_hook.get(point)
    if callable(hook):
        hook(active)


# --- one claimed dispatch --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExecutionReport:
    dispatch_id: str
    final_status: str
    next_dispatch: DispatchRecord | None = None


def execute_claimed(dispatch: DispatchRecord, *, claim_next: bool = False) -> ExecutionReport:
    """Run one claimed dispatch to a terminal or requeued state. Never raises for store races.

    Only `dispatch_id`, `thread_id` and `claim_token` are needed: the fenced start returns the row.
    With `claim_next`, the finish transaction also claims the thread's next dispatch for this worker
    (returned in the report: the caller must execute it)."""
    ids = {"awaken.thread_id": dispatch.thread_id, "awaken.dispatch_id": dispatch.dispatch_id}
    # every record logged by the attempt names its thread, and its run once the start read it
    with (
        log_context.bind_run(dispatch.run_id or None, dispatch.thread_id),
        tracing.span(tracing.ATTEMPT, ids) as current,
    ):  # never the claim token
        report = _execute_claimed(dispatch, claim_next, current)
        tracing.set_attributes(current, {"awaken.outcome": report.final_status})
        return report


def _execute_claimed(
    dispatch: DispatchRecord, claim_next: bool, current: tracing.SpanLike
) -> ExecutionReport:
    token = dispatch.claim_token or ""
    lock = ThreadLock(dispatch.thread_id, token, awaken_settings.MAILBOX.lease_ms)
    acquired = _acquire_soon(lock, dispatch.dispatch_id)
    if acquired is None:
        return ExecutionReport(dispatch.dispatch_id, "lost")
    if not acquired:
        return _lock_busy(dispatch)
    try:
        fault("after_claim")
        instance_id = uuid7()
        started = attempt.start(dispatch, instance_id, consumer_id())
        if isinstance(started, attempt.Started):  # the run, and the submit this attempt carries out
            tracing.set_attributes(current, {"awaken.run_id": started.run.run_id})
            tracing.add_link(current, started.request.trace_context)
        next_as = consumer_id() if claim_next else None
        if isinstance(started, attempt.Lost):
            return _report(dispatch, started)
        if isinstance(started, attempt.AlreadyDone):
            return _report(dispatch, attempt.settle_already_done(started, instance_id, claim_next_as=next_as))
        if isinstance(started, attempt.Unrunnable):
            return _report(
                dispatch, attempt.dead_letter(started.dispatch, started.reason, claim_next_as=next_as)
            )
        with log_context.bind_run(started.run.run_id, dispatch.thread_id):
            return _run_with_lease(started, lock, claim_next)
    finally:
        lock.release()


LOCK_RETRY_S = 0.25


def _acquire_soon(lock: ThreadLock, dispatch_id: str) -> bool | None:
    """The thread lock, waiting briefly for a holder that is about to leave: a hand-over whose claim was
    taken over (`store.claim_next_fair`) holds it only until its fenced start fails. None when this
    claim is not current any more (taken over, settled): nothing to do, and nothing to nack."""
    if lock.acquire():
        return True
    current = store.load_dispatch(dispatch_id)
    if current is None or current.status is not DispatchStatus.CLAIMED or current.claim_token != lock.token:
        return None
    deadline = time.monotonic() + LOCK_RETRY_S
    while not lock.acquire():
        holder, _ = ThreadLock.holder(lock.thread_id)
        if holder == lock.token or time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def _report(dispatch: DispatchRecord, outcome: attempt.FinishOutcome) -> ExecutionReport:
    if isinstance(outcome, attempt.Lost):
        status = outcome.current.status.value if outcome.current is not None else "missing"
        return ExecutionReport(dispatch.dispatch_id, status)
    return ExecutionReport(dispatch.dispatch_id, outcome.dispatch.status.value, outcome.next_dispatch)


def _lock_busy(dispatch: DispatchRecord) -> ExecutionReport:
    """Another process still executes this thread (its old claim was reclaimed while it ran on)."""
    holder, ttl_ms = ThreadLock.holder(dispatch.thread_id)
    if holder == dispatch.claim_token:
        # This very claim is being executed (a duplicate doorbell, or a dead worker whose lock has not
        # expired yet): leave it alone; its lease decides, and the sweep reclaims it if it is dead.
        return ExecutionReport(dispatch.dispatch_id, "busy")
    retry_at = now_ms() + max(ttl_ms, 100)
    try:
        store.nack(
            dispatch.dispatch_id,
            dispatch.claim_token or "",
            retry_at,
            "thread lock held by another worker",
            now_ms(),
        )
    except (VersionConflict, NotFound):
        return ExecutionReport(dispatch.dispatch_id, "lost")
    doorbells.ring_at(dispatch.thread_id, dispatch.dispatch_id, retry_at)
    return ExecutionReport(dispatch.dispatch_id, "queued")


def _run_with_lease(started: attempt.Started, lock: ThreadLock, claim_next: bool) -> ExecutionReport:
    dispatch = started.dispatch
    active = ActiveRun(
        thread_id=dispatch.thread_id,
        run_id=dispatch.run_id,
        dispatch_id=dispatch.dispatch_id,
        claim_token=dispatch.claim_token or "",
        deadline_at=started.run.deadline_at,
    )
    subscription: LiveSubscription | None = None
    held: lease.Held | None = None
    try:
        register(active)
        if SHUTTING_DOWN.is_set():  # started after the shutdown began (a drain's next claim): give it back
            active.hand_back()
        subscription = LiveSubscription(
            LiveRunTarget(dispatch.thread_id, dispatch.run_id, dispatch.dispatch_id), active.on_live_command
        )
        held = lease.RENEWER.hold(dispatch, lock, active)
        fault("mid_run")
        with metrics.ACTIVE_RUNS.track_inprogress():
            outcome, result, error = call_agent(started.run, started.request, active)
    finally:
        # Stop accepting live commands before the final write: an acknowledgement means "the run reads
        # this"; what was accepted but not taken is queued durably by the finish.
        steering, decisions = active.close_inbox()
        if subscription is not None:
            subscription.close()
        if held is not None:
            lease.RENEWER.release(held)
        unregister(dispatch.dispatch_id)
    _at("before_finish", active)
    leftovers = attempt.Leftovers(steering, decisions)
    if active.handed_back.is_set() and not active.lease_lost.is_set():
        if _gives_back(outcome, result, started):
            return _report(dispatch, attempt.hand_back(started, leftovers, lock))
        if result is not None and result.waiting is not None:
            active.cancel_event.clear()  # stopped at a suspension: the run waits durably, as it asked
    if active.lease_lost.is_set():
        # The lease is gone (or could not be renewed before it ran out): another worker may own this
        # dispatch now. Settle nothing; the sweep reclaims the claim and the run is retried. A claim
        # superseded meanwhile (an interrupt) ends its run here; acknowledged steering is queued.
        attempt.reconcile_lost(dispatch)
        attempt.queue_leftovers_alone(dispatch, leftovers)
        return ExecutionReport(dispatch.dispatch_id, "lease_lost")
    # The agent has returned; the finish is fenced by the claim token in PostgreSQL. The thread's lock is
    # released with the run's terminal event, in one Redis call after the finish committed (a successor
    # claimed by another process meanwhile waits for it briefly: `_acquire_soon`), or by
    # `execute_claimed` when the finish took another path.
    fault("before_finish")
    finished = attempt.finish(
        started,
        outcome,
        result,
        error,
        cancelled=active.cancel_event.is_set(),
        leftovers=leftovers,
        claim_next_as=consumer_id() if claim_next else None,
        transcript=active.transcript,
        lock=lock,
        usage=active.usage,
    )
    return _report(dispatch, finished)


def _gives_back(outcome: MailboxRunOutcome, result: RunResult | None, started: attempt.Started) -> bool:
    """Whether an attempt stopped by a shutdown gives its claim back: when the stop cut its work short (it
    ended cancelled, or failed transiently on the way out). What it finished anyway — an answer, a
    suspension, a permanent error — is recorded as usual."""
    if outcome.kind is OutcomeKind.TRANSIENT_ERROR:
        return True
    if outcome.kind is not OutcomeKind.COMPLETED or result is None or result.waiting is not None:
        return False
    ended = final_run(started.run, result, None, True, now_ms()).run
    return ended.termination_reason is not None and ended.termination_reason.type == "cancelled"


def hand_back_local_runs() -> int:
    """The worker is shutting down (Celery's warm shutdown, awaken_project/celery.py): every run this
    process executes is cancelled cooperatively and its claim given back — queued again, due now, the
    attempt not counted — so the next worker to start (or one still running) runs it at once rather
    than after its lease expires. How many runs were asked."""
    SHUTTING_DOWN.set()  # first: a run registered after the snapshot below sees it
    runs = local_runs()
    for active in runs:
        active.hand_back()
    if runs:
        log.warning("shutting down: handing back %d running run(s) %s", len(runs), [a.run_id for a in runs])
    return len(runs)


# --- draining a thread -----------------------------------------------------------------------------


def drain_thread(thread_id: str, *, first: DispatchRecord | None = None) -> DispatchAttempt:
    """Execute `first` (already claimed) and then every eligible dispatch of the thread, one at a time,
    in this process: each finish claims the next one in its own transaction.

    The reference's `try_dispatch_next` (and, claiming the thread's next in each finish, its
    `dispatch_next_claim`)."""
    attempt_ = DispatchAttempt.NO_ELIGIBLE
    dispatch = first
    if dispatch is None:
        close_old_connections()
        try:
            claimed = store.claim(thread_id, consumer_id(), awaken_settings.MAILBOX.lease_ms, now_ms())
        except Exception:
            log.exception("claim failed for thread %s", thread_id)
            return DispatchAttempt.TRANSIENT_ERROR
        dispatch = claimed[0] if claimed else None
    for _ in range(MAX_DRAIN):
        if dispatch is None:
            return attempt_
        try:
            report = execute_claimed(dispatch, claim_next=True)
        except Exception:
            log.exception("execution of dispatch %s failed; its lease will expire", dispatch.dispatch_id)
            return DispatchAttempt.TRANSIENT_ERROR
        if report.final_status == "busy" and attempt_ is DispatchAttempt.NO_ELIGIBLE:
            return DispatchAttempt.BUSY
        attempt_ = DispatchAttempt.CLAIMED
        dispatch = report.next_dispatch
    if dispatch is not None:  # claimed by the last finish: hand it to a fresh doorbell
        doorbells.hand_over_claimed_on_commit(
            dispatch.thread_id, dispatch.dispatch_id, dispatch.claim_token or ""
        )
    doorbells.ring_on_commit(thread_id, None)
    return attempt_


def drain_fair() -> DispatchAttempt:
    """Claim the fairest eligible dispatch across threads (`store.claim_next_fair`) and drain from it."""
    close_old_connections()
    try:
        claimed = store.claim_next_fair(consumer_id(), awaken_settings.MAILBOX.lease_ms, now_ms())
    except Exception:
        log.exception("fair claim failed")
        return DispatchAttempt.TRANSIENT_ERROR
    if claimed is None:
        return DispatchAttempt.NO_ELIGIBLE
    return drain_thread(claimed.thread_id, first=claimed)
