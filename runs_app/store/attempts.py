"""The run side of an attempt's transactions (the run store's part of spec §4.9-§4.12): a submit
prepares the run its dispatch will activate; a worker's fenced start moves it to Running and its fenced
finish writes the result. Each statement is conditional on who owns the run (its `dispatch_id` /
`session_id` / status), updates the thread's run pointers in the same statement (data-modifying CTEs),
and runs inside the caller's transaction: the mailbox first applies its fenced dispatch update, then one
of these. A run ended by its dispatch's end (cancelled, superseded, dead-lettered) is
mailbox_tables.terminalize_run's, because that statement reads the dispatch table.

The thread pointers a statement sets for the run it wrote (`r`) — the projection of spec §1.9 — are the
same in every statement: latest_run_id = r; active_run_id = r while running, cleared when r leaves it;
open_run_id = r while created / running / waiting, cleared when r ends."""

from __future__ import annotations

import json
from collections.abc import Sequence

from django.db import connection, transaction

from mailbox_app.contract.history import Closer
from mailbox_app.contract.ids import uuid7
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.storage import InvalidInput, NotFound, RunRecord
from runs_app.store.endings import end_run
from runs_app.store.records import existing_message_ids, fetch_run, message_rows, run_params
from runs_app.store.runs import whole_log_input

# --- the submit: a run prepared for its dispatch -----------------------------------------------------

# Ensure and row-lock the thread (the owner is set only when this creates it): seq allocation and the
# thread's pointers serialize on this lock.
LOCK_THREAD = """
INSERT INTO runs_thread AS th (id, owner_id, metadata, message_count, created_at, updated_at)
VALUES (%(thread_id)s, %(owner_id)s, '{}'::jsonb, 0, %(now)s, %(now)s)
ON CONFLICT (id) DO UPDATE SET updated_at = th.updated_at
RETURNING th.message_count, th.owner_id
"""

# Messages appended at seqs base_seq+1.., the run inserted or refreshed (never on another thread, never
# moved out of Done: an existing run is only given the new input, its status and ownership belong to
# whoever runs it), and the thread's pointers — one statement, under the lock LOCK_THREAD took.
PREPARE_RUN = """
WITH m AS (
    INSERT INTO runs_message (thread_id, seq, message_id, role, content, tool_calls, tool_call_id, visibility,
                              run_id, step_index, metadata, created_at)
    SELECT %(thread_id)s, %(base_seq)s + x.ord, x.msg ->> 'message_id', x.msg ->> 'role',
           x.msg -> 'content', NULLIF(x.msg -> 'tool_calls', 'null'::jsonb), x.msg ->> 'tool_call_id',
           x.msg ->> 'visibility', x.msg ->> 'run_id', (x.msg ->> 'step_index')::integer,
           NULLIF(x.msg -> 'metadata', 'null'::jsonb), %(now)s
      FROM jsonb_array_elements(%(messages)s::jsonb) WITH ORDINALITY AS x(msg, ord)
), r AS (
    INSERT INTO runs_run AS run
           (run_id, thread_id, agent_id, parent_run_id, request, input, output, status, termination_reason,
            final_output, error_payload, dispatch_id, session_id, transport_request_id, waiting, outcome,
            created_at, updated_at, started_at, finished_at, steps, input_tokens, output_tokens, state,
            metadata, timeout_ms, deadline_at)
    VALUES (%(run_id)s, %(thread_id)s, %(agent_id)s, %(parent_run_id)s, %(request)s::jsonb,
            %(input)s::jsonb, %(output)s::jsonb, %(status)s, %(termination_reason)s::jsonb,
            %(final_output)s, %(error_payload)s::jsonb, %(dispatch_id)s, %(session_id)s,
            %(transport_request_id)s, %(waiting)s::jsonb, %(outcome)s::jsonb, %(created_at)s,
            %(updated_at)s, %(started_at)s, %(finished_at)s, %(steps)s, %(input_tokens)s,
            %(output_tokens)s, %(state)s::jsonb, %(metadata)s::jsonb, %(timeout_ms)s, %(deadline_at)s)
    ON CONFLICT (run_id) DO UPDATE
       SET request = EXCLUDED.request, input = EXCLUDED.input, updated_at = EXCLUDED.updated_at
     WHERE run.thread_id = EXCLUDED.thread_id AND run.status <> 'done'
    RETURNING run.run_id, run.thread_id, run.status
), t AS (
    UPDATE runs_thread th
       SET latest_run_id = r.run_id,
           active_run_id = CASE WHEN r.status = 'running' THEN r.run_id
                                WHEN th.active_run_id = r.run_id THEN NULL ELSE th.active_run_id END,
           open_run_id = CASE WHEN r.status IN ('running', 'waiting', 'created') THEN r.run_id
                              WHEN th.open_run_id = r.run_id THEN NULL ELSE th.open_run_id END,
           updated_at = %(now)s, message_count = %(base_seq)s + %(count)s,
           parent_thread_id = COALESCE(th.parent_thread_id, %(parent_thread_id)s)
      FROM r WHERE th.id = r.thread_id
)
SELECT count(*) FROM r
"""


