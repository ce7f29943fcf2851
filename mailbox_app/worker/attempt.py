"""The fenced transitions of one attempt: start and finish, each one PostgreSQL transaction.

Every write of an attempt — the dispatch row, the run record, the messages the run produced, the
thread's run pointers, the follow-up dispatches it queues — happens in the transaction whose first
statement is the fenced dispatch update `(dispatch_id, claim_token, status='claimed', epoch current)`.
When that statement matches no row, the transaction is rolled back before anything else was applied
and the caller gets a domain answer (`Lost`), never an exception: the attempt lost its claim and writes
nothing. Afterwards, in a transaction of its own, the loss is explained (a stale epoch supersedes the
claim, as the reference's lazy supersession does) and the run is reconciled with the dispatch's end.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from django.db import transaction

from mailbox_app import store
from mailbox_app.agents.base import MailboxRunOutcome, OutcomeKind, RunResult
from mailbox_app.conf import awaken_settings, claim_policy, token_budgets
from mailbox_app.contract import history
from mailbox_app.contract.history import RunTranscript
from mailbox_app.contract.ids import now_ms, uuid7
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchRecord, DispatchStatus, RunDispatchResult
from mailbox_app.contract.message import ChatMessage, MessageRecord
from mailbox_app.contract.requests import RunOrigin, RunRequest, normalize_message_ids
from mailbox_app.contract.retry import nack_backoff_ms
from mailbox_app.contract.storage import RunRecord, RunRequestSnapshot, StoreError, TerminationReason
from mailbox_app.contract.suspension import RunResumeDecision, ToolCallResume
from mailbox_app.contract.usage import AttemptUsage, Usage
from mailbox_app.observability import metrics, tracing
from mailbox_app.realtime import doorbells, events
from mailbox_app.realtime.locks import ThreadLock
from mailbox_app.services import mailbox
from mailbox_app.services.preparation import reconstruct_from
from mailbox_app.services.reconcile import (
    emit_finish_on_commit,
    emit_finish_written,
    emit_on_commit,
    terminalize_run_for_dispatch,
)
from mailbox_app.store import runs_tables
from mailbox_app.store.budgets import budget_json
from mailbox_app.store.claims import FAIR_CANDIDATES
from mailbox_app.store.ports import run_store
from mailbox_app.store.runs_tables import attempt as fused
from mailbox_app.worker.runtime import FinalRun, UsageMeter, dispatch_result, final_run, finished_run_result

log = logging.getLogger(__name__)


class _FenceLost(Exception):
    """Raised inside an attempt's transaction to roll it back when the fenced statement matched nothing."""


@dataclass(frozen=True, slots=True)
class Lost:
    """The attempt no longer holds its claim; `current` is the dispatch as it is now."""

    current: DispatchRecord | None


@dataclass(frozen=True, slots=True)
class Started:
    dispatch: DispatchRecord
    run: RunRecord
    request: RunRequest


@dataclass(frozen=True, slots=True)
class AlreadyDone:
    """The run was finished without this activation: settle the dispatch, never run the agent again."""

    dispatch: DispatchRecord
    run: RunRecord


@dataclass(frozen=True, slots=True)
class Unrunnable:
    """The run cannot be activated (missing, on another thread, its input gone): dead-letter it."""

    dispatch: DispatchRecord
    reason: str


StartOutcome = Started | AlreadyDone | Unrunnable | Lost


def start(dispatch: DispatchRecord, instance_id: str, consumer_id: str) -> StartOutcome:
    """Fenced start (spec §4.12; the reference's `record_dispatch_start` with the run's start): record the
    start naming this worker, move the run to Running, and read what the agent needs (the run and the
    dispatch's own input) — one transaction; one statement with the built-in run store."""
    now = now_ms()
    if runs_tables.builtin_store():
        outcome = _start_fused(dispatch, instance_id, consumer_id, now)
    else:
        outcome = _start_through_port(dispatch, instance_id, consumer_id, now)
    if isinstance(outcome, Started):
        metrics.record_dispatch_start(outcome.dispatch, now)
        events.append_event(
            outcome.run.run_id,
            events.RUN_START,
            {
                "run_id": outcome.run.run_id,
                "thread_id": outcome.dispatch.thread_id,
                "dispatch_id": outcome.dispatch.dispatch_id,
            },
        )
    return outcome


