"""Hand-written SQL for the hot store operations (claim, fenced writes, sweep).

The ORM costs several times more per cycle on these paths (see docs/pitfalls.md §3); everything else is ORM.
Statements use named parameters and are executed through Django's connection.
"""

from __future__ import annotations

from mailbox_app.contract.mailbox import DISPATCH_COLUMNS

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
    INSERT INTO {EPOCH} AS ep (thread_id, current_epoch, owner_key) VALUES (%(thread_id)s, 0, %(owner_key)s)
    ON CONFLICT (thread_id) DO UPDATE
       SET owner_key = CASE WHEN EXCLUDED.owner_key <> '' THEN EXCLUDED.owner_key ELSE ep.owner_key END
    RETURNING current_epoch
)
INSERT INTO {DISPATCH} ({COLS})
SELECT %(dispatch_id)s::varchar, %(thread_id)s::varchar, %(run_id)s::varchar, %(priority)s::smallint,
       %(dedupe_key)s::varchar, e.current_epoch, 'queued', %(available_at)s::bigint,
       %(attempt_count)s::integer, %(max_attempts)s::integer, %(last_error)s::text,
       NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, %(created_at)s::bigint, %(updated_at)s::bigint,
       %(request)s::jsonb, %(agent_key)s::varchar
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
# The claimed row is returned; its owner is marked served by the attempt's start (START).
_SERVED = """
SELECT * FROM claimed"""
_CLAIMED_CTE = f"""
, claimed AS (
UPDATE {DISPATCH} d
   SET status = 'claimed', claim_token = %(token)s, claimed_by = %(consumer_id)s,
       lease_until = %(lease_until)s, updated_at = %(now)s
  FROM pick WHERE d.dispatch_id = pick.dispatch_id
RETURNING {D_COLS}
)"""


def _claim_one(lock: str, claim_filter: str = "") -> str:
    pick = _PICK.replace("%(epoch)s", _EPOCH_NOW)
    claimed = _CLAIMED_CTE.replace("pick.dispatch_id\n", f"pick.dispatch_id{claim_filter}\n")
    return f"""
WITH e AS (
    SELECT current_epoch, owner_key FROM {EPOCH} WHERE thread_id = %(thread_id)s {lock}
), stale AS (
    UPDATE {DISPATCH}
       SET status = 'superseded', dispatch_epoch = {_EPOCH_NOW}, completed_at = %(now)s,
           updated_at = %(now)s, last_error = 'queued dispatch superseded by newer dispatch epoch'
     WHERE {_EPOCH_NOW} > 0
       AND thread_id = %(thread_id)s AND status = 'queued' AND dispatch_epoch < {_EPOCH_NOW}
    RETURNING dispatch_id
), {pick}{claimed}{_SERVED}"""


CLAIM_ONE = _claim_one("FOR UPDATE")
# The fair path never waits for another thread's epoch row (an interrupt or a submit holds it): it
# tries the next candidate instead.
CLAIM_ONE_SKIP_LOCKED = _claim_one("FOR UPDATE SKIP LOCKED")

# A claim under concurrency limits: the caller holds the advisory lock of each limited scope (taken in
# the statement before, so this statement's snapshot sees every claim committed before the lock was
# granted), and the counts are part of the claim's condition. Only a head of the agent it locked for.
_WITHIN_LIMITS = f"""
   AND d.agent_key = %(agent_key)s
       AND (%(global_limit)s::int IS NULL
            OR (SELECT count(*) FROM {DISPATCH} c WHERE c.status = 'claimed') < %(global_limit)s::int)
       AND (%(agent_limit)s::int IS NULL
            OR (SELECT count(*) FROM {DISPATCH} c WHERE c.status = 'claimed' AND c.agent_key = %(agent_key)s)
               < %(agent_limit)s::int)
       AND (%(owner_limit)s::int IS NULL
            OR (SELECT count(*) FROM {DISPATCH} c JOIN {EPOCH} ce ON ce.thread_id = c.thread_id
                 WHERE c.status = 'claimed' AND ce.owner_key = %(owner_key)s) < %(owner_limit)s::int)"""
CLAIM_ONE_LIMITED = _claim_one("FOR UPDATE", _WITHIN_LIMITS)

# Before a limited claim: the thread's epoch row locked, and the owner and the agent of its head.
_LOCK_THREAD_HEAD = f"""
SELECT e.owner_key,
       (SELECT q.agent_key FROM {DISPATCH} q
         WHERE q.thread_id = e.thread_id AND q.status = 'queued' AND q.dispatch_epoch >= e.current_epoch
           AND q.available_at <= %(now)s
         ORDER BY q.priority, q.created_at, q.dispatch_id LIMIT 1)
  FROM {EPOCH} e WHERE e.thread_id = %(thread_id)s
 FOR UPDATE OF e"""
