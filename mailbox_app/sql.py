"""Hand-written SQL for the hot store operations (claim, fenced writes, sweep).

The ORM costs several times more per cycle on these paths (see pitfalls.md); everything else is ORM.
Statements use named parameters and are executed through Django's connection.
"""

from __future__ import annotations

from mailbox_app.records import DISPATCH_COLUMNS

DISPATCH = "mailbox_dispatch"
EPOCH = "mailbox_thread_epoch"
COLS = ", ".join(DISPATCH_COLUMNS)
D_COLS = ", ".join(f"d.{c}" for c in DISPATCH_COLUMNS)
CLEAR_CLAIM = "claim_token = NULL, claimed_by = NULL, lease_until = NULL"

READ_EPOCH = f"SELECT current_epoch FROM {EPOCH} WHERE thread_id = %(thread_id)s"

LOCK_EPOCH = READ_EPOCH + " FOR UPDATE"

# The epoch row is ensured and locked in the same statement (an upsert that changes nothing): an
# interrupt (which updates the epoch row) waits for this enqueue to commit, and then supersedes it.
# Enqueues of one thread serialize here — they already do on the thread row in the submit path.
INSERT_DISPATCH = f"""
WITH e AS (
    INSERT INTO {EPOCH} AS ep (thread_id, current_epoch) VALUES (%(thread_id)s, 0)
    ON CONFLICT (thread_id) DO UPDATE SET current_epoch = ep.current_epoch
    RETURNING current_epoch
)
INSERT INTO {DISPATCH} ({COLS})
SELECT %(dispatch_id)s::varchar, %(thread_id)s::varchar, %(run_id)s::varchar, %(priority)s::smallint,
       %(dedupe_key)s::varchar, e.current_epoch, 'queued', %(available_at)s::bigint,
       %(attempt_count)s::integer, %(max_attempts)s::integer, %(last_error)s::text,
       NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, %(created_at)s::bigint, %(updated_at)s::bigint,
       %(request)s::jsonb
FROM e
RETURNING {COLS}
"""

_PICK = f"""pick AS (
    SELECT dispatch_id FROM {DISPATCH}
     WHERE thread_id = %(thread_id)s AND status = 'queued' AND dispatch_epoch >= %(epoch)s
       AND available_at <= %(now)s
       AND NOT EXISTS (SELECT 1 FROM {DISPATCH} c WHERE c.thread_id = %(thread_id)s AND c.status = 'claimed')
     ORDER BY priority, created_at, dispatch_id
     LIMIT 1
     FOR UPDATE SKIP LOCKED
)"""

_CLAIM_PICKED = f"""
UPDATE {DISPATCH} d
   SET status = 'claimed', claim_token = %(token)s, claimed_by = %(consumer_id)s,
       lease_until = %(lease_until)s, updated_at = %(now)s
  FROM pick WHERE d.dispatch_id = pick.dispatch_id
RETURNING {D_COLS}
"""

# The two-statement claim (LOCK_EPOCH, then this, in one transaction): what CLAIM_ONE replaced, kept for
# bench/store_variants.py's comparisons.
CLAIM = f"""
WITH stale AS (
    UPDATE {DISPATCH}
       SET status = 'superseded', dispatch_epoch = %(epoch)s, completed_at = %(now)s, updated_at = %(now)s,
           last_error = 'queued dispatch superseded by newer dispatch epoch'
     WHERE thread_id = %(thread_id)s AND status = 'queued' AND dispatch_epoch < %(epoch)s
    RETURNING dispatch_id
), {_PICK}{_CLAIM_PICKED}"""

