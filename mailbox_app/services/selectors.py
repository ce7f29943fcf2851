"""Reads shared by the admin, the API and operator commands: the overview, the attempts a dispatch
really made, why a thread's work is not running (the why-blocked report) and the last hour's activity
the admin draws. Reads only; no locks."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from django.db import connection
from django.db.models import Count, Min
from redis.exceptions import RedisError

from mailbox_app import store
from mailbox_app.contract.ids import now_ms
from mailbox_app.contract.inbox import PauseRecord
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DISPATCH_COLUMNS, DispatchRecord, DispatchStatus, dispatch_from_row
from mailbox_app.contract.storage import RunRecord
from mailbox_app.contract.timefmt import format_duration_ms, format_utc_ms
from mailbox_app.models import Dispatch, ThreadEpoch
from mailbox_app.realtime.locks import ThreadLock
from mailbox_app.store import inbox as windows
from mailbox_app.store.ports import run_store

BLOCK_REPORT_QUEUED_LIMIT = 200
TOKEN_BUDGET = "token budget of "  # how store.blocking_limit names a spent budget
BACKGROUND_TASKS = "background_tasks"  # the waiting reason of a run that waits for its own tasks


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


# --- the attempts a dispatch made ----------------------------------------------------------------

RESTART_NOTE = "An operator's requeue of a dead letter starts the count again at 0."


@dataclass(frozen=True, slots=True)
class Attempts:
    """How many attempts a dispatch made (claims that ran or are running), read from its row.

    The row's `attempt_count` counts the attempts that ended without success and were retried or
    exhausted: each nack (store/fenced.py `NACK`, `SETTLE` with a nack) and each expired lease the sweep
    reclaimed (store/upkeep.py `RECLAIM`) adds one. The attempt that ends a dispatch otherwise is not
    counted there: an ack, a permanent failure (`SETTLE` dead-letters at once without adding one) or the
    attempt running now. `made` adds it back, so a dispatch that ran once and failed permanently shows
    1 / 5, not 0 / 5."""

    made: int
    max_attempts: int
    in_progress: bool
    why: str  # how `made` was counted from the row (the admin's tooltip)

    @property
    def text(self) -> str:
        return f"{self.made} / {self.max_attempts}"


def attempts_made(dispatch: Dispatch | DispatchRecord) -> Attempts:
    status = DispatchStatus(dispatch.status)
    failed, most = dispatch.attempt_count, dispatch.max_attempts
    started = dispatch.dispatch_instance_id is not None
    made, why = failed, f"{failed} attempts ended without success so far (nack or expired lease)"
    if status is DispatchStatus.CLAIMED:
        made, why = failed + 1, f"{failed} ended without success, and the one claimed now"
    elif status is DispatchStatus.ACKED:
        made, why = failed + 1, f"{failed} ended without success, then the final one succeeded"
    elif status is DispatchStatus.DEAD_LETTER and failed >= most:
        why = f"all {failed} attempts ended without success (nack or expired lease): max_attempts reached"
    elif status is DispatchStatus.DEAD_LETTER:
        made = failed + 1
        why = f"{failed} ended without success, then the final one failed permanently (dead-lettered at once)"
    elif status is DispatchStatus.CANCELLED:
        why = f"cancelled while queued, after {failed} attempts that ended without success"
    elif status is DispatchStatus.SUPERSEDED and started:
        made, why = (
            failed + 1,
            f"{failed} ended without success, then one ran until an interrupt superseded it",
        )
    elif status is DispatchStatus.SUPERSEDED:
        why = f"superseded by an interrupt after {failed} attempts that ended without success"
    return Attempts(made, most, status is DispatchStatus.CLAIMED, f"{why}. {RESTART_NOTE}")


# --- why is a thread blocked ---------------------------------------------------------------------


class ThreadState(StrEnum):
    """The verdict of a `ThreadBlockReport`, most specific first."""

    NO_SUCH_THREAD = "no_such_thread"  # no thread, run or dispatch has this id
    IDLE = "idle"  # the thread exists; nothing queued, nothing claimed, no run waiting
    WAITING_DECISION = "waiting_decision"  # its open run waits for a decision on a tool call
    WAITING_BACKGROUND = "waiting_background"  # its open run waits for its own background tasks
    RUNNING = "running"  # a claim, nothing waiting behind it
    BLOCKED = "blocked"  # queued work waits behind the claim
    LEASE_EXPIRED = "lease_expired"  # the claim's lease ran out: the sweep requeues it
    DELAYED = "delayed"  # no claim; the next dispatch waits for the start time its submit asked for
    BACKOFF = "backoff"  # no claim; the next dispatch waits to retry after a failed attempt
    CLAIMABLE = "claimable"  # no claim and work is claimable now: a worker should take it
    STALE_ONLY = "stale_only"  # only stale-epoch queued rows: the next claim supersedes them
    PAUSED = "paused"  # no claim; the next dispatch is held by a pause (docs/inbox.md)

    @property
    def label(self) -> str:
        return self.value.replace("_", " ")


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
    attempts: Attempts

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
    backoff_left_ms: int  # > 0 while waiting for available_at (a delayed start or a retry's backoff)
    dispatch_epoch: int
    stale_epoch: bool  # dispatch_epoch < the thread's epoch: the next claim supersedes it
    attempt_count: int
    attempts: Attempts
    last_error: str | None
    behind: tuple[str, ...]  # dispatch ids that will be claimed before it (the claim first)

    @property
    def in_backoff(self) -> bool:
        """Not claimable before `available_at` (either kind of wait; see `is_delayed_start`)."""
        return self.backoff_left_ms > 0

    @property
    def is_delayed_start(self) -> bool:
        """Waiting for a start time its submit asked for (`after_seconds`), not a retry's backoff: a
        retry waits only after a failed attempt (attempt_count >= 1)."""
        return self.in_backoff and self.attempt_count == 0

    @property
    def wait_kind(self) -> str:
        """`delayed`, `backoff` or "" (available now)."""
        if not self.in_backoff:
            return ""
        return "delayed" if self.is_delayed_start else "backoff"

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
class WaitingRun:
    """The thread's open run, waiting durably (no worker holds it) for a decision or its own tasks."""

    run_id: str
    reason: str
    tool_calls: tuple[tuple[str, str], ...]  # (tool_call_id, tool_name), in ticket order

    @property
    def for_decision(self) -> bool:
        return self.reason != BACKGROUND_TASKS

    @property
    def calls_text(self) -> str:
        return ", ".join(f"{call_id} ({name})" for call_id, name in self.tool_calls) or "none listed"


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
    waiting: WaitingRun | None = None
    pauses: tuple[PauseRecord, ...] = ()  # the pauses holding the thread's queued work, oldest first

    @property
    def next_claimable(self) -> QueuedEntry | None:
        return next((q for q in self.queued if q.claimable_now), None)

    @property
    def next_live(self) -> QueuedEntry | None:
        """The live queued dispatch that becomes available first (the next one a claim takes)."""
        live = [q for q in self.queued if not q.stale_epoch]
        return min(live, key=lambda q: (q.available_at, q.position)) if live else None

    @property
    def is_blocked(self) -> bool:
        """Work that should run is not running (a deliberate delay or a human's decision is not)."""
        return self.state in {
            ThreadState.BLOCKED,
            ThreadState.LEASE_EXPIRED,
            ThreadState.BACKOFF,
            ThreadState.CLAIMABLE,
            ThreadState.STALE_ONLY,
        }

    @property
    def verdict(self) -> str:
        """The state as one phrase for people, e.g. `waiting for a decision (tool call c-1 (approve))`."""
        waiting, first = self.waiting, self.next_live
        if self.state is ThreadState.WAITING_DECISION and waiting is not None:
            return f"waiting for a decision (tool call {waiting.calls_text}, run {waiting.run_id})"
        if self.state is ThreadState.WAITING_BACKGROUND and waiting is not None:
            return f"waiting for its background tasks (run {waiting.run_id})"
        if self.state is ThreadState.DELAYED and first is not None:
            return f"delayed until {format_utc_ms(first.available_at)} (the start time its submit asked for)"
        if self.state is ThreadState.BACKOFF and first is not None:
            return f"backoff: retry at {format_utc_ms(first.available_at)} after a failed attempt"
        if self.state is ThreadState.PAUSED and self.pauses:
            return _paused_phrase(self.pauses[0])
        return self.state.label


