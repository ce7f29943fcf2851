"""Reads shared by the admin, the API and operator commands."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from django.db.models import Count, Min
from redis.exceptions import RedisError

from mailbox_app import store
from mailbox_app.contract.ids import now_ms
from mailbox_app.contract.mailbox import DISPATCH_COLUMNS, DispatchRecord, DispatchStatus, dispatch_from_row
from mailbox_app.contract.timefmt import format_duration_ms, format_utc_ms
from mailbox_app.models import Dispatch, ThreadEpoch
from mailbox_app.realtime.locks import ThreadLock

BLOCK_REPORT_QUEUED_LIMIT = 200


@dataclass(frozen=True)
class MailboxOverview:
    counts: dict[str, int]
    oldest_queued_age_ms: int | None
    claims: list[dict[str, Any]] = field(default_factory=list)


def claim_started_at(claim_token: str | None) -> int | None:
    """When a claim was made (Unix ms), read from its UUIDv7 claim token; None for another format.

    The row's `updated_at` moves on every lease renewal and runtime write, so it cannot say "since when".
    Only the timestamp is returned: the token itself is a fencing secret and never shown.
    """
    if not claim_token:
        return None
    try:
        parsed = uuid.UUID(claim_token)
    except ValueError:
        return None
    return parsed.int >> 80 if parsed.version == 7 else None


def latest_thread_dispatches(thread_id: str, limit: int) -> list[DispatchRecord]:
    """The thread's newest dispatches first (the thread admin's table), as records."""
    rows = (
        Dispatch.objects.filter(thread_id=thread_id)
        .order_by("-created_at", "-dispatch_id")
        .values_list(*DISPATCH_COLUMNS)[:limit]
    )
    return [dispatch_from_row(tuple(row)) for row in rows]


def mailbox_overview(*, now: int | None = None, claim_limit: int = 100) -> MailboxOverview:
    stamp = now_ms() if now is None else now
    counts = {s.value: 0 for s in DispatchStatus}
    for status, n in Dispatch.objects.order_by().values_list("status").annotate(n=Count("pk")):
        counts[status] = n
    oldest = Dispatch.objects.queued().aggregate(oldest=Min("created_at"))["oldest"]
    claims = []
    for d in Dispatch.objects.claimed().order_by("lease_until")[:claim_limit]:
        claimed_at = claim_started_at(d.claim_token)
        claims.append(
            {
                "thread_id": d.thread_id,
                "dispatch_id": d.dispatch_id,
                "run_id": d.run_id,
                "claimed_by": d.claimed_by,
                "claimed_at": claimed_at,
                "claimed_since_ms": stamp - (d.updated_at if claimed_at is None else claimed_at),
                "lease_until": d.lease_until,
                "lease_left_ms": (d.lease_until or 0) - stamp,
            }
        )
    return MailboxOverview(
        counts=counts, oldest_queued_age_ms=None if oldest is None else stamp - oldest, claims=claims
    )


# --- why is a thread blocked ---------------------------------------------------------------------


class ThreadState(StrEnum):
    """The verdict of a `ThreadBlockReport`, most specific first."""

    IDLE = "idle"  # nothing queued, nothing claimed
    RUNNING = "running"  # a claim, nothing waiting behind it
    BLOCKED = "blocked"  # queued work waits behind the claim
    LEASE_EXPIRED = "lease_expired"  # the claim's lease ran out: the sweep requeues it
    BACKOFF = "backoff"  # no claim; every live queued dispatch waits for its available_at
    CLAIMABLE = "claimable"  # no claim and work is claimable now: a worker should take it
    STALE_ONLY = "stale_only"  # only stale-epoch queued rows: the next claim supersedes them


@dataclass(frozen=True, slots=True)
class ClaimHolder:
    """The thread's claimed dispatch: who holds the thread, since when, until when."""

    dispatch_id: str
    run_id: str
    claimed_by: str
    claimed_at: int | None  # from the claim token; None when unknown
    last_update_at: int  # last lease renewal or runtime write
    lease_until: int
    lease_left_ms: int  # negative once expired
    dispatch_epoch: int
    stale_epoch: bool  # interrupted: its next fenced write supersedes it
    attempt_count: int
    max_attempts: int

    @property
    def lease_expired(self) -> bool:
        return self.lease_left_ms < 0


