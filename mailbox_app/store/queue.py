"""Queued dispatches: enqueue (the reference's `enqueue`), cancel, interrupt, the busy check of a
`reject` submit, and a debounce window's growth (`extend_queued`, mailbox_app/services/inbox.py). Each
function is one short transaction, its statements written out beside it."""

from __future__ import annotations

import json
from typing import Any

from django.db import IntegrityError, transaction

from mailbox_app.contract.mailbox import DispatchRecord, MailboxInterrupt
from mailbox_app.contract.storage import AlreadyExists, InvalidInput
from mailbox_app.observability import metrics
from mailbox_app.store.rows import execute, fetch_all, fetch_one, scalar

# The epoch row is ensured and locked in the same statement (an upsert that changes nothing but the
# owner the first time it is known): an interrupt, which updates the epoch row, waits for this enqueue
# to commit and then supersedes it. Enqueues of one thread serialize here (and on the thread row in
# the submit path). `owner_key` names the thread's owner for fair claims (conf.claim_policy).
ENQUEUE = """
WITH e AS (
    INSERT INTO mailbox_thread_epoch AS ep (thread_id, current_epoch, owner_key)
    VALUES (%(thread_id)s, 0, %(owner_key)s)
    ON CONFLICT (thread_id) DO UPDATE
       SET owner_key = CASE WHEN EXCLUDED.owner_key <> '' THEN EXCLUDED.owner_key ELSE ep.owner_key END
    RETURNING current_epoch
)
INSERT INTO mailbox_dispatch AS d (
    dispatch_id, thread_id, run_id, priority, dedupe_key, dispatch_epoch, status, available_at,
    attempt_count, max_attempts, last_error, created_at, updated_at, request, agent_key)
SELECT %(dispatch_id)s, %(thread_id)s, %(run_id)s, %(priority)s, %(dedupe_key)s, e.current_epoch,
       'queued', %(available_at)s, %(attempt_count)s, %(max_attempts)s, %(last_error)s, %(created_at)s,
       %(updated_at)s, %(request)s::jsonb, %(agent_key)s
  FROM e
RETURNING d.*
"""


@metrics.timed(metrics.ENQUEUE)
def enqueue(dispatch: DispatchRecord, *, owner_key: str = "") -> DispatchRecord:
    """Persist a queued dispatch stamped with the thread's current epoch (spec §3.1). `owner_key`
    (the thread's owner) is recorded on the thread's epoch row the first time it is given: claims
    rotate across owners.

    Raises `AlreadyExists` for a duplicate dispatch id or an active dispatch with the same dedupe key.

    The reference's `enqueue_dispatch_with_metrics`: the operation is timed and counted
    by `metrics.timed`.
    """
    _validate_new(dispatch)
    params: dict[str, Any] = {
        "dispatch_id": dispatch.dispatch_id,
        "thread_id": dispatch.thread_id,
        "run_id": dispatch.run_id,
        "priority": dispatch.priority,
        "dedupe_key": dispatch.dedupe_key,
        "available_at": dispatch.available_at,
        "attempt_count": dispatch.attempt_count,
        "max_attempts": dispatch.max_attempts,
        "last_error": dispatch.last_error,
        "created_at": dispatch.created_at,
        "updated_at": dispatch.updated_at,
        "request": None if dispatch.request is None else json.dumps(dispatch.request),
        "agent_key": dispatch.agent_key,
        "owner_key": owner_key,
    }
    try:
        with transaction.atomic():
            stored = fetch_one(ENQUEUE, params)
    except IntegrityError as exc:
        if dispatch.dedupe_key is not None and "dedupe_key" in str(exc):
            raise AlreadyExists(f"dedupe_key={dispatch.dedupe_key}") from None
        raise AlreadyExists(f"dispatch_id={dispatch.dispatch_id}") from None
    assert stored is not None
    return stored


def _validate_new(dispatch: DispatchRecord) -> None:
    if not dispatch.dispatch_id.strip():
        raise InvalidInput("dispatch_id must not be empty")
    if not dispatch.thread_id.strip():
        raise InvalidInput("thread_id must not be empty")
    if not dispatch.run_id.strip():
        raise InvalidInput("run_id must not be empty")
    if not 0 <= dispatch.priority <= 255:
        raise InvalidInput("priority must be between 0 and 255")
    if dispatch.max_attempts < 1:
        raise InvalidInput("max_attempts must be at least 1")
    if dispatch.attempt_count < 0:
        raise InvalidInput("attempt_count must not be negative")


CANCEL = """
UPDATE mailbox_dispatch d
   SET status = 'cancelled', claim_token = NULL, claimed_by = NULL, lease_until = NULL,
       completed_at = %(now)s, updated_at = %(now)s
 WHERE d.dispatch_id = %(dispatch_id)s AND d.status = 'queued'
RETURNING d.*
"""


