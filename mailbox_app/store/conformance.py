"""The rest of the reference's `MailboxStore` surface, which the system itself does not call: the
single-purpose fenced writes (`ack`, `dead_letter`, `record_dispatch_start`, `record_run_result`, which
an attempt does as one statement, `fenced.try_start` / `fenced.try_settle`), `supersede_claimed`,
`list_terminal_dispatches`, the summary form of `interrupt`, and two counters. The conformance tests
(tests/mailbox_app/scenarios/test_conformance.py, the reference's own tests) and the benchmarks use
them; keeping them apart keeps the hot path readable."""

from __future__ import annotations

import json

from django.db import transaction

from mailbox_app.contract.mailbox import (
    TERMINAL_STATUSES,
    DispatchRecord,
    DispatchStatus,
    MailboxInterrupt,
    RunDispatchResult,
)
from mailbox_app.contract.storage import VersionConflict
from mailbox_app.observability import metrics
from mailbox_app.store.fenced import LOCK_WITH_EPOCH, fenced, supersede
from mailbox_app.store.queue import interrupt_detailed
from mailbox_app.store.rows import clamp, fetch_all, fetch_with_epoch, scalar

ACK = """
UPDATE mailbox_dispatch d
   SET status = 'acked', claim_token = NULL, claimed_by = NULL, lease_until = NULL, completed_at = %(now)s,
       updated_at = %(now)s
  FROM mailbox_thread_epoch e
 WHERE d.dispatch_id = %(dispatch_id)s AND d.status = 'claimed' AND d.claim_token = %(token)s
   AND e.thread_id = d.thread_id AND d.dispatch_epoch >= e.current_epoch
RETURNING d.*
"""


@metrics.timed(metrics.ACK)
def ack(dispatch_id: str, claim_token: str, now: int) -> DispatchRecord:
    """Claimed -> Acked (delivery consumed). Spec §3.4."""
    return fenced(
        ACK,
        {"dispatch_id": dispatch_id, "token": claim_token, "now": now},
        stale_reason="claimed dispatch superseded before ack",
    )


DEAD_LETTER = """
UPDATE mailbox_dispatch d
   SET status = 'dead_letter', last_error = %(error)s, claim_token = NULL, claimed_by = NULL,
       lease_until = NULL, completed_at = %(now)s, updated_at = %(now)s
  FROM mailbox_thread_epoch e
 WHERE d.dispatch_id = %(dispatch_id)s AND d.status = 'claimed' AND d.claim_token = %(token)s
   AND e.thread_id = d.thread_id AND d.dispatch_epoch >= e.current_epoch
RETURNING d.*
"""


@metrics.timed(metrics.DEAD_LETTER)
def dead_letter(dispatch_id: str, claim_token: str, error: str, now: int) -> DispatchRecord:
    """Claimed -> DeadLetter without counting an attempt (spec §3.8)."""
    return fenced(
        DEAD_LETTER,
        {"dispatch_id": dispatch_id, "token": claim_token, "now": now, "error": error},
        stale_reason="claimed dispatch superseded before dead letter",
    )


RECORD_START = """
UPDATE mailbox_dispatch d
   SET dispatch_instance_id = %(instance_id)s, run_status = 'running', termination = NULL,
       run_response = NULL, run_error = NULL, completed_at = NULL, updated_at = %(now)s
  FROM mailbox_thread_epoch e
 WHERE d.dispatch_id = %(dispatch_id)s AND d.status = 'claimed' AND d.claim_token = %(token)s
   AND e.thread_id = d.thread_id AND d.dispatch_epoch >= e.current_epoch
RETURNING d.*
"""


def record_dispatch_start(
    dispatch_id: str, claim_token: str, dispatch_instance_id: str, now: int
) -> DispatchRecord:
    """Mark the runtime start of a claimed dispatch (spec §3.5)."""
    return fenced(
        RECORD_START,
        {"dispatch_id": dispatch_id, "token": claim_token, "now": now, "instance_id": dispatch_instance_id},
        stale_reason="claimed dispatch superseded before runtime start",
    )


RECORD_RESULT = """
UPDATE mailbox_dispatch d
   SET dispatch_instance_id = %(instance_id)s, run_status = %(run_status)s,
       termination = %(termination)s::jsonb, run_response = %(response)s, run_error = %(error)s,
       completed_at = %(now)s, updated_at = %(now)s
  FROM mailbox_thread_epoch e
 WHERE d.dispatch_id = %(dispatch_id)s AND d.status = 'claimed' AND d.claim_token = %(token)s
   AND e.thread_id = d.thread_id AND d.dispatch_epoch >= e.current_epoch
RETURNING d.*
"""


def record_run_result(
    dispatch_id: str, claim_token: str, result: RunDispatchResult, now: int
) -> DispatchRecord:
    """Copy the run's outcome into the dispatch's runtime-trace projection (spec §3.6)."""
    return fenced(
        RECORD_RESULT,
        {
            "dispatch_id": dispatch_id,
            "token": claim_token,
            "now": now,
            "instance_id": result.dispatch_instance_id,
            "run_status": result.status,
            "termination": None if result.termination is None else json.dumps(result.termination),
            "response": result.response or None,
            "error": result.error,
        },
        stale_reason="claimed dispatch superseded before run result",
    )


def supersede_claimed(dispatch_id: str, claim_token: str, now: int, reason: str) -> DispatchRecord | None:
    """Terminalize a claimed dispatch as Superseded (spec §3.13); None when it is not claimed."""
    with transaction.atomic():
        found = fetch_with_epoch(LOCK_WITH_EPOCH, {"dispatch_id": dispatch_id})
        if not found:
            return None
        current, epoch = found[0]
        if current.status is not DispatchStatus.CLAIMED:
            return None
        if current.claim_token != claim_token:
            raise VersionConflict(f"dispatch {dispatch_id}: claim token does not match")
        return supersede(current, epoch, now, reason)


TERMINAL_DISPATCHES = """
SELECT * FROM mailbox_dispatch WHERE status = ANY(%(statuses)s)
 ORDER BY updated_at, created_at, dispatch_id LIMIT %(limit)s OFFSET %(offset)s
"""


def list_terminal_dispatches(limit: int = 100, offset: int = 0) -> list[DispatchRecord]:
    """Terminal dispatches of every thread, oldest update first (spec §3.14)."""
    return fetch_all(
        TERMINAL_DISPATCHES,
        {"statuses": [s.value for s in TERMINAL_STATUSES], "limit": clamp(limit), "offset": max(offset, 0)},
    )


def interrupt(thread_id: str, now: int) -> MailboxInterrupt:
    """The summary form of `interrupt_detailed` (the superseded list is dropped)."""
    details = interrupt_detailed(thread_id, now)
    return MailboxInterrupt(
        new_dispatch_epoch=details.new_dispatch_epoch,
        active_dispatch=details.active_dispatch,
        superseded_count=details.superseded_count,
    )


EPOCH = "SELECT current_epoch FROM mailbox_thread_epoch WHERE thread_id = %(thread_id)s"


def current_dispatch_epoch(thread_id: str) -> int:
    return int(scalar(EPOCH, {"thread_id": thread_id}) or 0)


COUNT_WITH_STATUS = "SELECT count(*) FROM mailbox_dispatch WHERE status = %(status)s"


def count_dispatches_by_status(status: DispatchStatus) -> int:
    return int(scalar(COUNT_WITH_STATUS, {"status": DispatchStatus(status).value}))
