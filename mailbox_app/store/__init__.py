"""The mailbox store on PostgreSQL: the reference's `MailboxStore`, one short transaction per operation.

Every write after a claim is fenced on `(dispatch_id, claim_token, status='claimed')` and the thread's
dispatch epoch; a stale epoch supersedes the row in the same transaction and raises `VersionConflict`.
`now` (Unix ms) is a parameter everywhere so tests control time.

Every dispatch status change in the project is made here, and each operation declares its change as a
`Transition` (below), checked against the table `ALLOWED_TRANSITIONS` when this module is imported.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from django.db import IntegrityError, connection, transaction

from mailbox_app.conf import claim_policy
from mailbox_app.contract.config import ClaimPolicy
from mailbox_app.contract.ids import uuid7
from mailbox_app.contract.mailbox import (
    TERMINAL_STATUSES,
    DispatchRecord,
    DispatchStatus,
    MailboxInterrupt,
    RunDispatchResult,
    Transition,
    dispatch_from_row,
)
from mailbox_app.contract.storage import AlreadyExists, InvalidInput, NotFound, VersionConflict
from mailbox_app.observability import metrics
from mailbox_app.store import sql

MAX_LIST_LIMIT = 1000

# --- the status change of each operation (checked against ALLOWED_TRANSITIONS as they are declared) --

_Q, _C, _A = DispatchStatus.QUEUED, DispatchStatus.CLAIMED, DispatchStatus.ACKED
_X, _S, _D = DispatchStatus.CANCELLED, DispatchStatus.SUPERSEDED, DispatchStatus.DEAD_LETTER

CLAIMING = Transition.of("claim / claim_next_fair / claim_dispatch (T2, T3)", [_Q], [_C])
SUPERSEDING_STALE_QUEUED = Transition.of("claim of a thread with stale queued rows (T5)", [_Q], [_S])
INTERRUPTING = Transition.of("interrupt: the thread's queued rows (T4)", [_Q], [_S])
CANCELLING = Transition.of("cancel (T6)", [_Q], [_X])
ACKING = Transition.of("ack (T7)", [_C], [_A])
NACKING = Transition.of("nack (T8, T9)", [_C], [_Q, _D])
DEAD_LETTERING = Transition.of("dead_letter (T9)", [_C], [_D])
SETTLING = Transition.of("try_settle: ack, nack or dead letter", [_C], [_A, _Q, _D])
RECLAIMING = Transition.of("reclaim_expired_leases (T10)", [_C], [_Q, _D])
SUPERSEDING_CLAIMED = Transition.of("a fenced write or reclaim of a stale claim (T11-T13)", [_C], [_S])
# `_supersede` serves both: its statement has no status condition, so it checks the locked row's status
SUPERSEDING = Transition.of("supersede", [_Q, _C], [_S])
REQUEUEING_DEAD_LETTER = Transition.of("requeue_dead_letters (operator)", [_D], [_Q])

TRANSITIONS: tuple[Transition, ...] = (
    CLAIMING,
    SUPERSEDING_STALE_QUEUED,
    INTERRUPTING,
    CANCELLING,
    ACKING,
    NACKING,
    DEAD_LETTERING,
    SETTLING,
    RECLAIMING,
    SUPERSEDING_CLAIMED,
    SUPERSEDING,
    REQUEUEING_DEAD_LETTER,
)


def _record(row: Sequence[Any]) -> DispatchRecord:
    """A row as a record. Django's connection loads jsonb as text, so decode `termination` here."""
    record = dispatch_from_row(tuple(row))
    if isinstance(record.termination, str):
        record = record.replace(termination=json.loads(record.termination))
    if isinstance(record.request, str):
        record = record.replace(request=json.loads(record.request))
    return record


def _fetch_all(query: str, params: dict[str, Any]) -> list[DispatchRecord]:
    with connection.cursor() as cursor:
        cursor.execute(query, params)
        return [_record(row) for row in cursor.fetchall()]


def _fetch_one(query: str, params: dict[str, Any]) -> DispatchRecord | None:
    rows = _fetch_all(query, params)
    return rows[0] if rows else None


def _scalar(query: str, params: dict[str, Any]) -> Any:
    with connection.cursor() as cursor:
        cursor.execute(query, params)
        row = cursor.fetchone()
    return None if row is None else row[0]


# --- enqueue ---------------------------------------------------------------------------------


