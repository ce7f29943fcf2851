"""The thread/run store on PostgreSQL: append-only message log, run records, thread run pointers.

Fixes spec §7.1: history is never rewritten; `seq` is allocated under the thread's row lock.
Every function is one transaction.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from typing import Any

from django.db import IntegrityError, connection, transaction

from mailbox_app.contract.history import Closer
from mailbox_app.contract.ids import now_ms, uuid7
from mailbox_app.contract.lifecycle import (
    OPERATOR_RUN_TRANSITIONS,
    RunEdge,
    RunReopen,
    RunStatus,
    can_run_transition,
)
from mailbox_app.contract.message import ChatMessage, MessageRecord, MessageSeqRange, RunMessageInput
from mailbox_app.contract.storage import (
    AlreadyExists,
    InvalidInput,
    NotFound,
    RunPage,
    RunRecord,
    TerminationReason,
    ThreadRecord,
)
from mailbox_app.webhooks import outbox
from runs_app.models import Message, Run, Thread
from runs_app.store import sql

MAX_RUN_PAGE = 200
_RUN_FIELDS = [f for f in RunRecord.model_fields if f not in {"run_id", "thread_id"}]


# --- conversions ------------------------------------------------------------------------------


def _thread_record(row: Thread) -> ThreadRecord:
    return ThreadRecord(
        id=row.id,
        owner_id=row.owner_id,
        resource_id=row.resource_id,
        parent_thread_id=row.parent_thread_id,
        title=row.title,
        metadata=row.metadata or {},
        open_run_id=row.open_run_id,
        active_run_id=row.active_run_id,
        latest_run_id=row.latest_run_id,
        message_count=row.message_count,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _run_record(row: Run) -> RunRecord:
    data = {name: getattr(row, name) for name in _RUN_FIELDS}
    return RunRecord.model_validate({"run_id": row.run_id, "thread_id": row.thread_id, **data})


def _run_columns(run: RunRecord) -> dict[str, Any]:
    dumped = run.model_dump(mode="json")
    return {name: dumped[name] for name in _RUN_FIELDS}


def _message_record(row: Message) -> MessageRecord:
    message = ChatMessage.model_validate(
        {
            "id": row.message_id,
            "role": row.role,
            "content": row.content,
            "tool_calls": row.tool_calls,
            "tool_call_id": row.tool_call_id,
            "visibility": row.visibility,
            "metadata": row.metadata,
        }
    )
    return MessageRecord(
        message_id=row.message_id,
        thread_id=row.thread_id,
        seq=row.seq,
        message=message,
        produced_by_run_id=row.run_id,
        step_index=row.step_index,
        tool_call_id=row.tool_call_id,
        created_at=row.created_at,
    )


# --- threads ----------------------------------------------------------------------------------


def load_thread(*, thread_id: str) -> ThreadRecord | None:
    row = Thread.objects.filter(id=thread_id).first()
    return None if row is None else _thread_record(row)


def load_thread_and_latest_run(*, thread_id: str) -> tuple[ThreadRecord | None, RunRecord | None]:
    """`load_thread` and `latest_run` in one round trip (the submit path reads both)."""
    with connection.cursor() as cursor:
        cursor.execute(sql.THREAD_AND_LATEST_RUN, {"thread_id": thread_id})
        row = cursor.fetchone()
    assert row is not None
    width = len(sql.THREAD_COLUMNS)
    thread = None
    if row[0] is not None:
        data = dict(zip(sql.THREAD_COLUMNS, row[:width], strict=True))
        if isinstance(data["metadata"], str):
            data["metadata"] = json.loads(data["metadata"])
        data["metadata"] = data["metadata"] or {}
        thread = ThreadRecord.model_validate(data)
    latest = None if row[width] is None else _run_from_row(row[width:])
    return thread, latest


def load_threads(*, thread_ids: Collection[str]) -> dict[str, ThreadRecord]:
    """The threads of `thread_ids` that exist, by id, in one query (a page of them)."""
    rows = Thread.objects.filter(id__in=list(thread_ids)) if thread_ids else []
    return {row.id: _thread_record(row) for row in rows}


def ensure_thread(*, thread_id: str, owner_id: int | None = None, now: int | None = None) -> ThreadRecord:
    """Create the thread if it does not exist (owner only set on creation)."""
    stamp = now_ms() if now is None else now
    row, _ = Thread.objects.get_or_create(
        id=thread_id, defaults={"owner_id": owner_id, "created_at": stamp, "updated_at": stamp}
    )
    return _thread_record(row)


def _lock_thread(thread_id: str, now: int) -> Thread:
    """Row-lock the thread (creating it first if needed): serializes seq allocation and projections."""
    if not thread_id.strip():
        raise InvalidInput("thread_id must not be empty")
    existing = Thread.objects.select_for_update().filter(id=thread_id).first()
    if existing is not None:
        return existing
    Thread.objects.bulk_create([Thread(id=thread_id, created_at=now, updated_at=now)], ignore_conflicts=True)
    return Thread.objects.select_for_update().get(id=thread_id)


# --- messages ---------------------------------------------------------------------------------


def _append_locked(thread: Thread, messages: Sequence[ChatMessage], now: int) -> list[MessageRecord]:
    """Append under the held thread lock; messages whose id is already in the log are skipped."""
    ids = [m.id for m in messages if m.id]
    existing = set(
        Message.objects.filter(thread_id=thread.id, message_id__in=ids).values_list("message_id", flat=True)
    )
    rows: list[Message] = []
    seen: set[str] = set()
    for message in messages:
        message_id = message.id or uuid7()
        if message_id in existing or message_id in seen:
            continue
        seen.add(message_id)
        thread.message_count += 1
        meta = message.metadata or {}
        rows.append(
            Message(
                thread_id=thread.id,
                seq=thread.message_count,
                message_id=message_id,
                role=message.role.value,
                content=message.content,
                tool_calls=None
                if message.tool_calls is None
                else [c.model_dump(mode="json") for c in message.tool_calls],
                tool_call_id=message.tool_call_id,
                visibility=message.visibility.value,
                run_id=meta.get("run_id"),
                step_index=meta.get("step_index"),
                metadata=message.metadata,
                created_at=now,
            )
        )
    if rows:
        Message.objects.bulk_create(rows)
    return [_message_record(r) for r in rows]


def append_messages(
    *, thread_id: str, messages: Sequence[ChatMessage], now: int | None = None
) -> list[MessageRecord]:
    """Append messages to the thread log (creating the thread); returns the new records in seq order."""
    stamp = now_ms() if now is None else now
    with transaction.atomic():
        thread = _lock_thread(thread_id, stamp)
        records = _append_locked(thread, messages, stamp)
        thread.updated_at = stamp
        thread.save(update_fields=["message_count", "updated_at"])
    return records


def load_messages(*, thread_id: str, include_internal: bool = True) -> list[ChatMessage] | None:
    """The thread's messages in seq order, or None when it has none."""
    qs = Message.objects.filter(thread_id=thread_id).order_by("seq")
    if not include_internal:
        qs = qs.filter(visibility="all")
    messages = [_message_record(row).message for row in qs]
    return messages or None


