"""Thread lifecycle on PostgreSQL: create, update, delete (with everything the thread owns), search by
metadata and derived status, and expiry past AWAKEN_THREAD_TTL_MS. Every function is one transaction
(`expire_threads`: one per thread). A thread's status is never stored: see thread_sql.THREAD_STATUS."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any

from django.db import connection, transaction

from mailbox_app.conf import awaken_settings
from mailbox_app.contract.storage import ThreadRecord
from runs_app import store
from runs_app.models import Thread
from runs_app.store import sql, thread_sql

MAX_METADATA_BYTES = 16_384  # of the stored object's compact JSON, after a merge too
MAX_METADATA_DEPTH = 8


class ThreadStatus(StrEnum):
    IDLE = "idle"
    BUSY = "busy"
    WAITING = "waiting"
    ERROR = "error"


class MetadataError(ValueError):
    """Thread metadata that is not a bounded JSON object; the message says why."""


def metadata_problem(value: Any) -> str | None:
    """Why `value` cannot be a thread's metadata, or None."""
    if not isinstance(value, dict):
        return "must be a JSON object"
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_METADATA_BYTES:
        return f"must be at most {MAX_METADATA_BYTES} bytes as JSON (got {size})"
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_METADATA_DEPTH:
            return f"must not nest deeper than {MAX_METADATA_DEPTH} levels"
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return None


@dataclass(frozen=True, slots=True)
class Created:
    """`thread`: the new thread, or the existing one when the id was taken (None: not the caller's)."""

    thread: ThreadRecord | None
    created: bool


@dataclass(frozen=True, slots=True)
class StatusedThread:
    thread: ThreadRecord
    status: ThreadStatus


class DeleteOutcome(Enum):
    DELETED = "deleted"
    NOT_FOUND = "not_found"  # absent, or not the caller's
    ACTIVE = "active"  # a dispatch queued or claimed, or a run running
    KEPT = "kept"  # expiry only: active again, waiting, or touched since the cutoff


@dataclass(frozen=True, slots=True)
class Deleted:
    outcome: DeleteOutcome
    counts: dict[str, int] = field(default_factory=dict)


# Test hook: called inside the delete's transaction, after the lock and the status check, before rows go.
delete_hook: dict[str, Callable[[str], None]] = {}


def _record(row: Sequence[Any]) -> ThreadRecord:
    data = dict(zip(sql.THREAD_COLUMNS, row[: len(sql.THREAD_COLUMNS)], strict=True))
    if isinstance(data["metadata"], str):
        data["metadata"] = json.loads(data["metadata"])
    data["metadata"] = data["metadata"] or {}
    return ThreadRecord.model_validate(data)


def create_thread(
    *, thread_id: str, owner_id: int, metadata: dict[str, Any], title: str | None, now: int
) -> Created:
    """Insert the thread if the id is free; otherwise report the existing one (only if it is the owner's).
    An id taken by anyone writes nothing."""
    with connection.cursor() as cursor:
        cursor.execute(
            thread_sql.CREATE_THREAD,
            {
                "thread_id": thread_id,
                "owner_id": owner_id,
                "title": title,
                "metadata": json.dumps(metadata),
                "now": now,
            },
        )
        row = cursor.fetchone()
    if row is not None:
        return Created(thread=_record(row), created=True)
    existing = Thread.objects.filter(id=thread_id).values_list("owner_id", flat=True).first()
    if existing != owner_id:
        return Created(thread=None, created=False)
    return Created(thread=_own(thread_id), created=False)


def _own(thread_id: str) -> ThreadRecord:
    thread = store.load_thread(thread_id=thread_id)
    assert thread is not None  # read under the row lock, or right after the insert that lost to it
    return thread


_UNSET: Any = object()


def update_thread(
    *, thread_id: str, owner_id: int, metadata: dict[str, Any] | None, title: Any = _UNSET, now: int
) -> ThreadRecord | None:
    """Merge `metadata` into the thread's (top-level keys; a key set to null is removed) and set `title`
    (None clears it), under the thread's row lock. None when the thread is not the owner's;
    MetadataError (nothing written) when the merged metadata is over the bounds."""
    with transaction.atomic():
        row = Thread.objects.select_for_update().filter(id=thread_id, owner_id=owner_id).first()
        if row is None:
            return None
        fields = ["updated_at"]
        if metadata is not None:
            merged = {**(row.metadata or {}), **metadata}
            row.metadata = {k: v for k, v in merged.items() if v is not None}
            problem = metadata_problem(row.metadata)
            if problem is not None:
                raise MetadataError(problem)
            fields.append("metadata")
        if title is not _UNSET:
            row.title = title
            fields.append("title")
        row.updated_at = now
        row.save(update_fields=fields)
    return _own(thread_id)


