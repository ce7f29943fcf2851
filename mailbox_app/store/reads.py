"""Reads of the dispatch table: by id, a thread's dispatches in claim order, counts. No locks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import connection

from mailbox_app.contract.mailbox import DispatchRecord, DispatchStatus
from mailbox_app.store.rows import clamp, fetch_all, fetch_one, scalar

DISPATCH = "SELECT * FROM mailbox_dispatch WHERE dispatch_id = %(dispatch_id)s"


def load_dispatch(dispatch_id: str) -> DispatchRecord | None:
    return fetch_one(DISPATCH, {"dispatch_id": dispatch_id})


THREAD_DISPATCHES = """
SELECT * FROM mailbox_dispatch
 WHERE thread_id = %(thread_id)s
   AND (%(statuses)s::varchar[] IS NULL OR status = ANY(%(statuses)s::varchar[]))
 ORDER BY priority, created_at, dispatch_id
 LIMIT %(limit)s OFFSET %(offset)s
"""


def list_dispatches(
    thread_id: str,
    status_filter: Sequence[DispatchStatus] | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[DispatchRecord]:
    """The thread's dispatches in claim order (`priority, created_at`); an empty filter yields []."""
    if status_filter is not None and len(status_filter) == 0:
        return []
    params: dict[str, Any] = {
        "thread_id": thread_id,
        "statuses": None if status_filter is None else [DispatchStatus(s).value for s in status_filter],
        "limit": clamp(limit),
        "offset": max(offset, 0),
    }
    return fetch_all(THREAD_DISPATCHES, params)


COUNT_THREAD_DISPATCHES = """
SELECT count(*) FROM mailbox_dispatch
 WHERE thread_id = %(thread_id)s
   AND (%(statuses)s::varchar[] IS NULL OR status = ANY(%(statuses)s::varchar[]))
"""


def count_thread_dispatches(thread_id: str, status_filter: Sequence[DispatchStatus] | None = None) -> int:
    statuses = None if status_filter is None else [DispatchStatus(s).value for s in status_filter]
    return int(scalar(COUNT_THREAD_DISPATCHES, {"thread_id": thread_id, "statuses": statuses}))


COUNT_BY_STATUS = "SELECT status, count(*) FROM mailbox_dispatch GROUP BY status"


def count_by_status() -> dict[DispatchStatus, int]:
    """Dispatches per status in one grouped count (the sweep refreshes the depth gauges with it)."""
    with connection.cursor() as cursor:
        cursor.execute(COUNT_BY_STATUS)
        return {DispatchStatus(status): int(count) for status, count in cursor.fetchall()}


QUEUED_THREADS = "SELECT DISTINCT thread_id FROM mailbox_dispatch WHERE status = 'queued' ORDER BY 1"


def queued_thread_ids() -> list[str]:
    """Distinct threads with at least one queued dispatch (ignoring `available_at`), sorted."""
    with connection.cursor() as cursor:
        cursor.execute(QUEUED_THREADS)
        return [row[0] for row in cursor.fetchall()]