def _paused_phrase(pause: PauseRecord) -> str:
    """`paused by operator:alice since 2026-01-02 03:04:05 UTC (thread t-1: migration)`."""
    why = f": {pause.reason}" if pause.reason else ""
    return f"paused by {pause.paused_by} since {format_utc_ms(pause.since)} ({pause.label}{why})"


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
        attempts=attempts_made(row),
    )


def _ahead_of(
    index: int, row: Dispatch, live: list[tuple[int, Dispatch]], now: int, holder: ClaimHolder | None
) -> tuple[str, ...]:
    """`behind` follows the claim rule: the claim goes first; then a live row available now is claimed
    before a waiting one, and among rows available by then claim order decides."""
    ahead = [holder.dispatch_id] if holder is not None else []
    ready_at = max(row.available_at, now)
    for other_index, other in live:
        earlier = other_index < index and other.available_at <= ready_at
        overtakes = other_index > index and other.available_at <= now < row.available_at
        if earlier or overtakes:
            ahead.append(other.dispatch_id)
    return tuple(ahead)


def _queued_entries(
    rows: list[Dispatch], *, now: int, epoch: int, holder: ClaimHolder | None
) -> tuple[QueuedEntry, ...]:
    live = [(index, row) for index, row in enumerate(rows) if row.dispatch_epoch >= epoch]
    return tuple(
        QueuedEntry(
            position=index + 1,
            dispatch_id=row.dispatch_id,
            run_id=row.run_id,
            priority=row.priority,
            created_at=row.created_at,
            available_at=row.available_at,
            backoff_left_ms=max(row.available_at - now, 0),
            dispatch_epoch=row.dispatch_epoch,
            stale_epoch=row.dispatch_epoch < epoch,
            attempt_count=row.attempt_count,
            attempts=attempts_made(row),
            last_error=row.last_error,
            behind=() if row.dispatch_epoch < epoch else _ahead_of(index, row, live, now, holder),
        )
        for index, row in enumerate(rows)
    )