def _start_fused(dispatch: DispatchRecord, instance_id: str, consumer_id: str, now: int) -> StartOutcome:
    started = fused.start(
        dispatch.dispatch_id,
        dispatch.claim_token or "",
        instance_id,
        consumer_id,
        now,
        lease_ms=awaken_settings.MAILBOX.lease_ms,
    )
    if isinstance(started, fused.Lost):
        return _explain(dispatch, "claimed dispatch superseded before runtime start")
    if isinstance(started, fused.NotStartable):
        return _not_startable(started.dispatch, started.run)
    return _activated(started.dispatch, started.run, instance_id, started.messages)


def _start_through_port(
    dispatch: DispatchRecord, instance_id: str, consumer_id: str, now: int
) -> StartOutcome:
    try:
        with transaction.atomic():
            started = store.try_start(
                dispatch.dispatch_id,
                dispatch.claim_token or "",
                instance_id,
                consumer_id,
                now,
                lease_ms=awaken_settings.MAILBOX.lease_ms,
            )
            if started is None:
                raise _FenceLost
            runs = run_store()
            running = runs.start_run(
                run_id=started.run_id,
                thread_id=started.thread_id,
                dispatch_id=started.dispatch_id,
                session_id=instance_id,
                now=now,
            )
            if running is None:
                return _not_startable(started, runs.load_run(run_id=started.run_id))
            return _activated(started, running, instance_id)
    except _FenceLost:
        return _explain(dispatch, "claimed dispatch superseded before runtime start")


def _not_startable(started: DispatchRecord, existing: RunRecord | None) -> AlreadyDone | Unrunnable:
    """A started dispatch whose run did not start: done by another dispatch (settle it from the run's
    record), or missing / on another thread (dead-letter it)."""
    if existing is not None and existing.thread_id == started.thread_id and existing.status is RunStatus.DONE:
        return AlreadyDone(started, existing)
    where = "not found" if existing is None else f"on thread '{existing.thread_id}' ({existing.status})"
    return Unrunnable(started, f"run '{started.run_id}' {where}")


def _activated(
    started: DispatchRecord, running: RunRecord, instance_id: str, messages: list[MessageRecord] | None = None
) -> Started | Unrunnable:
    try:
        request = reconstruct_from(started, running, messages)
    except StoreError as exc:
        return Unrunnable(started, f"reconstruct failed: {exc}")
    return Started(started, running, request.with_(session_id=instance_id))


# --- finish ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Finished:
    dispatch: DispatchRecord
    run: RunRecord | None
    next_dispatch: DispatchRecord | None = None


FinishOutcome = Finished | Lost


@dataclass(frozen=True, slots=True)
class Leftovers:
    """Live input the run acknowledged but did not take before its inbox closed."""

    steering: list[ChatMessage]
    decisions: list[tuple[str, ToolCallResume]]


NO_LEFTOVERS = Leftovers([], [])


def finish(
    started: Started,
    outcome: MailboxRunOutcome,
    result: RunResult | None,
    error: BaseException | None,
    *,
    cancelled: bool,
    leftovers: Leftovers = NO_LEFTOVERS,
    claim_next_as: str | None = None,
    transcript: RunTranscript | None = None,
    lock: ThreadLock | None = None,
    usage: UsageMeter | None = None,
) -> FinishOutcome:
    """Fenced finish (spec §4.12): the result recorded, the dispatch settled (ack / nack with backoff /
    dead letter), the run and the messages it produced written, leftover live input queued durably and,
    with `claim_next_as`, the thread's next dispatch claimed for this worker — one transaction. A run that
    ends early (cancelled, superseded, timed out, dead-lettered) closes what its `transcript` shows open:
    the partial output and a cancelled result per open tool call, written with its end (history.py).

    `usage` (the attempt's meter): what the attempt used is added to the run's usage when the finish
    writes the run, its token-budget reservation is settled with it (budgets.sql), and it is counted
    in the metrics once the finish committed.

    The reference's `finish_execution`."""
    ids = {"awaken.run_id": started.run.run_id, "awaken.dispatch_id": started.dispatch.dispatch_id}
    with tracing.span(tracing.FINISH, ids | {"awaken.outcome": outcome.kind.value}):
        return _finish(
            started,
            outcome,
            result,
            error,
            cancelled=cancelled,
            leftovers=leftovers,
            claim_next_as=claim_next_as,
            transcript=transcript,
            lock=lock,
            usage=usage,
        )


