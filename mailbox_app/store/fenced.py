"""Fenced writes on a claimed dispatch: every write after a claim applies only while the row is claimed
with this attempt's claim token in the thread's current epoch (spec §3.4-§3.13, the reference's
`ack`, `nack`, `record_dispatch_start`, `record_run_result`, `extend_lease`). A write that matches no
row wrote nothing; `explain_lost` then says why, superseding a claim whose epoch is stale (the lazy
supersession of spec §7.6). The attempt's start and finish (`try_start`, `try_settle`) are single
statements meant for the attempt's transactions (mailbox_app/worker/attempt.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from django.db import connection, transaction

from mailbox_app.contract.mailbox import DispatchRecord, DispatchStatus, RunDispatchResult
from mailbox_app.contract.storage import NotFound, VersionConflict
from mailbox_app.observability import metrics
from mailbox_app.store.rows import fetch_one, fetch_with_epoch
from mailbox_app.store.transitions import SUPERSEDING

# The attempt's start: the runtime trace reset, the executing worker named as `claimed_by` (a claim
# taken inline by a web process is taken over by the worker that runs it) and the lease renewed. Only a
# claim no attempt has started yet: a duplicate hand-over of the same claim (same token) never starts
# it a second time. The thread's owner is marked served here (round-robin across owners,
# conf.claim_policy): last in this short transaction, so no claim transaction holds the owner's row.
START = """
WITH started AS (
    UPDATE mailbox_dispatch d
       SET dispatch_instance_id = %(instance_id)s, run_status = 'running', termination = NULL,
           run_response = NULL, run_error = NULL, completed_at = NULL, claimed_by = %(consumer_id)s,
           lease_until = %(lease_until)s, updated_at = %(now)s
      FROM mailbox_thread_epoch e
     WHERE d.dispatch_id = %(dispatch_id)s AND d.status = 'claimed' AND d.claim_token = %(token)s
       AND e.thread_id = d.thread_id AND d.dispatch_epoch >= e.current_epoch
       AND d.dispatch_instance_id IS NULL
    RETURNING d.*, e.owner_key AS owner_key
), served AS (
    INSERT INTO mailbox_fair_group AS g (owner_key, served_at)
    SELECT owner_key, %(now)s FROM started
    ON CONFLICT (owner_key) DO UPDATE SET served_at = GREATEST(g.served_at, EXCLUDED.served_at)
)
SELECT * FROM started
"""


def try_start(
    dispatch_id: str,
    claim_token: str,
    dispatch_instance_id: str,
    consumer_id: str,
    now: int,
    *,
    lease_ms: int = 30_000,
) -> DispatchRecord | None:
    """The fenced start of an attempt (spec §3.5, the reference's `record_dispatch_start`) naming the
    executing worker and renewing the lease to `now + lease_ms`; None when fenced out or when this claim
    was already started by an attempt. Meant for the attempt's start transaction, which applies nothing
    else when this answers None."""
    return fetch_one(
        START,
        {
            "dispatch_id": dispatch_id,
            "token": claim_token,
            "instance_id": dispatch_instance_id,
            "consumer_id": consumer_id,
            "now": now,
            "lease_until": now + lease_ms,
        },
    )


class Settle(StrEnum):
    ACK = "ack"
    NACK = "nack"
    DEAD_LETTER = "dead_letter"


# The attempt's end in one statement (the reference's `record_run_result` + `ack` / `nack` /
# `dead_letter`): its result recorded and the delivery settled. A nack requeues with backoff, or
# dead-letters once attempts reach `max_attempts` (spec §3.7); a requeued dispatch keeps no trace of the
# abandoned attempt, and decisions the attempt acknowledged live but did not take ride along with it.
# With token budgets (`charge_tokens`), the claim's reservation becomes what the attempt used
# (mailbox_app/store/budgets.sql), only when the fence matched.
SETTLE = """
WITH next AS (
    SELECT d.dispatch_id,
           CASE WHEN %(outcome)s = 'ack' THEN 'acked'
                WHEN %(outcome)s = 'dead_letter' OR d.attempt_count + 1 >= d.max_attempts THEN 'dead_letter'
                ELSE 'queued' END AS status
      FROM mailbox_dispatch d WHERE d.dispatch_id = %(dispatch_id)s
), settled AS (
UPDATE mailbox_dispatch d
   SET status = next.status,
       attempt_count = d.attempt_count + CASE WHEN %(outcome)s = 'nack' THEN 1 ELSE 0 END,
       last_error = CASE WHEN %(outcome)s = 'ack' THEN d.last_error ELSE %(error)s END,
       available_at = CASE WHEN next.status = 'queued' THEN %(retry_at)s ELSE d.available_at END,
       completed_at = CASE WHEN next.status = 'queued' THEN NULL ELSE %(now)s END,
       dispatch_instance_id = CASE WHEN next.status = 'queued' THEN NULL ELSE %(instance_id)s END,
       run_status = CASE WHEN next.status = 'queued' THEN NULL ELSE %(run_status)s END,
       termination = CASE WHEN next.status = 'queued' THEN NULL ELSE %(termination)s::jsonb END,
       run_response = CASE WHEN next.status = 'queued' THEN NULL ELSE %(response)s END,
       run_error = CASE WHEN next.status = 'queued' THEN NULL ELSE %(run_error)s END,
       request = CASE WHEN next.status = 'queued' AND %(carry_decisions)s::jsonb IS NOT NULL
                      THEN jsonb_set(COALESCE(d.request, '{}'::jsonb), '{decisions}',
                                     COALESCE(d.request -> 'decisions', '[]'::jsonb)
                                     || %(carry_decisions)s::jsonb)
                      ELSE d.request END,
       claim_token = NULL, claimed_by = NULL, lease_until = NULL, updated_at = %(now)s
  FROM next, mailbox_thread_epoch e
 WHERE d.dispatch_id = next.dispatch_id AND d.status = 'claimed' AND d.claim_token = %(token)s
   AND e.thread_id = d.thread_id AND d.dispatch_epoch >= e.current_epoch
RETURNING d.*
), charged AS (
UPDATE mailbox_token_charge c
   SET tokens = %(charge_tokens)s::bigint, settled_at = %(now)s
  FROM settled s
 WHERE %(charge_tokens)s::bigint IS NOT NULL AND c.dispatch_id = s.dispatch_id AND c.claim_token = %(token)s
   AND c.settled_at IS NULL
)
SELECT * FROM settled
"""


@metrics.timed(metrics.settle_operation, metrics.fenced)
def try_settle(
    dispatch_id: str,
    claim_token: str,
    outcome: Settle,
    result: RunDispatchResult,
    now: int,
    *,
    retry_at: int | None = None,
    error: str | None = None,
    carry_decisions: list[dict[str, Any]] | None = None,
    charge_tokens: int | None = None,
) -> DispatchRecord | None:
    """`record_run_result` and ack / nack / dead letter as one fenced statement; None when fenced out.
    A nack that reaches `max_attempts` dead-letters (spec §3.7). A nack that requeues appends
    `carry_decisions` (RunResumeDecision JSON) to the dispatch's own input, so the retry delivers them.
    `charge_tokens` (token budgets on): what the claim's budget charges become."""
    return fetch_one(
        SETTLE,
        {
            "dispatch_id": dispatch_id,
            "token": claim_token,
            "outcome": outcome.value,
            "now": now,
            "retry_at": retry_at,
            "error": error,
            "instance_id": result.dispatch_instance_id,
            "run_status": result.status,
            "termination": None if result.termination is None else json.dumps(result.termination),
            "response": result.response or None,
            "run_error": result.error,
            "carry_decisions": json.dumps(carry_decisions) if carry_decisions else None,
            "charge_tokens": charge_tokens,
        },
    )


NACK = """
UPDATE mailbox_dispatch d
   SET attempt_count = d.attempt_count + 1, last_error = %(error)s, updated_at = %(now)s,
       claim_token = NULL, claimed_by = NULL, lease_until = NULL,
       status = CASE WHEN d.attempt_count + 1 >= d.max_attempts THEN 'dead_letter' ELSE 'queued' END,
       available_at = CASE WHEN d.attempt_count + 1 >= d.max_attempts THEN d.available_at
                           ELSE %(retry_at)s END,
       completed_at = CASE WHEN d.attempt_count + 1 >= d.max_attempts THEN %(now)s ELSE NULL END,
       -- a requeued dispatch must not carry the runtime-trace projection of the abandoned attempt
       dispatch_instance_id = CASE WHEN d.attempt_count + 1 >= d.max_attempts THEN d.dispatch_instance_id END,
       run_status = CASE WHEN d.attempt_count + 1 >= d.max_attempts THEN d.run_status END,
       termination = CASE WHEN d.attempt_count + 1 >= d.max_attempts THEN d.termination END,
       run_response = CASE WHEN d.attempt_count + 1 >= d.max_attempts THEN d.run_response END,
       run_error = CASE WHEN d.attempt_count + 1 >= d.max_attempts THEN d.run_error END
  FROM mailbox_thread_epoch e
 WHERE d.dispatch_id = %(dispatch_id)s AND d.status = 'claimed' AND d.claim_token = %(token)s
   AND e.thread_id = d.thread_id AND d.dispatch_epoch >= e.current_epoch
RETURNING d.*
"""


@metrics.timed(metrics.NACK)
def nack(dispatch_id: str, claim_token: str, retry_at: int, error: str, now: int) -> DispatchRecord:
    """Claimed -> Queued at `retry_at`, or DeadLetter once attempts reach max (spec §3.7)."""
    return fenced(
        NACK,
        {"dispatch_id": dispatch_id, "token": claim_token, "now": now, "retry_at": retry_at, "error": error},
        stale_reason="claimed dispatch superseded before nack",
    )


# A worker shutting down gives its claim back (mailbox_app/worker/execution.py): Claimed -> Queued, due
# now, the attempt not counted (nothing failed; the work was interrupted by the operator's stop), the
# runtime trace of the abandoned attempt cleared, decisions it acknowledged live carried along.
HAND_BACK = """
UPDATE mailbox_dispatch d
   SET status = 'queued', available_at = %(now)s, last_error = %(reason)s, updated_at = %(now)s,
       claim_token = NULL, claimed_by = NULL, lease_until = NULL, completed_at = NULL,
       dispatch_instance_id = NULL, run_status = NULL, termination = NULL, run_response = NULL,
       run_error = NULL,
       request = CASE WHEN %(carry_decisions)s::jsonb IS NOT NULL
                      THEN jsonb_set(COALESCE(d.request, '{}'::jsonb), '{decisions}',
                                     COALESCE(d.request -> 'decisions', '[]'::jsonb)
                                     || %(carry_decisions)s::jsonb)
                      ELSE d.request END
  FROM mailbox_thread_epoch e
 WHERE d.dispatch_id = %(dispatch_id)s AND d.status = 'claimed' AND d.claim_token = %(token)s
   AND e.thread_id = d.thread_id AND d.dispatch_epoch >= e.current_epoch
RETURNING d.*
"""


def hand_back(
    dispatch_id: str,
    claim_token: str,
    now: int,
    reason: str,
    *,
    carry_decisions: list[dict[str, Any]] | None = None,
) -> DispatchRecord | None:
    """Give a claim back, fenced like every attempt write: queued again, due `now`, its attempt not
    counted; None when fenced out (nothing written)."""
    return fetch_one(
        HAND_BACK,
        {
            "dispatch_id": dispatch_id,
            "token": claim_token,
            "now": now,
            "reason": reason,
            "carry_decisions": json.dumps(carry_decisions) if carry_decisions else None,
        },
    )


EXTEND_LEASE = """
UPDATE mailbox_dispatch d SET lease_until = %(lease_until)s, updated_at = %(now)s
  FROM mailbox_thread_epoch e
 WHERE d.dispatch_id = %(dispatch_id)s AND d.status = 'claimed' AND d.claim_token = %(token)s
   AND e.thread_id = d.thread_id AND d.dispatch_epoch >= e.current_epoch
RETURNING d.*
"""


@metrics.timed(metrics.EXTEND_LEASE, metrics.fenced)
def extend_lease(dispatch_id: str, claim_token: str, extension_ms: int, now: int) -> bool:
    """Renew a lease to `now + extension_ms`; False when the claim is gone or stale (spec §3.10)."""
    try:
        fenced(
            EXTEND_LEASE,
            {"dispatch_id": dispatch_id, "token": claim_token, "now": now, "lease_until": now + extension_ms},
            stale_reason="claimed dispatch superseded during lease renewal",
        )
    except (NotFound, VersionConflict):
        return False
    return True


# Many leases at once (the worker's one renewer, mailbox_app/worker/lease.py), each fenced like every
# attempt write: the ids that come back were renewed; an id that does not lost its claim.
EXTEND_LEASES = """
UPDATE mailbox_dispatch d SET lease_until = x.lease_until, updated_at = %(now)s
  FROM unnest(%(ids)s::varchar[], %(tokens)s::varchar[], %(lease_untils)s::bigint[])
       AS x(dispatch_id, claim_token, lease_until),
       mailbox_thread_epoch e
 WHERE d.dispatch_id = x.dispatch_id AND d.status = 'claimed' AND d.claim_token = x.claim_token
   AND e.thread_id = d.thread_id AND d.dispatch_epoch >= e.current_epoch
RETURNING d.dispatch_id
"""


def extend_leases(leases: list[tuple[str, str, int]], now: int) -> set[str]:
    """Renew each (dispatch id, claim token, lease until) in one statement (spec §3.10 for many); the
    ids renewed. An id not returned lost its claim (or its epoch)."""
    with connection.cursor() as cursor:
        cursor.execute(
            EXTEND_LEASES,
            {
                "now": now,
                "ids": [d for d, _, _ in leases],
                "tokens": [t for _, t, _ in leases],
                "lease_untils": [u for _, _, u in leases],
            },
        )
        return {row[0] for row in cursor.fetchall()}


# --- when a fence fails ------------------------------------------------------------------------------


def fenced(query: str, params: dict[str, Any], *, stale_reason: str) -> DispatchRecord:
    """Run a fenced UPDATE; on zero rows, explain why inside one transaction (and supersede if stale)."""
    updated = fetch_one(query, params)
    if updated is not None:
        return updated
    lost = explain_lost(params["dispatch_id"], params["token"], params["now"], stale_reason)
    if lost.current is None:
        raise NotFound(f"dispatch {params['dispatch_id']} not found")
    if lost.stale_epoch is None:
        # The row changed between the two statements (e.g. a concurrent reclaim) yet is still ours.
        if lost.still_claimed:
            retried = fetch_one(query, params)
            if retried is not None:
                return retried
            raise VersionConflict(f"dispatch {lost.current.dispatch_id} changed concurrently")
        raise VersionConflict(
            f"dispatch {lost.current.dispatch_id} is {lost.current.status.value}; claim token does not match"
        )
    raise VersionConflict(
        f"dispatch {lost.current.dispatch_id} epoch {lost.claimed_epoch} is stale "
        f"(thread at {lost.stale_epoch})",
        expected=lost.claimed_epoch,
        actual=lost.stale_epoch,
    )


@dataclass(frozen=True, slots=True)
class LostFence:
    """Why a fenced write matched no row: the dispatch as it is now (superseded first when the claim was
    still this attempt's but its epoch is stale), the stale epoch if that was the reason, and whether the
    claim is in fact still this attempt's (a concurrent change between two statements)."""

    current: DispatchRecord | None
    stale_epoch: int | None = None
    still_claimed: bool = False
    claimed_epoch: int = 0  # the epoch the claim was taken in


# The dispatch with its thread's current epoch, row-locked for the caller's transaction.
LOCK_WITH_EPOCH = """
SELECT d.*, COALESCE(e.current_epoch, 0) AS current_epoch
  FROM mailbox_dispatch d LEFT JOIN mailbox_thread_epoch e ON e.thread_id = d.thread_id
 WHERE d.dispatch_id = %(dispatch_id)s
 FOR UPDATE OF d
"""


def explain_lost(dispatch_id: str, claim_token: str, now: int, stale_reason: str) -> LostFence:
    """One transaction: lock the row, and if it is still claimed with this token in a stale epoch,
    supersede it (the lazy supersession of spec §7.6)."""
    with transaction.atomic():
        found = fetch_with_epoch(LOCK_WITH_EPOCH, {"dispatch_id": dispatch_id})
        if not found:
            return LostFence(None)
        current, epoch = found[0]
        if current.status is not DispatchStatus.CLAIMED or current.claim_token != claim_token:
            return LostFence(current)
        if current.dispatch_epoch < epoch:
            superseded = supersede(current, epoch, now, stale_reason)
            return LostFence(superseded, stale_epoch=epoch, claimed_epoch=current.dispatch_epoch)
        return LostFence(current, still_claimed=True)


SUPERSEDE = """
UPDATE mailbox_dispatch d
   SET status = 'superseded', dispatch_epoch = GREATEST(d.dispatch_epoch, %(epoch)s), last_error = %(reason)s,
       claim_token = NULL, claimed_by = NULL, lease_until = NULL, completed_at = %(now)s,
       updated_at = %(now)s
 WHERE d.dispatch_id = %(dispatch_id)s
RETURNING d.*
"""


@metrics.timed(metrics.SUPERSEDE, metrics.found)
def supersede(current: DispatchRecord, epoch: int, now: int, reason: str) -> DispatchRecord | None:
    """Supersede a row the caller read under its row lock (queued or claimed, else IllegalTransition)."""
    SUPERSEDING.require(current.status)
    return fetch_one(
        SUPERSEDE, {"dispatch_id": current.dispatch_id, "epoch": epoch, "now": now, "reason": reason}
    )