def list_message_records(
    *, thread_id: str, offset: int = 0, limit: int = 50, include_internal: bool = False
) -> tuple[list[MessageRecord], int]:
    qs = Message.objects.filter(thread_id=thread_id)
    if not include_internal:
        qs = qs.filter(visibility="all")
    total = qs.count()
    rows = qs.order_by("seq")[max(offset, 0) : max(offset, 0) + max(min(limit, MAX_RUN_PAGE), 0)]
    return [_message_record(r) for r in rows], total


def load_message_record(*, thread_id: str, message_id: str) -> MessageRecord | None:
    row = Message.objects.filter(thread_id=thread_id, message_id=message_id).first()
    return None if row is None else _message_record(row)


def load_message_records(*, thread_id: str, message_ids: Sequence[str]) -> list[MessageRecord]:
    """The records of `message_ids` on the thread, in seq order (absent ids are left out). Raw SQL: the
    fenced start reads these on every activation."""
    with connection.cursor() as cursor:
        cursor.execute(sql.MESSAGES_BY_ID, {"thread_id": thread_id, "ids": list(message_ids)})
        rows = cursor.fetchall()
    return [_message_from_row(row) for row in rows]


def _message_from_row(row: Sequence[Any]) -> MessageRecord:
    data = dict(zip(sql.MESSAGE_COLUMNS, row, strict=True))
    for name in ("content", "tool_calls", "metadata"):
        if isinstance(data[name], str):
            data[name] = json.loads(data[name])
    message = ChatMessage.model_validate(
        {
            "id": data["message_id"],
            "role": data["role"],
            "content": data["content"],
            "tool_calls": data["tool_calls"],
            "tool_call_id": data["tool_call_id"],
            "visibility": data["visibility"],
            "metadata": data["metadata"],
        }
    )
    return MessageRecord(
        message_id=data["message_id"],
        thread_id=data["thread_id"],
        seq=data["seq"],
        message=message,
        produced_by_run_id=data["run_id"],
        step_index=data["step_index"],
        tool_call_id=data["tool_call_id"],
        created_at=data["created_at"],
    )


