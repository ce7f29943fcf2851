"""Hand-written SQL of the thread lifecycle (runs_app/services/threads.py): the derived thread status, search,
create, the delete's lock and its mailbox-side rows, and the TTL candidates. Named parameters."""

from __future__ import annotations

from runs_app.store.sql import THREAD, THREAD_COLUMNS

TH_COLS = ", ".join(f"th.{c}" for c in THREAD_COLUMNS)

# Termination types that make a thread's status `error` when they end its latest run.
ERROR_TERMINATIONS = ("error", "timeout")

# A thread's status, derived from its runs and dispatches (alias `th`), first match wins:
#   busy    - a dispatch of the thread is queued or claimed, or one of its runs is running;
#   waiting - not busy, and one of its runs is waiting (for a decision or a background task);
#   error   - neither, and its latest run (updated_at, created_at, run_id descending) ended with a
#             termination of type `error` (failed, dead-lettered) or `timeout`;
#   idle    - otherwise (no runs, or the latest ended any other way: natural end, cancelled, ...).
THREAD_STATUS = f"""CASE
    WHEN EXISTS (SELECT 1 FROM mailbox_dispatch d
                  WHERE d.thread_id = th.id AND d.status IN ('queued', 'claimed'))
      OR EXISTS (SELECT 1 FROM runs_run r WHERE r.thread_id = th.id AND r.status = 'running') THEN 'busy'
    WHEN EXISTS (SELECT 1 FROM runs_run r WHERE r.thread_id = th.id AND r.status = 'waiting') THEN 'waiting'
    WHEN (SELECT r.status = 'done' AND r.termination_reason ->> 'type' IN {ERROR_TERMINATIONS!r}
            FROM runs_run r WHERE r.thread_id = th.id
           ORDER BY r.updated_at DESC, r.created_at DESC, r.run_id DESC LIMIT 1) THEN 'error'
    ELSE 'idle' END"""

THREAD_STATUSES = f"SELECT th.id, {THREAD_STATUS} FROM {THREAD} th WHERE th.id = ANY(%(ids)s)"

# Search: the owner's threads (optionally `metadata @> filter`, served by the GIN index) with their
# status; `{where}` is filled in by the caller with a fixed fragment (never user text). Without a status
# filter the page is cut first and the status computed for its rows only; with one, every candidate's
# status is computed to filter on it.
_OWNED = f"SELECT {TH_COLS} FROM {THREAD} th WHERE th.owner_id = %(owner_id)s {{where}}"
SEARCH_PAGE = f"""
SELECT {TH_COLS}, {THREAD_STATUS} FROM (
    {_OWNED} ORDER BY th.updated_at DESC, th.id LIMIT %(limit)s OFFSET %(offset)s
) th
 ORDER BY th.updated_at DESC, th.id
"""
SEARCH_COUNT = f"SELECT count(*) FROM ({_OWNED}) th"
_STATUSED = f"SELECT {TH_COLS}, {THREAD_STATUS} AS status FROM ({_OWNED}) th"
SEARCH_PAGE_BY_STATUS = f"""
SELECT * FROM ({_STATUSED}) s WHERE s.status = %(status)s
 ORDER BY s.updated_at DESC, s.id LIMIT %(limit)s OFFSET %(offset)s
"""
SEARCH_COUNT_BY_STATUS = f"SELECT count(*) FROM ({_STATUSED}) s WHERE s.status = %(status)s"
METADATA_FILTER = "AND th.metadata @> %(metadata)s::jsonb"

# Create: inserted only when the id is free (the caller reads the existing row otherwise).
CREATE_THREAD = f"""
INSERT INTO {THREAD} AS th (id, owner_id, title, metadata, message_count, created_at, updated_at)
VALUES (%(thread_id)s, %(owner_id)s, %(title)s, %(metadata)s::jsonb, 0, %(now)s, %(now)s)
ON CONFLICT (id) DO NOTHING
RETURNING {TH_COLS}
"""

# Delete, first statement: the thread row lock. Every submit takes this lock (LOCK_THREAD) before it
# writes a run or a dispatch, so once it is held nothing new can land on the thread. The status is read
# by a *second* statement: in READ COMMITTED a statement that waited for the lock still sees the other
# tables as of its start, and would miss the dispatch of a submit that committed while it waited.
LOCK_FOR_DELETE = f"SELECT owner_id, updated_at FROM {THREAD} WHERE id = %(thread_id)s FOR UPDATE"
STATUS_OF = f"SELECT {THREAD_STATUS} FROM {THREAD} th WHERE th.id = %(thread_id)s"

# Delete, the rows without a foreign key to the thread: its dispatches, its epoch row, and the owner's
# idempotency keys whose stored answer names it (a replay would name a thread that is gone).
DELETE_UNLINKED = """
WITH d AS (DELETE FROM mailbox_dispatch WHERE thread_id = %(thread_id)s RETURNING 1),
     e AS (DELETE FROM mailbox_thread_epoch WHERE thread_id = %(thread_id)s RETURNING 1),
     k AS (DELETE FROM runs_idempotency
            WHERE user_id = %(owner_id)s AND response ->> 'thread_id' = %(thread_id)s RETURNING 1)
SELECT (SELECT count(*) FROM d), (SELECT count(*) FROM e), (SELECT count(*) FROM k)
"""

# TTL: threads whose last activity is older than the cutoff and that have nothing in flight or waiting,
# oldest first (each is then deleted on its own, re-checked under its lock).
EXPIRED_THREADS = f"""
SELECT th.id FROM {THREAD} th
 WHERE th.updated_at < %(cutoff)s AND ({THREAD_STATUS}) IN ('idle', 'error')
 ORDER BY th.updated_at, th.id
 LIMIT %(limit)s
"""
