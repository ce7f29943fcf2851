"""Forks of a thread and the journal a replayed run starts with (runs_app/services/fork.py decides what
to copy; these statements copy it).

A fork is a new thread holding a prefix of another thread's log: the messages up to a seq, less the
messages that started runs after the fork point (their input belongs to later turns). The copies keep
their message ids (ids are unique per thread), roles, content, tool calls, the run that produced them
(`run_id`, a run of the source thread: provenance) and their times; their seqs are 1..n in the source's
order. Nothing links the two threads but the fork's metadata (`forked_from`): runs on either never
touch the other.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db import connection

from mailbox_app.contract.storage import AlreadyExists
from runs_app.models import Message, Run

# The runs of a thread created after a run (by creation, then id): the messages that triggered them are
# left out of a fork at that run.
TRIGGERS_AFTER = """
SELECT r.run_id, COALESCE(r.input -> 'trigger_message_ids', '[]'::jsonb), r.request -> 'input_message_ids'
  FROM runs_run r
 WHERE r.thread_id = %(thread_id)s
   AND (%(after_created_at)s::bigint IS NULL
        OR (r.created_at, r.run_id) > (%(after_created_at)s::bigint, %(after_run_id)s::varchar))
"""


def triggers_after(thread_id: str, run: Run | None) -> list[str]:
    """The ids of the messages that started the thread's runs created after `run` (every run's, for
    None)."""
    params = {
        "thread_id": thread_id,
        "after_created_at": None if run is None else run.created_at,
        "after_run_id": None if run is None else run.run_id,
    }
    with connection.cursor() as cursor:
        cursor.execute(TRIGGERS_AFTER, params)
        rows = cursor.fetchall()
    ids: list[str] = []
    for _run_id, triggers, input_ids in rows:
        for value in (triggers, input_ids):
            ids += [str(i) for i in _json_list(value)]
    return ids


def _json_list(value: Any) -> list[Any]:
    if isinstance(value, str):
        value = json.loads(value)
    return value if isinstance(value, list) else []


def produced_up_to(thread_id: str, run: Run) -> int:
    """The last seq of the run's turn: its output (the messages it produced), else its input's end."""
    produced = (
        Message.objects.filter(thread_id=thread_id, run_id=run.run_id)
        .order_by("-seq")
        .values_list("seq", flat=True)
        .first()
    )
    input_end = ((run.input or {}).get("range") or {}).get("to_seq") or 0
    return max(produced or 0, int(input_end))


# The fork: the thread (its owner, title and metadata given), then the source's messages up to `cutoff`
# less `excluded`, renumbered from 1 in the source's order — one statement. Nothing is written when the
# id is taken (by anyone: the caller answers 409 as a create does).
CREATE_FORK = """
WITH src AS (
    SELECT m.*, row_number() OVER (ORDER BY m.seq) AS new_seq
      FROM runs_message m
     WHERE m.thread_id = %(source_thread_id)s AND m.seq <= %(cutoff)s
       AND NOT (m.message_id = ANY (%(excluded)s::varchar[]))
), t AS (
    INSERT INTO runs_thread (id, owner_id, title, metadata, message_count, created_at, updated_at)
    SELECT %(thread_id)s, %(owner_id)s, %(title)s, %(metadata)s::jsonb, (SELECT count(*) FROM src), %(now)s,
           %(now)s
    ON CONFLICT (id) DO NOTHING
    RETURNING id
), m AS (
    INSERT INTO runs_message (thread_id, seq, message_id, role, content, tool_calls, tool_call_id, visibility,
                              run_id, step_index, metadata, created_at)
    SELECT t.id, src.new_seq, src.message_id, src.role, src.content, src.tool_calls, src.tool_call_id,
           src.visibility, src.run_id, src.step_index, src.metadata, src.created_at
      FROM t, src
    RETURNING 1
)
SELECT (SELECT count(*) FROM t), (SELECT count(*) FROM m)
"""


@dataclass(frozen=True, slots=True)
class Fork:
    thread_id: str
    message_count: int


def create_fork(
    *,
    source_thread_id: str,
    thread_id: str,
    owner_id: int,
    title: str | None,
    metadata: dict[str, Any],
    cutoff: int,
    excluded: Sequence[str],
    now: int,
) -> Fork:
    """Create the fork; AlreadyExists (nothing written) when `thread_id` is taken."""
    params: dict[str, Any] = {
        "source_thread_id": source_thread_id,
        "thread_id": thread_id,
        "owner_id": owner_id,
        "title": title,
        "metadata": json.dumps(metadata),
        "cutoff": cutoff,
        "excluded": list(excluded),
        "now": now,
    }
    with connection.cursor() as cursor:
        cursor.execute(CREATE_FORK, params)
        created, copied = cursor.fetchone()  # type: ignore[misc]
    if not created:
        raise AlreadyExists(f"thread already exists: {thread_id}")
    return Fork(thread_id, int(copied))


# --- the journal a replay starts with ----------------------------------------------------------------

JOURNAL_KEYS = "SELECT key FROM runs_step WHERE run_id = %(run_id)s ORDER BY id"


def journal_keys(run_id: str) -> list[str]:
    """The keys of a run's recorded steps, in the order they were recorded."""
    with connection.cursor() as cursor:
        cursor.execute(JOURNAL_KEYS, {"run_id": run_id})
        return [str(row[0]) for row in cursor.fetchall()]


# The steps recorded before `from_step` (journal order) copied into the new run's journal, naming the
# run they come from: its attempts replay them (mailbox_app/store/runs_tables/steps.py) and execute
# `from_step` and every later step anew.
COPY_JOURNAL = """
INSERT INTO runs_step (run_id, key, dispatch_id, session_id, attempt, result, messages, state, result_bytes,
                       recorded_at, input_tokens, output_tokens, cost, copied_from_run_id)
SELECT %(run_id)s, s.key, s.dispatch_id, s.session_id, s.attempt, s.result, s.messages, s.state,
       s.result_bytes, s.recorded_at, s.input_tokens, s.output_tokens, s.cost, s.run_id
  FROM runs_step s
 WHERE s.run_id = %(source_run_id)s
   AND s.id < (SELECT f.id FROM runs_step f WHERE f.run_id = %(source_run_id)s AND f.key = %(from_step)s)
 ORDER BY s.id
"""


def copy_journal(*, source_run_id: str, run_id: str, from_step: str) -> int:
    """Copy the steps the source recorded before `from_step` into `run_id`'s journal; returns how many."""
    with connection.cursor() as cursor:
        cursor.execute(
            COPY_JOURNAL, {"source_run_id": source_run_id, "run_id": run_id, "from_step": from_step}
        )
        return int(cursor.rowcount)