def _finish(
    started: Started,
    outcome: MailboxRunOutcome,
    result: RunResult | None,
    error: BaseException | None,
    *,
    cancelled: bool,
    leftovers: Leftovers,
    claim_next_as: str | None,
    transcript: RunTranscript | None,
    lock: ThreadLock | None,
    usage: UsageMeter | None,
) -> FinishOutcome:
    dispatch, run = started.dispatch, started.run
    instance_id = started.request.session_id or ""
    now = now_ms()
    used = (usage or UsageMeter()).attempt(result)
    final: FinalRun | None = None
    if outcome.kind is OutcomeKind.COMPLETED:
        listed = _listed_usage(started, usage, used, now)
        final = _closed(final_run(run, result, error, cancelled, now, usage=listed), transcript)
        trace = _trace(dispatch, instance_id, final.run)
    else:
        failed = TerminationReason(type="error", value=outcome.message)
        trace = dispatch_result(
            dispatch, instance_id, RunStatus.DONE.value, error=outcome.message, termination=failed
        )
    if runs_tables.fused() and _fuses(dispatch, outcome, final, leftovers):
        return _finish_fused(
            started,
            outcome,
            final,
            trace,
            now,
            claim_next_as=claim_next_as,
            transcript=transcript,
            lock=lock,
            used=used,
        )
    try:
        with transaction.atomic():
            settled = _settle(dispatch, outcome, trace, now, leftovers, charge=_charge(used))
            if settled is None:
                raise _FenceLost
            written = _write_run(settled, run, final, instance_id, now, transcript=transcript)
            if final is not None and written is None:
                # the run is no longer this attempt's (it moved on without it): settle nothing
                raise _FenceLost
            _queue_leftovers(dispatch, written, leftovers)
            next_dispatch = _claim_next(settled, claim_next_as, now)
    except _FenceLost:
        lost = _explain(
            dispatch, "claimed dispatch superseded before run result", transcript, instance_id=instance_id
        )
        queue_leftovers_alone(dispatch, leftovers)
        return lost
    metrics.record_dispatch_completion(settled, dispatch.updated_at, now, outcome.kind.value)
    _count_usage(dispatch, used)
    return Finished(settled, written, next_dispatch)


def _listed_usage(started: Started, meter: UsageMeter | None, used: Usage, now: int) -> list[AttemptUsage]:
    """The attempts the finish adds to the run's usage: earlier attempts of the run that ended without a
    finish (known from the steps they recorded), then this one (when it reported anything)."""
    dispatch, run = started.dispatch, started.run
    attempt = dispatch.attempt_count + 1
    known = {(a.dispatch_id, a.attempt) for a in run.usage_attempts} | {(dispatch.dispatch_id, attempt)}
    listed = [] if meter is None else meter.unfinished(known)
    if not used.is_zero:
        listed.append(
            AttemptUsage(
                dispatch_id=dispatch.dispatch_id, attempt=attempt, recorded_at=now, **used.model_dump()
            )
        )
    return listed


def _charge(used: Usage) -> int | None:
    """What the attempt's token-budget charges become (None: budgets are off, nothing to settle)."""
    return used.total_tokens if token_budgets().enabled else None


