"""The thread's append-only message log (fixes spec §7.1: history is never rewritten; `seq` is
allocated under the thread's row lock)."""

from __future__ import annotations

from collections.abc import Sequence

from django.db import connection, transaction

from mailbox_app.contract.ids import now_ms, uuid7
from mailbox_app.contract.message import ChatMessage, MessageRecord
from runs_app.models import Message, Thread
from runs_app.store.records import MAX_RUN_PAGE, message_from_values, message_record
from runs_app.store.threads import lock_thread


def append_locked(thread: Thread, messages: Sequence[ChatMessage], now: int) -> list[MessageRecord]:
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
    return [message_record(r) for r in rows]


def append_messages(
    *, thread_id: str, messages: Sequence[ChatMessage], now: int | None = None
) -> list[MessageRecord]:
    """Append messages to the thread log (creating the thread); returns the new records in seq order."""
    stamp = now_ms() if now is None else now
    with transaction.atomic():
        thread = lock_thread(thread_id, stamp)
        records = append_locked(thread, messages, stamp)
        thread.updated_at = stamp
        thread.save(update_fields=["message_count", "updated_at"])
    return records


def load_messages(*, thread_id: str, include_internal: bool = True) -> list[ChatMessage] | None:
    """The thread's messages in seq order, or None when it has none."""
    qs = Message.objects.filter(thread_id=thread_id).order_by("seq")
    if not include_internal:
        qs = qs.filter(visibility="all")
    messages = [message_record(row).message for row in qs]
    return messages or None


def list_message_records(
    *, thread_id: str, offset: int = 0, limit: int = 50, include_internal: bool = False
) -> tuple[list[MessageRecord], int]:
    qs = Message.objects.filter(thread_id=thread_id)
    if not include_internal:
        qs = qs.filter(visibility="all")
    total = qs.count()
    rows = qs.order_by("seq")[max(offset, 0) : max(offset, 0) + max(min(limit, MAX_RUN_PAGE), 0)]
    return [message_record(r) for r in rows], total


def load_message_record(*, thread_id: str, message_id: str) -> MessageRecord | None:
    row = Message.objects.filter(thread_id=thread_id, message_id=message_id).first()
    return None if row is None else message_record(row)


MESSAGES_BY_ID = """
SELECT * FROM runs_message WHERE thread_id = %(thread_id)s AND message_id = ANY(%(ids)s) ORDER BY seq
"""


def load_message_records(*, thread_id: str, message_ids: Sequence[str]) -> list[MessageRecord]:
    """The records of `message_ids` on the thread, in seq order (absent ids are left out). Raw SQL: the
    fenced start reads these on every activation."""
    with connection.cursor() as cursor:
        cursor.execute(MESSAGES_BY_ID, {"thread_id": thread_id, "ids": list(message_ids)})
        names = [column.name for column in cursor.description or ()]
        return [message_from_values(dict(zip(names, row, strict=True))) for row in cursor.fetchall()]


def load_message_records_range(*, thread_id: str, from_seq: int, to_seq: int) -> list[MessageRecord]:
    """Records with `from_seq <= seq <= to_seq` (1-based, inclusive)."""
    rows = Message.objects.filter(thread_id=thread_id, seq__gte=from_seq, seq__lte=to_seq).order_by("seq")
    return [message_record(r) for r in rows]
