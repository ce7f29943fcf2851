"""Run timeouts: a run activation that outlives its deadline ends with termination `timeout`.

A run carries `timeout_ms` (its submit's `timeout_s`, else AWAKEN_RUN_TIMEOUT_MS); each activation's
start sets `deadline_at` (a retry of a running run keeps it). Two places enforce it:
- the worker: `ActiveRun.check_deadline` (mailbox_app/worker/runtime.py) cancels the run through the
  RunContext's cancellation at the deadline, and the finish records termination `timeout`;
- the sweep (`expire_overdue_runs`): a run still Running past its deadline that no worker holds under a
  live lease — its dispatch queued for a retry, reclaimed after its worker died, or already ended — has
  that dispatch cancelled and is ended `timeout`, in one transaction, closing the tool calls it left
  open (mailbox_app/contract/history.py). A run held under a live lease is its worker's to end.
"""

from __future__ import annotations

from django.db import transaction

from mailbox_app import store
from mailbox_app.contract import history
from mailbox_app.contract.mailbox import DispatchStatus
from mailbox_app.contract.storage import RunRecord, TerminationReason
from mailbox_app.services.reconcile import emit_finish_on_commit
from mailbox_app.store.ports import run_store

TIMED_OUT = TerminationReason(type="timeout")
OVERDUE_BATCH = 100


def expire_overdue_runs(*, now: int) -> int:
    """End (termination `timeout`) the overdue runs no live lease holds; returns how many."""
    return sum(
        expire_run(run, now=now) is not None for run in run_store().overdue_runs(now=now, limit=OVERDUE_BATCH)
    )


def expire_run(run: RunRecord, *, now: int) -> RunRecord | None:
    """One overdue run: its queued dispatch cancelled and the run ended, in one transaction; None when a
    worker holds it under a live lease (or took it meanwhile) or the run moved on."""
    dispatch = store.load_dispatch(run.dispatch_id) if run.dispatch_id else None
    if (
        dispatch is not None
        and dispatch.status is DispatchStatus.CLAIMED
        and (dispatch.lease_until or 0) > now
    ):
        return None
    with transaction.atomic():
        queued = dispatch is not None and dispatch.status is DispatchStatus.QUEUED
        if queued and store.cancel(run.dispatch_id or "", now) is None:
            return None  # claimed meanwhile: that attempt starts past the deadline and times out
        ended = run_store().terminalize_run(
            run_id=run.run_id,
            thread_id=run.thread_id,
            dispatch_id=run.dispatch_id or "",
            session_id=run.session_id,
            termination=TIMED_OUT,
            error_payload=None,
            now=now,
            ended_at=now,
            closing=history.closer(TIMED_OUT.type),
        )
        if ended is None:
            transaction.set_rollback(True)  # keep the dispatch as it was: the run is not ours to end
            return None
        emit_finish_on_commit(ended, run.dispatch_id or "")
    return ended
