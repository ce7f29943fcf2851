"""Upkeep of the queue: expired leases reclaimed (the reference's `reclaim_expired_leases`, run by the
sweep), dead letters requeued by an operator, terminal rows and orphaned epoch rows collected (`gc`),
and the threads the sweep re-drives."""

from __future__ import annotations

from collections.abc import Sequence

from django.db import connection, transaction

from mailbox_app.contract.mailbox import DispatchRecord
from mailbox_app.observability import metrics
from mailbox_app.store.fenced import supersede
from mailbox_app.store.rows import execute, fetch_all, fetch_with_epoch

# Expired leases, locked so two sweepers never reclaim one row twice.
LOCK_EXPIRED = """
SELECT d.*, COALESCE(e.current_epoch, 0) AS current_epoch
  FROM mailbox_dispatch d LEFT JOIN mailbox_thread_epoch e ON e.thread_id = d.thread_id
 WHERE d.status = 'claimed' AND d.lease_until < %(now)s
 ORDER BY d.lease_until
 LIMIT %(limit)s
 FOR UPDATE OF d SKIP LOCKED
"""

# The rows LOCK_EXPIRED locked (and found in the current epoch): requeued, or dead-lettered once
# attempts reach max; the attempt that lost its lease is abandoned, so its runtime trace goes.
RECLAIM = """
UPDATE mailbox_dispatch
   SET attempt_count = attempt_count + 1, updated_at = %(now)s,
       claim_token = NULL, claimed_by = NULL, lease_until = NULL,
       status = CASE WHEN attempt_count + 1 >= max_attempts THEN 'dead_letter' ELSE 'queued' END,
       completed_at = CASE WHEN attempt_count + 1 >= max_attempts THEN %(now)s END,
       last_error = CASE WHEN attempt_count + 1 >= max_attempts THEN 'lease expired; max attempts reached'
                         ELSE 'lease expired' END,
       dispatch_instance_id = NULL, run_status = NULL, termination = NULL, run_response = NULL,
       run_error = NULL
 WHERE dispatch_id = ANY(%(ids)s)
RETURNING *
"""


@metrics.timed(metrics.RECLAIM, metrics.reclaimed)
def reclaim_expired_leases(now: int, limit: int = 100) -> list[DispatchRecord]:
    """Requeue (or dead-letter) claimed dispatches whose lease ended before `now` (spec §3.15).

    A stale-epoch expired claim is superseded instead and is not returned.
    """
    if limit <= 0:
        return []
    with transaction.atomic():
        expired = fetch_with_epoch(LOCK_EXPIRED, {"now": now, "limit": limit})
        for current, epoch in expired:
            if current.dispatch_epoch < epoch:
                supersede(current, epoch, now, "claimed dispatch lease expired after interrupt")
        ids = [d.dispatch_id for d, epoch in expired if d.dispatch_epoch >= epoch]
        if not ids:
            return []
        return fetch_all(RECLAIM, {"ids": ids, "now": now})


# --- the operator's requeue (DeadLetter -> Queued) --------------------------------------------------

LOCK_DEAD_LETTERS = """
SELECT * FROM mailbox_dispatch
 WHERE status = 'dead_letter'
   AND (%(ids)s::varchar[] IS NULL OR dispatch_id = ANY(%(ids)s::varchar[]))
   AND (%(thread_id)s::varchar IS NULL OR thread_id = %(thread_id)s::varchar)
 ORDER BY dispatch_id
 FOR UPDATE
"""


def lock_dead_letters(
    *, dispatch_ids: Sequence[str] | None = None, thread_id: str | None = None
) -> list[DispatchRecord]:
    """The dead-lettered dispatches among `dispatch_ids` and of `thread_id` (every one when both are
    None), row-locked in id order for the caller's transaction: what an operator's requeue may move."""
    return fetch_all(
        LOCK_DEAD_LETTERS,
        {"ids": None if dispatch_ids is None else list(dispatch_ids), "thread_id": thread_id},
    )


# Fresh attempts, available now, in the thread's current epoch (a dispatch requeued after an interrupt
# would otherwise be superseded at its next claim), and no runtime trace of the attempt that
# dead-lettered (as a nack that requeues). Rows locked by the caller (LOCK_DEAD_LETTERS).
REQUEUE_DEAD_LETTERS = """
UPDATE mailbox_dispatch d
   SET status = 'queued', attempt_count = 0, available_at = %(now)s, completed_at = NULL,
       updated_at = %(now)s,
       dispatch_epoch = COALESCE(
           (SELECT e.current_epoch FROM mailbox_thread_epoch e WHERE e.thread_id = d.thread_id), 0),
       dispatch_instance_id = NULL, run_status = NULL, termination = NULL, run_response = NULL,
       run_error = NULL
 WHERE d.dispatch_id = ANY(%(ids)s) AND d.status = 'dead_letter'
RETURNING d.*
"""


def requeue_dead_letters(dispatch_ids: Sequence[str], now: int) -> list[DispatchRecord]:
    """DeadLetter -> Queued, the operator's requeue: attempt_count 0, available at `now`, stamped with
    the thread's current epoch, the dead attempt's runtime trace dropped. Rows that are not dead-lettered
    (any more) are left alone and not returned."""
    if not dispatch_ids:
        return []
    return fetch_all(REQUEUE_DEAD_LETTERS, {"ids": list(dispatch_ids), "now": now})