@dataclass(frozen=True, slots=True)
class QueuedEntry:
    """One queued dispatch of the thread, in claim order, with what stands before it."""

    position: int  # 1-based, claim order (priority, created_at, dispatch_id)
    dispatch_id: str
    run_id: str
    priority: int
    created_at: int
    available_at: int
    backoff_left_ms: int  # > 0 while waiting for available_at (after a nack or the inline guard)
    dispatch_epoch: int
    stale_epoch: bool  # dispatch_epoch < the thread's epoch: the next claim supersedes it
    attempt_count: int
    max_attempts: int
    last_error: str | None
    behind: tuple[str, ...]  # dispatch ids that will be claimed before it (the claim first)

    @property
    def in_backoff(self) -> bool:
        return self.backoff_left_ms > 0

    @property
    def is_delayed_start(self) -> bool:
        """Waiting for a start time its submit asked for (`after_seconds`), not a retry's backoff."""
        return self.in_backoff and self.attempt_count == 0

    @property
    def claimable_now(self) -> bool:
        return not self.stale_epoch and not self.in_backoff and not self.behind


@dataclass(frozen=True, slots=True)
class ExecutionLock:
    """The per-thread execution lock in Redis (its value, a claim token, is never exposed)."""

    held: bool
    by_current_claim: bool
    ttl_ms: int


@dataclass(frozen=True, slots=True)
class ThreadBlockReport:
    thread_id: str
    now: int
    state: ThreadState
    current_epoch: int
    holder: ClaimHolder | None
    queued: tuple[QueuedEntry, ...]
    queued_total: int  # may exceed len(queued) (capped at BLOCK_REPORT_QUEUED_LIMIT)
    execution_lock: ExecutionLock | None  # None when Redis could not be read
    reasons: tuple[str, ...]  # the explanation, one sentence each

    @property
    def next_claimable(self) -> QueuedEntry | None:
        return next((q for q in self.queued if q.claimable_now), None)

    @property
    def is_blocked(self) -> bool:
        return self.state in {
            ThreadState.BLOCKED,
            ThreadState.LEASE_EXPIRED,
            ThreadState.BACKOFF,
            ThreadState.CLAIMABLE,
            ThreadState.STALE_ONLY,
        }


def _holder(row: Dispatch, *, now: int, epoch: int) -> ClaimHolder:
    lease_until = row.lease_until or 0
    return ClaimHolder(
        dispatch_id=row.dispatch_id,
        run_id=row.run_id,
        claimed_by=row.claimed_by or "",
        claimed_at=claim_started_at(row.claim_token),
        last_update_at=row.updated_at,
        lease_until=lease_until,
        lease_left_ms=lease_until - now,
        dispatch_epoch=row.dispatch_epoch,
        stale_epoch=row.dispatch_epoch < epoch,
        attempt_count=row.attempt_count,
        max_attempts=row.max_attempts,
    )


def _queued_entries(
    rows: list[Dispatch], *, now: int, epoch: int, holder: ClaimHolder | None
) -> tuple[QueuedEntry, ...]:
    """`behind` follows the claim rule: the claim goes first; then a live row available now is claimed
    before a backing-off one, and among rows available by then claim order decides."""
    live = [(index, row) for index, row in enumerate(rows) if row.dispatch_epoch >= epoch]
    entries = []
    for index, row in enumerate(rows):
        stale = row.dispatch_epoch < epoch
        ahead: list[str] = []
        if not stale:
            if holder is not None:
                ahead.append(holder.dispatch_id)
            ready_at = max(row.available_at, now)
            for other_index, other in live:
                earlier = other_index < index and other.available_at <= ready_at
                overtakes = other_index > index and other.available_at <= now < row.available_at
                if earlier or overtakes:
                    ahead.append(other.dispatch_id)
        entries.append(
            QueuedEntry(
                position=index + 1,
                dispatch_id=row.dispatch_id,
                run_id=row.run_id,
                priority=row.priority,
                created_at=row.created_at,
                available_at=row.available_at,
                backoff_left_ms=max(row.available_at - now, 0),
                dispatch_epoch=row.dispatch_epoch,
                stale_epoch=stale,
                attempt_count=row.attempt_count,
                max_attempts=row.max_attempts,
                last_error=row.last_error,
                behind=tuple(ahead),
            )
        )
    return tuple(entries)


def _execution_lock(thread_id: str, holder: Dispatch | None) -> ExecutionLock | None:
    try:
        token, ttl_ms = ThreadLock.holder(thread_id)
    except RedisError:
        return None
    current = holder.claim_token if holder is not None else None
    return ExecutionLock(
        held=token is not None, by_current_claim=token is not None and token == current, ttl_ms=ttl_ms
    )


def _state(holder: ClaimHolder | None, queued: tuple[QueuedEntry, ...]) -> ThreadState:
    live = [q for q in queued if not q.stale_epoch]
    if holder is not None:
        if holder.lease_expired:
            return ThreadState.LEASE_EXPIRED
        return ThreadState.BLOCKED if live else ThreadState.RUNNING
    if not queued:
        return ThreadState.IDLE
    if not live:
        return ThreadState.STALE_ONLY
    if any(q.claimable_now for q in live):
        return ThreadState.CLAIMABLE
    return ThreadState.BACKOFF