def _count_usage(dispatch: DispatchRecord, used: Usage, owner_key: str | None = None) -> None:
    """The attempt's usage in the metrics, by agent and owner (after the finish committed)."""
    if used.is_zero:
        return
    owner = store.thread_owner_key(dispatch.thread_id) if owner_key is None else owner_key
    metrics.record_usage(dispatch.agent_key, owner, used.input_tokens, used.output_tokens, used.cost)


def _fuses(
    dispatch: DispatchRecord, outcome: MailboxRunOutcome, final: FinalRun | None, leftovers: Leftovers
) -> bool:
    """The finishes one statement covers: a completed attempt, or a transient failure that requeues; no
    live input left over (its durable path is a submit of its own). A dead letter ends its run through
    the port (`terminalize_run_for_dispatch`, which closes what the run left open)."""
    if leftovers.steering or leftovers.decisions:
        return False
    if final is not None:
        return True
    transient = outcome.kind is OutcomeKind.TRANSIENT_ERROR
    return transient and dispatch.attempt_count + 1 < dispatch.max_attempts


def _finish_fused(
    started: Started,
    outcome: MailboxRunOutcome,
    final: FinalRun | None,
    trace: RunDispatchResult,
    now: int,
    *,
    claim_next_as: str | None,
    transcript: RunTranscript | None,
    lock: ThreadLock | None,
    used: Usage,
) -> FinishOutcome:
    """`finish` in one statement (mailbox_app/store/runs_tables/attempt.sql): the settle (and the
    settle of its token-budget charges), the run's final record with its messages and webhook outbox
    row, and the next claim; then, committed, the run's terminal event (or its retry) and the rings."""
    dispatch, instance_id = started.dispatch, started.request.session_id or ""
    config = awaken_settings.MAILBOX
    requeue = final is None
    settle = store.Settle.NACK if requeue else store.Settle.ACK
    retry_at = None
    if requeue:
        backoff = nack_backoff_ms(
            dispatch.attempt_count, base_ms=config.default_retry_delay_ms, max_ms=config.max_retry_delay_ms
        )
        retry_at = now + backoff
    finishing = fused.Finish(
        dispatch_id=dispatch.dispatch_id,
        claim_token=dispatch.claim_token or "",
        instance_id=instance_id,
        outcome=settle.value,
        trace=trace,
        now=now,
        retry_at=retry_at,
        error=(outcome.message or "transient error") if requeue else None,
        run=None if final is None else final.run,
        messages=None if final is None else normalize_message_ids(final.messages),
        delivery_id=uuid7(),
        default_webhook_url=awaken_settings.WEBHOOK_URL,
        claim_next=_next_claim(claim_next_as, now),
        charge_tokens=_charge(used),
        with_owner=not used.is_zero,
    )
    with metrics.OPERATIONS[settle.value].timed() as timer:
        answer = fused.finish(finishing)
        timer.result = "lost" if isinstance(answer, fused.Lost) else "ok"
    elapsed = time.perf_counter() - timer.start
    if isinstance(answer, fused.Lost):
        stale = "claimed dispatch superseded before run result"
        return _explain(dispatch, stale, transcript, instance_id=instance_id)
    settled = answer.dispatch
    if answer.run is not None:
        emit_finish_written(answer.run, settled.dispatch_id, answer.delivery_id, release=lock)
    else:
        _announce_retry(started.run, settled)
    if claim_next_as is not None:  # the statement's claim, timed as the statement
        metrics.CLAIM.record("ok" if answer.next_dispatch is not None else "empty", elapsed)
    metrics.record_dispatch_completion(settled, dispatch.updated_at, now, outcome.kind.value)
    _count_usage(dispatch, used, answer.owner_key or "")
    return Finished(settled, answer.run, answer.next_dispatch)


def _next_claim(consumer_id: str | None, now: int) -> fused.NextClaim | None:
    """The worker's next claim, made by the finish: the fairest head across threads, or — with fairness
    off — the same thread's next, as the reference drains."""
    if consumer_id is None:
        return None
    policy = claim_policy()
    return fused.NextClaim(
        mode="fair" if policy.fair else "thread",
        token=uuid7(),
        consumer_id=consumer_id,
        lease_until=now + awaken_settings.MAILBOX.lease_ms,
        unstarted_before=now - policy.unstarted_claim_grace_ms,
        limit=FAIR_CANDIDATES,
        budgets=budget_json(),
    )