# The claim in one statement: the epoch row locked (claims and interrupts of a thread serialize on it),
# stale queued rows superseded (skipped by a one-time filter on never-interrupted threads, so the cost
# does not grow with the backlog), the next eligible row picked and claimed. The epoch is read under
# its lock (the newest version) while rows are scanned in the statement's snapshot: a row queued at an
# older epoch is never picked, and a concurrent claim committed after the snapshot surfaces as the
# one-claimed-per-thread unique violation, which the store answers with "nothing claimed".
_EPOCH_NOW = "(SELECT current_epoch FROM e)"
CLAIM_ONE = f"""
WITH e AS (
    SELECT current_epoch FROM {EPOCH} WHERE thread_id = %(thread_id)s FOR UPDATE
), stale AS (
    UPDATE {DISPATCH}
       SET status = 'superseded', dispatch_epoch = {_EPOCH_NOW}, completed_at = %(now)s,
           updated_at = %(now)s, last_error = 'queued dispatch superseded by newer dispatch epoch'
     WHERE {_EPOCH_NOW} > 0
       AND thread_id = %(thread_id)s AND status = 'queued' AND dispatch_epoch < {_EPOCH_NOW}
    RETURNING dispatch_id
), {_PICK.replace("%(epoch)s", _EPOCH_NOW)}{_CLAIM_PICKED}"""

SELECT_DISPATCH = f"SELECT {COLS} FROM {DISPATCH} WHERE dispatch_id = %(dispatch_id)s"

SELECT_DISPATCH_WITH_EPOCH = f"""
SELECT {D_COLS}, COALESCE(e.current_epoch, 0)
  FROM {DISPATCH} d LEFT JOIN {EPOCH} e ON e.thread_id = d.thread_id
 WHERE d.dispatch_id = %(dispatch_id)s
 FOR UPDATE OF d
"""

CLAIM_BY_ID = f"""
UPDATE {DISPATCH} d
   SET status = 'claimed', claim_token = %(token)s, claimed_by = %(consumer_id)s,
       lease_until = %(lease_until)s, updated_at = %(now)s
 WHERE d.dispatch_id = %(dispatch_id)s AND d.status = 'queued'
   AND NOT EXISTS (SELECT 1 FROM {DISPATCH} c WHERE c.thread_id = d.thread_id AND c.status = 'claimed')
RETURNING {D_COLS}
"""

# A fenced write: applies only while the row is claimed with this token in the current epoch.
FENCE = f"""
  FROM {EPOCH} e
 WHERE d.dispatch_id = %(dispatch_id)s AND d.status = 'claimed' AND d.claim_token = %(token)s
   AND e.thread_id = d.thread_id AND d.dispatch_epoch >= e.current_epoch
"""

ACK = f"""
UPDATE {DISPATCH} d SET status = 'acked', {CLEAR_CLAIM}, completed_at = %(now)s, updated_at = %(now)s
{FENCE} RETURNING {D_COLS}
"""

NACK = f"""
UPDATE {DISPATCH} d
   SET attempt_count = d.attempt_count + 1, last_error = %(error)s, updated_at = %(now)s, {CLEAR_CLAIM},
       status = CASE WHEN d.attempt_count + 1 >= d.max_attempts THEN 'dead_letter' ELSE 'queued' END,
       available_at = CASE WHEN d.attempt_count + 1 >= d.max_attempts THEN d.available_at
                           ELSE %(retry_at)s END,
       completed_at = CASE WHEN d.attempt_count + 1 >= d.max_attempts THEN %(now)s ELSE NULL END,
       -- a requeued dispatch must not carry the runtime-trace projection of the abandoned attempt
       dispatch_instance_id = CASE WHEN d.attempt_count + 1 >= d.max_attempts THEN d.dispatch_instance_id END,
       run_status = CASE WHEN d.attempt_count + 1 >= d.max_attempts THEN d.run_status END,
       termination = CASE WHEN d.attempt_count + 1 >= d.max_attempts THEN d.termination END,
       run_response = CASE WHEN d.attempt_count + 1 >= d.max_attempts THEN d.run_response END,
       run_error = CASE WHEN d.attempt_count + 1 >= d.max_attempts THEN d.run_error END
{FENCE} RETURNING {D_COLS}
"""