def _reasons(
    holder: ClaimHolder | None,
    queued: tuple[QueuedEntry, ...],
    queued_total: int,
    epoch: int,
    lock: ExecutionLock | None,
) -> tuple[str, ...]:
    out: list[str] = []
    if holder is not None:
        since = "" if holder.claimed_at is None else f" since {format_utc_ms(holder.claimed_at)}"
        lease = (
            f"lease expired {format_duration_ms(-holder.lease_left_ms)} ago; the sweep requeues it"
            if holder.lease_expired
            else f"lease left {format_duration_ms(holder.lease_left_ms)}"
        )
        out.append(f"claimed by {holder.claimed_by}{since} (dispatch {holder.dispatch_id}; {lease})")
        if holder.stale_epoch:
            out.append(
                f"the claim's epoch {holder.dispatch_epoch} is older than the thread's {epoch}: "
                "it was interrupted and its next write supersedes it"
            )
    live = [q for q in queued if not q.stale_epoch]
    if live and holder is not None:
        more = queued_total - len(queued)
        extra = f" (and {more} more not listed)" if more > 0 else ""
        out.append(f"{len(live)} queued behind claimed dispatch {holder.dispatch_id}{extra}")
    for q in queued:
        if q.stale_epoch:
            out.append(
                f"{q.dispatch_id}: epoch {q.dispatch_epoch} < thread epoch {epoch}, "
                "superseded at the next claim"
            )
        elif q.is_delayed_start:
            out.append(
                f"{q.dispatch_id}: delayed start (after_seconds) at {format_utc_ms(q.available_at)} "
                f"({format_duration_ms(q.backoff_left_ms)} left)"
            )
        elif q.in_backoff:
            out.append(
                f"{q.dispatch_id}: backoff until {format_utc_ms(q.available_at)} "
                f"({format_duration_ms(q.backoff_left_ms)} left)"
            )
    if holder is None and any(q.claimable_now for q in live):
        out.append("nothing holds the thread and work is claimable now: a worker should claim it shortly")
    if lock is not None and lock.held and not lock.by_current_claim:
        out.append(
            f"the Redis execution lock is held by another claim for {format_duration_ms(lock.ttl_ms)} more"
        )
    if not out:
        out.append("nothing queued or claimed")
    return tuple(out)


def thread_block_report(thread_id: str, now: int | None = None) -> ThreadBlockReport:
    """Why the thread's queued work is not running: its holder, what each queued row waits behind,
    backoffs, and epochs (stale rows are superseded at the next claim). Reads only."""
    stamp = now_ms() if now is None else now
    epoch = ThreadEpoch.objects.filter(thread_id=thread_id).values_list("current_epoch", flat=True).first()
    current_epoch = epoch or 0
    claimed_row = Dispatch.objects.claimed().filter(thread_id=thread_id).first()
    queued_qs = Dispatch.objects.queued().filter(thread_id=thread_id)
    queued_rows = list(
        queued_qs.order_by("priority", "created_at", "dispatch_id")[:BLOCK_REPORT_QUEUED_LIMIT]
    )
    queued_total = len(queued_rows)
    if queued_total == BLOCK_REPORT_QUEUED_LIMIT:
        queued_total = queued_qs.count()
    holder = None if claimed_row is None else _holder(claimed_row, now=stamp, epoch=current_epoch)
    queued = _queued_entries(queued_rows, now=stamp, epoch=current_epoch, holder=holder)
    lock = _execution_lock(thread_id, claimed_row)
    return ThreadBlockReport(
        thread_id=thread_id,
        now=stamp,
        state=_state(holder, queued),
        current_epoch=current_epoch,
        holder=holder,
        queued=queued,
        queued_total=queued_total,
        execution_lock=lock,
        reasons=_reasons(holder, queued, queued_total, current_epoch, lock)
        + _limit_reason(holder, queued_rows, thread_id),
    )


def _limit_reason(holder: ClaimHolder | None, queued_rows: list[Dispatch], thread_id: str) -> tuple[str, ...]:
    """Name the concurrency limit (mailbox_app/conf.py) that holds the thread's next dispatch, if one does."""
    if holder is not None or not queued_rows:
        return ()
    limit = store.blocking_limit(queued_rows[0].agent_key, store.thread_owner_key(thread_id))
    if limit is None:
        return ()
    return (f"{queued_rows[0].dispatch_id} waits for a concurrency slot: {limit}",)