def _announce_retry(running: RunRecord, settled: DispatchRecord) -> None:
    """A requeued attempt: the run stays Running under this dispatch until the next attempt starts it; its
    stream says a retry is coming, and the doorbell rings at the retry's time."""
    emit_on_commit(
        running.run_id,
        events.RUN_RETRY,
        {
            "run_id": running.run_id,
            "dispatch_id": settled.dispatch_id,
            "attempt": settled.attempt_count,
            "retry_at": settled.available_at,
            "error": settled.last_error,
        },
    )
    doorbells.ring_at(settled.thread_id, settled.dispatch_id, settled.available_at)


HANDED_BACK = "handed back: the worker was shutting down"


def hand_back(started: Started, leftovers: Leftovers, lock: ThreadLock) -> FinishOutcome:
    """Give the claim back (the worker is shutting down): the dispatch queued again, due now, its attempt
    not counted, the decisions the run acknowledged carried along and its acknowledged steering queued —
    one transaction, fenced like the finish (a claim lost meanwhile writes nothing). The run stays
    Running under the dispatch, as for a retry; its stream says so. Once committed the thread lock goes
    first and then the doorbell rings, so whichever worker takes it finds the thread free."""
    dispatch = started.dispatch
    now = now_ms()
    carried = [RunResumeDecision(call_id=c, resume=r).model_dump(mode="json") for c, r in leftovers.decisions]
    try:
        with transaction.atomic():
            handed = store.hand_back(
                dispatch.dispatch_id, dispatch.claim_token or "", now, HANDED_BACK, carry_decisions=carried
            )
            if handed is None:
                raise _FenceLost
            _queue_leftovers(dispatch, None, Leftovers(leftovers.steering, []))
            transaction.on_commit(lock.release)
            _announce_retry(started.run, handed)
    except _FenceLost:
        lost = _explain(dispatch, "claimed dispatch superseded before its hand-back")
        queue_leftovers_alone(dispatch, leftovers)
        return lost
    return Finished(handed, None)


def queue_leftovers_alone(dispatch: DispatchRecord, leftovers: Leftovers) -> None:
    """Steering the run acknowledged but will not read (its attempt ended without a finish): queued in a
    transaction of its own. It is the sender's input, not the attempt's output, so no fence applies."""
    if not leftovers.steering:
        return
    with transaction.atomic():
        _queue_leftovers(dispatch, None, Leftovers(leftovers.steering, []))


def reconcile_lost(dispatch: DispatchRecord) -> Lost:
    """An attempt that gave up its claim without a finish (lease lost): end the run if the dispatch
    ended (e.g. superseded by an interrupt while it ran), so its stream ends too."""
    return _explain(dispatch, "claimed dispatch superseded during lease renewal")


def settle_already_done(
    done: AlreadyDone, instance_id: str, *, claim_next_as: str | None = None
) -> FinishOutcome:
    """Settle a dispatch whose run was finished without it, from the run's own record: the run never
    runs again (it does not move back to Running). Input messages the dispatch carried (a follow-up
    queued for a run that was waiting) are delivered as a new run on the thread, in the same
    transaction; decisions it carried answered a run that is over and are dropped."""
    dispatch = done.dispatch
    trace = finished_run_result(dispatch, instance_id, done.run)
    try:
        with transaction.atomic():
            settled = store.try_settle(
                dispatch.dispatch_id,
                dispatch.claim_token or "",
                store.Settle.ACK,
                trace,
                now_ms(),
                charge_tokens=_charge(Usage()),  # no agent ran: nothing used
            )
            if settled is None:
                raise _FenceLost
            _redeliver_input(dispatch, done.run)
            next_dispatch = _claim_next(settled, claim_next_as, now_ms())
    except _FenceLost:
        return _explain(dispatch, "claimed dispatch superseded before ack")
    return Finished(settled, done.run, next_dispatch)


