"""Periodic and startup maintenance: sweep expired leases, reconcile terminal dispatches with their runs,
garbage-collect old rows, and recover after a crash. Every step is idempotent."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

from django.dispatch import Signal
from redis.exceptions import RedisError

from mailbox_app import store
from mailbox_app.conf import awaken_settings
from mailbox_app.contract.ids import now_ms
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchStatus
from mailbox_app.observability import metrics
from mailbox_app.realtime import doorbells
from mailbox_app.realtime.locks import ThreadLock
from mailbox_app.services import mailbox, timeouts
from mailbox_app.services.reconcile import reemit_lost_finishes, terminalize_run_for_dispatch
from mailbox_app.store import budgets
from mailbox_app.store.ports import run_store
from mailbox_app.store.runs_tables import steps

log = logging.getLogger(__name__)
RECLAIM_BATCH = 100
RECONCILE_BATCH = 100
REDRIVE_LIMIT = 1000

# Sent by `gc()` with `now` (ms): other apps purge their own expired rows (runs_app: idempotency keys)
# without the mailbox importing them. A receiver that raises is logged; the GC still reports its count.
gc_ran = Signal()


@dataclass(frozen=True, slots=True)
class SweepReport:
    reclaimed: int = 0
    dead_lettered: int = 0
    reconciled: int = 0
    redriven: int = 0
    timed_out: int = 0
    rung_ahead: int = 0  # delayed dispatches coming due before the next sweep, rung with a countdown

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def sweep(*, now: int | None = None) -> SweepReport:
    """Reclaim expired leases, reconcile what was reclaimed, and ring every claimable thread (§7.3 fix).

    The reference's `run_sweep`."""
    stamp = now_ms() if now is None else now
    reclaimed = dead = reconciled = 0
    while True:
        batch = store.reclaim_expired_leases(stamp, RECLAIM_BATCH)
        for dispatch in batch:
            reclaimed += 1
            _release_stale_lock(dispatch.thread_id)
            if dispatch.status is DispatchStatus.DEAD_LETTER:
                dead += 1
                reconciled += terminalize_run_for_dispatch(dispatch, now=stamp) is not None
        if len(batch) < RECLAIM_BATCH:
            break
    timed_out = timeouts.expire_overdue_runs(now=stamp)  # after the reclaim: what it requeued counts
    threads = store.claimable_thread_ids(stamp, REDRIVE_LIMIT)
    for thread_id in threads:
        doorbells.ring_on_commit(thread_id, None)
    coming_due = ring_coming_due(stamp)
    metrics.refresh_dispatch_depth(store.count_by_status)  # the depth gauges: per sweep, not per request
    return SweepReport(
        reclaimed=reclaimed,
        dead_lettered=dead,
        reconciled=reconciled,
        redriven=len(threads),
        timed_out=timed_out,
        rung_ahead=coming_due,
    )


def ring_coming_due(now: int) -> int:
    """Ring every unclaimed thread whose next delayed dispatch comes due before the sweep after next,
    with a countdown to its time: a delayed start too far off for a Celery countdown (`ring_at` parks it)
    still starts on time, not up to a sweep interval late. The horizon is two sweep intervals (a late
    beat tick still finds it), at most the longest countdown; a dispatch may so be rung twice, which a
    doorbell tolerates (it only claims what is due). Returns how many were rung."""
    horizon = min(2 * awaken_settings.MAILBOX.sweep_interval_ms, doorbells.max_countdown_ms())
    due = store.threads_coming_due(now, now + horizon, REDRIVE_LIMIT)
    for thread_id, dispatch_id, available_at in due:
        doorbells.ring_at(thread_id, dispatch_id, available_at)
    return len(due)


def _release_stale_lock(thread_id: str) -> None:
    """Drop the Redis lock of a reclaimed claim. Its holder took it some time after the claim (the
    hand-over to a worker), so without renewals it outlives the lease it mirrors; the successor the
    sweep rings would find it taken, be nacked (an attempt charged) and wait out its TTL. Only a lock
    that is not the thread's current claim's is dropped, by compare-and-delete on its token."""
    try:
        holder, _ = ThreadLock.holder(thread_id)
        if holder is None:
            return
        live = store.list_dispatches(thread_id, [DispatchStatus.CLAIMED], 1)
        if not live or live[0].claim_token != holder:
            ThreadLock.release_stale(thread_id, holder)
    except RedisError:
        log.warning("could not release the stale lock of thread %s", thread_id, exc_info=True)