def thread_statuses(thread_ids: Sequence[str]) -> dict[str, ThreadStatus]:
    """Each existing thread's status, in one statement."""
    if not thread_ids:
        return {}
    with connection.cursor() as cursor:
        cursor.execute(thread_sql.THREAD_STATUSES, {"ids": list(thread_ids)})
        return {row[0]: ThreadStatus(row[1]) for row in cursor.fetchall()}


def search_threads(
    *,
    owner_id: int,
    metadata: dict[str, Any] | None,
    status: ThreadStatus | None,
    limit: int,
    offset: int,
) -> tuple[list[StatusedThread], int]:
    """The owner's threads containing `metadata` (jsonb `@>`) with `status`, most recently active first,
    and how many match in all."""
    params: dict[str, Any] = {"owner_id": owner_id, "limit": limit, "offset": offset}
    where = ""
    if metadata:
        where, params["metadata"] = thread_sql.METADATA_FILTER, json.dumps(metadata)
    page, count = thread_sql.SEARCH_PAGE, thread_sql.SEARCH_COUNT
    if status is not None:
        page, count = thread_sql.SEARCH_PAGE_BY_STATUS, thread_sql.SEARCH_COUNT_BY_STATUS
        params["status"] = status.value
    with connection.cursor() as cursor:
        cursor.execute(page.replace("{where}", where), params)
        rows = cursor.fetchall()
        cursor.execute(count.replace("{where}", where), params)
        total = int(cursor.fetchone()[0])  # type: ignore[index]
    return [StatusedThread(_record(row), ThreadStatus(row[-1])) for row in rows], total


def delete_thread(*, thread_id: str, owner_id: int | None, expire_before: int | None = None) -> Deleted:
    """Delete the thread with its runs, messages, dispatches, epoch row, and whatever else references it
    (Django's cascade: step rows, ...), in one transaction holding the thread's row lock; refused while a
    dispatch is queued or claimed or a run is running. `owner_id` None: any owner (the GC).
    `expire_before`: the TTL's delete, which keeps threads touched since then or waiting."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(thread_sql.LOCK_FOR_DELETE, {"thread_id": thread_id})
            locked = cursor.fetchone()
            if locked is None or (owner_id is not None and locked[0] != owner_id):
                return Deleted(DeleteOutcome.NOT_FOUND)
            cursor.execute(thread_sql.STATUS_OF, {"thread_id": thread_id})
            status = ThreadStatus(cursor.fetchone()[0])  # type: ignore[index]
            if expire_before is not None and (
                locked[1] >= expire_before or status in (ThreadStatus.BUSY, ThreadStatus.WAITING)
            ):
                return Deleted(DeleteOutcome.KEPT)
            if status is ThreadStatus.BUSY:
                return Deleted(DeleteOutcome.ACTIVE)
            hook = delete_hook.get("before_delete")
            if hook is not None:
                hook(thread_id)
            cursor.execute(thread_sql.DELETE_UNLINKED, {"thread_id": thread_id, "owner_id": locked[0]})
            dispatches, epochs, keys = cursor.fetchone()  # type: ignore[misc]
        _, cascaded = Thread.objects.filter(id=thread_id).delete()
    counts = {"dispatches": dispatches, "epochs": epochs, "idempotency_keys": keys}
    counts |= {label.rsplit(".", 1)[-1].lower(): n for label, n in cascaded.items()}
    return Deleted(DeleteOutcome.DELETED, counts)


def expire_threads(*, now: int, ttl_ms: int, limit: int) -> int:
    """Delete up to `limit` threads whose last activity is older than `ttl_ms` and that have nothing in
    flight or waiting (status idle or error), each like `delete_thread`; returns how many went."""
    cutoff = now - ttl_ms
    with connection.cursor() as cursor:
        cursor.execute(thread_sql.EXPIRED_THREADS, {"cutoff": cutoff, "limit": limit})
        candidates = [row[0] for row in cursor.fetchall()]
    expired = 0
    for thread_id in candidates:
        done = delete_thread(thread_id=thread_id, owner_id=None, expire_before=cutoff)
        expired += done.outcome is DeleteOutcome.DELETED
    return expired


def expire_on_gc(*, now: int, **_: Any) -> dict[str, int]:
    """The mailbox GC's `gc_ran` receiver: threads past AWAKEN_THREAD_TTL_MS (0: off), bounded per tick."""
    ttl_ms = int(awaken_settings.THREAD_TTL_MS)
    if ttl_ms <= 0:
        return {"threads_expired": 0}
    return {"threads_expired": expire_threads(now=now, ttl_ms=ttl_ms, limit=awaken_settings.GC_MAX_PER_TICK)}
