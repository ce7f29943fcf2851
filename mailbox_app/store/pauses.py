"""Pauses (`mailbox_pause`): what holds a thread's, an agent's or every dispatch's claims.

The claims check this table in their own statement (claims.sql: `mailbox_claim_thread`,
`mailbox_claim_fair`; claims.py: the claims under limits and by id; runs_tables/submit.sql: the
foreground inline claim), never a worker beforehand: a paused dispatch is simply not claimable. Every
claim first takes the pauses' advisory lock in shared mode; a pause takes it exclusively before it
inserts its row. So a pause waits for the claims in flight to commit, and every claim that starts after
it sees its row: once `pause` returns, nothing of its scope is claimed until `resume`. A resume deletes
the row; the caller rings the threads it releases (mailbox_app/services/pauses.py)."""

from __future__ import annotations

from typing import Any

from django.db import connection, transaction

from mailbox_app.contract.inbox import PauseRecord, PauseScope
from mailbox_app.contract.mailbox import DispatchRecord
from mailbox_app.store.rows import fetch_all

# Exclusive mode of the lock every claim takes shared (claims.sql, claims.py): claims in flight finish
# first, claims after it see the new row.
LOCK_PAUSES = "SELECT pg_advisory_xact_lock(hashtextextended('awaken-pause', 0))"

# A second pause of a scope keeps the first (its author and its time).
INSERT_PAUSE = """
INSERT INTO mailbox_pause (scope, key, paused_by, by_operator, reason, created_at)
VALUES (%(scope)s, %(key)s, %(paused_by)s, %(by_operator)s, %(reason)s, %(now)s)
ON CONFLICT (scope, key) DO NOTHING
RETURNING scope, key, paused_by, by_operator, reason, created_at
"""

PAUSE_OF_SCOPE = """
SELECT scope, key, paused_by, by_operator, reason, created_at FROM mailbox_pause
 WHERE scope = %(scope)s AND key = %(key)s
"""


def pause(
    scope: PauseScope, key: str, *, paused_by: str, by_operator: bool, reason: str, now: int
) -> tuple[PauseRecord, bool]:
    """Pause the scope (its own transaction, committed on return); the pause and whether this call made
    it (False: it was paused already, and the first pause stands)."""
    params = {
        "scope": scope.value,
        "key": _key(scope, key),
        "paused_by": paused_by,
        "by_operator": by_operator,
        "reason": reason,
        "now": now,
    }
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(LOCK_PAUSES)
        while True:  # the existing pause may be resumed between the two statements: insert again
            cursor.execute(INSERT_PAUSE, params)
            row = cursor.fetchone()
            if row is not None:
                return _record(row), True
            cursor.execute(PAUSE_OF_SCOPE, params)
            existing = cursor.fetchone()
            if existing is not None:
                return _record(existing), False


# An operator's pause is deleted only by an operator (`include_operator`).
DELETE_PAUSE = """
DELETE FROM mailbox_pause
 WHERE scope = %(scope)s AND key = %(key)s AND (%(include_operator)s OR NOT by_operator)
RETURNING scope, key, paused_by, by_operator, reason, created_at
"""


def resume(scope: PauseScope, key: str, *, include_operator: bool) -> PauseRecord | None:
    """Delete the scope's pause (an operator's only with `include_operator`); what it was (None:
    nothing was deleted)."""
    params = {"scope": scope.value, "key": _key(scope, key), "include_operator": include_operator}
    with connection.cursor() as cursor:
        cursor.execute(DELETE_PAUSE, params)
        row = cursor.fetchone()
    return None if row is None else _record(row)


def pause_of(scope: PauseScope, key: str) -> PauseRecord | None:
    with connection.cursor() as cursor:
        cursor.execute(PAUSE_OF_SCOPE, {"scope": scope.value, "key": _key(scope, key)})
        row = cursor.fetchone()
    return None if row is None else _record(row)


# The pauses that hold a dispatch of these agents on this thread (the why-blocked report, a submit's
# answer, a doorbell that finds nothing to claim): the same condition the claims check.
PAUSES_HOLDING = """
SELECT scope, key, paused_by, by_operator, reason, created_at FROM mailbox_pause p
 WHERE p.scope = 'all' OR (p.scope = 'thread' AND p.key = %(thread_id)s)
    OR (p.scope = 'agent' AND p.key = ANY(%(agents)s))
 ORDER BY p.created_at, p.id
"""


def pauses_holding(thread_id: str, agent_keys: list[str]) -> list[PauseRecord]:
    """The pauses that hold the thread, or a dispatch of one of `agent_keys` on it; oldest first."""
    with connection.cursor() as cursor:
        cursor.execute(PAUSES_HOLDING, {"thread_id": thread_id, "agents": agent_keys})
        return [_record(row) for row in cursor.fetchall()]


ALL_PAUSES = """
SELECT scope, key, paused_by, by_operator, reason, created_at FROM mailbox_pause ORDER BY created_at, id
"""


def list_pauses() -> list[PauseRecord]:
    with connection.cursor() as cursor:
        cursor.execute(ALL_PAUSES)
        return [_record(row) for row in cursor.fetchall()]


# The claimed dispatches a pause covers: the runs a pause with `interrupt` stops.
CLAIMED_IN_SCOPE = """
SELECT d.* FROM mailbox_dispatch d
 WHERE d.status = 'claimed'
   AND (%(scope)s = 'all' OR (%(scope)s = 'thread' AND d.thread_id = %(key)s)
        OR (%(scope)s = 'agent' AND d.agent_key = %(key)s))
 ORDER BY d.thread_id
"""


def claimed_in_scope(scope: PauseScope, key: str) -> list[DispatchRecord]:
    return fetch_all(CLAIMED_IN_SCOPE, {"scope": scope.value, "key": _key(scope, key)})


# What a resume rings: each unclaimed thread with queued work of the scope, and when its earliest such
# dispatch is (or was) due.
QUEUED_IN_SCOPE = """
SELECT q.thread_id, min(q.available_at) FROM mailbox_dispatch q
 WHERE q.status = 'queued'
   AND (%(scope)s = 'all' OR (%(scope)s = 'thread' AND q.thread_id = %(key)s)
        OR (%(scope)s = 'agent' AND q.agent_key = %(key)s))
   AND NOT EXISTS (SELECT 1 FROM mailbox_dispatch c WHERE c.thread_id = q.thread_id AND c.status = 'claimed')
 GROUP BY q.thread_id
 ORDER BY min(q.available_at), q.thread_id
 LIMIT %(limit)s
"""


def queued_in_scope(scope: PauseScope, key: str, limit: int) -> list[tuple[str, int]]:
    """(thread, earliest available_at) of each unclaimed thread with queued work in the scope."""
    with connection.cursor() as cursor:
        cursor.execute(QUEUED_IN_SCOPE, {"scope": scope.value, "key": _key(scope, key), "limit": limit})
        return [(str(thread), int(at)) for thread, at in cursor.fetchall()]


def _key(scope: PauseScope, key: str) -> str:
    return "" if scope is PauseScope.ALL else key


def _record(row: tuple[Any, ...]) -> PauseRecord:
    scope, key, paused_by, by_operator, reason, created_at = row
    return PauseRecord(
        PauseScope(scope), str(key), str(paused_by), bool(by_operator), str(reason), int(created_at)
    )
