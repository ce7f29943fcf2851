"""Every statement of runs_app that reads or writes one of the mailbox's tables (`mailbox_dispatch`,
`mailbox_thread_epoch`; a thread's inbox and schedule rows): the end of a run by its dispatch's end, the
reconcile's candidates, an operator's reopen of a dead-lettered run, and the mailbox rows a thread's
delete removes. (The thread
status view, runs_app/migrations/0008_thread_status_view.py, reads the dispatch table too.) Nothing else
in runs_app names a mailbox table; mailbox_app/store/runs_tables/ is the mirror on the other side (the
step journal in runs_app's `runs_step`, the fused transitions)."""

from __future__ import annotations

import json
from typing import Any

from django.db import connection, transaction

from mailbox_app.contract.history import Closer
from mailbox_app.contract.lifecycle import OPERATOR_RUN_TRANSITIONS, RunEdge, RunReopen
from mailbox_app.contract.storage import RunRecord, TerminationReason
from runs_app.models import Run, Thread
from runs_app.store.endings import end_run
from runs_app.store.records import to_json

# A terminal dispatch ends its run (spec §2.3) — only while the run is not done, is not running under
# another dispatch, no other live (queued / claimed) dispatch will still activate it, and the run has not
# moved on since the dispatch ended (a later dispatch resumed it: reconcile must not end it late). The
# messages closing what the run left open (mailbox_app/contract/history.py) are appended in the same
# statement.
TERMINALIZE_RUN = """
WITH r AS (
    UPDATE runs_run run
       SET status = 'done', termination_reason = %(termination)s::jsonb,
           error_payload = %(error_payload)s::jsonb, dispatch_id = %(dispatch_id)s,
           session_id = %(session_id)s, waiting = NULL, finished_at = %(now)s, updated_at = %(now)s
     WHERE run.run_id = %(run_id)s AND run.thread_id = %(thread_id)s AND run.status <> 'done'
       AND (run.status <> 'running' OR run.dispatch_id = %(dispatch_id)s)
       AND run.updated_at <= %(ended_at)s
       AND NOT EXISTS (
           SELECT 1 FROM mailbox_dispatch live
            WHERE live.run_id = run.run_id AND live.dispatch_id <> %(dispatch_id)s
              AND live.status IN ('queued', 'claimed'))
    RETURNING run.*
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


def terminalize_run(
    *,
    run_id: str,
    thread_id: str,
    dispatch_id: str,
    session_id: str | None,
    termination: TerminationReason,
    error_payload: Any,
    now: int,
    ended_at: int | None = None,
    closing: Closer | None = None,
) -> RunRecord | None:
    """End a run whose dispatch ended terminally (cancelled / superseded / dead letter), only while it is
    not done, not running under another dispatch, and no other live dispatch will activate it. With
    `closing`, the messages it computes from the run (locked first) are appended in the same statement:
    what the run left open is closed exactly when it ends, and never when it does not."""
    params = {
        "run_id": run_id,
        "thread_id": thread_id,
        "dispatch_id": dispatch_id,
        "session_id": session_id,
        "termination": json.dumps(termination.model_dump(mode="json")),
        "error_payload": to_json(error_payload),
        "now": now,
        "ended_at": now if ended_at is None else ended_at,
    }
    return end_run(TERMINALIZE_RUN, params, closing)


# Cancelled / superseded / dead-lettered dispatches whose run is not done yet: one indexed join (runs by
# status, dispatches by run id) instead of paging every terminal dispatch.
TERMINAL_DISPATCHES_WITH_OPEN_RUNS = """
SELECT d.dispatch_id FROM runs_run r
  JOIN mailbox_dispatch d ON d.run_id = r.run_id AND d.thread_id = r.thread_id
 WHERE r.status <> 'done' AND d.status IN ('cancelled', 'superseded', 'dead_letter')
   AND NOT EXISTS (SELECT 1 FROM mailbox_dispatch live
                    WHERE live.run_id = r.run_id AND live.status IN ('queued', 'claimed'))
 ORDER BY d.updated_at
 LIMIT %(limit)s
"""


def terminal_dispatches_with_open_runs(*, limit: int) -> list[str]:
    """Ids of cancelled / superseded / dead-lettered dispatches whose run is not done yet."""
    with connection.cursor() as cursor:
        cursor.execute(TERMINAL_DISPATCHES_WITH_OPEN_RUNS, {"limit": limit})
        return [row[0] for row in cursor.fetchall()]


# The one edge reopen_run takes, read from the lifecycle's table (Done -> Created).
_REOPEN_FROM, _REOPEN_TO = OPERATOR_RUN_TRANSITIONS[RunEdge.REQUEUE_DEAD_LETTER]

# the dispatch an operator requeues, as the reopen must find it: this run's, and still dead-lettered
_DEAD_LETTER_OF_RUN = """
SELECT 1 FROM mailbox_dispatch WHERE dispatch_id = %(dispatch_id)s AND run_id = %(run_id)s
   AND status = 'dead_letter'