LOCK_THREAD_HEAD = _LOCK_THREAD_HEAD
LOCK_THREAD_HEAD_SKIP_LOCKED = _LOCK_THREAD_HEAD + " SKIP LOCKED"
SELECT_THREAD_OWNER = f"SELECT owner_key FROM {EPOCH} WHERE thread_id = %(thread_id)s"

LOCK_LIMIT_SCOPES = """
SELECT pg_advisory_xact_lock(hashtextextended('awaken-limit:' || s, 0)) FROM unnest(%(scopes)s::text[]) s
"""

# Fair candidates across threads: each thread's head (its next eligible queued row, or a claim a submit
# took inline that no worker started within the grace), ordered by when its owner was last served,
# then priority and age. Threads executing a dispatch are skipped; with limits, so are heads whose
# agent or owner is at its limit (re-checked under the lock when claimed).
_HEADS = f"""heads AS (
    SELECT DISTINCT ON (u.thread_id) u.* FROM (
        SELECT q.thread_id, q.dispatch_id, q.agent_key, q.priority, q.created_at, q.claim_token
          FROM {DISPATCH} q WHERE q.status = 'queued' AND q.available_at <= %(now)s
        UNION ALL
        SELECT q.thread_id, q.dispatch_id, q.agent_key, q.priority, q.created_at, q.claim_token
          FROM {DISPATCH} q
         WHERE q.status = 'claimed' AND q.dispatch_instance_id IS NULL
           AND q.updated_at <= %(unstarted_before)s
    ) u
     ORDER BY u.thread_id, u.claim_token NULLS LAST, u.priority, u.created_at, u.dispatch_id
)"""
_CANDIDATES = f"""
SELECT h.thread_id, h.dispatch_id, h.claim_token, h.agent_key, COALESCE(e.owner_key, '')
  FROM heads h
  LEFT JOIN {EPOCH} e ON e.thread_id = h.thread_id
  LEFT JOIN mailbox_fair_group g ON g.owner_key = COALESCE(e.owner_key, '')
 WHERE (h.claim_token IS NOT NULL
        OR NOT EXISTS (SELECT 1 FROM {DISPATCH} c WHERE c.thread_id = h.thread_id AND c.status = 'claimed'))
 LIMITS
 ORDER BY COALESCE(g.served_at, 0), h.priority, h.created_at, h.dispatch_id
 LIMIT %(limit)s
"""
FAIR_CANDIDATES = f"WITH {_HEADS}{_CANDIDATES}".replace("LIMITS\n", "")
_HEAD_WITHIN_LIMITS = """AND (h.claim_token IS NOT NULL OR (
        (%(global_limit)s::int IS NULL
         OR COALESCE((SELECT sum(n) FROM busy_agents), 0) < %(global_limit)s::int)
        AND ((%(agent_limits)s::jsonb ->> h.agent_key) IS NULL
             OR COALESCE((SELECT n FROM busy_agents b WHERE b.agent_key = h.agent_key), 0)
                < (%(agent_limits)s::jsonb ->> h.agent_key)::int)
        AND (%(owner_limit)s::int IS NULL
             OR COALESCE((SELECT n FROM busy_owners o WHERE o.owner_key = COALESCE(e.owner_key, '')), 0)
                < %(owner_limit)s::int)))"""
FAIR_CANDIDATES_LIMITED = f"""WITH {_HEADS}, busy_agents AS (
    SELECT agent_key, count(*) AS n FROM {DISPATCH} WHERE status = 'claimed' GROUP BY agent_key
), busy_owners AS (
    SELECT ce.owner_key, count(*) AS n
      FROM {DISPATCH} c JOIN {EPOCH} ce ON ce.thread_id = c.thread_id
     WHERE c.status = 'claimed' GROUP BY ce.owner_key
){_CANDIDATES}""".replace("LIMITS", _HEAD_WITHIN_LIMITS)

# Claimed dispatches counted per limited scope (the why-blocked view and the submit's answer).
CLAIMED_COUNTS = f"""
SELECT (SELECT count(*) FROM {DISPATCH} WHERE status = 'claimed'),
       (SELECT count(*) FROM {DISPATCH} WHERE status = 'claimed' AND agent_key = %(agent_key)s),
       (SELECT count(*) FROM {DISPATCH} c JOIN {EPOCH} ce ON ce.thread_id = c.thread_id
         WHERE c.status = 'claimed' AND ce.owner_key = %(owner_key)s)
"""

