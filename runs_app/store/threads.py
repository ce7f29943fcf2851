"""Threads on PostgreSQL: reads, the row lock every write of a thread takes, and the lifecycle — create,
update, delete (with everything the thread owns), search by metadata and derived status, expiry past
AWAKEN_THREAD_TTL_MS. Every function is one transaction (`expire_threads`: one per thread). A thread's
status is never stored: it is the view `runs_thread_status`
(runs_app/migrations/0008_thread_status_view.py)."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any

from django.db import connection, transaction

from mailbox_app.conf import awaken_settings
from mailbox_app.contract.ids import now_ms
from mailbox_app.contract.storage import InvalidInput, RunRecord, ThreadRecord
from runs_app.models import Thread
from runs_app.store import mailbox_tables
from runs_app.store.records import run_from_values, thread_from_values, thread_record

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


# --- reads and the row lock -------------------------------------------------------------------------


def load_thread(*, thread_id: str) -> ThreadRecord | None:
    row = Thread.objects.filter(id=thread_id).first()
    return None if row is None else thread_record(row)


# The thread and its latest run (spec §7.10 order) in one round trip, for the submit path; the run comes
# as one jsonb value, so no column of the one shadows a column of the other.
THREAD_AND_LATEST_RUN = """
SELECT th.*, to_jsonb(r) AS latest_run
  FROM (SELECT 1) one
  LEFT JOIN runs_thread th ON th.id = %(thread_id)s
  LEFT JOIN LATERAL (
      SELECT * FROM runs_run WHERE thread_id = %(thread_id)s
       ORDER BY updated_at DESC, created_at DESC, run_id DESC LIMIT 1
  ) r ON true
"""


def load_thread_and_latest_run(*, thread_id: str) -> tuple[ThreadRecord | None, RunRecord | None]:
    """`load_thread` and `latest_run` in one round trip (the submit path reads both)."""
    with connection.cursor() as cursor:
        cursor.execute(THREAD_AND_LATEST_RUN, {"thread_id": thread_id})
        row = cursor.fetchone()
        names = [column.name for column in cursor.description or ()]
    assert row is not None
    values = dict(zip(names, row, strict=True))
    thread = None if values["id"] is None else thread_from_values(values)
    latest = values["latest_run"]
    if isinstance(latest, str):
        latest = json.loads(latest)
    return thread, None if latest is None else run_from_values(latest)


# A thread as `GET threads/{id}` answers it — the row, its status and its open and active runs — in one
# round trip; each run comes as one jsonb value, so no column of one shadows a column of another.
THREAD_VIEW = """
SELECT th.*, s.status AS thread_status, to_jsonb(o) AS open_run, to_jsonb(a) AS active_run
  FROM runs_thread th
  JOIN runs_thread_status s ON s.thread_id = th.id
  LEFT JOIN runs_run o ON o.run_id = th.open_run_id
  LEFT JOIN runs_run a ON a.run_id = th.active_run_id
 WHERE th.id = %(thread_id)s
"""


@dataclass(frozen=True, slots=True)
class ThreadView:
    """A thread with what its answer shows: its status and its open and active runs (by id)."""

    thread: ThreadRecord
    status: ThreadStatus
    runs: dict[str, RunRecord]


def load_thread_view(*, thread_id: str) -> ThreadView | None:
    """`load_thread`, `thread_statuses` and the thread's open and active runs in one round trip."""
    with connection.cursor() as cursor:
        cursor.execute(THREAD_VIEW, {"thread_id": thread_id})
        row = cursor.fetchone()
        names = [column.name for column in cursor.description or ()]
    if row is None:
        return None
    values = dict(zip(names, row, strict=True))
    runs: dict[str, RunRecord] = {}
    for column in ("open_run", "active_run"):
        value = values[column]
        if isinstance(value, str):
            value = json.loads(value)
        if value is not None:
            run = run_from_values(value)
            runs[run.run_id] = run
    return ThreadView(thread_from_values(values), ThreadStatus(values["thread_status"]), runs)


def load_threads(*, thread_ids: Collection[str]) -> dict[str, ThreadRecord]:
    """The threads of `thread_ids` that exist, by id, in one query (a page of them)."""
    rows = Thread.objects.filter(id__in=list(thread_ids)) if thread_ids else []
    return {row.id: thread_record(row) for row in rows}


def ensure_thread(*, thread_id: str, owner_id: int | None = None, now: int | None = None) -> ThreadRecord:
    """Create the thread if it does not exist (owner only set on creation)."""
    stamp = now_ms() if now is None else now
    row, _ = Thread.objects.get_or_create(
        id=thread_id, defaults={"owner_id": owner_id, "created_at": stamp, "updated_at": stamp}
    )
    return thread_record(row)