@metrics.timed(metrics.ENQUEUE)
def enqueue(dispatch: DispatchRecord, *, owner_key: str = "") -> DispatchRecord:
    """Persist a queued dispatch stamped with the thread's current epoch (spec §3.1). `owner_key`
    (the thread's owner) is recorded on the thread's epoch row the first time it is given: claims
    rotate across owners (`conf.claim_policy`).

    Raises `AlreadyExists` for a duplicate dispatch id or an active dispatch with the same dedupe key.
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
            stored = _fetch_one(sql.INSERT_DISPATCH, params)
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


# --- claims ----------------------------------------------------------------------------------


@metrics.timed(metrics.CLAIM, metrics.found)
def claim(thread_id: str, consumer_id: str, lease_ms: int, now: int, limit: int = 1) -> list[DispatchRecord]:
    """Claim the thread's next eligible dispatch (spec §3.2).

    Stale-epoch queued rows are superseded first; nothing is claimed while the thread has a claimed
    dispatch, or while its head's agent or owner is at a concurrency limit (`conf.claim_policy`).
    PostgreSQL enforces one claimed dispatch per thread, so at most one row is returned whatever
    `limit` (>= 1) says.
    """
    if limit <= 0:
        return []
    policy = claim_policy()
    params = _claim_params(thread_id, consumer_id, lease_ms, now)
    try:
        if policy.has_limits:
            with transaction.atomic():
                claimed, _ = _claim_limited(params, policy, skip_locked=False)
            return [claimed] if claimed is not None else []
        # one statement: in autocommit it is its own transaction; inside the caller's transaction a
        # savepoint keeps a lost race (unique violation) from aborting it
        with transaction.atomic() if connection.in_atomic_block else nullcontext():
            return _fetch_all(sql.CLAIM_ONE, params)
    except IntegrityError:
        return []


def _claim_params(thread_id: str, consumer_id: str, lease_ms: int, now: int) -> dict[str, Any]:
    return {
        "thread_id": thread_id,
        "now": now,
        "token": uuid7(),
        "consumer_id": consumer_id,
        "lease_until": now + lease_ms,
    }


def _limit_params(policy: ClaimPolicy, agent_key: str, owner_key: str) -> dict[str, Any]:
    return {
        "agent_key": agent_key,
        "owner_key": owner_key,
        "global_limit": policy.max_active_runs,
        "agent_limit": policy.agent_limit(agent_key),
        "owner_limit": policy.owner_max_active_runs,
    }


def _lock_scopes(policy: ClaimPolicy, agent_key: str, owner_key: str) -> bool:
    """Take the advisory lock of every limited scope of this claim (after the thread's epoch row)."""
    scopes = policy.lock_scopes(agent_key, owner_key)
    if scopes:
        with connection.cursor() as cursor:
            cursor.execute(sql.LOCK_LIMIT_SCOPES, {"scopes": scopes})
    return bool(scopes)


def _claim_limited(
    params: dict[str, Any],
    policy: ClaimPolicy,
    *,
    skip_locked: bool,
    within: frozenset[str] | None = None,
) -> tuple[DispatchRecord | None, frozenset[str]]:
    """A claim under limits, inside the caller's transaction: the epoch row, then the scopes' locks,
    then the claim with the counts in its condition. Returns the claim and the scopes it locked. With
    `within` (the scopes the transaction already holds), a head needing any other scope is not tried:
    taking a second set of scope locks while holding one could deadlock with a claimer doing the
    reverse."""
    with connection.cursor() as cursor:
        cursor.execute(
            sql.LOCK_THREAD_HEAD_SKIP_LOCKED if skip_locked else sql.LOCK_THREAD_HEAD,
            {"thread_id": params["thread_id"], "now": params["now"]},
        )
        row = cursor.fetchone()
    if row is None or row[1] is None:  # no epoch row, locked by someone else, or nothing eligible
        return None, frozenset()
    owner_key, agent_key = row
    scopes = frozenset(policy.lock_scopes(agent_key, owner_key))
    if within is not None and not scopes <= within:
        return None, frozenset()
    _lock_scopes(policy, agent_key, owner_key)
    claimed = _fetch_one(sql.CLAIM_ONE_LIMITED, params | _limit_params(policy, agent_key, owner_key))
    return claimed, scopes


FAIR_CANDIDATES = 16


@metrics.timed(metrics.CLAIM, metrics.found)
def claim_next_fair(consumer_id: str, lease_ms: int, now: int) -> DispatchRecord | None:
    """Claim the fairest next dispatch across all threads (the drain of a finishing attempt and an idle
    doorbell): the head of the thread whose owner was served longest ago, then priority and age; a
    claim a submit took inline that no worker started within the grace is taken over. Never waits for
    another thread's epoch row, and never takes a scope lock while holding another scope's."""
    policy = claim_policy()
    params: dict[str, Any] = {
        "now": now,
        "unstarted_before": now - policy.unstarted_claim_grace_ms,
        "limit": FAIR_CANDIDATES,
    }
    query = sql.FAIR_CANDIDATES
    if policy.has_limits:
        query = sql.FAIR_CANDIDATES_LIMITED
        params |= {
            "global_limit": policy.max_active_runs,
            "agent_limits": json.dumps(policy.agent_limits),
            "owner_limit": policy.owner_max_active_runs,
        }
    with connection.cursor() as cursor:
        cursor.execute(query, params)
        candidates = _spread(cursor.fetchall())
    # Scope locks are transaction-scoped: inside a finish transaction they outlive the savepoint below.
    # Once some are held, only heads needing no other scope are tried (a limited head whose agent is at
    # its limit must not keep the finishing worker from an unlimited head after it).
    held: frozenset[str] | None = frozenset() if connection.in_atomic_block else None
    for thread_id, dispatch_id, old_token, _agent_key, _owner_key in candidates:
        claim_params = _claim_params(thread_id, consumer_id, lease_ms, now)
        try:
            with transaction.atomic():
                if old_token is not None:
                    steal = {"dispatch_id": dispatch_id, "old_token": old_token}
                    claimed = _fetch_one(sql.STEAL_UNSTARTED, claim_params | steal)
                elif policy.has_limits:
                    claimed, scopes = _claim_limited(
                        claim_params, policy, skip_locked=True, within=held or None
                    )
                    if held is not None:
                        held |= scopes
                else:
                    claimed = _fetch_one(sql.CLAIM_ONE_SKIP_LOCKED, claim_params)
        except IntegrityError:  # a concurrent claim of that thread won
            continue
        if claimed is not None:
            return claimed
    return None


def _spread(candidates: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The first owner's candidates in random order (then the rest in fair order): workers finishing at
    the same moment read the same list, and would otherwise all race for its first thread. Fairness is
    across owners; a thread's own order is kept by the claim itself."""
    if not candidates:
        return candidates
    owner = candidates[0][4]
    first = [c for c in candidates if c[4] == owner]
    random.shuffle(first)
    return first + [c for c in candidates if c[4] != owner]


def blocking_limit(agent_key: str, owner_key: str) -> str | None:
    """The concurrency limit that holds a claim of this agent for this owner now, named by its setting;
    None when no limit is reached."""
    policy = claim_policy()
    if not policy.has_limits:
        return None
    with connection.cursor() as cursor:
        cursor.execute(sql.CLAIMED_COUNTS, {"agent_key": agent_key, "owner_key": owner_key})
        row = cursor.fetchone()
    total, of_agent, of_owner = row if row is not None else (0, 0, 0)
    if policy.max_active_runs is not None and total >= policy.max_active_runs:
        return f"AWAKEN_MAX_ACTIVE_RUNS={policy.max_active_runs} ({total} running)"
    agent_limit = policy.agent_limit(agent_key)
    if agent_limit is not None and of_agent >= agent_limit:
        return f"AWAKEN_AGENT_LIMITS[{agent_key}]={agent_limit} ({of_agent} running)"
    if policy.owner_max_active_runs is not None and of_owner >= policy.owner_max_active_runs:
        return f"AWAKEN_OWNER_MAX_ACTIVE_RUNS={policy.owner_max_active_runs} ({of_owner} running)"
    return None


def thread_owner_key(thread_id: str) -> str:
    return str(_scalar(sql.SELECT_THREAD_OWNER, {"thread_id": thread_id}) or "")


def make_available(dispatch_id: str, now: int) -> None:
    """A queued dispatch held back by the inline-claim guard becomes claimable now."""
    with connection.cursor() as cursor:
        cursor.execute(sql.MAKE_AVAILABLE, {"dispatch_id": dispatch_id, "now": now})


@metrics.timed(metrics.CLAIM_DISPATCH, metrics.found)
def claim_dispatch(dispatch_id: str, consumer_id: str, lease_ms: int, now: int) -> DispatchRecord | None:
    """Claim one queued dispatch by id, ignoring `available_at` (spec §3.3, the inline path); None when
    it is not claimable, or its agent or owner is at a concurrency limit (`blocking_limit` says which)."""
    thread_id = _scalar(
        "SELECT thread_id FROM mailbox_dispatch WHERE dispatch_id = %(d)s", {"d": dispatch_id}
    )
    if thread_id is None:
        return None
    policy = claim_policy()
    try:
        with transaction.atomic():
            epoch = _scalar(sql.LOCK_EPOCH, {"thread_id": thread_id}) or 0
            current = _fetch_one(sql.SELECT_DISPATCH, {"dispatch_id": dispatch_id})
            if current is None or current.status is not DispatchStatus.QUEUED:
                return None
            if current.dispatch_epoch < epoch:
                _supersede(current, epoch, now, "queued dispatch superseded by newer dispatch epoch")
                return None
            params = {
                "dispatch_id": dispatch_id,
                "now": now,
                "token": uuid7(),
                "consumer_id": consumer_id,
                "lease_until": now + lease_ms,
            }
            if not policy.has_limits:
                return _fetch_one(sql.CLAIM_BY_ID, params)
            owner_key = thread_owner_key(thread_id)
            _lock_scopes(policy, current.agent_key, owner_key)
            return _fetch_one(
                sql.CLAIM_BY_ID_LIMITED, params | _limit_params(policy, current.agent_key, owner_key)
            )
    except IntegrityError:
        return None


# --- fenced writes on a claimed dispatch ------------------------------------------------------


def _fenced(query: str, params: dict[str, Any], *, stale_reason: str) -> DispatchRecord:
    """Run a fenced UPDATE; on zero rows, explain why inside one transaction (and supersede if stale)."""
    updated = _fetch_one(query, params)
    if updated is not None:
        return updated
    lost = explain_lost(params["dispatch_id"], params["token"], params["now"], stale_reason)
    if lost.current is None:
        raise NotFound(f"dispatch {params['dispatch_id']} not found")
    if lost.stale_epoch is None:
        # The row changed between the two statements (e.g. a concurrent reclaim) yet is still ours.
        if lost.still_claimed:
            retried = _fetch_one(query, params)
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


def explain_lost(dispatch_id: str, claim_token: str, now: int, stale_reason: str) -> LostFence:
    """One transaction: lock the row, and if it is still claimed with this token in a stale epoch,
    supersede it (the lazy supersession of spec §7.6)."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(sql.SELECT_DISPATCH_WITH_EPOCH, {"dispatch_id": dispatch_id})
            row = cursor.fetchone()
        if row is None:
            return LostFence(None)
        current, epoch = _record(row[:-1]), int(row[-1])
        if current.status is not DispatchStatus.CLAIMED or current.claim_token != claim_token:
            return LostFence(current)
        if current.dispatch_epoch < epoch:
            superseded = _supersede(current, epoch, now, stale_reason)
            return LostFence(superseded, stale_epoch=epoch, claimed_epoch=current.dispatch_epoch)
        return LostFence(current, still_claimed=True)


def try_start(
    dispatch_id: str,
    claim_token: str,
    dispatch_instance_id: str,
    consumer_id: str,
    now: int,
    *,
    lease_ms: int = 30_000,
) -> DispatchRecord | None:
    """The fenced start of an attempt (spec §3.5) naming the executing worker and renewing the lease to
    `now + lease_ms`; None when fenced out or when this claim was already started by an attempt.
    Meant for the attempt's start transaction, which applies nothing else when this answers None."""
    return _fetch_one(
        sql.START,
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
) -> DispatchRecord | None:
    """`record_run_result` and ack / nack / dead letter as one fenced statement; None when fenced out.
    A nack that reaches `max_attempts` dead-letters (spec §3.7). A nack that requeues appends
    `carry_decisions` (RunResumeDecision JSON) to the dispatch's own input, so the retry delivers them."""
    return _fetch_one(
        sql.SETTLE,
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
        },
    )


@metrics.timed(metrics.SUPERSEDE, metrics.found)
def _supersede(current: DispatchRecord, epoch: int, now: int, reason: str) -> DispatchRecord | None:
    """Supersede a row the caller read under its row lock (queued or claimed, else IllegalTransition)."""
    SUPERSEDING.require(current.status)
    return _fetch_one(
        sql.SUPERSEDE,
        {"dispatch_id": current.dispatch_id, "epoch": epoch, "now": now, "reason": reason},
    )


@metrics.timed(metrics.ACK)
def ack(dispatch_id: str, claim_token: str, now: int) -> DispatchRecord:
    """Claimed -> Acked (delivery consumed). Spec §3.4."""
    return _fenced(
        sql.ACK,
        {"dispatch_id": dispatch_id, "token": claim_token, "now": now},
        stale_reason="claimed dispatch superseded before ack",
    )


@metrics.timed(metrics.NACK)
def nack(dispatch_id: str, claim_token: str, retry_at: int, error: str, now: int) -> DispatchRecord:
    """Claimed -> Queued at `retry_at`, or DeadLetter once attempts reach max (spec §3.7)."""
    return _fenced(
        sql.NACK,
        {"dispatch_id": dispatch_id, "token": claim_token, "now": now, "retry_at": retry_at, "error": error},
        stale_reason="claimed dispatch superseded before nack",
    )


@metrics.timed(metrics.DEAD_LETTER)
def dead_letter(dispatch_id: str, claim_token: str, error: str, now: int) -> DispatchRecord:
    """Claimed -> DeadLetter without counting an attempt (spec §3.8)."""
    return _fenced(
        sql.DEAD_LETTER,
        {"dispatch_id": dispatch_id, "token": claim_token, "now": now, "error": error},
        stale_reason="claimed dispatch superseded before dead letter",
    )


def record_dispatch_start(
    dispatch_id: str, claim_token: str, dispatch_instance_id: str, now: int
) -> DispatchRecord:
    """Mark the runtime start of a claimed dispatch (spec §3.5)."""
    return _fenced(
        sql.RECORD_START,
        {"dispatch_id": dispatch_id, "token": claim_token, "now": now, "instance_id": dispatch_instance_id},
        stale_reason="claimed dispatch superseded before runtime start",
    )


def record_run_result(
    dispatch_id: str, claim_token: str, result: RunDispatchResult, now: int
) -> DispatchRecord:
    """Copy the run's outcome into the dispatch's runtime-trace projection (spec §3.6)."""
    return _fenced(
        sql.RECORD_RESULT,
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


@metrics.timed(metrics.EXTEND_LEASE, metrics.fenced)
def extend_lease(dispatch_id: str, claim_token: str, extension_ms: int, now: int) -> bool:
    """Renew a lease to `now + extension_ms`; False when the claim is gone or stale (spec §3.10)."""
    try:
        _fenced(
            sql.EXTEND_LEASE,
            {"dispatch_id": dispatch_id, "token": claim_token, "now": now, "lease_until": now + extension_ms},
            stale_reason="claimed dispatch superseded during lease renewal",
        )
    except (NotFound, VersionConflict):
        return False
    return True


def supersede_claimed(dispatch_id: str, claim_token: str, now: int, reason: str) -> DispatchRecord | None:
    """Terminalize a claimed dispatch as Superseded (spec §3.13); None when it is not claimed."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(sql.SELECT_DISPATCH_WITH_EPOCH, {"dispatch_id": dispatch_id})
            row = cursor.fetchone()
        if row is None:
            return None
        current, epoch = _record(row[:-1]), int(row[-1])
        if current.status is not DispatchStatus.CLAIMED:
            return None
        if current.claim_token != claim_token:
            raise VersionConflict(f"dispatch {dispatch_id}: claim token does not match")
        return _supersede(current, epoch, now, reason)


# --- queued-only writes -----------------------------------------------------------------------


@metrics.timed(metrics.CANCEL, metrics.found)
def cancel(dispatch_id: str, now: int) -> DispatchRecord | None:
    """Queued -> Cancelled; None for missing, claimed or terminal dispatches (spec §3.9)."""
    return _fetch_one(sql.CANCEL_QUEUED, {"dispatch_id": dispatch_id, "now": now})


@metrics.timed(metrics.INTERRUPT, metrics.interrupted)
def interrupt_detailed(thread_id: str, now: int) -> MailboxInterrupt:
    """Bump the thread epoch, supersede its queued dispatches, report the claimed one (spec §3.11)."""
    with transaction.atomic():
        new_epoch = int(_scalar(sql.BUMP_EPOCH, {"thread_id": thread_id}))
        superseded = _fetch_all(sql.SUPERSEDE_QUEUED_BY_INTERRUPT, {"thread_id": thread_id, "now": now})
        active = _fetch_one(sql.SELECT_CLAIMED_OF_THREAD, {"thread_id": thread_id})
    superseded.sort(key=lambda d: (d.priority, d.created_at, d.dispatch_id))
    return MailboxInterrupt(
        new_dispatch_epoch=new_epoch,
        active_dispatch=active,
        superseded_count=len(superseded),
        superseded_dispatches=superseded,
    )


def interrupt(thread_id: str, now: int) -> MailboxInterrupt:
    """The summary form of `interrupt_detailed` (the superseded list is dropped)."""
    details = interrupt_detailed(thread_id, now)
    return MailboxInterrupt(
        new_dispatch_epoch=details.new_dispatch_epoch,
        active_dispatch=details.active_dispatch,
        superseded_count=details.superseded_count,
    )


def current_dispatch_epoch(thread_id: str) -> int:
    return int(_scalar(sql.READ_EPOCH, {"thread_id": thread_id}) or 0)


# --- maintenance ------------------------------------------------------------------------------


@metrics.timed(metrics.RECLAIM, metrics.reclaimed)
def reclaim_expired_leases(now: int, limit: int = 100) -> list[DispatchRecord]:
    """Requeue (or dead-letter) claimed dispatches whose lease ended before `now` (spec §3.15).

    A stale-epoch expired claim is superseded instead and is not returned.
    """
    if limit <= 0:
        return []
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(sql.SELECT_EXPIRED, {"now": now, "limit": limit})
            rows = cursor.fetchall()
        expired = [(_record(row[:-1]), int(row[-1])) for row in rows]
        for current, epoch in expired:
            if current.dispatch_epoch < epoch:
                _supersede(current, epoch, now, "claimed dispatch lease expired after interrupt")
        ids = [d.dispatch_id for d, epoch in expired if d.dispatch_epoch >= epoch]
        if not ids:
            return []
        return _fetch_all(sql.RECLAIM, {"ids": ids, "now": now})


def lock_dead_letters(
    *, dispatch_ids: Sequence[str] | None = None, thread_id: str | None = None
) -> list[DispatchRecord]:
    """The dead-lettered dispatches among `dispatch_ids` and of `thread_id` (every one when both are
    None), row-locked in id order for the caller's transaction: what an operator's requeue may move."""
    return _fetch_all(
        sql.SELECT_DEAD_LETTERS,
        {"ids": None if dispatch_ids is None else list(dispatch_ids), "thread_id": thread_id},
    )


def requeue_dead_letters(dispatch_ids: Sequence[str], now: int) -> list[DispatchRecord]:
    """DeadLetter -> Queued, the operator's requeue: attempt_count 0, available at `now`, stamped with
    the thread's current epoch, the dead attempt's runtime trace dropped. Rows that are not dead-lettered
    (any more) are left alone and not returned."""
    if not dispatch_ids:
        return []
    return _fetch_all(sql.REQUEUE_DEAD_LETTERS, {"ids": list(dispatch_ids), "now": now})


def purge_terminal(older_than: int) -> int:
    """Delete terminal dispatches last updated before `older_than`; returns how many (spec §3.16)."""
    with connection.cursor() as cursor:
        cursor.execute(sql.PURGE_TERMINAL, {"older_than": older_than})
        return int(cursor.rowcount)


_THREAD_BUSY = f"""
SELECT EXISTS (
    SELECT 1 FROM {sql.DISPATCH} d
     WHERE d.thread_id = %(thread_id)s AND d.dispatch_id <> %(excluding)s
       AND (d.status = 'claimed'
            OR (d.status = 'queued' AND d.dispatch_epoch >= COALESCE(
                (SELECT current_epoch FROM {sql.EPOCH} WHERE thread_id = %(thread_id)s), 0))))
"""


def thread_busy(thread_id: str, *, excluding: str = "") -> bool:
    """Whether the thread has a claimed dispatch or live queued work (delayed starts included) other
    than `excluding`. Submits check it under the thread's row lock, so two of them cannot both pass."""
    return bool(_scalar(_THREAD_BUSY, {"thread_id": thread_id, "excluding": excluding}))


def claimable_thread_ids(now: int, limit: int = 1000) -> list[str]:
    """Threads with a queued dispatch available at `now` and no claim: what the sweep re-drives."""
    with connection.cursor() as cursor:
        cursor.execute(sql.CLAIMABLE_THREADS, {"now": now, "limit": limit})
        return [row[0] for row in cursor.fetchall()]


def threads_coming_due(now: int, until: int, limit: int = 1000) -> list[tuple[str, str, int]]:
    """(thread, dispatch, available_at) of each unclaimed thread's earliest queued dispatch that becomes
    available after `now` and by `until`: the delayed starts the sweep rings ahead of their time."""
    with connection.cursor() as cursor:
        cursor.execute(sql.THREADS_COMING_DUE, {"now": now, "until": until, "limit": limit})
        return [(str(t), str(d), int(at)) for t, d, at in cursor.fetchall()]


# --- reads ------------------------------------------------------------------------------------


def load_dispatch(dispatch_id: str) -> DispatchRecord | None:
    return _fetch_one(sql.SELECT_DISPATCH, {"dispatch_id": dispatch_id})


def list_dispatches(
    thread_id: str,
    status_filter: Sequence[DispatchStatus] | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[DispatchRecord]:
    """The thread's dispatches in claim order (`priority, created_at`); an empty filter yields []."""
    if status_filter is not None and len(status_filter) == 0:
        return []
    query = f"SELECT {sql.COLS} FROM mailbox_dispatch WHERE thread_id = %(thread_id)s"
    params: dict[str, Any] = {
        "thread_id": thread_id,
        "limit": _clamp(limit),
        "offset": max(offset, 0),
    }
    if status_filter is not None:
        query += " AND status = ANY(%(statuses)s)"
        params["statuses"] = [DispatchStatus(s).value for s in status_filter]
    query += " ORDER BY priority, created_at, dispatch_id LIMIT %(limit)s OFFSET %(offset)s"
    return _fetch_all(query, params)


def count_thread_dispatches(thread_id: str, status_filter: Sequence[DispatchStatus] | None = None) -> int:
    query = "SELECT count(*) FROM mailbox_dispatch WHERE thread_id = %(thread_id)s"
    params: dict[str, Any] = {"thread_id": thread_id}
    if status_filter is not None:
        query += " AND status = ANY(%(statuses)s)"
        params["statuses"] = [DispatchStatus(s).value for s in status_filter]
    return int(_scalar(query, params))


def count_dispatches_by_status(status: DispatchStatus) -> int:
    return int(
        _scalar(
            "SELECT count(*) FROM mailbox_dispatch WHERE status = %(s)s", {"s": DispatchStatus(status).value}
        )
    )


def count_by_status() -> dict[DispatchStatus, int]:
    """Dispatches per status in one grouped count (the sweep refreshes the depth gauges with it)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT status, count(*) FROM mailbox_dispatch GROUP BY status")
        return {DispatchStatus(status): int(count) for status, count in cursor.fetchall()}


def list_terminal_dispatches(limit: int = 100, offset: int = 0) -> list[DispatchRecord]:
    """Terminal dispatches of every thread, oldest update first (spec §3.14)."""
    return _fetch_all(
        f"SELECT {sql.COLS} FROM mailbox_dispatch WHERE status = ANY(%(statuses)s)"
        " ORDER BY updated_at, created_at, dispatch_id LIMIT %(limit)s OFFSET %(offset)s",
        {
            "statuses": [s.value for s in TERMINAL_STATUSES],
            "limit": _clamp(limit),
            "offset": max(offset, 0),
        },
    )


def queued_thread_ids() -> list[str]:
    """Distinct threads with at least one queued dispatch (ignoring `available_at`), sorted."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT DISTINCT thread_id FROM mailbox_dispatch WHERE status = 'queued' ORDER BY 1")
        return [row[0] for row in cursor.fetchall()]


def load_dispatches_for_runs(run_ids: Iterable[str]) -> list[DispatchRecord]:
    return _fetch_all(
        f"SELECT {sql.COLS} FROM mailbox_dispatch WHERE run_id = ANY(%(ids)s) ORDER BY created_at",
        {"ids": list(run_ids)},
    )


def _clamp(limit: int) -> int:
    return max(0, min(limit, MAX_LIST_LIMIT))