def reconcile_terminal(*, now: int | None = None) -> int:
    """Terminalize runs whose dispatch ended cancelled / superseded / dead-lettered but are not done.

    One indexed query for the candidates (not a scan of every terminal row: fixes spec §7.7).

    The reference's `reconcile_terminal_dispatches` (each: `reconcile_terminal_dispatch`).
    """
    stamp = now_ms() if now is None else now
    fixed = 0
    for dispatch_id in run_store().terminal_dispatches_with_open_runs(limit=RECONCILE_BATCH):
        fixed += terminalize_run_for_dispatch(store.load_dispatch(dispatch_id), now=stamp) is not None
    try:
        reemit_lost_finishes(now=stamp)  # a stopped run's stream that lacks its run_finish gets it
    except RedisError:
        log.warning("could not re-emit lost run_finish events", exc_info=True)
    return fixed


def gc(*, now: int | None = None) -> int:
    """Purge terminal dispatches older than the TTL (returns how many), then the rest (`gc_counts`)."""
    return gc_counts(now=now)["dispatches"]


def gc_counts(*, now: int | None = None) -> dict[str, int]:
    """One GC tick: terminal dispatches older than the TTL, orphaned epoch rows (at most
    AWAKEN_GC_MAX_PER_TICK), then the `gc_ran` receivers; how many rows each purge removed, by name.
    A receiver reports `{name: count}` (a bare count is filed under its function's name)."""
    stamp = now_ms() if now is None else now
    counts = {"dispatches": store.purge_terminal(stamp - awaken_settings.MAILBOX.gc_ttl_ms)}
    counts["epochs"] = store.purge_orphaned_epochs(limit=awaken_settings.GC_MAX_PER_TICK)
    counts["steps"] = steps.purge_journals(stamp - awaken_settings.MAILBOX.gc_ttl_ms)  # of long-done runs
    counts["token_charges"] = budgets.purge_charges(stamp, awaken_settings.GC_MAX_PER_TICK)  # ended windows
    for receiver, result in gc_ran.send_robust(sender=gc, now=stamp):
        if isinstance(result, Exception):
            log.warning("gc receiver %r failed", receiver, exc_info=result)
        elif isinstance(result, dict):
            counts |= {str(name): int(n) for name, n in result.items()}
        elif isinstance(result, int):
            counts[getattr(receiver, "__name__", repr(receiver)).strip("_")] = result
    log.info("gc purged %s", counts)
    return counts


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    reclaimed: int
    reconciled: int
    redriven: int
    woken: int


def recover(*, now: int | None = None) -> RecoveryReport:
    """Startup recovery: reclaim, reconcile, re-drive every queued thread, wake orphaned background waits."""
    stamp = now_ms() if now is None else now
    swept = sweep(now=stamp)
    reconciled = swept.reconciled + reconcile_terminal(now=stamp)
    queued = store.queued_thread_ids()
    for thread_id in queued:
        doorbells.ring_on_commit(thread_id, None)
    woken = wake_orphaned_background_waits()
    return RecoveryReport(reclaimed=swept.reclaimed, reconciled=reconciled, redriven=len(queued), woken=woken)


def wake_orphaned_background_waits() -> int:
    """Runs waiting on background tasks with no queued/claimed dispatch get an internal wake dispatch."""
    woken = 0
    page = run_store().list_runs(status=RunStatus.WAITING, limit=200)
    for run in page.items:
        if not run.is_background_task_waiting:
            continue
        pending = [
            d
            for d in store.list_dispatches(run.thread_id, [DispatchStatus.QUEUED, DispatchStatus.CLAIMED])
            if d.run_id == run.run_id
        ]
        if not pending:
            mailbox.wake_run(run)
            woken += 1
    return woken


def recover_with_retry(*, attempts: int | None = None, delay_ms: int | None = None) -> RecoveryReport:
    """`recover` with the retry policy of `MailboxStartupRecoveryConfig` (values < 1 mean 1).

    The reference's `run_startup_recovery_with_retry`."""
    tries = max(awaken_settings.STARTUP_RECOVERY_MAX_ATTEMPTS if attempts is None else attempts, 1)
    pause = (delay_ms if delay_ms is not None else awaken_settings.STARTUP_RECOVERY_RETRY_DELAY_MS) / 1000
    for attempt in range(1, tries + 1):
        try:
            return recover()
        except Exception:
            if attempt == tries:
                raise
            log.warning("startup recovery attempt %d/%d failed; retrying", attempt, tries, exc_info=True)
            time.sleep(pause)
    raise AssertionError("unreachable")