def lock_thread(thread_id: str, now: int) -> Thread:
    """Row-lock the thread (creating it first if needed): serializes seq allocation and projections."""
    if not thread_id.strip():
        raise InvalidInput("thread_id must not be empty")
    existing = Thread.objects.select_for_update().filter(id=thread_id).first()
    if existing is not None:
        return existing
    Thread.objects.bulk_create([Thread(id=thread_id, created_at=now, updated_at=now)], ignore_conflicts=True)
    return Thread.objects.select_for_update().get(id=thread_id)


# --- the lifecycle -----------------------------------------------------------------------------------


def _rows(cursor: Any) -> list[dict[str, Any]]:
    names = [column.name for column in cursor.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


# Inserted only when the id is free (the caller reads the existing row otherwise).
CREATE_THREAD = """
INSERT INTO runs_thread AS th (id, owner_id, title, metadata, inbox, message_count, created_at, updated_at)
VALUES (%(thread_id)s, %(owner_id)s, %(title)s, %(metadata)s::jsonb, %(inbox)s::jsonb, 0, %(now)s, %(now)s)
ON CONFLICT (id) DO NOTHING
RETURNING th.*
"""


def create_thread(
    *,
    thread_id: str,
    owner_id: int,
    metadata: dict[str, Any],
    title: str | None,
    now: int,
    inbox: dict[str, Any] | None = None,
) -> Created:
    """Insert the thread if the id is free; otherwise report the existing one (only if it is the owner's).
    An id taken by anyone writes nothing. `inbox`: its inbox policy (docs/inbox.md), as JSON."""
    with connection.cursor() as cursor:
        cursor.execute(
            CREATE_THREAD,
            {
                "thread_id": thread_id,
                "owner_id": owner_id,
                "title": title,
                "metadata": json.dumps(metadata),
                "inbox": None if inbox is None else json.dumps(inbox),
                "now": now,
            },
        )
        rows = _rows(cursor)
    if rows:
        return Created(thread=thread_from_values(rows[0]), created=True)
    existing = Thread.objects.filter(id=thread_id).values_list("owner_id", flat=True).first()
    if existing != owner_id:
        return Created(thread=None, created=False)
    return Created(thread=_own(thread_id), created=False)


def _own(thread_id: str) -> ThreadRecord:
    thread = load_thread(thread_id=thread_id)
    assert thread is not None  # read under the row lock, or right after the insert that lost to it
    return thread


_UNSET: Any = object()


def update_thread(
    *,
    thread_id: str,
    owner_id: int,
    metadata: dict[str, Any] | None,
    title: Any = _UNSET,
    inbox: Any = _UNSET,
    now: int,
) -> ThreadRecord | None:
    """Merge `metadata` into the thread's (top-level keys; a key set to null is removed), set `title`
    (None clears it) and `inbox` (its inbox policy as JSON; None: back to the defaults), under the
    thread's row lock. None when the thread is not the owner's; MetadataError (nothing written) when the
    merged metadata is over the bounds."""
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
        if inbox is not _UNSET:
            row.inbox = inbox
            fields.append("inbox")
        row.updated_at = now
        row.save(update_fields=fields)
    return _own(thread_id)


THREAD_STATUSES = "SELECT thread_id, status FROM runs_thread_status WHERE thread_id = ANY(%(ids)s)"


def thread_statuses(thread_ids: Sequence[str]) -> dict[str, ThreadStatus]:
    """Each existing thread's status, in one statement."""
    if not thread_ids:
        return {}
    with connection.cursor() as cursor:
        cursor.execute(THREAD_STATUSES, {"ids": list(thread_ids)})
        return {row[0]: ThreadStatus(row[1]) for row in cursor.fetchall()}


# Search: the owner's threads (optionally `metadata @> filter`, served by the GIN index) with their
# status. Without a status filter the page is cut first and the status looked up for its rows only; with
# one, every candidate's status is computed to filter on it. `%(metadata)s` NULL means no filter.
SEARCH_PAGE = """
SELECT page.*, s.status FROM (
    SELECT * FROM runs_thread th
     WHERE th.owner_id = %(owner_id)s AND (%(metadata)s::jsonb IS NULL OR th.metadata @> %(metadata)s::jsonb)
     ORDER BY th.updated_at DESC, th.id LIMIT %(limit)s OFFSET %(offset)s
) page
  JOIN runs_thread_status s ON s.thread_id = page.id
 ORDER BY page.updated_at DESC, page.id
"""

SEARCH_COUNT = """
SELECT count(*) FROM runs_thread th
 WHERE th.owner_id = %(owner_id)s AND (%(metadata)s::jsonb IS NULL OR th.metadata @> %(metadata)s::jsonb)
"""

SEARCH_PAGE_BY_STATUS = """
SELECT th.*, s.status FROM runs_thread th JOIN runs_thread_status s ON s.thread_id = th.id
 WHERE th.owner_id = %(owner_id)s AND (%(metadata)s::jsonb IS NULL OR th.metadata @> %(metadata)s::jsonb)
   AND s.status = %(status)s
 ORDER BY th.updated_at DESC, th.id LIMIT %(limit)s OFFSET %(offset)s
"""

SEARCH_COUNT_BY_STATUS = """
SELECT count(*) FROM runs_thread th JOIN runs_thread_status s ON s.thread_id = th.id
 WHERE th.owner_id = %(owner_id)s AND (%(metadata)s::jsonb IS NULL OR th.metadata @> %(metadata)s::jsonb)
   AND s.status = %(status)s
"""


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
    params: dict[str, Any] = {
        "owner_id": owner_id,
        "limit": limit,
        "offset": offset,
        "metadata": json.dumps(metadata) if metadata else None,
        "status": None if status is None else status.value,
    }
    page, count = (
        (SEARCH_PAGE, SEARCH_COUNT) if status is None else (SEARCH_PAGE_BY_STATUS, SEARCH_COUNT_BY_STATUS)
    )
    with connection.cursor() as cursor:
        cursor.execute(page, params)
        rows = _rows(cursor)
        cursor.execute(count, params)
        total = int(cursor.fetchone()[0])  # type: ignore[index]
    return [StatusedThread(thread_from_values(row), ThreadStatus(row["status"])) for row in rows], total


# Delete, first statement: the thread row lock. Every submit takes this lock before it writes a run or a
# dispatch, so once it is held nothing new can land on the thread. The status is read by a *second*
# statement: in READ COMMITTED a statement that waited for the lock still sees the other tables as of
# its start, and would miss the dispatch of a submit that committed while it waited.
LOCK_FOR_DELETE = "SELECT owner_id, updated_at FROM runs_thread WHERE id = %(thread_id)s FOR UPDATE"

STATUS_OF = "SELECT status FROM runs_thread_status WHERE thread_id = %(thread_id)s"


def delete_thread(*, thread_id: str, owner_id: int | None, expire_before: int | None = None) -> Deleted:
    """Delete the thread with its runs, messages, dispatches, epoch row, and whatever else references it
    (Django's cascade: step rows, ...), in one transaction holding the thread's row lock; refused while a
    dispatch is queued or claimed or a run is running. `owner_id` None: any owner (the GC).
    `expire_before`: the TTL's delete, which keeps threads touched since then or waiting."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(LOCK_FOR_DELETE, {"thread_id": thread_id})
            locked = cursor.fetchone()
            if locked is None or (owner_id is not None and locked[0] != owner_id):
                return Deleted(DeleteOutcome.NOT_FOUND)
            cursor.execute(STATUS_OF, {"thread_id": thread_id})
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
        dispatches, epochs, keys, schedules = mailbox_tables.delete_unlinked(
            thread_id=thread_id, owner_id=locked[0]
        )
        _, cascaded = Thread.objects.filter(id=thread_id).delete()
    counts = {"dispatches": dispatches, "epochs": epochs, "idempotency_keys": keys}
    if schedules:  # (named only when the thread had some: docs/inbox.md)
        counts["schedules"] = schedules
    counts |= {label.rsplit(".", 1)[-1].lower(): n for label, n in cascaded.items()}
    return Deleted(DeleteOutcome.DELETED, counts)


# TTL: threads whose last activity is older than the cutoff and that have nothing in flight or waiting,
# oldest first (each is then deleted on its own, re-checked under its lock).
EXPIRED_THREADS = """
SELECT th.id FROM runs_thread th JOIN runs_thread_status s ON s.thread_id = th.id
 WHERE th.updated_at < %(cutoff)s AND s.status IN ('idle', 'error')
 ORDER BY th.updated_at, th.id
 LIMIT %(limit)s
"""


def expire_threads(*, now: int, ttl_ms: int, limit: int) -> int:
    """Delete up to `limit` threads whose last activity is older than `ttl_ms` and that have nothing in
    flight or waiting (status idle or error), each like `delete_thread`; returns how many went."""
    cutoff = now - ttl_ms
    with connection.cursor() as cursor:
        cursor.execute(EXPIRED_THREADS, {"cutoff": cutoff, "limit": limit})
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