def load_message_records_range(*, thread_id: str, from_seq: int, to_seq: int) -> list[MessageRecord]:
    """Records with `from_seq <= seq <= to_seq` (1-based, inclusive)."""
    rows = Message.objects.filter(thread_id=thread_id, seq__gte=from_seq, seq__lte=to_seq).order_by("seq")
    return [_message_record(r) for r in rows]


# --- runs -------------------------------------------------------------------------------------


def load_run(*, run_id: str) -> RunRecord | None:
    row = Run.objects.filter(run_id=run_id).first()
    return None if row is None else _run_record(row)


def load_runs(*, run_ids: Collection[str]) -> dict[str, RunRecord]:
    """The runs of `run_ids` that exist, by id, in one query (a page of them)."""
    rows = Run.objects.filter(run_id__in=list(run_ids)) if run_ids else []
    return {row.run_id: _run_record(row) for row in rows}


def latest_run(*, thread_id: str) -> RunRecord | None:
    """The most recently updated run; ties broken by created_at then run_id (fixes spec §7.10)."""
    row = Run.objects.filter(thread_id=thread_id).order_by("-updated_at", "-created_at", "-run_id").first()
    return None if row is None else _run_record(row)


def list_runs(
    *,
    status: RunStatus | None = None,
    thread_id: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> RunPage:
    limit = max(1, min(limit, MAX_RUN_PAGE))
    offset = max(offset, 0)
    qs = Run.objects.all()
    if status is not None:
        qs = qs.filter(status=RunStatus(status).value)
    if thread_id is not None:
        qs = qs.filter(thread_id=thread_id)
    total = qs.count()
    rows = list(qs.order_by("created_at", "run_id")[offset : offset + limit])
    return RunPage(items=[_run_record(r) for r in rows], total=total, has_more=offset + len(rows) < total)


def create_run(*, run: RunRecord) -> RunRecord:
    """Insert a new run (its thread must exist or is created); AlreadyExists when the id is taken."""
    try:
        with transaction.atomic():
            _lock_thread(run.thread_id, run.created_at or now_ms())
            Run.objects.create(run_id=run.run_id, thread_id=run.thread_id, **_run_columns(run))
    except IntegrityError:
        raise AlreadyExists(f"run {run.run_id} already exists") from None
    return run


def checkpoint(
    *,
    thread_id: str,
    messages: Sequence[ChatMessage],
    run: RunRecord,
    now: int | None = None,
    input_trigger_ids: list[str] | None = None,
) -> list[MessageRecord]:
    """Atomically append `messages`, upsert `run` and apply the run projection to the thread (§1.9).

    The log is append-only: messages already present (by id) are skipped, nothing is rewritten.
    A run that is already Done is never moved back (status rule of spec §1.8). With
    `input_trigger_ids`, the run's `input` is set to the whole log (1..last seq) under the same lock.
    """
    if run.thread_id != thread_id:
        raise InvalidInput(f"run {run.run_id} belongs to thread {run.thread_id}, not {thread_id}")
    stamp = now_ms() if now is None else now
    with transaction.atomic():
        thread = _lock_thread(thread_id, stamp)
        records = _append_locked(thread, messages, stamp)
        if input_trigger_ids is not None:
            total = thread.message_count
            run = run.model_copy(update={"input": _whole_log_input(thread_id, total, input_trigger_ids)})
        current = (
            Run.objects.select_for_update().filter(run_id=run.run_id).values("thread_id", "status").first()
        )
        if current is not None:
            if current["thread_id"] != thread_id:
                raise InvalidInput(f"run {run.run_id} belongs to thread {current['thread_id']}")
            if not can_run_transition(RunStatus(current["status"]), run.status):
                raise InvalidInput(
                    f"run {run.run_id}: {current['status']} -> {run.status.value} is not allowed"
                )
            Run.objects.filter(run_id=run.run_id).update(**_run_columns(run))
        else:
            Run.objects.create(run_id=run.run_id, thread_id=thread_id, **_run_columns(run))
        _apply_run_projection(thread, run)
        thread.updated_at = stamp
        thread.save()
    return records


def _whole_log_input(thread_id: str, total: int, trigger_ids: list[str]) -> RunMessageInput:
    """A prepared run's input: the whole log (1..last seq) and the messages that triggered it."""
    return RunMessageInput(
        thread_id=thread_id,
        range=MessageSeqRange(from_seq=1, to_seq=total) if total > 0 else None,
        trigger_message_ids=trigger_ids,
    )


def _apply_run_projection(thread: Thread, run: RunRecord) -> None:
    thread.latest_run_id = run.run_id
    if thread.parent_thread_id is None and run.request and run.request.parent_thread_id:
        thread.parent_thread_id = run.request.parent_thread_id.strip() or None
    if run.status is RunStatus.CREATED:
        thread.active_run_id, thread.open_run_id = None, run.run_id
    elif run.status is RunStatus.RUNNING:
        thread.active_run_id, thread.open_run_id = run.run_id, run.run_id
    elif run.status is RunStatus.WAITING:
        thread.active_run_id, thread.open_run_id = None, run.run_id
    else:
        if thread.active_run_id == run.run_id:
            thread.active_run_id = None
        if thread.open_run_id == run.run_id:
            thread.open_run_id = None


# --- fenced attempt writes (run inside the mailbox's fenced transaction) ------------------------------


def _run_from_row(row: Sequence[Any]) -> RunRecord:
    data = dict(zip(sql.RUN_COLUMNS, row, strict=True))
    for name in sql.JSON_COLUMNS:
        if isinstance(data[name], str):
            data[name] = json.loads(data[name])
    return RunRecord.model_validate(data)


def _fetch_run(query: str, params: dict[str, Any]) -> RunRecord | None:
    with connection.cursor() as cursor:
        cursor.execute(query, params)
        row = cursor.fetchone()
    return None if row is None else _run_from_row(row)


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _run_params(run: RunRecord) -> dict[str, Any]:
    """The run's columns as statement parameters (JSON columns as JSON text)."""
    dumped = run.model_dump(mode="json")
    return {
        name: _json(dumped[name]) if name in sql.JSON_COLUMNS else dumped[name] for name in sql.RUN_COLUMNS
    }


def start_run(
    *, run_id: str, thread_id: str, dispatch_id: str, session_id: str, now: int
) -> RunRecord | None:
    """Move the run to Running for this dispatch attempt and point the thread at it.

    None when the run is missing, on another thread, or not startable (done by this dispatch, or done
    without a natural end). Call it inside the transaction that fenced the dispatch's start."""
    return _fetch_run(
        sql.START_RUN,
        {
            "run_id": run_id,
            "thread_id": thread_id,
            "dispatch_id": dispatch_id,
            "session_id": session_id,
            "now": now,
        },
    )


def finish_run(
    *, run: RunRecord, messages: Sequence[ChatMessage], dispatch_id: str, session_id: str, now: int
) -> RunRecord | None:
    """Write the attempt's result: the run's final fields, the thread pointers, and `messages` appended
    to the log — only while the run is Running under `(dispatch_id, session_id)`; None otherwise, and
    then nothing is written. Messages whose id is already in the log are skipped (append-only)."""
    rows = _message_rows(run.thread_id, messages)
    params = _run_params(run)
    params |= {
        "dispatch_id": dispatch_id,
        "session_id": session_id,
        "now": now,
        "count": len(rows),
        "messages": json.dumps(rows),
    }
    with connection.cursor() as cursor:
        cursor.execute(sql.FINISH_RUN, params)
        row = cursor.fetchone()
    if row is None:
        return None
    # the statement read the run's webhook subscription too: the outbox needs no lookup of its own
    written = _run_from_row(row[:-1])
    outbox.note_subscription(written, row[-1])
    return written


def _message_rows(thread_id: str, messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    explicit = [m.id for m in messages if m.id]
    existing: set[str] = set()
    if explicit:
        with connection.cursor() as cursor:
            cursor.execute(sql.EXISTING_MESSAGE_IDS, {"thread_id": thread_id, "ids": explicit})
            existing = {row[0] for row in cursor.fetchall()}
    rows: list[dict[str, Any]] = []
    for message in messages:
        message_id = message.id or uuid7()
        if message_id in existing:
            continue
        existing.add(message_id)
        meta = message.metadata or {}
        rows.append(
            {
                "message_id": message_id,
                "role": message.role.value,
                "content": message.content,
                "tool_calls": None
                if message.tool_calls is None
                else [c.model_dump(mode="json") for c in message.tool_calls],
                "tool_call_id": message.tool_call_id,
                "visibility": message.visibility.value,
                "run_id": meta.get("run_id"),
                "step_index": meta.get("step_index"),
                "metadata": message.metadata,
            }
        )
    return rows


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
        "error_payload": _json(error_payload),
        "now": now,
        "ended_at": now if ended_at is None else ended_at,
    }
    return _end_run(sql.TERMINALIZE_RUN, params, closing)


def _end_run(statement: str, params: dict[str, Any], closing: Closer | None) -> RunRecord | None:
    """Run a statement that ends a run; with `closing`, the messages it computes from the run (read under
    the row lock the statement then updates it under) are appended by the statement."""
    if closing is None and params["thread_id"]:
        return _fetch_run(statement, params | {"count": 0, "messages": "[]"})
    with transaction.atomic(savepoint=False):
        current = _fetch_run(sql.SELECT_RUN_FOR_UPDATE, {"run_id": params["run_id"]})
        if current is None or current.status is RunStatus.DONE:
            return None
        thread_id = params["thread_id"] or current.thread_id
        rows = _message_rows(thread_id, [] if closing is None else closing(current))
        params = params | {"thread_id": thread_id, "count": len(rows), "messages": json.dumps(rows)}
        return _fetch_run(statement, params)


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
            cursor.execute(sql.LOCK_THREAD, {"thread_id": thread_id, "owner_id": owner_id, "now": now})
            base_seq, thread_owner = cursor.fetchone()  # type: ignore[misc]
        if owner_id is not None and thread_owner != owner_id:
            # checked under the thread's row lock, in the transaction that writes: a thread created by
            # another user a moment ago (a race on a new id) is theirs, and nothing of this submit lands
            raise NotFound(f"thread {thread_id} not found")
        rows = _message_rows(thread_id, messages)
        total = base_seq + len(rows)
        stored = run.model_copy(update={"input": _whole_log_input(thread_id, total, input_trigger_ids)})
        params = _run_params(stored)
        parent = run.request.parent_thread_id if run.request else None
        params |= {
            "base_seq": base_seq,
            "count": len(rows),
            "messages": json.dumps(rows),
            "now": now,
            "parent_thread_id": (parent or "").strip() or None,
        }
        with connection.cursor() as cursor:
            cursor.execute(sql.PREPARE_RUN, params)
            written = int(cursor.fetchone()[0])  # type: ignore[index]
        if written != 1:
            raise InvalidInput(f"run {run.run_id} belongs to another thread or is done")
    return [r["message_id"] for r in rows]


def cancel_waiting_run(*, run_id: str, now: int, closing: Closer | None = None) -> RunRecord | None:
    """A durably waiting run cancelled by its owner; None when it is no longer waiting. With `closing`,
    its messages (the suspended calls answered as cancelled) are appended in the same statement."""
    return _end_run(sql.CANCEL_WAITING_RUN, {"run_id": run_id, "thread_id": None, "now": now}, closing)


def require_run(*, run_id: str) -> RunRecord:
    run = load_run(run_id=run_id)
    if run is None:
        raise NotFound(f"run {run_id} not found")
    return run


def terminal_dispatches_with_open_runs(*, limit: int) -> list[str]:
    """Ids of cancelled / superseded / dead-lettered dispatches whose run is not done yet.

    One indexed join (runs by status, dispatches by run id) instead of paging every terminal dispatch.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT d.dispatch_id FROM runs_run r
              JOIN mailbox_dispatch d ON d.run_id = r.run_id AND d.thread_id = r.thread_id
             WHERE r.status <> 'done' AND d.status IN ('cancelled', 'superseded', 'dead_letter')
               AND NOT EXISTS (
                   SELECT 1 FROM mailbox_dispatch live
                    WHERE live.run_id = r.run_id AND live.status IN ('queued', 'claimed'))
             ORDER BY d.updated_at
             LIMIT %(limit)s
            """,
            {"limit": limit},
        )
        return [row[0] for row in cursor.fetchall()]


def overdue_runs(*, now: int, limit: int) -> list[RunRecord]:
    """Running runs whose activation deadline passed before `now`, oldest deadline first (the partial
    index `run_running_deadline_idx`): what the sweep times out."""
    rows = Run.objects.filter(status=RunStatus.RUNNING.value, deadline_at__lt=now).order_by("deadline_at")
    return [_run_record(r) for r in rows[:limit]]


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