def _execution_lock(thread_id: str, holder: Dispatch | None) -> ExecutionLock | None:
    try:
        token, ttl_ms = ThreadLock.holder(thread_id)
    except RedisError:
        return None
    current = holder.claim_token if holder is not None else None
    return ExecutionLock(
        held=token is not None, by_current_claim=token is not None and token == current, ttl_ms=ttl_ms
    )


def _open_run(thread_id: str) -> tuple[bool, RunRecord | None]:
    """Whether the run store knows the thread, and its open run (else its latest), through the port."""
    runs = run_store()
    thread, latest = runs.load_thread_and_latest_run(thread_id=thread_id)
    if thread is None:
        return False, latest
    if thread.open_run_id and (latest is None or latest.run_id != thread.open_run_id):
        return True, runs.load_run(run_id=thread.open_run_id) or latest
    return True, latest


def _waiting(run: RunRecord | None) -> WaitingRun | None:
    if run is None or run.status is not RunStatus.WAITING or run.waiting is None:
        return None
    calls = tuple((t.tool_call_id, t.tool_name) for t in run.waiting.tickets)
    listed = {call_id for call_id, _ in calls}
    calls += tuple((ticket, "?") for ticket in run.waiting.ticket_ids if ticket not in listed)
    return WaitingRun(run_id=run.run_id, reason=run.waiting.reason, tool_calls=calls)


def _idle_state(waiting: WaitingRun | None, exists: bool) -> ThreadState:
    if waiting is not None:
        return ThreadState.WAITING_DECISION if waiting.for_decision else ThreadState.WAITING_BACKGROUND
    return ThreadState.IDLE if exists else ThreadState.NO_SUCH_THREAD


def _state(
    holder: ClaimHolder | None, queued: tuple[QueuedEntry, ...], waiting: WaitingRun | None, exists: bool
) -> ThreadState:
    live = [q for q in queued if not q.stale_epoch]
    if holder is not None:
        if holder.lease_expired:
            return ThreadState.LEASE_EXPIRED
        return ThreadState.BLOCKED if live else ThreadState.RUNNING
    if not queued:
        return _idle_state(waiting, exists)
    if not live:
        return ThreadState.STALE_ONLY
    if any(q.claimable_now for q in live):
        return ThreadState.CLAIMABLE
    first = min(live, key=lambda q: (q.available_at, q.position))
    return ThreadState.DELAYED if first.is_delayed_start else ThreadState.BACKOFF


def _holder_reasons(holder: ClaimHolder, epoch: int) -> list[str]:
    since = "" if holder.claimed_at is None else f" since {format_utc_ms(holder.claimed_at)}"
    lease = (
        f"lease expired {format_duration_ms(-holder.lease_left_ms)} ago; the sweep requeues it"
        if holder.lease_expired
        else f"lease left {format_duration_ms(holder.lease_left_ms)}"
    )
    out = [f"claimed by {holder.claimed_by}{since} (dispatch {holder.dispatch_id}; {lease})"]
    if holder.stale_epoch:
        out.append(
            f"the claim's epoch {holder.dispatch_epoch} is older than the thread's {epoch}: "
            "it was interrupted and its next write supersedes it"
        )
    return out


