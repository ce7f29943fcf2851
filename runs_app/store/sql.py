"""Hand-written SQL for the run-store writes on the execution path (start, finish, terminalize).

Each statement is conditional on who owns the run (its `dispatch_id` / `session_id` / status), updates
the thread's run pointers in the same statement (data-modifying CTEs), and is meant to run inside the
caller's fenced transaction: the mailbox first applies its fenced dispatch update, then one of these.
Statements use named parameters and are executed through Django's connection.
"""

from __future__ import annotations

from mailbox_app.contract.storage import RunRecord
from mailbox_app.webhooks.outbox import SUBSCRIPTION_URL_OF_R

RUN = "runs_run"
THREAD = "runs_thread"
MESSAGE = "runs_message"
RUN_COLUMNS: tuple[str, ...] = tuple(RunRecord.model_fields)
JSON_COLUMNS = frozenset(
    {"request", "input", "output", "termination_reason", "error_payload", "waiting", "outcome", "state"}
    | {"metadata"}
)
COLS = ", ".join(RUN_COLUMNS)
R_COLS = ", ".join(f"r.{c}" for c in RUN_COLUMNS)

# Thread pointers for a run that just moved to `status` (spec §1.9, the projection of `checkpoint`).
_POINTERS = """
    latest_run_id = r.run_id,
    active_run_id = CASE WHEN r.status = 'running' THEN r.run_id
                         WHEN th.active_run_id = r.run_id THEN NULL ELSE th.active_run_id END,
    open_run_id = CASE WHEN r.status IN ('running', 'waiting', 'created') THEN r.run_id
                       WHEN th.open_run_id = r.run_id THEN NULL ELSE th.open_run_id END,
    updated_at = %(now)s
"""

# A claimed dispatch starts its run. Startable: created, waiting, running (a re-run after the previous
# attempt lost its lease), or done by *another* dispatch with a natural end (a second queued activation
# of a run that was waiting when both were enqueued, spec §7.7: it delivers its own input).
START_RUN = f"""
WITH r AS (
    UPDATE {RUN} SET status = 'running', dispatch_id = %(dispatch_id)s, session_id = %(session_id)s,
           started_at = COALESCE(started_at, %(now)s), waiting = NULL, updated_at = %(now)s,
           finished_at = NULL,
           -- a fresh time budget per activation; a re-run of a running run (a retry) keeps its deadline
           deadline_at = CASE WHEN status = 'running' AND deadline_at IS NOT NULL THEN deadline_at
                              ELSE %(now)s + timeout_ms END,
           termination_reason = CASE WHEN status = 'done' THEN NULL ELSE termination_reason END,
           final_output = CASE WHEN status = 'done' THEN NULL ELSE final_output END,
           error_payload = CASE WHEN status = 'done' THEN NULL ELSE error_payload END,
           outcome = CASE WHEN status = 'done' THEN NULL ELSE outcome END,
           output = CASE WHEN status = 'done' THEN NULL ELSE output END
     WHERE run_id = %(run_id)s AND thread_id = %(thread_id)s
       AND (status IN ('created', 'waiting', 'running')
            OR (status = 'done' AND dispatch_id IS DISTINCT FROM %(dispatch_id)s
                AND termination_reason ->> 'type' = 'natural_end'))
    RETURNING {COLS}
), t AS (
    UPDATE {THREAD} th SET {_POINTERS} FROM r WHERE th.id = r.thread_id
)
SELECT {R_COLS} FROM r
"""

# The attempt's result lands only on the run it started (same dispatch and session, still running).
_FINISHED = (
    "status",
    "termination_reason",
    "final_output",
    "error_payload",
    "waiting",
    "outcome",
    "output",
    "finished_at",
    "updated_at",
    "steps",
    "input_tokens",
    "output_tokens",
    "state",
)
_SET_FINISHED = ", ".join(
    f"{c} = %({c})s::jsonb" if c in JSON_COLUMNS else f"{c} = %({c})s" for c in _FINISHED
)