# --- garbage collection (the reference's `run_gc` purge) --------------------------------------------

PURGE_TERMINAL = """
DELETE FROM mailbox_dispatch
 WHERE status IN ('acked', 'cancelled', 'superseded', 'dead_letter') AND updated_at < %(older_than)s
"""


def purge_terminal(older_than: int) -> int:
    """Delete terminal dispatches last updated before `older_than`; returns how many (spec §3.16)."""
    return execute(PURGE_TERMINAL, {"older_than": older_than})


# An epoch row only orders a thread's live dispatches, so once the thread has no dispatch rows at all —
# they were purged after the GC TTL, or the thread was deleted — the row is orphaned: deleting it loses
# nothing, and the next enqueue recreates it at 0. Batches are locked first (`SKIP LOCKED`: an enqueue
# or interrupt that holds the row is left alone) and deleted by a second statement that re-checks under
# the lock with a fresh snapshot, so a dispatch committed while the batch was being locked keeps its row.
# Every enqueue locks the epoch row before it inserts its dispatch (queue.ENQUEUE), so none can land in
# between.
LOCK_ORPHANED_EPOCHS = """
SELECT e.thread_id FROM mailbox_thread_epoch e
 WHERE NOT EXISTS (SELECT 1 FROM mailbox_dispatch d WHERE d.thread_id = e.thread_id)
 ORDER BY e.thread_id LIMIT %(limit)s FOR UPDATE SKIP LOCKED
"""

DELETE_ORPHANED_EPOCHS = """
DELETE FROM mailbox_thread_epoch e
 WHERE e.thread_id = ANY(%(ids)s)
   AND NOT EXISTS (SELECT 1 FROM mailbox_dispatch d WHERE d.thread_id = e.thread_id)
"""

EPOCH_BATCH = 1000


def purge_orphaned_epochs(*, limit: int, batch: int = EPOCH_BATCH) -> int:
    """Delete up to `limit` orphaned epoch rows, `batch` per transaction; returns how many went."""
    purged = 0
    for _ in range(-(-limit // batch)):
        size = min(batch, limit - purged)
        if size <= 0:
            break
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(LOCK_ORPHANED_EPOCHS, {"limit": size})
            ids = [row[0] for row in cursor.fetchall()]
            if ids:
                cursor.execute(DELETE_ORPHANED_EPOCHS, {"ids": ids})
                purged += cursor.rowcount
        if len(ids) < size:
            break
    return purged


# Threads with claimable queued work and no claim: the sweep's re-drive set (fixes spec §7.3). Paused
# work is left out (its resume rings it); while no pause exists the pause table is read once.
CLAIMABLE_THREADS = """
SELECT DISTINCT q.thread_id FROM mailbox_dispatch q
 WHERE q.status = 'queued' AND q.available_at <= %(now)s
   AND NOT EXISTS (SELECT 1 FROM mailbox_dispatch c WHERE c.thread_id = q.thread_id AND c.status = 'claimed')
   AND (NOT EXISTS (SELECT 1 FROM mailbox_pause)
        OR NOT EXISTS (SELECT 1 FROM mailbox_pause p
                        WHERE p.scope = 'all' OR (p.scope = 'thread' AND p.key = q.thread_id)
                           OR (p.scope = 'agent' AND p.key = q.agent_key)))
 ORDER BY q.thread_id
 LIMIT %(limit)s
"""


def claimable_thread_ids(now: int, limit: int = 1000) -> list[str]:
    """Threads with a queued dispatch available at `now` and no claim: what the sweep re-drives."""
    with connection.cursor() as cursor:
        cursor.execute(CLAIMABLE_THREADS, {"now": now, "limit": limit})
        return [row[0] for row in cursor.fetchall()]


# Threads with no claim whose earliest queued dispatch becomes available in (now, until]: the delayed
# starts the sweep rings ahead of time, each with a countdown to its own time (realtime/doorbells.py);
# paused work is left out, as above.
THREADS_COMING_DUE = """
SELECT DISTINCT ON (q.thread_id) q.thread_id, q.dispatch_id, q.available_at FROM mailbox_dispatch q
 WHERE q.status = 'queued' AND q.available_at > %(now)s AND q.available_at <= %(until)s
   AND NOT EXISTS (SELECT 1 FROM mailbox_dispatch c WHERE c.thread_id = q.thread_id AND c.status = 'claimed')
   AND (NOT EXISTS (SELECT 1 FROM mailbox_pause)
        OR NOT EXISTS (SELECT 1 FROM mailbox_pause p
                        WHERE p.scope = 'all' OR (p.scope = 'thread' AND p.key = q.thread_id)
                           OR (p.scope = 'agent' AND p.key = q.agent_key)))
 ORDER BY q.thread_id, q.available_at
 LIMIT %(limit)s
"""


def threads_coming_due(now: int, until: int, limit: int = 1000) -> list[tuple[str, str, int]]:
    """(thread, dispatch, available_at) of each unclaimed thread's earliest queued dispatch that becomes
    available after `now` and by `until`: the delayed starts the sweep rings ahead of their time."""
    with connection.cursor() as cursor:
        cursor.execute(THREADS_COMING_DUE, {"now": now, "until": until, "limit": limit})
        return [(str(t), str(d), int(at)) for t, d, at in cursor.fetchall()]