def prepare_run(
    *,
    run: RunRecord,
    messages: Sequence[ChatMessage],
    input_trigger_ids: list[str],
    owner_id: int | None,
    now: int,
) -> list[str]:
    """The submit path's write (spec §4.9) in three statements and one transaction: ensure and lock the
    thread (created with `owner_id`), append `messages` (ids already in the log are skipped), insert or
    refresh `run` with its `input` set to the whole log, and point the thread at it. Returns the ids of
    the messages appended. InvalidInput (nothing written) when the run id is taken on another thread
    or the run is done; NotFound (nothing written) when `owner_id` is given and the thread is not theirs."""
    thread_id = run.thread_id
    if not thread_id.strip():
        raise InvalidInput("thread_id must not be empty")
    # joins the submit's transaction without a savepoint (two round trips): an error here fails the submit
    with transaction.atomic(savepoint=False):
        with connection.cursor() as cursor:
            cursor.execute(LOCK_THREAD, {"thread_id": thread_id, "owner_id": owner_id, "now": now})
            base_seq, thread_owner = cursor.fetchone()  # type: ignore[misc]
        if owner_id is not None and thread_owner != owner_id:
            # checked under the thread's row lock, in the transaction that writes: a thread created by
            # another user a moment ago (a race on a new id) is theirs, and nothing of this submit lands
            raise NotFound(f"thread {thread_id} not found")
        rows = message_rows(existing_message_ids(thread_id, messages), messages, uuid7)
        total = base_seq + len(rows)
        stored = run.model_copy(update={"input": whole_log_input(thread_id, total, input_trigger_ids)})
        parent = run.request.parent_thread_id if run.request else None
        params = run_params(stored) | {
            "base_seq": base_seq,
            "count": len(rows),
            "messages": json.dumps(rows),
            "now": now,
            "parent_thread_id": (parent or "").strip() or None,
        }
        with connection.cursor() as cursor:
            cursor.execute(PREPARE_RUN, params)
            written = int(cursor.fetchone()[0])  # type: ignore[index]
        if written != 1:
            raise InvalidInput(f"run {run.run_id} belongs to another thread or is done")
    return [r["message_id"] for r in rows]


# --- the fenced start --------------------------------------------------------------------------------

# Startable: created, waiting, or running (a re-run after the previous attempt lost its lease). Never
# done: a finished run does not move back to Running. A second queued activation of a run that was
# waiting when both were enqueued finds it done (spec §7.7): the worker settles it as already done and
# delivers its own input messages, if it has any, as a new run on the thread (worker/attempt.py
# settle_already_done); its decisions answered a run that is over. A fresh time budget per activation;
# a re-run of a running run (a retry) keeps its deadline.
START_RUN = """
WITH r AS (
    UPDATE runs_run
       SET status = 'running', dispatch_id = %(dispatch_id)s, session_id = %(session_id)s,
           started_at = COALESCE(started_at, %(now)s), waiting = NULL, updated_at = %(now)s,
           finished_at = NULL,
           deadline_at = CASE WHEN status = 'running' AND deadline_at IS NOT NULL THEN deadline_at
                              ELSE %(now)s + timeout_ms END
     WHERE run_id = %(run_id)s AND thread_id = %(thread_id)s AND status IN ('created', 'waiting', 'running')
    RETURNING *
), t AS (
    UPDATE runs_thread th
       SET latest_run_id = r.run_id,
           active_run_id = r.run_id,
           open_run_id = r.run_id,
           updated_at = %(now)s
      FROM r WHERE th.id = r.thread_id
)
SELECT * FROM r
"""


def start_run(
    *, run_id: str, thread_id: str, dispatch_id: str, session_id: str, now: int
) -> RunRecord | None:
    """Move the run to Running for this dispatch attempt and point the thread at it.

    None when the run is missing, on another thread, or done (a finished run never runs again). Call it
    inside the transaction that fenced the dispatch's start."""
    return fetch_run(
        START_RUN,
        {
            "run_id": run_id,
            "thread_id": thread_id,
            "dispatch_id": dispatch_id,
            "session_id": session_id,
            "now": now,
        },
    )


# --- the fenced finish ------------------------------------------------------------------------------