# The messages a statement appends after the thread CTE `t` bumped `message_count` by %(count)s (seqs
# count+1..), from the JSON array %(messages)s.
_APPEND_AFTER_T = f"""
    INSERT INTO {MESSAGE} (thread_id, seq, message_id, role, content, tool_calls, tool_call_id, visibility,
                           run_id, step_index, metadata, created_at)
    SELECT %(thread_id)s, t.message_count - %(count)s + x.ord, x.msg ->> 'message_id', x.msg ->> 'role',
           x.msg -> 'content', NULLIF(x.msg -> 'tool_calls', 'null'::jsonb), x.msg ->> 'tool_call_id',
           x.msg ->> 'visibility', x.msg ->> 'run_id', (x.msg ->> 'step_index')::integer,
           NULLIF(x.msg -> 'metadata', 'null'::jsonb), %(now)s
      FROM t, jsonb_array_elements(%(messages)s::jsonb) WITH ORDINALITY AS x(msg, ord)
"""

FINISH_RUN = f"""
WITH r AS (
    UPDATE {RUN} SET {_SET_FINISHED}
     WHERE run_id = %(run_id)s AND thread_id = %(thread_id)s AND status = 'running'
       AND dispatch_id = %(dispatch_id)s AND session_id = %(session_id)s
    RETURNING {COLS}
), t AS (
    UPDATE {THREAD} th SET {_POINTERS}, message_count = th.message_count + %(count)s
      FROM r WHERE th.id = r.thread_id
    RETURNING th.message_count
), m AS ({_APPEND_AFTER_T})
SELECT {R_COLS}, {SUBSCRIPTION_URL_OF_R} FROM r
"""

EXISTING_MESSAGE_IDS = f"""
SELECT message_id FROM {MESSAGE} WHERE thread_id = %(thread_id)s AND message_id = ANY(%(ids)s)
"""

# A terminal dispatch ends its run (spec §2.3) — only while the run is not done, is not running under
# another dispatch, no other live (queued / claimed) dispatch will still activate it, and the run has not
# moved on since the dispatch ended (a later dispatch resumed it: reconcile must not end it late). The
# messages closing what the run left open (mailbox_app/contract/history.py) are appended in the same
# statement.
TERMINALIZE_RUN = f"""
WITH r AS (
    UPDATE {RUN} run SET status = 'done', termination_reason = %(termination)s::jsonb,
           error_payload = %(error_payload)s::jsonb, dispatch_id = %(dispatch_id)s,
           session_id = %(session_id)s, waiting = NULL, finished_at = %(now)s, updated_at = %(now)s
     WHERE run.run_id = %(run_id)s AND run.thread_id = %(thread_id)s AND run.status <> 'done'
       AND (run.status <> 'running' OR run.dispatch_id = %(dispatch_id)s)
       AND run.updated_at <= %(ended_at)s
       AND NOT EXISTS (
           SELECT 1 FROM mailbox_dispatch live
            WHERE live.run_id = run.run_id AND live.dispatch_id <> %(dispatch_id)s
              AND live.status IN ('queued', 'claimed'))
    RETURNING {COLS}
), t AS (
    UPDATE {THREAD} th SET {_POINTERS}, message_count = th.message_count + %(count)s
      FROM r WHERE th.id = r.thread_id
    RETURNING th.message_count
), m AS ({_APPEND_AFTER_T})
SELECT {R_COLS} FROM r
"""

# A durably waiting run cancelled by its owner: only while it is still waiting; its closing messages
# (the suspended calls answered as cancelled) appended in the same statement.
CANCEL_WAITING_RUN = f"""
WITH r AS (
    UPDATE {RUN} SET status = 'done', termination_reason = '{{"type": "cancelled", "value": null}}'::jsonb,
           waiting = NULL, finished_at = %(now)s, updated_at = %(now)s
     WHERE run_id = %(run_id)s AND status = 'waiting'
    RETURNING {COLS}
), t AS (
    UPDATE {THREAD} th SET {_POINTERS}, message_count = th.message_count + %(count)s
      FROM r WHERE th.id = r.thread_id
    RETURNING th.message_count
), m AS ({_APPEND_AFTER_T})
SELECT {R_COLS} FROM r
"""

# The run as the statement that ends it will find it: locked, so the closing messages computed from it
# (a waiting run's tickets) still hold when they are written.
SELECT_RUN_FOR_UPDATE = f"SELECT {COLS} FROM {RUN} WHERE run_id = %(run_id)s FOR UPDATE"