@metrics.timed(metrics.CANCEL, metrics.found)
def cancel(dispatch_id: str, now: int) -> DispatchRecord | None:
    """Queued -> Cancelled; None for missing, claimed or terminal dispatches (spec §3.9)."""
    return fetch_one(CANCEL, {"dispatch_id": dispatch_id, "now": now})


BUMP_EPOCH = """
INSERT INTO mailbox_thread_epoch AS e (thread_id, current_epoch) VALUES (%(thread_id)s, 1)
ON CONFLICT (thread_id) DO UPDATE SET current_epoch = e.current_epoch + 1
RETURNING current_epoch
"""

SUPERSEDE_QUEUED_BY_INTERRUPT = """
UPDATE mailbox_dispatch d
   SET status = 'superseded', last_error = 'queued dispatch superseded by interrupt',
       claim_token = NULL, claimed_by = NULL, lease_until = NULL, completed_at = %(now)s,
       updated_at = %(now)s
 WHERE d.thread_id = %(thread_id)s AND d.status = 'queued'
RETURNING d.*
"""

CLAIMED_OF_THREAD = (
    "SELECT d.* FROM mailbox_dispatch d WHERE d.thread_id = %(thread_id)s AND d.status = 'claimed'"
)


@metrics.timed(metrics.INTERRUPT, metrics.interrupted)
def interrupt_detailed(thread_id: str, now: int) -> MailboxInterrupt:
    """Bump the thread epoch, supersede its queued dispatches, report the claimed one (spec §3.11)."""
    with transaction.atomic():
        new_epoch = int(scalar(BUMP_EPOCH, {"thread_id": thread_id}))
        superseded = fetch_all(SUPERSEDE_QUEUED_BY_INTERRUPT, {"thread_id": thread_id, "now": now})
        active = fetch_one(CLAIMED_OF_THREAD, {"thread_id": thread_id})
    superseded.sort(key=lambda d: (d.priority, d.created_at, d.dispatch_id))
    return MailboxInterrupt(
        new_dispatch_epoch=new_epoch,
        active_dispatch=active,
        superseded_count=len(superseded),
        superseded_dispatches=superseded,
    )


THREAD_BUSY = """
SELECT EXISTS (
    SELECT 1 FROM mailbox_dispatch d
     WHERE d.thread_id = %(thread_id)s AND d.dispatch_id <> %(excluding)s
       AND (d.status = 'claimed'
            OR (d.status = 'queued' AND d.dispatch_epoch >= COALESCE(
                (SELECT current_epoch FROM mailbox_thread_epoch WHERE thread_id = %(thread_id)s), 0))))
"""


def thread_busy(thread_id: str, *, excluding: str = "") -> bool:
    """Whether the thread has a claimed dispatch or live queued work (delayed starts included) other
    than `excluding`. Submits check it under the thread's row lock, so two of them cannot both pass."""
    return bool(scalar(THREAD_BUSY, {"thread_id": thread_id, "excluding": excluding}))


MAKE_AVAILABLE = """
UPDATE mailbox_dispatch SET available_at = %(now)s, updated_at = %(now)s
 WHERE dispatch_id = %(dispatch_id)s AND status = 'queued' AND available_at > %(now)s
"""


def make_available(dispatch_id: str, now: int) -> None:
    """A queued dispatch held back by the inline-claim guard becomes claimable now."""
    execute(MAKE_AVAILABLE, {"dispatch_id": dispatch_id, "now": now})


# A message coalesced into a queued, never-claimed dispatch (a thread's debounce window): its input (the
# request snapshot, ids in arrival order) and its start. The caller holds the thread's epoch row and this
# row (mailbox_app/store/inbox.py lock_inbox), so no claim takes it meanwhile.
EXTEND_QUEUED = """
UPDATE mailbox_dispatch d
   SET request = %(request)s::jsonb, available_at = %(available_at)s, updated_at = %(now)s
 WHERE d.dispatch_id = %(dispatch_id)s AND d.status = 'queued' AND d.attempt_count = 0
RETURNING d.*
"""


def extend_queued(
    dispatch_id: str, *, request: dict[str, Any], available_at: int, now: int
) -> DispatchRecord:
    """The dispatch's new input and start, inside the caller's transaction (which locked the row)."""
    params = {
        "dispatch_id": dispatch_id,
        "request": json.dumps(request),
        "available_at": available_at,
        "now": now,
    }
    extended = fetch_one(EXTEND_QUEUED, params)
    assert extended is not None  # locked by the caller, still queued and never attempted
    return extended