"""


def reopen_run(*, run_id: str, dispatch_id: str, now: int) -> RunReopen:
    """An operator requeues the dead-lettered dispatch `dispatch_id` of run `run_id`: a run that dead
    letter ended goes back to Created by the lifecycle's REQUEUE_DEAD_LETTER edge (contract/lifecycle.py),
    so the work's new result lands on the run the client knows. Call it in the requeue's transaction,
    before the dispatch moves, with the dispatch row locked.

    REFUSED (nothing written) for a run that ended naturally, or that another dispatch ended (say, a
    later one that was acked), or when the dispatch is not the run's dead letter. A run that is not done
    takes the requeued dispatch as it is (OPEN); its `updated_at` moves on, so a reconcile of the old
    dead letter that is already under way cannot end it late (TERMINALIZE_RUN checks it)."""
    with transaction.atomic():
        run = Run.objects.select_for_update().filter(run_id=run_id).first()
        if run is None:
            return RunReopen.MISSING
        if run.status != _REOPEN_FROM.value:
            Run.objects.filter(run_id=run_id).update(updated_at=max(run.updated_at, now))
            return RunReopen.OPEN
        termination = run.termination_reason if isinstance(run.termination_reason, dict) else {}
        with connection.cursor() as cursor:
            cursor.execute(_DEAD_LETTER_OF_RUN, {"dispatch_id": dispatch_id, "run_id": run_id})
            dead_letter = cursor.fetchone() is not None
        if (
            not dead_letter
            or run.dispatch_id not in (None, dispatch_id)
            or termination.get("type") == "natural_end"
        ):
            return RunReopen.REFUSED
        run.status = _REOPEN_TO.value
        run.termination_reason = run.error_payload = run.finished_at = None
        run.updated_at = now
        run.save()
        thread = Thread.objects.select_for_update().get(id=run.thread_id)
        thread.open_run_id, thread.latest_run_id, thread.updated_at = run_id, run_id, now
        thread.save(update_fields=["open_run_id", "latest_run_id", "updated_at"])
    return RunReopen.REOPENED


# A thread's delete, the rows without a foreign key to the thread: its dispatches, its epoch row, the
# owner's idempotency keys whose stored answer names it (a replay would name a thread that is gone), its
# inbox rows (docs/inbox.md: its debounce window, its pause) and its schedules with their
# django-celery-beat rows (beat is told through its change row, as its own signals would).
DELETE_UNLINKED = """
WITH d AS (DELETE FROM mailbox_dispatch WHERE thread_id = %(thread_id)s RETURNING 1),
     e AS (DELETE FROM mailbox_thread_epoch WHERE thread_id = %(thread_id)s RETURNING 1),
     k AS (DELETE FROM runs_idempotency
            WHERE user_id = %(owner_id)s AND response ->> 'thread_id' = %(thread_id)s RETURNING 1),
     w AS (DELETE FROM mailbox_inbox_window WHERE thread_id = %(thread_id)s RETURNING 1),
     p AS (DELETE FROM mailbox_pause WHERE scope = 'thread' AND key = %(thread_id)s RETURNING 1),
     s AS (DELETE FROM mailbox_schedule WHERE thread_id = %(thread_id)s RETURNING periodic_task_id),
     t AS (DELETE FROM django_celery_beat_periodictask
            WHERE id IN (SELECT periodic_task_id FROM s) RETURNING 1),
     b AS (INSERT INTO django_celery_beat_periodictasks (ident, last_update)
           SELECT 1, now() WHERE EXISTS (SELECT 1 FROM t)
           ON CONFLICT (ident) DO UPDATE SET last_update = EXCLUDED.last_update RETURNING 1)
SELECT (SELECT count(*) FROM d), (SELECT count(*) FROM e), (SELECT count(*) FROM k), (SELECT count(*) FROM s),
       (SELECT count(*) FROM b)
"""


def delete_unlinked(*, thread_id: str, owner_id: int | None) -> tuple[int, int, int, int]:
    """Inside the thread delete's transaction (holding the thread's row lock): delete its dispatches, its
    epoch row, the owner's idempotency keys that name it, its inbox rows and its schedules; how many
    dispatches, epoch rows, keys and schedules went."""
    with connection.cursor() as cursor:
        cursor.execute(DELETE_UNLINKED, {"thread_id": thread_id, "owner_id": owner_id})
        dispatches, epochs, keys, schedules, _ = cursor.fetchone()  # type: ignore[misc]
    return int(dispatches), int(epochs), int(keys), int(schedules)