SELECT_RUN = f"SELECT {COLS} FROM {RUN} WHERE run_id = %(run_id)s"

# --- the submit path: a run prepared for its dispatch ------------------------------------------------

# Ensure and row-lock the thread (the owner is set only when this creates it): seq allocation and the
# thread's pointers serialize on this lock.
LOCK_THREAD = f"""
INSERT INTO {THREAD} AS th (id, owner_id, metadata, message_count, created_at, updated_at)
VALUES (%(thread_id)s, %(owner_id)s, '{{}}'::jsonb, 0, %(now)s, %(now)s)
ON CONFLICT (id) DO UPDATE SET updated_at = th.updated_at
RETURNING th.message_count, th.owner_id
"""

_RUN_VALUES = ", ".join(f"%({c})s::jsonb" if c in JSON_COLUMNS else f"%({c})s" for c in RUN_COLUMNS)
# An existing run is only given the new input: its status and ownership belong to whoever runs it
# (a prepare that read it waiting must not move back a run an attempt has started since).
_RUN_UPSERT_SET = "request = EXCLUDED.request, input = EXCLUDED.input, updated_at = EXCLUDED.updated_at"

# Messages appended at seqs count+1.., the run inserted or refreshed (never on another thread, never
# moved out of Done), and the thread's pointers — one statement, under the lock taken by LOCK_THREAD.
PREPARE_RUN = f"""
WITH m AS (
    INSERT INTO {MESSAGE} (thread_id, seq, message_id, role, content, tool_calls, tool_call_id, visibility,
                           run_id, step_index, metadata, created_at)
    SELECT %(thread_id)s, %(base_seq)s + x.ord, x.msg ->> 'message_id', x.msg ->> 'role',
           x.msg -> 'content', NULLIF(x.msg -> 'tool_calls', 'null'::jsonb), x.msg ->> 'tool_call_id',
           x.msg ->> 'visibility', x.msg ->> 'run_id', (x.msg ->> 'step_index')::integer,
           NULLIF(x.msg -> 'metadata', 'null'::jsonb), %(now)s
      FROM jsonb_array_elements(%(messages)s::jsonb) WITH ORDINALITY AS x(msg, ord)
), r AS (
    INSERT INTO {RUN} AS run ({COLS}) VALUES ({_RUN_VALUES})
    ON CONFLICT (run_id) DO UPDATE SET {_RUN_UPSERT_SET}
     WHERE run.thread_id = EXCLUDED.thread_id AND run.status <> 'done'
    RETURNING run.run_id, run.thread_id, run.status
), t AS (
    UPDATE {THREAD} th SET {_POINTERS}, message_count = %(base_seq)s + %(count)s,
           parent_thread_id = COALESCE(th.parent_thread_id, %(parent_thread_id)s)
      FROM r WHERE th.id = r.thread_id
)
SELECT count(*) FROM r
"""

THREAD_COLUMNS: tuple[str, ...] = (
    "id", "owner_id", "resource_id", "parent_thread_id", "title", "metadata", "open_run_id",
    "active_run_id", "latest_run_id", "message_count", "created_at", "updated_at",
)  # fmt: skip

# The thread and its latest run (spec §7.10 order) in one round trip, for the submit path.
THREAD_AND_LATEST_RUN = f"""
SELECT {", ".join(f"th.{c}" for c in THREAD_COLUMNS)}, {R_COLS}
  FROM (SELECT 1) one
  LEFT JOIN {THREAD} th ON th.id = %(thread_id)s
  LEFT JOIN LATERAL (
      SELECT * FROM {RUN} WHERE thread_id = %(thread_id)s
       ORDER BY updated_at DESC, created_at DESC, run_id DESC LIMIT 1
  ) r ON true
"""

MESSAGE_COLUMNS: tuple[str, ...] = (
    "message_id", "thread_id", "seq", "role", "content", "tool_calls", "tool_call_id", "visibility",
    "run_id", "step_index", "metadata", "created_at",
)  # fmt: skip

MESSAGES_BY_ID = f"""
SELECT {", ".join(MESSAGE_COLUMNS)} FROM {MESSAGE}
 WHERE thread_id = %(thread_id)s AND message_id = ANY(%(ids)s) ORDER BY seq
"""