DEAD_LETTER = f"""
UPDATE {DISPATCH} d
   SET status = 'dead_letter', last_error = %(error)s, {CLEAR_CLAIM},
       completed_at = %(now)s, updated_at = %(now)s
{FENCE} RETURNING {D_COLS}
"""

RECORD_START = f"""
UPDATE {DISPATCH} d
   SET dispatch_instance_id = %(instance_id)s, run_status = 'running', termination = NULL,
       run_response = NULL, run_error = NULL, completed_at = NULL, updated_at = %(now)s
{FENCE} RETURNING {D_COLS}
"""

RECORD_RESULT = f"""
UPDATE {DISPATCH} d
   SET dispatch_instance_id = %(instance_id)s, run_status = %(run_status)s, termination = %(termination)s,
       run_response = %(response)s, run_error = %(error)s, completed_at = %(now)s, updated_at = %(now)s
{FENCE} RETURNING {D_COLS}
"""

# The attempt's start: the runtime trace reset and the executing worker named as `claimed_by` (a claim
# taken inline by a web process is taken over by the worker that runs it).
# Only a claim no attempt has started yet: a duplicate hand-over of the same claim (same token) that
# finds the thread lock free never starts it a second time. The worker takes over the lease too.
START = f"""
UPDATE {DISPATCH} d
   SET dispatch_instance_id = %(instance_id)s, run_status = 'running', termination = NULL,
       run_response = NULL, run_error = NULL, completed_at = NULL, claimed_by = %(consumer_id)s,
       lease_until = %(lease_until)s, updated_at = %(now)s
{FENCE} AND d.dispatch_instance_id IS NULL
RETURNING {D_COLS}
"""

# The attempt's end in one statement: its result recorded and the delivery settled (ack, nack with
# backoff or dead letter by `%(outcome)s`). A requeued dispatch keeps no trace of the abandoned attempt.
_DEAD = "(%(outcome)s = 'dead_letter' OR (%(outcome)s = 'nack' AND d.attempt_count + 1 >= d.max_attempts))"
_REQUEUE = f"(%(outcome)s = 'nack' AND NOT {_DEAD})"
SETTLE = f"""
UPDATE {DISPATCH} d
   SET status = CASE WHEN %(outcome)s = 'ack' THEN 'acked' WHEN {_DEAD} THEN 'dead_letter' ELSE 'queued' END,
       attempt_count = d.attempt_count + CASE WHEN %(outcome)s = 'nack' THEN 1 ELSE 0 END,
       last_error = CASE WHEN %(outcome)s = 'ack' THEN d.last_error ELSE %(error)s END,
       available_at = CASE WHEN {_REQUEUE} THEN %(retry_at)s ELSE d.available_at END,
       completed_at = CASE WHEN {_REQUEUE} THEN NULL ELSE %(now)s END,
       dispatch_instance_id = CASE WHEN {_REQUEUE} THEN NULL ELSE %(instance_id)s END,
       run_status = CASE WHEN {_REQUEUE} THEN NULL ELSE %(run_status)s END,
       termination = CASE WHEN {_REQUEUE} THEN NULL ELSE %(termination)s::jsonb END,
       run_response = CASE WHEN {_REQUEUE} THEN NULL ELSE %(response)s END,
       run_error = CASE WHEN {_REQUEUE} THEN NULL ELSE %(run_error)s END,
       -- decisions the attempt acknowledged live but did not take ride along with the retry
       request = CASE WHEN {_REQUEUE} AND %(carry_decisions)s::jsonb IS NOT NULL
                      THEN jsonb_set(COALESCE(d.request, '{{}}'::jsonb), '{{decisions}}',
                                     COALESCE(d.request -> 'decisions', '[]'::jsonb)
                                     || %(carry_decisions)s::jsonb)
                      ELSE d.request END,
       {CLEAR_CLAIM}, updated_at = %(now)s
{FENCE} RETURNING {D_COLS}
"""