def _queued_reason(q: QueuedEntry, epoch: int) -> str | None:
    if q.stale_epoch:
        return (
            f"{q.dispatch_id}: epoch {q.dispatch_epoch} < thread epoch {epoch}, superseded at the next claim"
        )
    left = f"({format_duration_ms(q.backoff_left_ms)} left)"
    if q.is_delayed_start:
        return f"{q.dispatch_id}: delayed start (after_seconds) at {format_utc_ms(q.available_at)} {left}"
    if q.in_backoff:
        return f"{q.dispatch_id}: backoff until {format_utc_ms(q.available_at)} {left}"
    return None


def _waiting_reason(waiting: WaitingRun) -> str:
    if not waiting.for_decision:
        return f"run {waiting.run_id} waits for its background tasks; their completion wakes it"
    return (
        f"run {waiting.run_id} waits for a decision ({waiting.reason}) on tool call {waiting.calls_text}: "
        "nothing runs until someone answers it"
    )


def _reasons(report: ThreadBlockReport, exists: bool) -> tuple[str, ...]:
    holder, queued, epoch, lock = report.holder, report.queued, report.current_epoch, report.execution_lock
    out = _holder_reasons(holder, epoch) if holder is not None else []
    live = [q for q in queued if not q.stale_epoch]
    if live and holder is not None:
        more = report.queued_total - len(queued)
        extra = f" (and {more} more not listed)" if more > 0 else ""
        out.append(f"{len(live)} queued behind claimed dispatch {holder.dispatch_id}{extra}")
    out += [reason for q in queued if (reason := _queued_reason(q, epoch)) is not None]
    if holder is None and not report.pauses and any(q.claimable_now for q in live):
        out.append("nothing holds the thread and work is claimable now: a worker should claim it shortly")
    if lock is not None and lock.held and not lock.by_current_claim:
        out.append(
            f"the Redis execution lock is held by another claim for {format_duration_ms(lock.ttl_ms)} more"
        )
    if report.waiting is not None:
        out.append(_waiting_reason(report.waiting))
    if not out:
        out.append("nothing queued or claimed" if exists else "no thread, run or dispatch has this id")
    return tuple(out)


def thread_block_report(thread_id: str, now: int | None = None) -> ThreadBlockReport:
    """Why the thread's queued work is not running: its holder, what each queued row waits behind,
    delayed starts and backoffs, epochs (stale rows are superseded at the next claim), and a run that
    waits for a decision. "No such thread" when neither the run store nor the queue knows the id."""
    stamp = now_ms() if now is None else now
    epoch = ThreadEpoch.objects.filter(thread_id=thread_id).values_list("current_epoch", flat=True).first()
    claimed_row = Dispatch.objects.claimed().filter(thread_id=thread_id).first()
    queued_qs = Dispatch.objects.queued().filter(thread_id=thread_id)
    queued_rows = list(
        queued_qs.order_by("priority", "created_at", "dispatch_id")[:BLOCK_REPORT_QUEUED_LIMIT]
    )
    queued_total = len(queued_rows)
    if queued_total == BLOCK_REPORT_QUEUED_LIMIT:
        queued_total = queued_qs.count()
    holder = None if claimed_row is None else _holder(claimed_row, now=stamp, epoch=epoch or 0)
    queued = _queued_entries(queued_rows, now=stamp, epoch=epoch or 0, holder=holder)
    known, run = _open_run(thread_id)
    exists = known or epoch is not None or Dispatch.objects.filter(thread_id=thread_id).exists()
    waiting = _waiting(run)
    agents = sorted({row.agent_key for row in queued_rows if row.dispatch_epoch >= (epoch or 0)})
    pauses = tuple(store.pauses_holding(thread_id, agents)) if agents else ()
    report = ThreadBlockReport(
        thread_id=thread_id,
        now=stamp,
        state=_paused_state(_state(holder, queued, waiting, exists), pauses),
        current_epoch=epoch or 0,
        holder=holder,
        queued=queued,
        queued_total=queued_total,
        execution_lock=_execution_lock(thread_id, claimed_row),
        reasons=(),
        waiting=waiting,
        pauses=pauses,
    )
    reasons = _reasons(report, exists) + _limit_reason(holder, queued_rows, thread_id, stamp)
    reasons += tuple(_paused_phrase(p) for p in pauses) + _window_reason(thread_id, stamp)
    return replace(report, reasons=reasons)


