"""Dispatch rows as records: how every store module reads what its statement returns.

Statements return whole rows (`RETURNING d.*`, `SELECT d.*`); a row is turned into a `DispatchRecord`
by column name (`cursor.description`), so a column added by a migration never shifts another.
Django's connection loads jsonb as text: `termination` and `request` are decoded here.
"""

from __future__ import annotations

import json
from typing import Any

from django.db import connection

from mailbox_app.contract.mailbox import DISPATCH_COLUMNS, DispatchRecord, DispatchStatus

MAX_LIST_LIMIT = 1000
_JSON_COLUMNS = ("termination", "request")


def record(names: list[str], row: tuple[Any, ...]) -> DispatchRecord:
    """A row as a record; `names` are its column names (extra columns, such as a joined epoch, are
    ignored)."""
    values = dict(zip(names, row, strict=True))
    fields = {name: values[name] for name in DISPATCH_COLUMNS}
    fields["status"] = DispatchStatus(fields["status"])
    for name in _JSON_COLUMNS:
        if isinstance(fields[name], str):
            fields[name] = json.loads(fields[name])
    return DispatchRecord(**fields)


def fetch_all(query: str, params: dict[str, Any]) -> list[DispatchRecord]:
    with connection.cursor() as cursor:
        cursor.execute(query, params)
        if cursor.description is None:
            return []
        names = [column.name for column in cursor.description]
        return [record(names, row) for row in cursor.fetchall()]


def fetch_one(query: str, params: dict[str, Any]) -> DispatchRecord | None:
    rows = fetch_all(query, params)
    return rows[0] if rows else None


def fetch_with_epoch(query: str, params: dict[str, Any]) -> list[tuple[DispatchRecord, int]]:
    """Rows of a statement that also selects the thread's `current_epoch`."""
    with connection.cursor() as cursor:
        cursor.execute(query, params)
        names = [column.name for column in cursor.description or ()]
        epoch = names.index("current_epoch")
        return [(record(names, row), int(row[epoch])) for row in cursor.fetchall()]


def scalar(query: str, params: dict[str, Any]) -> Any:
    with connection.cursor() as cursor:
        cursor.execute(query, params)
        row = cursor.fetchone()
    return None if row is None else row[0]


def execute(query: str, params: dict[str, Any]) -> int:
    """Run a statement that returns no rows; how many rows it changed."""
    with connection.cursor() as cursor:
        cursor.execute(query, params)
        return int(cursor.rowcount)


def clamp(limit: int) -> int:
    return max(0, min(limit, MAX_LIST_LIMIT))