def _redeliver_input(dispatch: DispatchRecord, run: RunRecord) -> None:
    """A user's (or A2A's) input messages of a dispatch whose run finished without it, queued as a new
    activation on the thread (spec §7.7: each dispatch delivers its own input). Internal wakes and
    decisions are for the run that is over: nothing to deliver."""
    snapshot = RunRequestSnapshot.model_validate(dispatch.request) if dispatch.request else None
    if snapshot is None or not snapshot.input_message_ids or snapshot.origin == RunOrigin.INTERNAL.value:
        return
    found = {
        r.message_id: r.message
        for r in run_store().load_message_records(
            thread_id=dispatch.thread_id, message_ids=snapshot.input_message_ids
        )
    }
    messages = [found[i] for i in snapshot.input_message_ids if i in found]
    if messages:
        mailbox.enqueue_in_transaction(
            RunRequest(
                thread_id=dispatch.thread_id,
                messages=messages,
                messages_already_persisted=True,
                agent_id=run.agent_id if run.agent_id.strip() else None,
            )
        )


def dead_letter(dispatch: DispatchRecord, reason: str, *, claim_next_as: str | None = None) -> FinishOutcome:
    """Dead-letter a claimed dispatch that cannot run, and end its run with the error — one transaction."""
    now = now_ms()
    trace = dispatch_result(dispatch, dispatch.dispatch_instance_id or "", RunStatus.DONE.value, error=reason)
    try:
        with transaction.atomic():
            settled = store.try_settle(
                dispatch.dispatch_id,
                dispatch.claim_token or "",
                store.Settle.DEAD_LETTER,
                trace,
                now,
                error=reason,
                charge_tokens=_charge(Usage()),  # no agent ran: nothing used
            )
            if settled is None:
                raise _FenceLost
            run = terminalize_run_for_dispatch(settled, now=now)
            next_dispatch = _claim_next(settled, claim_next_as, now)
    except _FenceLost:
        return _explain(dispatch, "claimed dispatch superseded before dead letter")
    return Finished(settled, run, next_dispatch)


def _trace(dispatch: DispatchRecord, instance_id: str, run: RunRecord) -> RunDispatchResult:
    termination = run.termination_reason
    return dispatch_result(
        dispatch,
        instance_id,
        run.status.value,
        termination=termination,
        response=run.final_output,
        error=None if not isinstance(run.error_payload, dict) else run.error_payload.get("message"),
    )


def _settle(
    dispatch: DispatchRecord,
    outcome: MailboxRunOutcome,
    trace: RunDispatchResult,
    now: int,
    leftovers: Leftovers,
    *,
    charge: int | None,
) -> DispatchRecord | None:
    token = dispatch.claim_token or ""
    if outcome.kind is OutcomeKind.COMPLETED:
        return store.try_settle(
            dispatch.dispatch_id, token, store.Settle.ACK, trace, now, charge_tokens=charge
        )
    if outcome.kind is OutcomeKind.TRANSIENT_ERROR:
        config = awaken_settings.MAILBOX
        retry_at = now + nack_backoff_ms(
            dispatch.attempt_count, base_ms=config.default_retry_delay_ms, max_ms=config.max_retry_delay_ms
        )
        return store.try_settle(
            dispatch.dispatch_id,
            token,
            store.Settle.NACK,
            trace,
            now,
            retry_at=retry_at,
            error=outcome.message or "transient error",
            carry_decisions=[
                RunResumeDecision(call_id=c, resume=r).model_dump(mode="json") for c, r in leftovers.decisions
            ],
            charge_tokens=charge,
        )
    return store.try_settle(
        dispatch.dispatch_id,
        token,
        store.Settle.DEAD_LETTER,
        trace,
        now,
        error=outcome.message or "permanent error",
        charge_tokens=charge,
    )


