"""A thread's debounce window (`mailbox_inbox_window`): the queued, not yet claimed dispatch that the
thread's next message coalesces into (mailbox_app/services/inbox.py).

What is coalesced is decided by PostgreSQL under the thread's locks: the caller holds the thread's row
lock (every submit takes it first), then `lock_inbox` locks the thread's epoch row — the row every claim
of the thread locks first — and reads, with a fresh snapshot, the claimed dispatch and the window's
dispatch (row-locked too: a cancel waits). A claim that took the window's dispatch before is seen as
the claim, and the message opens a new window; a claim that comes after waits for the commit and takes
the dispatch with the message in its input."""

from __future__ import annotations

from dataclasses import dataclass

from django.db import connection

from mailbox_app.contract.mailbox import DispatchRecord
from mailbox_app.store.rows import fetch_one, record

# The thread's epoch row, ensured and locked (claims and interrupts of the thread wait for this
# transaction); the owner is noted the first time it is known, as an enqueue does.
LOCK_EPOCH = """
INSERT INTO mailbox_thread_epoch AS ep (thread_id, current_epoch, owner_key)
VALUES (%(thread_id)s, 0, %(owner_key)s)
ON CONFLICT (thread_id) DO UPDATE
   SET owner_key = CASE WHEN EXCLUDED.owner_key <> '' THEN EXCLUDED.owner_key ELSE ep.owner_key END
RETURNING current_epoch
"""

CLAIMED_OF_THREAD = (
    "SELECT d.* FROM mailbox_dispatch d WHERE d.thread_id = %(thread_id)s AND d.status = 'claimed'"
)

# The window's dispatch while it can still take messages: queued, never attempted (a retry's input is
# what its first attempt had), in the thread's current epoch. Row-locked: a cancel of it waits.
OPEN_WINDOW = """
SELECT d.*, w.opened_at AS window_opened_at, w.messages AS window_messages
  FROM mailbox_inbox_window w JOIN mailbox_dispatch d ON d.dispatch_id = w.dispatch_id
 WHERE w.thread_id = %(thread_id)s AND d.thread_id = %(thread_id)s AND d.status = 'queued'
   AND d.attempt_count = 0 AND d.dispatch_epoch >= %(epoch)s
   FOR UPDATE OF d
"""


@dataclass(frozen=True, slots=True)
class Window:
    dispatch: DispatchRecord
    opened_at: int
    messages: int


@dataclass(frozen=True, slots=True)
class InboxState:
    """What the thread holds as a message arrives: its claimed dispatch (a run active, or about to
    start) and its open window."""

    epoch: int
    active: DispatchRecord | None
    window: Window | None


def lock_inbox(thread_id: str, owner_key: str) -> InboxState:
    """Inside the caller's transaction, which holds the thread's row lock: lock the epoch row, then read
    the thread's claim and its open window (each statement a fresh snapshot, after the lock)."""
    with connection.cursor() as cursor:
        cursor.execute(LOCK_EPOCH, {"thread_id": thread_id, "owner_key": owner_key})
        epoch = int(cursor.fetchone()[0])  # type: ignore[index]
    active = fetch_one(CLAIMED_OF_THREAD, {"thread_id": thread_id})
    with connection.cursor() as cursor:
        cursor.execute(OPEN_WINDOW, {"thread_id": thread_id, "epoch": epoch})
        row = cursor.fetchone()
        names = [column.name for column in cursor.description or ()]
    window = None
    if row is not None:
        values = dict(zip(names, row, strict=True))
        window = Window(record(names, row), int(values["window_opened_at"]), int(values["window_messages"]))
    return InboxState(epoch, active, window)


# A new window replaces the thread's previous one (claimed, ended or superseded by now).
OPEN = """
INSERT INTO mailbox_inbox_window (thread_id, dispatch_id, opened_at, last_message_at, messages)
VALUES (%(thread_id)s, %(dispatch_id)s, %(now)s, %(now)s, %(count)s)
ON CONFLICT (thread_id) DO UPDATE
   SET dispatch_id = EXCLUDED.dispatch_id, opened_at = EXCLUDED.opened_at,
       last_message_at = EXCLUDED.last_message_at, messages = EXCLUDED.messages
"""


def open_window(thread_id: str, dispatch_id: str, *, count: int, now: int) -> None:
    """The dispatch just enqueued for these messages is the thread's window (same transaction)."""
    with connection.cursor() as cursor:
        cursor.execute(OPEN, {"thread_id": thread_id, "dispatch_id": dispatch_id, "now": now, "count": count})


# A message joins the window: its count and the time of its last message (the dispatch's input and
# start are queue.py's `extend_queued`, in the same transaction).
TOUCH = """
UPDATE mailbox_inbox_window
   SET last_message_at = %(now)s, messages = messages + %(count)s
 WHERE thread_id = %(thread_id)s AND dispatch_id = %(dispatch_id)s
"""


def touch_window(window: Window, *, count: int, now: int) -> None:
    params: dict[str, str | int] = {
        "thread_id": window.dispatch.thread_id,
        "dispatch_id": window.dispatch.dispatch_id,
        "count": count,
        "now": now,
    }
    with connection.cursor() as cursor:
        cursor.execute(TOUCH, params)


# Windows whose dispatch was claimed, ended or purged: nothing coalesces into them any more.
PURGE_CLOSED = """
DELETE FROM mailbox_inbox_window w
 WHERE w.thread_id IN (
       SELECT c.thread_id FROM mailbox_inbox_window c
        WHERE NOT EXISTS (SELECT 1 FROM mailbox_dispatch d
                           WHERE d.dispatch_id = c.dispatch_id AND d.status = 'queued')
        LIMIT %(limit)s)
   AND NOT EXISTS (SELECT 1 FROM mailbox_dispatch d
                    WHERE d.dispatch_id = w.dispatch_id AND d.status = 'queued')
"""


def purge_closed_windows(limit: int) -> int:
    with connection.cursor() as cursor:
        cursor.execute(PURGE_CLOSED, {"limit": limit})
        return int(cursor.rowcount)


# The thread's open window as the why-blocked report shows it (no lock).
WINDOW_OF_THREAD = """
SELECT d.*, w.opened_at AS window_opened_at, w.messages AS window_messages
  FROM mailbox_inbox_window w JOIN mailbox_dispatch d ON d.dispatch_id = w.dispatch_id
 WHERE w.thread_id = %(thread_id)s AND d.status = 'queued'
"""


def window_of(thread_id: str) -> Window | None:
    with connection.cursor() as cursor:
        cursor.execute(WINDOW_OF_THREAD, {"thread_id": thread_id})
        row = cursor.fetchone()
        names = [column.name for column in cursor.description or ()]
    if row is None:
        return None
    values = dict(zip(names, row, strict=True))
    return Window(record(names, row), int(values["window_opened_at"]), int(values["window_messages"]))