def _paused_state(state: ThreadState, pauses: tuple[PauseRecord, ...]) -> ThreadState:
    """A pause explains queued work that no claim holds (a claim in progress is not paused by it)."""
    held = {ThreadState.CLAIMABLE, ThreadState.DELAYED, ThreadState.BACKOFF}
    return ThreadState.PAUSED if pauses and state in held else state


def _window_reason(thread_id: str, now: int) -> tuple[str, ...]:
    """The thread's open debounce window (docs/inbox.md), if its dispatch is still queued."""
    window = windows.window_of(thread_id)
    if window is None:
        return ()
    dispatch = window.dispatch
    starts = "now" if dispatch.available_at <= now else f"at {format_utc_ms(dispatch.available_at)}"
    return (
        f"{dispatch.dispatch_id}: coalescing {window.messages} message(s) since "
        f"{format_utc_ms(window.opened_at)} (inbox debounce); it starts {starts}",
    )


def _limit_reason(
    holder: ClaimHolder | None, queued_rows: list[Dispatch], thread_id: str, now: int
) -> tuple[str, ...]:
    """Name the concurrency limit (mailbox_app/conf.py) or the spent token budget (mailbox_app/store/
    budgets.py: "token budget of owner X: resets in N s") that holds the thread's next dispatch."""
    if holder is not None or not queued_rows:
        return ()
    limit = store.blocking_limit(queued_rows[0].agent_key, store.thread_owner_key(thread_id), now)
    if limit is None:
        return ()
    if limit.startswith(TOKEN_BUDGET):
        return (f"{queued_rows[0].dispatch_id} waits for its {limit}",)
    return (f"{queued_rows[0].dispatch_id} waits for a concurrency slot: {limit}",)


# --- the last hour, minute by minute (the overview's charts) -------------------------------------

MINUTE_MS = 60_000
ACTIVITY_MINUTES = 60

# The dispatches the window can see, read through two partial indexes: terminal rows updated since the
# window opened (`dispatch_terminal_idx`; a terminal row's completed_at is never after its updated_at)
# and the live ones (`dispatch_available_idx`, `dispatch_lease_idx`). Per minute: created, ended by
# outcome, the retries of the dispatches that ran to an end (the attempts beyond their first, counted as
# `attempts_made` counts them), enqueue -> end latency of those, and the open (queued or claimed) count
# at the minute's end: the open count at the window's start plus the created minus the ended so far.
ACTIVITY = """
WITH recent AS (
    SELECT status, created_at, completed_at, attempt_count, max_attempts
      FROM mailbox_dispatch
     WHERE (status IN ('acked', 'cancelled', 'superseded', 'dead_letter') AND updated_at >= %(start)s)
        OR status = 'queued' OR status = 'claimed'
), created AS (
    SELECT (created_at - %(start)s) / 60000 AS minute, count(*) AS n
      FROM recent WHERE created_at >= %(start)s AND created_at < %(end)s
     GROUP BY 1
), ended AS (
    SELECT (completed_at - %(start)s) / 60000 AS minute,
           count(*) AS n,
           count(*) FILTER (WHERE status = 'acked') AS acked,
           count(*) FILTER (WHERE status = 'dead_letter') AS dead_letter,
           count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
           count(*) FILTER (WHERE status = 'superseded') AS superseded,
           COALESCE(sum(CASE WHEN status = 'acked' THEN attempt_count
                             WHEN attempt_count >= max_attempts THEN attempt_count - 1
                             ELSE attempt_count END)
                    FILTER (WHERE status IN ('acked', 'dead_letter')), 0) AS retries,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY completed_at - created_at)
               FILTER (WHERE status IN ('acked', 'dead_letter')) AS p50_ms,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY completed_at - created_at)
               FILTER (WHERE status IN ('acked', 'dead_letter')) AS p95_ms
      FROM recent WHERE completed_at >= %(start)s AND completed_at < %(end)s
     GROUP BY 1
), opening AS (
    SELECT count(*) FILTER (WHERE created_at < %(start)s)
           - count(*) FILTER (WHERE completed_at < %(start)s) AS n
      FROM recent
)
SELECT m.minute, COALESCE(c.n, 0), COALESCE(e.acked, 0), COALESCE(e.dead_letter, 0),
       COALESCE(e.cancelled, 0), COALESCE(e.superseded, 0), COALESCE(e.retries, 0), e.p50_ms, e.p95_ms,
       (SELECT n FROM opening) + sum(COALESCE(c.n, 0) - COALESCE(e.n, 0)) OVER (ORDER BY m.minute)
  FROM generate_series(0, %(minutes)s - 1) AS m(minute)
  LEFT JOIN created c ON c.minute = m.minute
  LEFT JOIN ended e ON e.minute = m.minute
 ORDER BY m.minute
"""