# The attempt's result lands only on the run it started (same dispatch and session, still running), its
# usage with it (the record's sums and per-attempt list, worker/runtime.py `final_run`); the messages it
# produced are appended after the thread's count, which the same statement bumps.
FINISH_RUN = """
WITH r AS (
    UPDATE runs_run
       SET status = %(status)s, termination_reason = %(termination_reason)s::jsonb,
           final_output = %(final_output)s, error_payload = %(error_payload)s::jsonb,
           waiting = %(waiting)s::jsonb, outcome = %(outcome)s::jsonb, output = %(output)s::jsonb,
           finished_at = %(finished_at)s, updated_at = %(updated_at)s, steps = %(steps)s,
           input_tokens = %(input_tokens)s, output_tokens = %(output_tokens)s, cost = %(cost)s,
           usage_attempts = %(usage_attempts)s::jsonb, state = %(state)s::jsonb
     WHERE run_id = %(run_id)s AND thread_id = %(thread_id)s AND status = 'running'
       AND dispatch_id = %(dispatch_id)s AND session_id = %(session_id)s
    RETURNING *
), t AS (
    UPDATE runs_thread th
       SET latest_run_id = r.run_id,
           active_run_id = CASE WHEN r.status = 'running' THEN r.run_id
                                WHEN th.active_run_id = r.run_id THEN NULL ELSE th.active_run_id END,
           open_run_id = CASE WHEN r.status IN ('running', 'waiting', 'created') THEN r.run_id
                              WHEN th.open_run_id = r.run_id THEN NULL ELSE th.open_run_id END,
           updated_at = %(now)s, message_count = th.message_count + %(count)s
      FROM r WHERE th.id = r.thread_id
    RETURNING th.message_count
), m AS (
    INSERT INTO runs_message (thread_id, seq, message_id, role, content, tool_calls, tool_call_id, visibility,
                              run_id, step_index, metadata, created_at)
    SELECT %(thread_id)s, t.message_count - %(count)s + x.ord, x.msg ->> 'message_id', x.msg ->> 'role',
           x.msg -> 'content', NULLIF(x.msg -> 'tool_calls', 'null'::jsonb), x.msg ->> 'tool_call_id',
           x.msg ->> 'visibility', x.msg ->> 'run_id', (x.msg ->> 'step_index')::integer,
           NULLIF(x.msg -> 'metadata', 'null'::jsonb), %(now)s
      FROM t, jsonb_array_elements(%(messages)s::jsonb) WITH ORDINALITY AS x(msg, ord)
)
SELECT * FROM r
"""


def finish_run(
    *, run: RunRecord, messages: Sequence[ChatMessage], dispatch_id: str, session_id: str, now: int
) -> RunRecord | None:
    """Write the attempt's result: the run's final fields, the thread pointers, and `messages` appended
    to the log — only while the run is Running under `(dispatch_id, session_id)`; None otherwise, and
    then nothing is written. Messages whose id is already in the log are skipped (append-only)."""
    rows = message_rows(existing_message_ids(run.thread_id, messages), messages, uuid7)
    params = run_params(run) | {
        "dispatch_id": dispatch_id,
        "session_id": session_id,
        "now": now,
        "count": len(rows),
        "messages": json.dumps(rows),
    }
    return fetch_run(FINISH_RUN, params)


# --- a durably waiting run cancelled by its owner ----------------------------------------------------

# Only while it is still waiting; its closing messages (the suspended calls answered as cancelled)
# appended in the same statement.
CANCEL_WAITING_RUN = """
WITH r AS (
    UPDATE runs_run
       SET status = 'done', termination_reason = '{"type": "cancelled", "value": null}'::jsonb,
           waiting = NULL, finished_at = %(now)s, updated_at = %(now)s
     WHERE run_id = %(run_id)s AND status = 'waiting'
    RETURNING *
), t AS (
    UPDATE runs_thread th
       SET latest_run_id = r.run_id,
           active_run_id = CASE WHEN th.active_run_id = r.run_id THEN NULL ELSE th.active_run_id END,
           open_run_id = CASE WHEN th.open_run_id = r.run_id THEN NULL ELSE th.open_run_id END,
           updated_at = %(now)s, message_count = th.message_count + %(count)s
      FROM r WHERE th.id = r.thread_id
    RETURNING th.message_count
), m AS (
    INSERT INTO runs_message (thread_id, seq, message_id, role, content, tool_calls, tool_call_id, visibility,
                              run_id, step_index, metadata, created_at)
    SELECT %(thread_id)s, t.message_count - %(count)s + x.ord, x.msg ->> 'message_id', x.msg ->> 'role',
           x.msg -> 'content', NULLIF(x.msg -> 'tool_calls', 'null'::jsonb), x.msg ->> 'tool_call_id',
           x.msg ->> 'visibility', x.msg ->> 'run_id', (x.msg ->> 'step_index')::integer,
           NULLIF(x.msg -> 'metadata', 'null'::jsonb), %(now)s
      FROM t, jsonb_array_elements(%(messages)s::jsonb) WITH ORDINALITY AS x(msg, ord)
)
SELECT * FROM r
"""


def cancel_waiting_run(*, run_id: str, now: int, closing: Closer | None = None) -> RunRecord | None:
    """A durably waiting run cancelled by its owner; None when it is no longer waiting. With `closing`,
    its messages (the suspended calls answered as cancelled) are appended in the same statement."""
    return end_run(CANCEL_WAITING_RUN, {"run_id": run_id, "thread_id": None, "now": now}, closing)
