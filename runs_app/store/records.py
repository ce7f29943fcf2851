"""Rows of the run store as the contract's records (and back): threads, runs and messages. Statements
return whole rows, read by column name."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from django.db import connection

from mailbox_app.contract.message import ChatMessage, MessageRecord
from mailbox_app.contract.storage import RunRecord, ThreadRecord
from runs_app.models import Message, Run, Thread

MAX_RUN_PAGE = 200
RUN_COLUMNS: tuple[str, ...] = tuple(RunRecord.model_fields)
# the run columns stored as jsonb (Django's connection loads jsonb as text)
JSON_COLUMNS = frozenset(
    {"request", "input", "output", "termination_reason", "error_payload", "waiting", "outcome", "state"}
    | {"metadata", "usage_attempts"}
)
_RUN_FIELDS = [f for f in RUN_COLUMNS if f not in {"run_id", "thread_id"}]


def thread_record(row: Thread) -> ThreadRecord:
    return ThreadRecord(
        id=row.id,
        owner_id=row.owner_id,
        resource_id=row.resource_id,
        parent_thread_id=row.parent_thread_id,
        title=row.title,
        metadata=row.metadata or {},
        inbox=row.inbox,
        open_run_id=row.open_run_id,
        active_run_id=row.active_run_id,
        latest_run_id=row.latest_run_id,
        message_count=row.message_count,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def thread_from_values(values: dict[str, Any]) -> ThreadRecord:
    """A thread from a raw row's values by column name (extra columns are ignored)."""
    data = {name: values[name] for name in ThreadRecord.model_fields}
    if isinstance(data["metadata"], str):
        data["metadata"] = json.loads(data["metadata"])
    data["metadata"] = data["metadata"] or {}
    if isinstance(data["inbox"], str):
        data["inbox"] = json.loads(data["inbox"])
    return ThreadRecord.model_validate(data)


def run_record(row: Run) -> RunRecord:
    data = {name: getattr(row, name) for name in _RUN_FIELDS}
    return RunRecord.model_validate({"run_id": row.run_id, "thread_id": row.thread_id, **data})


def run_columns(run: RunRecord) -> dict[str, Any]:
    """The run's columns for the ORM (everything but its keys)."""
    dumped = run.model_dump(mode="json")
    return {name: dumped[name] for name in _RUN_FIELDS}


def run_from_values(values: dict[str, Any]) -> RunRecord:
    """A run from a raw row's values by column name (extra columns are ignored)."""
    data = {name: values[name] for name in RUN_COLUMNS}
    for name in JSON_COLUMNS:
        if isinstance(data[name], str):
            data[name] = json.loads(data[name])
    return RunRecord.model_validate(data)


def fetch_run(query: str, params: dict[str, Any]) -> RunRecord | None:
    """The run a statement returns (its first row), or None."""
    with connection.cursor() as cursor:
        cursor.execute(query, params)
        row = cursor.fetchone()
        names = [column.name for column in cursor.description or ()]
    return None if row is None else run_from_values(dict(zip(names, row, strict=True)))


def to_json(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def run_params(run: RunRecord) -> dict[str, Any]:
    """The run's columns as statement parameters (JSON columns as JSON text)."""
    dumped = run.model_dump(mode="json")
    return {name: to_json(dumped[name]) if name in JSON_COLUMNS else dumped[name] for name in RUN_COLUMNS}


def message_record(row: Message) -> MessageRecord:
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


def message_from_values(data: dict[str, Any]) -> MessageRecord:
    """A message from a raw row's values by column name."""
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


def message_rows(existing: set[str], messages: Sequence[ChatMessage], mint: Any) -> list[dict[str, Any]]:
    """The rows to append for `messages`: ids already in the log (`existing`, updated) are skipped,
    messages without an id get one from `mint()`."""
    rows: list[dict[str, Any]] = []
    for message in messages:
        message_id = message.id or mint()
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


EXISTING_MESSAGE_IDS = """
SELECT message_id FROM runs_message WHERE thread_id = %(thread_id)s AND message_id = ANY(%(ids)s)
"""


def existing_message_ids(thread_id: str, messages: Sequence[ChatMessage]) -> set[str]:
    """The ids among `messages` that the thread's log already holds."""
    explicit = [m.id for m in messages if m.id]
    if not explicit:
        return set()
    with connection.cursor() as cursor:
        cursor.execute(EXISTING_MESSAGE_IDS, {"thread_id": thread_id, "ids": explicit})
        return {row[0] for row in cursor.fetchall()}