@dataclass(frozen=True, slots=True)
class MinuteActivity:
    """One minute of the window (`start` is its first Unix ms); latencies are None without an end."""

    start: int
    created: int
    acked: int
    dead_letter: int
    cancelled: int
    superseded: int
    retries: int
    p50_ms: float | None
    p95_ms: float | None
    open_at_end: int

    @property
    def completed(self) -> int:
        return self.acked + self.dead_letter + self.cancelled + self.superseded


def minute_activity(*, now: int, minutes: int = ACTIVITY_MINUTES) -> list[MinuteActivity]:
    """The last `minutes` wall-clock minutes up to `now` (the last one partial), oldest first."""
    start = (now // MINUTE_MS - minutes + 1) * MINUTE_MS
    with connection.cursor() as cursor:
        cursor.execute(ACTIVITY, {"start": start, "end": now + 1, "minutes": minutes})
        rows = cursor.fetchall()
    return [
        MinuteActivity(
            start + int(m) * MINUTE_MS,
            int(c),
            int(a),
            int(d),
            int(x),
            int(s),
            int(r),
            None if p50 is None else float(p50),
            None if p95 is None else float(p95),
            int(o),
        )
        for m, c, a, d, x, s, r, p50, p95, o in rows
    ]


# The live rows now, by what they wait for (the two partial indexes of queued and claimed rows).
QUEUE_NOW = """
SELECT count(*) FILTER (WHERE status = 'queued' AND available_at <= %(now)s),
       count(*) FILTER (WHERE status = 'queued' AND available_at > %(now)s AND attempt_count = 0),
       count(*) FILTER (WHERE status = 'queued' AND available_at > %(now)s AND attempt_count > 0),
       count(*) FILTER (WHERE status = 'claimed')
  FROM mailbox_dispatch
 WHERE status = 'queued' OR status = 'claimed'
"""


@dataclass(frozen=True, slots=True)
class QueueNow:
    ready: int  # queued, available now
    delayed: int  # queued for a start time its submit asked for (attempt 0)
    backoff: int  # queued to retry after a failed attempt
    claimed: int


def queue_now(*, now: int) -> QueueNow:
    with connection.cursor() as cursor:
        cursor.execute(QUEUE_NOW, {"now": now})
        ready, delayed, backoff, claimed = cursor.fetchone() or (0, 0, 0, 0)
    return QueueNow(int(ready), int(delayed), int(backoff), int(claimed))


# Deliveries that gave up (status failed) per minute of the window, by when they gave up.
WEBHOOK_FAILURES = """
SELECT (updated_at - %(start)s) / 60000 AS minute, count(*)
  FROM mailbox_webhook_outbox
 WHERE status = 'failed' AND updated_at >= %(start)s AND updated_at < %(end)s
 GROUP BY 1
"""


def webhook_failures(*, now: int, minutes: int = ACTIVITY_MINUTES) -> list[int]:
    """Failed (given up) webhook deliveries per minute, oldest first, aligned with `minute_activity`."""
    start = (now // MINUTE_MS - minutes + 1) * MINUTE_MS
    per_minute = [0] * minutes
    with connection.cursor() as cursor:
        cursor.execute(WEBHOOK_FAILURES, {"start": start, "end": now + 1})
        for minute, count in cursor.fetchall():
            per_minute[int(minute)] = int(count)
    return per_minute


# Pending deliveries that failed at least once and wait for their next attempt (`webhook_due_idx`).
WEBHOOK_RETRYING = """
SELECT count(*) FROM mailbox_webhook_outbox
 WHERE status = 'pending' AND next_attempt_at >= 0 AND attempts > 0
"""


def webhooks_retrying() -> int:
    with connection.cursor() as cursor:
        cursor.execute(WEBHOOK_RETRYING)
        row = cursor.fetchone()
    return int(row[0]) if row else 0
