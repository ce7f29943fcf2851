"""Operator state moves (cancel queued dispatches, requeue dead letters), shared by the admin and the
management commands. Each dispatch moves through the store's declared transitions (store.CANCELLING,
store.REQUEUEING_DEAD_LETTER), each run through the run store's lifecycle checks.

The commands move many rows in bounded batches, each its own transaction (`requeue_in_batches`,
`reconcile_in_batches`, `purge_terminal_in_batches`), and can say what they would do first (a dry run,
`expired_leases`, `old_terminal_count`, `reconcile_candidates`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from django.db import transaction

from mailbox_app import store
from mailbox_app.contract.ids import now_ms
from mailbox_app.contract.lifecycle import RunReopen
from mailbox_app.contract.mailbox import DispatchRecord, DispatchStatus
from mailbox_app.models import Dispatch
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


# --- bulk moves in bounded batches (the management commands) -----------------------------------------

BATCH_SIZE = 100
DRY_RUN_LIST = 1000  # a dry run of reconcile lists at most this many candidates without --limit
_TERMINAL = [s.value for s in DispatchStatus if s.is_terminal]


@dataclass(frozen=True, slots=True)
class Batch:
    """What one batch did (or, in a dry run, would have done: it ran and was rolled back)."""

    number: int
    looked_at: list[str]  # the dispatch ids the batch took
    outcome: Requeued


def _dead_letters_after(
    after: str, size: int, *, dispatch_ids: list[str] | None, thread_id: str | None
) -> list[str]:
    """The next `size` dead letters in id order after `after` (a keyset, so a refused one is not met
    twice), among `dispatch_ids` or of `thread_id` when given."""
    rows = Dispatch.objects.filter(status=DispatchStatus.DEAD_LETTER.value, dispatch_id__gt=after)
    if dispatch_ids is not None:
        rows = rows.filter(dispatch_id__in=dispatch_ids)
    elif thread_id is not None:
        rows = rows.filter(thread_id=thread_id)
    return list(rows.order_by("dispatch_id").values_list("dispatch_id", flat=True)[:size])


def _requeue_batch(ids: list[str], dry_run: bool) -> Requeued:
    with transaction.atomic():
        outcome = requeue_dead_letters(dispatch_ids=ids)
        if dry_run:  # everything above rolls back, its doorbells (on commit) with it
            transaction.set_rollback(True)
    return outcome


def requeue_in_batches(
    *,
    dispatch_ids: list[str] | None = None,
    thread_id: str | None = None,
    limit: int | None = None,
    batch_size: int = BATCH_SIZE,
    dry_run: bool = False,
) -> Iterator[Batch]:
    """`requeue_dead_letters` over many rows: at most `limit` dead letters (every one when None), taken
    `batch_size` at a time in id order, each batch one transaction, so a long requeue never holds more
    than one batch's row locks and a failure loses at most one batch. A dry run does each batch exactly
    as a real one would (the run store decides which runs reopen) and rolls it back."""
    after, taken, number = "", 0, 0
    while limit is None or taken < limit:
        size = batch_size if limit is None else min(batch_size, limit - taken)
        ids = _dead_letters_after(after, size, dispatch_ids=dispatch_ids, thread_id=thread_id)
        if not ids:
            return
        number += 1
        yield Batch(number, ids, _requeue_batch(ids, dry_run))
        after, taken = ids[-1], taken + len(ids)


@dataclass(frozen=True, slots=True)
class Reconciled:
    number: int
    looked_at: list[str]  # terminal dispatches whose run was not done
    ended: list[str]  # those whose run this batch ended


def reconcile_candidates(limit: int) -> list[str]:
    """Cancelled / superseded / dead-lettered dispatches whose run is not done yet (what a reconcile
    would end), oldest first; the run store's indexed query."""
    return run_store().terminal_dispatches_with_open_runs(limit=limit)


def reconcile_in_batches(*, limit: int | None = None, batch_size: int = BATCH_SIZE) -> Iterator[Reconciled]:
    """`maintenance.reconcile_terminal` over every candidate: batches of `batch_size`, each one
    transaction, until none is left, `limit` runs were ended, or a batch ends none (what is left the run
    store refuses to end now: another dispatch owns the run)."""
    ended_total, number = 0, 0
    while limit is None or ended_total < limit:
        size = batch_size if limit is None else min(batch_size, limit - ended_total)
        ids = reconcile_candidates(size)
        if not ids:
            return
        number += 1
        with transaction.atomic():
            ended = [d for d in ids if terminalize_run_for_dispatch(store.load_dispatch(d)) is not None]
        yield Reconciled(number, ids, ended)
        ended_total += len(ended)
        if not ended:
            return


def old_terminal_count(older_than: int) -> int:
    """Terminal dispatches last updated before `older_than`: what the GC's purge would delete
    (`dispatch_terminal_idx`)."""
    return Dispatch.objects.filter(status__in=_TERMINAL, updated_at__lt=older_than).count()


def purge_terminal_in_batches(
    *, older_than: int, limit: int | None = None, batch_size: int = BATCH_SIZE
) -> Iterator[int]:
    """The GC's purge of terminal dispatches (store.purge_terminal's rows) in batches, oldest first,
    each one transaction; yields how many each batch deleted."""
    purged = 0
    while limit is None or purged < limit:
        size = batch_size if limit is None else min(batch_size, limit - purged)
        old = Dispatch.objects.filter(status__in=_TERMINAL, updated_at__lt=older_than)
        ids = list(old.order_by("updated_at", "dispatch_id").values_list("dispatch_id", flat=True)[:size])
        if not ids:
            return
        with transaction.atomic():
            deleted, _ = old.filter(dispatch_id__in=ids).delete()
        yield deleted
        purged += len(ids)


def expired_leases(now: int, limit: int = DRY_RUN_LIST) -> list[str]:
    """Claimed dispatches whose lease ended before `now`, at most `limit`, soonest expired first: what a
    sweep would reclaim (`dispatch_lease_idx`)."""
    expired = Dispatch.objects.claimed().filter(lease_until__lt=now).order_by("lease_until")
    return list(expired.values_list("dispatch_id", flat=True)[:limit])