EXTEND_LEASE = f"""
UPDATE {DISPATCH} d SET lease_until = %(lease_until)s, updated_at = %(now)s
{FENCE} RETURNING {D_COLS}
"""

SUPERSEDE = f"""
UPDATE {DISPATCH}
   SET status = 'superseded', dispatch_epoch = GREATEST(dispatch_epoch, %(epoch)s), last_error = %(reason)s,
       {CLEAR_CLAIM}, completed_at = %(now)s, updated_at = %(now)s
 WHERE dispatch_id = %(dispatch_id)s
RETURNING {COLS}
"""

CANCEL_QUEUED = f"""
UPDATE {DISPATCH}
   SET status = 'cancelled', {CLEAR_CLAIM}, completed_at = %(now)s, updated_at = %(now)s
 WHERE dispatch_id = %(dispatch_id)s AND status = 'queued'
RETURNING {COLS}
"""

BUMP_EPOCH = f"""
INSERT INTO {EPOCH} (thread_id, current_epoch) VALUES (%(thread_id)s, 1)
ON CONFLICT (thread_id) DO UPDATE SET current_epoch = {EPOCH}.current_epoch + 1
RETURNING current_epoch
"""

SUPERSEDE_QUEUED_BY_INTERRUPT = f"""
UPDATE {DISPATCH}
   SET status = 'superseded', last_error = 'queued dispatch superseded by interrupt', {CLEAR_CLAIM},
       completed_at = %(now)s, updated_at = %(now)s
 WHERE thread_id = %(thread_id)s AND status = 'queued'
RETURNING {COLS}
"""

SELECT_CLAIMED_OF_THREAD = f"""
SELECT {COLS} FROM {DISPATCH} WHERE thread_id = %(thread_id)s AND status = 'claimed'
"""

# Expired leases, locked so two sweepers never reclaim one row twice.
SELECT_EXPIRED = f"""
SELECT {D_COLS}, COALESCE(e.current_epoch, 0)
  FROM {DISPATCH} d LEFT JOIN {EPOCH} e ON e.thread_id = d.thread_id
 WHERE d.status = 'claimed' AND d.lease_until < %(now)s
 ORDER BY d.lease_until
 LIMIT %(limit)s
 FOR UPDATE OF d SKIP LOCKED
"""

RECLAIM = f"""
UPDATE {DISPATCH}
   SET attempt_count = attempt_count + 1, updated_at = %(now)s, {CLEAR_CLAIM},
       status = CASE WHEN attempt_count + 1 >= max_attempts THEN 'dead_letter' ELSE 'queued' END,
       completed_at = CASE WHEN attempt_count + 1 >= max_attempts THEN %(now)s END,
       last_error = CASE WHEN attempt_count + 1 >= max_attempts THEN 'lease expired; max attempts reached'
                         ELSE 'lease expired' END,
       -- the attempt that lost its lease is abandoned: drop its runtime-trace projection
       dispatch_instance_id = NULL, run_status = NULL, termination = NULL, run_response = NULL,
       run_error = NULL
 WHERE dispatch_id = ANY(%(ids)s)
RETURNING {COLS}
"""

PURGE_TERMINAL = f"""
DELETE FROM {DISPATCH}
 WHERE status IN ('acked', 'cancelled', 'superseded', 'dead_letter') AND updated_at < %(older_than)s
"""

# Threads with claimable queued work and no claim: the sweep's re-drive set (fixes spec §7.3).
CLAIMABLE_THREADS = f"""
SELECT DISTINCT q.thread_id FROM {DISPATCH} q
 WHERE q.status = 'queued' AND q.available_at <= %(now)s
   AND NOT EXISTS (SELECT 1 FROM {DISPATCH} c WHERE c.thread_id = q.thread_id AND c.status = 'claimed')
 ORDER BY q.thread_id
 LIMIT %(limit)s
"""
