"""Operator state moves (cancel queued dispatches, requeue dead letters), shared by the admin and the
management commands. Each dispatch moves through the store's declared transitions (store.CANCELLING,
store.REQUEUEING_DEAD_LETTER), each run through the run store's lifecycle checks."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db import transaction

from mailbox_app import store
from mailbox_app.contract.ids import now_ms
from mailbox_app.contract.lifecycle import RunReopen
from mailbox_app.contract.mailbox import DispatchRecord
from mailbox_app.realtime import doorbells
from mailbox_app.services.reconcile import terminalize_run_for_dispatch
from mailbox_app.store.ports import run_store


def cancel_queued(dispatch_id: str) -> DispatchRecord | None:
    """Queued -> Cancelled and its run ended as cancelled, in one transaction; None (nothing written)
    when the dispatch is not queued. The statement's `status = 'queued'` decides, so a row claimed a
    moment ago is left to its worker rather than having its running run cancelled."""
    with transaction.atomic():
        cancelled = store.cancel(dispatch_id, now_ms())
        if cancelled is not None:
            terminalize_run_for_dispatch(cancelled)
    return cancelled


@dataclass(frozen=True, slots=True)
class Requeued:
    """What a requeue moved (`requeued`, dispatch ids) and the dead letters it left where they were:
    `refused` maps each to the run that stays done (it ended naturally or by another dispatch)."""

    requeued: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)


def requeue_dead_letters(
    *, dispatch_ids: list[str] | None = None, thread_id: str | None = None, everything: bool = False
) -> Requeued:
    """DeadLetter -> Queued with attempt_count 0, available now, in the thread's current epoch; the run
    each ended is reopened (Done -> Created, the lifecycle's REQUEUE_DEAD_LETTER edge) so the work's new
    result lands on it, and each affected thread is rung. One transaction."""
    if not dispatch_ids and not thread_id and not everything:
        return Requeued()
    now = now_ms()
    with transaction.atomic():
        dead = store.lock_dead_letters(
            dispatch_ids=dispatch_ids or None, thread_id=None if dispatch_ids else thread_id
        )
        accepted, refused = _reopen_runs(dead, now)
        requeued = store.requeue_dead_letters([d.dispatch_id for d in accepted], now)
        for thread in sorted({d.thread_id for d in requeued}):
            doorbells.ring_on_commit(thread, None)
    return Requeued(
        requeued=sorted(d.dispatch_id for d in requeued), refused={d.dispatch_id: d.run_id for d in refused}
    )


def _reopen_runs(dead: list[DispatchRecord], now: int) -> tuple[list[DispatchRecord], list[DispatchRecord]]:
    """Open each dead letter's run to it. A refused one is asked once more after the others: a run that
    two selected dead letters share is reopened by the one that ended it, whichever comes first."""
    accepted: list[DispatchRecord] = []
    refused: list[DispatchRecord] = []
    for dispatch in dead:
        (accepted if _reopen(dispatch, now) else refused).append(dispatch)
    still_refused: list[DispatchRecord] = []
    for dispatch in refused:
        (accepted if _reopen(dispatch, now) else still_refused).append(dispatch)
    return accepted, still_refused


def _reopen(dispatch: DispatchRecord, now: int) -> bool:
    outcome = run_store().reopen_run(run_id=dispatch.run_id, dispatch_id=dispatch.dispatch_id, now=now)
    return outcome is not RunReopen.REFUSED
