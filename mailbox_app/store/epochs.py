"""Garbage collection of orphaned epoch rows.

An epoch row only orders a thread's live dispatches (a queued or claimed row with an older epoch is
stale), so once the thread has no dispatch rows at all — they were purged after the GC TTL, or the
thread was deleted — the row is orphaned: deleting it loses nothing, and the next enqueue recreates it
at 0. Batches are locked first (`SKIP LOCKED`: an enqueue or interrupt that holds the row is left alone)
and deleted by a second statement that re-checks under the lock with a fresh snapshot, so a dispatch
committed while the batch was being locked keeps its row. Every enqueue locks the epoch row before it
inserts its dispatch (sql.INSERT_DISPATCH), so none can land in between.
"""

from __future__ import annotations

from django.db import connection, transaction

from mailbox_app.store.sql import DISPATCH, EPOCH

_NO_DISPATCH = f"NOT EXISTS (SELECT 1 FROM {DISPATCH} d WHERE d.thread_id = e.thread_id)"

LOCK_ORPHANS = f"""
SELECT e.thread_id FROM {EPOCH} e WHERE {_NO_DISPATCH}
 ORDER BY e.thread_id LIMIT %(limit)s FOR UPDATE SKIP LOCKED
"""
DELETE_ORPHANS = f"DELETE FROM {EPOCH} e WHERE e.thread_id = ANY(%(ids)s) AND {_NO_DISPATCH}"

EPOCH_BATCH = 1000


def purge_orphaned_epochs(*, limit: int, batch: int = EPOCH_BATCH) -> int:
    """Delete up to `limit` orphaned epoch rows, `batch` per transaction; returns how many went."""
    purged = 0
    for _ in range(-(-limit // batch)):
        size = min(batch, limit - purged)
        if size <= 0:
            break
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(LOCK_ORPHANS, {"limit": size})
            ids = [row[0] for row in cursor.fetchall()]
            if ids:
                cursor.execute(DELETE_ORPHANS, {"ids": ids})
                purged += cursor.rowcount
        if len(ids) < size:
            break
    return purged