# Take over a claim a submit took inline that no worker has started (its hand-over is stuck behind
# other work): a new token, so the late hand-over finds its fence gone and leaves.
# Never waits: a row another transaction holds (its hand-over starting it, another worker taking it
# over) is skipped.
STEAL_UNSTARTED = f"""
WITH e AS (
    SELECT current_epoch FROM {EPOCH} WHERE thread_id = %(thread_id)s
), pick AS (
    SELECT dispatch_id FROM {DISPATCH}
     WHERE dispatch_id = %(dispatch_id)s AND status = 'claimed' AND claim_token = %(old_token)s
       AND dispatch_instance_id IS NULL AND dispatch_epoch >= (SELECT current_epoch FROM e)
     FOR UPDATE SKIP LOCKED
), claimed AS (
UPDATE {DISPATCH} d
   SET claim_token = %(token)s, claimed_by = %(consumer_id)s, lease_until = %(lease_until)s,
       updated_at = %(now)s
  FROM pick
 WHERE d.dispatch_id = pick.dispatch_id
RETURNING {D_COLS}
){_SERVED}"""

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
CLAIM_BY_ID_LIMITED = CLAIM_BY_ID.replace("\nRETURNING", _WITHIN_LIMITS + "\nRETURNING")

MAKE_AVAILABLE = f"""
UPDATE {DISPATCH} SET available_at = %(now)s, updated_at = %(now)s
 WHERE dispatch_id = %(dispatch_id)s AND status = 'queued' AND available_at > %(now)s
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
# The thread's owner is marked served here (round-robin across owners, conf.claim_policy): last in this
# short transaction, so no claim transaction holds the owner's row and it is in no lock cycle.
START = f"""
WITH started AS (
UPDATE {DISPATCH} d
   SET dispatch_instance_id = %(instance_id)s, run_status = 'running', termination = NULL,
       run_response = NULL, run_error = NULL, completed_at = NULL, claimed_by = %(consumer_id)s,
       lease_until = %(lease_until)s, updated_at = %(now)s
{FENCE} AND d.dispatch_instance_id IS NULL
RETURNING {D_COLS}
), served AS (
    INSERT INTO mailbox_fair_group AS g (owner_key, served_at)
    SELECT e.owner_key, %(now)s FROM {EPOCH} e JOIN started s ON s.thread_id = e.thread_id
    ON CONFLICT (owner_key) DO UPDATE SET served_at = GREATEST(g.served_at, EXCLUDED.served_at)
)
SELECT * FROM started
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

# The operator's requeue (DeadLetter -> Queued): fresh attempts, available now, in the thread's current
# epoch (a dispatch requeued after an interrupt would otherwise be superseded at its next claim), and no
# runtime trace of the attempt that dead-lettered (as a nack that requeues). Rows locked by the caller.
SELECT_DEAD_LETTERS = f"""
SELECT {COLS} FROM {DISPATCH}
 WHERE status = 'dead_letter'
   AND (%(ids)s::varchar[] IS NULL OR dispatch_id = ANY(%(ids)s::varchar[]))
   AND (%(thread_id)s::varchar IS NULL OR thread_id = %(thread_id)s::varchar)
 ORDER BY dispatch_id
 FOR UPDATE
"""

REQUEUE_DEAD_LETTERS = f"""
UPDATE {DISPATCH} d
   SET status = 'queued', attempt_count = 0, available_at = %(now)s, completed_at = NULL,
       updated_at = %(now)s,
       dispatch_epoch = COALESCE((SELECT e.current_epoch FROM {EPOCH} e WHERE e.thread_id = d.thread_id), 0),
       dispatch_instance_id = NULL, run_status = NULL, termination = NULL, run_response = NULL,
       run_error = NULL
 WHERE d.dispatch_id = ANY(%(ids)s) AND d.status = 'dead_letter'
RETURNING {D_COLS}
"""

PURGE_TERMINAL = f"""
DELETE FROM {DISPATCH}
 WHERE status IN ('acked', 'cancelled', 'superseded', 'dead_letter') AND updated_at < %(older_than)s
"""

# Threads with no claim whose earliest queued dispatch becomes available in (now, until]: the delayed
# starts the sweep rings ahead of time, each with a countdown to its own time (realtime/doorbells.py).
THREADS_COMING_DUE = f"""
SELECT DISTINCT ON (q.thread_id) q.thread_id, q.dispatch_id, q.available_at FROM {DISPATCH} q
 WHERE q.status = 'queued' AND q.available_at > %(now)s AND q.available_at <= %(until)s
   AND NOT EXISTS (SELECT 1 FROM {DISPATCH} c WHERE c.thread_id = q.thread_id AND c.status = 'claimed')
 ORDER BY q.thread_id, q.available_at
 LIMIT %(limit)s
"""

# Threads with claimable queued work and no claim: the sweep's re-drive set (fixes spec §7.3).
CLAIMABLE_THREADS = f"""
SELECT DISTINCT q.thread_id FROM {DISPATCH} q
 WHERE q.status = 'queued' AND q.available_at <= %(now)s
   AND NOT EXISTS (SELECT 1 FROM {DISPATCH} c WHERE c.thread_id = q.thread_id AND c.status = 'claimed')
 ORDER BY q.thread_id
 LIMIT %(limit)s
"""