def _write_run(
    settled: DispatchRecord,
    running: RunRecord,
    final: FinalRun | None,
    instance_id: str,
    now: int,
    *,
    transcript: RunTranscript | None,
) -> RunRecord | None:
    """The run side of the finish, inside its transaction; terminal events are appended on commit."""
    if final is not None:
        written = run_store().finish_run(
            run=final.run,
            messages=final.messages,
            dispatch_id=settled.dispatch_id,
            session_id=instance_id,
            now=now,
        )
        if written is not None:
            emit_finish_on_commit(written, settled.dispatch_id)
        return written
    if settled.status is DispatchStatus.DEAD_LETTER:
        return terminalize_run_for_dispatch(settled, now=now, transcript=transcript)
    _announce_retry(running, settled)  # requeued for a retry
    return None


def _queue_leftovers(dispatch: DispatchRecord, run: RunRecord | None, leftovers: Leftovers) -> None:
    """Acknowledged live input the run did not take is queued durably in the same transaction: steering
    as a queued dispatch, decisions as a resume of the run when it is waiting for them."""
    if not leftovers.steering and not leftovers.decisions:
        return
    if leftovers.steering:
        mailbox.enqueue_in_transaction(
            RunRequest(
                thread_id=dispatch.thread_id, messages=leftovers.steering, messages_already_persisted=True
            )
        )
    if leftovers.decisions and run is not None and run.is_resumable_waiting and run.waiting is not None:
        tickets = {t.tool_call_id for t in run.waiting.tickets} | set(run.waiting.ticket_ids)
        decisions = [(c, r) for c, r in leftovers.decisions if c in tickets]
        if decisions:
            mailbox.enqueue_in_transaction(
                RunRequest(thread_id=dispatch.thread_id, decisions=decisions, continue_run_id=run.run_id)
            )


def _claim_next(settled: DispatchRecord, consumer_id: str | None, now: int) -> DispatchRecord | None:
    """The worker's next claim, in the finish transaction: the fairest across threads (the thread
    just settled included), or — with fairness off — the same thread's next, as the reference drains."""
    if consumer_id is None:
        return None
    lease_ms = awaken_settings.MAILBOX.lease_ms
    if claim_policy().fair:
        return store.claim_next_fair(consumer_id, lease_ms, now)
    claimed = store.claim(settled.thread_id, consumer_id, lease_ms, now)
    return claimed[0] if claimed else None


def _explain(
    dispatch: DispatchRecord,
    stale_reason: str,
    transcript: RunTranscript | None = None,
    *,
    instance_id: str = "",
) -> Lost:
    """After the rollback: supersede a stale claim and reconcile the run with how the dispatch ended —
    one transaction (dispatch row, then run and thread rows: the finish's lock order), so an interrupting
    submit that waits for the claim to go finds the superseded run's history closed before it appends.
    The transcript applies only while the dispatch still names this attempt as its executing instance."""
    with transaction.atomic():
        lost = store.explain_lost(dispatch.dispatch_id, dispatch.claim_token or "", now_ms(), stale_reason)
        current = lost.current
        if current is not None and current.status is not DispatchStatus.CLAIMED:
            ours = bool(instance_id) and current.dispatch_instance_id == instance_id
            terminalize_run_for_dispatch(current, transcript=transcript if ours else None)
    return Lost(current)


def _closed(final: FinalRun, transcript: RunTranscript | None) -> FinalRun:
    """A run done without a natural end keeps its partial output and closes its open tool calls."""
    termination = final.run.termination_reason
    if final.run.status is not RunStatus.DONE or termination is None or termination.type == "natural_end":
        return final
    closing = history.closing_messages(
        run_id=final.run.run_id,
        reason=closing_reason(termination),
        transcript=transcript,
        produced=final.messages,
    )
    return FinalRun(final.run, [*final.messages, *closing]) if closing else final


def closing_reason(termination: TerminationReason) -> str:
    """The `reason` of a cancelled tool result: the termination type, with its value when it has one."""
    return termination.type if termination.value in (None, "") else f"{termination.type}: {termination.value}"
