"""The Mailbox service: every public operation of the reference's `Mailbox` (spec §4).

Submit paths write durable state first (run + messages + dispatch in one transaction), then ring a
worker on commit. Foreground submits are latest-wins: interrupt, cancel the active run and wait for its
claim to go, else 409 with nothing new written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from django.db import connection, transaction

from mailbox_app import store
from mailbox_app.conf import awaken_settings
from mailbox_app.contract import history
from mailbox_app.contract.ids import consumer_id, now_ms, uuid7
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchRecord, DispatchStatus, LiveRunTarget, MailboxInterrupt
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import (
    RunMode,
    RunOrigin,
    RunRequest,
    normalize_mailbox_run_mode,
    normalize_message_ids,
    validate_run_inputs,
)
from mailbox_app.contract.storage import InvalidInput, NotFound, RunRecord, StoreError
from mailbox_app.contract.suspension import ToolCallResume
from mailbox_app.observability import metrics, tracing
from mailbox_app.realtime import doorbells
from mailbox_app.realtime.live import LiveDeliveryOutcome, deliver_live_to, find_local_run
from mailbox_app.services.preparation import DEFAULT_PRIORITY, build_dispatch, prepare_run_for_dispatch
from mailbox_app.services.reconcile import emit_finish_on_commit, terminalize_run_for_dispatch
from mailbox_app.store import runs_tables
from mailbox_app.store.ports import run_store
from mailbox_app.store.runs_tables import decisions as decision_rows
from mailbox_app.store.runs_tables.submit import (
    IdempotencyKey,
    InboxDecides,
    InlineClaim,
    Replayed,
    SubmitParams,
    SubmitRefused,
    Submitted,
)

log = logging.getLogger(__name__)
INLINE_CLAIM_GUARD_MS = 60_000
REMOTE_CANCEL_POLL_S = 0.025
ACTIVE_RUN_CONFLICT_MESSAGE = "thread has an active run; cannot claim inline"


class MailboxError(Exception):
    """Base of service errors (the reference's `MailboxError`); `str()` is the bare message."""


class ActiveRunConflict(MailboxError):
    def __init__(self) -> None:
        super().__init__(ACTIVE_RUN_CONFLICT_MESSAGE)


class ThreadBusy(MailboxError):
    """A `reject` submit found the thread running or with work queued: nothing was written."""

    def __init__(self, thread_id: str) -> None:
        super().__init__(f"thread {thread_id} is busy: it has a run in progress or queued")
        self.thread_id = thread_id


class InterruptThroughPort(MailboxError):
    """A fused foreground submit (`submit_fused(interrupt=True)`) found the thread with a claim, or its new
    dispatch held by a pause or a budget: nothing was written; `submit` interrupts it, cancelling the
    active run first."""


class MultitaskStrategy(StrEnum):
    """What a submit does when its thread is busy: refuse, queue behind, or interrupt (latest wins)."""

    REJECT = "reject"
    ENQUEUE = "enqueue"
    INTERRUPT = "interrupt"


class SubmitStatus(StrEnum):
    RUNNING = "running"
    QUEUED = "queued"


class Delivered(StrEnum):
    """Where live input went (`submit_live_then_queue`): read by the running run, or queued durably."""

    LIVE = "live"
    QUEUED = "queued"


@dataclass(frozen=True, slots=True)
class SubmitResult:
    dispatch_id: str
    run_id: str
    thread_id: str
    status: SubmitStatus
    delivered: Delivered | None = None  # set by submit_live_then_queue only


# --- submit paths ------------------------------------------------------------------------------------


def submit_as(
    request: RunRequest,
    strategy: MultitaskStrategy,
    *,
    owner_id: int | None = None,
    in_transaction: Callable[[SubmitResult], None] | None = None,
) -> SubmitResult:
    """A submit under a multitask strategy: `interrupt` is the foreground `submit`, `enqueue` the
    background `submit_background`, `reject` the background submit refused with `ThreadBusy` when the
    thread has a claim or queued work. `in_transaction` runs in the transaction that commits it."""
    if strategy is MultitaskStrategy.INTERRUPT:
        return submit(request, owner_id=owner_id, in_transaction=in_transaction)
    with transaction.atomic():
        result = submit_background(
            request, owner_id=owner_id, reject_if_busy=strategy is MultitaskStrategy.REJECT
        )
        if in_transaction is not None:
            in_transaction(result)
    return result


@tracing.traced_submit
def submit(
    request: RunRequest,
    *,
    owner_id: int | None = None,
    in_transaction: Callable[[SubmitResult], None] | None = None,
) -> SubmitResult:
    """Foreground, latest-wins (spec §4.2): interrupt first, then the new run written and claimed inline
    in one transaction. If the claim loses (a concurrent submit won), nothing new is written: 409.

    `in_transaction(result)` runs inside that claim transaction (the API records an idempotency key's
    answer there); if it raises, the claim and everything written with it roll back."""
    request = normalize_mailbox_run_mode(request, background=False)
    thread_id, messages = validate_run_inputs(
        request.thread_id, request.messages, allow_empty=bool(request.decisions)
    )
    details = interrupt_detailed(thread_id)
    if details.active_dispatch is not None and not cancel_active_dispatch(details.active_dispatch, wait=True):
        raise ActiveRunConflict()
    with transaction.atomic():
        now = now_ms()
        request, run_id = prepare_run_for_dispatch(
            request.with_(thread_id=thread_id), thread_id, messages, owner_id=owner_id
        )
        dispatch = build_dispatch(request, thread_id, now=now)
        if request.start_after_ms > 0:  # a delayed start is queued for its time, not claimed inline
            store.enqueue(dispatch)
            result = SubmitResult(dispatch.dispatch_id, run_id, thread_id, SubmitStatus.QUEUED)
            if in_transaction is not None:
                in_transaction(result)
            doorbells.ring_at(thread_id, dispatch.dispatch_id, dispatch.available_at)
            return result
        dispatch = dispatch.replace(available_at=now + INLINE_CLAIM_GUARD_MS)
        store.enqueue(dispatch, owner_key=_owner_key(owner_id))
        claimed = store.claim_dispatch(
            dispatch.dispatch_id, consumer_id(), awaken_settings.MAILBOX.lease_ms, now
        )
        if claimed is None and (
            store.blocking_limit(dispatch.agent_key, store.thread_owner_key(thread_id))
            or store.pauses_holding(thread_id, [dispatch.agent_key])
        ):
            # a concurrency limit holds it (a freed slot claims it), or a pause (its resume rings it): it
            # waits its turn in the queue
            store.make_available(dispatch.dispatch_id, now)
            doorbells.ring_on_commit(thread_id, dispatch.dispatch_id)
            result = SubmitResult(dispatch.dispatch_id, run_id, thread_id, SubmitStatus.QUEUED)
            if in_transaction is not None:
                in_transaction(result)
            return result
        if claimed is None:
            raise ActiveRunConflict()  # rolls back the run, its messages and the dispatch
        result = SubmitResult(claimed.dispatch_id, run_id, thread_id, SubmitStatus.RUNNING)
        if in_transaction is not None:
            in_transaction(result)
        doorbells.hand_over_claimed_on_commit(thread_id, claimed.dispatch_id, claimed.claim_token or "")
    return result


def submit_background(
    request: RunRequest, *, owner_id: int | None = None, reject_if_busy: bool = False
) -> SubmitResult:
    """Durable queue, never interrupts (spec §4.3): messages, run, dispatch and — when the thread is idle —
    the inline claim of its next dispatch (possibly an older one), in one transaction; a worker takes
    over the claim when it commits. With `reject_if_busy`, a thread with a claim or queued work raises
    `ThreadBusy` (checked under the thread's row lock the prepare took) and nothing is written.

    Called outside a transaction with the built-in run store and no concurrency limit, it is one round
    trip (`submit_fused`); otherwise the same writes go through the run-store port."""
    if runs_tables.fused() and not connection.in_atomic_block:
        submitted = submit_fused(request, owner_id=owner_id, reject_if_busy=reject_if_busy)
        assert isinstance(submitted, SubmitResult)  # no idempotency key: never a replay
        return submitted
    return _submit_background_through_port(request, owner_id=owner_id, reject_if_busy=reject_if_busy)


@tracing.traced_submit
def _submit_background_through_port(
    request: RunRequest, *, owner_id: int | None, reject_if_busy: bool
) -> SubmitResult:
    request = normalize_mailbox_run_mode(request, background=True)
    thread_id, messages = validate_run_inputs(
        request.thread_id, request.messages, allow_empty=bool(request.decisions)
    )
    with transaction.atomic():
        dispatch, run_id = _prepare_and_enqueue(request.with_(thread_id=thread_id), messages, owner_id)
        if reject_if_busy and store.thread_busy(thread_id, excluding=dispatch.dispatch_id):
            raise ThreadBusy(thread_id)  # rolls back the run, its messages and the dispatch
        claimed = store.claim(thread_id, consumer_id(), awaken_settings.MAILBOX.lease_ms, now_ms())
        if claimed:
            doorbells.hand_over_claimed_on_commit(
                thread_id, claimed[0].dispatch_id, claimed[0].claim_token or ""
            )
        if request.start_after_ms > 0:
            doorbells.ring_at(thread_id, dispatch.dispatch_id, dispatch.available_at)
        elif not claimed:
            doorbells.ring_on_commit(thread_id, dispatch.dispatch_id)
    status = SubmitStatus.RUNNING if claimed and request.start_after_ms == 0 else SubmitStatus.QUEUED
    return SubmitResult(dispatch.dispatch_id, run_id, thread_id, status)


def fusable() -> bool:
    """Whether a background submit can be one statement here (`submit_fused`): the built-in run store, no
    concurrency limit, no transaction of the caller's to join."""
    return runs_tables.fused() and not connection.in_atomic_block


@tracing.traced_submit
def submit_fused(
    request: RunRequest,
    *,
    owner_id: int | None = None,
    reject_if_busy: bool = False,
    webhook: str | None = None,
    idempotency: IdempotencyKey | None = None,
    defer_to_inbox: bool = False,
    interrupt: bool = False,
) -> SubmitResult | Replayed:
    """`submit_background` in one round trip (mailbox_app/store/runs_tables/submit.sql): the webhook
    subscription and the idempotency key's answer are written by the same statement; a key answered
    before is `Replayed` with nothing written. The doorbell rings once it returned (it has committed).
    With `defer_to_inbox`, a thread with an inbox policy of its own raises `InboxDecides` (nothing
    written): its inbox (mailbox_app/services/inbox.py) takes the messages instead.

    With `interrupt`, the foreground `submit` on an idle thread in the same round trip: the epoch moved
    on, the queued dispatches superseded and this very dispatch claimed, in the statement; a thread with
    a claim (or a dispatch a pause or a budget holds) raises `InterruptThroughPort`, nothing written."""
    request = normalize_mailbox_run_mode(request, background=not interrupt)
    thread_id, messages = validate_run_inputs(
        request.thread_id, request.messages, allow_empty=bool(request.decisions)
    )
    messages = normalize_message_ids(messages)
    request = request.with_(thread_id=thread_id, messages=messages)
    now = now_ms()
    delayed = request.start_after_ms > 0
    config = awaken_settings.MAILBOX
    params = SubmitParams(
        request=request,
        thread_id=thread_id,
        messages=messages,
        owner_id=owner_id,
        dispatch_id=request.dispatch_id_hint or uuid7(),
        new_run_id=uuid7(),
        reuse_waiting=request.continue_run_id is None and request.run_id_hint is None,
        priority=DEFAULT_PRIORITY if request.priority is None else request.priority,
        # a foreground dispatch is claimed by id; the guard keeps any other claim off it meanwhile
        available_at=now + (request.start_after_ms if delayed or not interrupt else INLINE_CLAIM_GUARD_MS),
        max_attempts=config.default_max_attempts,
        timeout_ms=request.timeout_ms or awaken_settings.RUN_TIMEOUT_MS,
        claim=_inline_claim(delayed, interrupt),
        reject_if_busy=reject_if_busy,
        token=uuid7(),
        consumer_id=consumer_id(),
        lease_until=now + config.lease_ms,
        now=now,
        webhook=webhook,
        idempotency=idempotency,
        defer_to_inbox=defer_to_inbox,
        interrupt=interrupt,
    )
    with metrics.ENQUEUE.timed() as timer:
        try:
            submitted = runs_tables.submit.submit(params)
        except SubmitRefused as refused:
            if refused.reason == "busy":
                raise ThreadBusy(thread_id) from None
            if interrupt and refused.reason in ("active", "conflict"):
                raise InterruptThroughPort(thread_id) from None
            raise
    if isinstance(submitted, Replayed):
        return submitted
    claimed = submitted.claimed
    if params.claim is not InlineClaim.NONE:  # the statement's claim, timed as the statement
        metrics.CLAIM.record("ok" if claimed is not None else "empty", time.perf_counter() - timer.start)
    try:  # committed: the rings are best effort (the row is the queue; the sweep rings again)
        _ring_submitted(submitted, delayed)
    except Exception:
        log.warning("doorbell for dispatch %s not rung; the sweep will", submitted.dispatch_id, exc_info=True)
    status = SubmitStatus.RUNNING if submitted.status == "running" else SubmitStatus.QUEUED
    return SubmitResult(submitted.dispatch_id, submitted.run_id, thread_id, status)


def _inline_claim(delayed: bool, interrupt: bool) -> InlineClaim:
    """A delayed start claims nothing; a foreground submit its own dispatch; a background one the
    thread's next (possibly an older one)."""
    if delayed:
        return InlineClaim.NONE
    return InlineClaim.DISPATCH if interrupt else InlineClaim.THREAD


def _ring_submitted(submitted: Submitted, delayed: bool) -> None:
    claimed = submitted.claimed
    if claimed is not None:
        doorbells.hand_over_claimed_on_commit(
            submitted.thread_id, claimed.dispatch_id, claimed.claim_token or ""
        )
    if delayed:
        doorbells.ring_at(submitted.thread_id, submitted.dispatch_id, submitted.available_at)
    elif claimed is None:
        doorbells.ring_on_commit(submitted.thread_id, submitted.dispatch_id)


@tracing.traced_submit
def enqueue_in_transaction(request: RunRequest, *, owner_id: int | None = None) -> DispatchRecord:
    """Queue a background dispatch inside the caller's transaction (no inline claim); the doorbell
    rings when it commits. The finish of an attempt uses it for live input its run did not take."""
    request = normalize_mailbox_run_mode(request, background=True)
    thread_id, messages = validate_run_inputs(
        request.thread_id, request.messages, allow_empty=bool(request.decisions)
    )
    dispatch, _ = _prepare_and_enqueue(request.with_(thread_id=thread_id), messages, owner_id)
    doorbells.ring_on_commit(thread_id, dispatch.dispatch_id)
    return dispatch


def _prepare_and_enqueue(
    request: RunRequest, messages: list[ChatMessage], owner_id: int | None
) -> tuple[DispatchRecord, str]:
    request, run_id = prepare_run_for_dispatch(request, request.thread_id, messages, owner_id=owner_id)
    return store.enqueue(build_dispatch(request, request.thread_id), owner_key=_owner_key(owner_id)), run_id


def _owner_key(owner_id: int | None) -> str:
    return "" if owner_id is None else str(owner_id)


def submit_live_then_queue(
    request: RunRequest, *, expected_run_id: str | None = None, owner_id: int | None = None
) -> SubmitResult:
    """Steer the thread's running run with the messages, else enqueue them durably (spec §4.4). The
    answer says which (`delivered`): `live` once the running run acknowledged them (it reads them),
    `queued` when they became a dispatch of their own (no run was running, or it did not answer)."""
    thread_id, messages = validate_run_inputs(
        request.thread_id, request.messages, allow_empty=bool(request.decisions)
    )
    messages = normalize_message_ids(messages)
    steered = _steer(thread_id, messages, expected_run_id, owner_id)
    if steered is not None:
        return steered
    queued = submit_background(request.with_(thread_id=thread_id, messages=messages), owner_id=owner_id)
    return replace(queued, delivered=Delivered.QUEUED)


def _steer(
    thread_id: str, messages: list[ChatMessage], expected_run_id: str | None, owner_id: int | None
) -> SubmitResult | None:
    """The messages appended and delivered live to the thread's own running run (the owner's thread
    only: else the durable submit refuses it under the thread's row lock)."""
    if not messages or not _owned(thread_id, owner_id):
        return None
    latest = run_store().latest_run(thread_id=thread_id)
    if latest is None or latest.status is not RunStatus.RUNNING or not latest.dispatch_id:
        return None
    if expected_run_id is not None and expected_run_id != latest.run_id:
        return None
    run_store().append_messages(thread_id=thread_id, messages=messages)
    command = {"kind": "messages", "messages": [m.model_dump(mode="json") for m in messages]}
    if not deliver_live_command(LiveRunTarget(thread_id, latest.run_id, latest.dispatch_id), command):
        return None
    return SubmitResult(latest.dispatch_id, latest.run_id, thread_id, SubmitStatus.RUNNING, Delivered.LIVE)


def deliver_live_command(target: LiveRunTarget, command: dict[str, Any]) -> bool:
    """Local run first (same process, found by the exact target), else the Redis live channel of the
    exact target."""
    local = find_local_run(target)
    if local is not None:
        return local.on_live_command(command)
    return deliver_live_to(target, command) is LiveDeliveryOutcome.DELIVERED


# --- interrupt and cancel ----------------------------------------------------------------------------


def interrupt_detailed(thread_id: str) -> MailboxInterrupt:
    """Bump the epoch, supersede queued work (their runs become cancelled), report the active claim."""
    # The runs are ended after the interrupt commits, each in its own transaction: every other path takes
    # the thread row before the epoch row, and doing both here in one transaction could deadlock.
    details = store.interrupt_detailed(thread_id, now_ms())
    for superseded in details.superseded_dispatches:
        with transaction.atomic():
            terminalize_run_for_dispatch(superseded)
    return details


def interrupt(thread_id: str) -> MailboxInterrupt:
    """Interrupt the thread and ask its active run to stop (without waiting)."""
    details = interrupt_detailed(thread_id)
    if details.active_dispatch is not None:
        cancel_active_dispatch(details.active_dispatch, wait=False)
    return details


def cancel_active_dispatch(active: DispatchRecord, *, wait: bool) -> bool:
    """Cancel the run of a claimed dispatch, locally or in another process; with `wait`, True only once
    its claim is released (polled up to AWAKEN_REMOTE_CANCEL_WAIT_MS).

    The reference's `deliver_live_cancel`, and with `wait` its `wait_for_dispatch_not_claimed`."""
    target = LiveRunTarget(active.thread_id, active.run_id, active.dispatch_id)
    delivered = deliver_live_command(target, {"kind": "cancel"})
    if not wait:
        return True
    deadline = time.monotonic() + awaken_settings.REMOTE_CANCEL_WAIT_MS / 1000
    while True:
        current = store.load_dispatch(active.dispatch_id)
        if current is None or current.status is not DispatchStatus.CLAIMED:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(REMOTE_CANCEL_POLL_S)
        if not delivered:  # the run may not have subscribed yet (claimed, starting): say it again
            delivered = deliver_live_command(target, {"kind": "cancel"})


# --- what a cancel or a decision addresses -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ThreadTarget:
    """A thread's own run: its open run, else its latest (`threads/{id}/cancel`, `.../decision`)."""

    thread_id: str


@dataclass(frozen=True, slots=True)
class RunTarget:
    """That run only (`runs/{id}/cancel`, `.../decision`)."""

    run_id: str


@dataclass(frozen=True, slots=True)
class DispatchTarget:
    """That dispatch only (`dispatches/{id}/cancel`)."""

    dispatch_id: str


ControlTarget = ThreadTarget | RunTarget | DispatchTarget
RunOrThread = ThreadTarget | RunTarget


def _owned(thread_id: str, owner_id: int | None) -> bool:
    """Whether the thread is the owner's (any thread when no owner is given: operators, tests). Called
    inside the transaction that acts, so what it acts on is the owner's as it acts."""
    if owner_id is None:
        return True
    thread = run_store().load_thread(thread_id=thread_id)
    return thread is not None and thread.owner_id == owner_id


def _run_for(target: RunOrThread, owner_id: int | None) -> RunRecord | None:
    """The run `target` names, if its thread is the owner's: a run by its id; a thread's open run (on that
    thread), else the thread's latest run. Never anything else: an id is read as the kind it is given
    as, so a thread named after another user's run or dispatch id reaches only its own runs."""
    runs = run_store()
    if isinstance(target, RunTarget):
        run = runs.load_run(run_id=target.run_id)
        return run if run is not None and _owned(run.thread_id, owner_id) else None
    thread = runs.load_thread(thread_id=target.thread_id)
    if thread is None or (owner_id is not None and thread.owner_id != owner_id):
        return None
    if thread.open_run_id:
        open_run = runs.load_run(run_id=thread.open_run_id)
        if open_run is not None and open_run.thread_id == thread.id:
            return open_run
    return runs.latest_run(thread_id=thread.id)


def _live_target(run: RunRecord) -> LiveRunTarget | None:
    """The exact (thread, run, dispatch) a running run's worker listens on."""
    if run.status is not RunStatus.RUNNING or not run.dispatch_id:
        return None
    return LiveRunTarget(run.thread_id, run.run_id, run.dispatch_id)


# --- cancel ------------------------------------------------------------------------------------------


def cancel(target: ControlTarget, *, owner_id: int | None = None) -> bool:
    """Cancel what `target` names, queued or running, here or in another process (spec §7.8), if it is
    the owner's (`owner_id` None: anyone's). A dispatch: that queued dispatch, or the run its claim
    executes. A run, or a thread's open run: live cancel while it runs, else the end of a durably
    waiting run. False when there is nothing of the owner's to cancel."""
    if isinstance(target, DispatchTarget):
        return _cancel_dispatch(target.dispatch_id, owner_id)
    run = _run_for(target, owner_id)
    if run is None:
        return False
    live = _live_target(run)
    if live is not None:
        if deliver_live_command(live, {"kind": "cancel"}):
            return True
        if _cancel_retrying(run, owner_id):
            return True
        # not delivered: the run closed its inbox and is ending; if it ends waiting, cancel that
        run = _wait_not_running(run)
    if run.status is RunStatus.WAITING:
        return _cancel_waiting(run, owner_id)
    return False


def _cancel_dispatch(dispatch_id: str, owner_id: int | None) -> bool:
    """A queued dispatch cancelled (its run ended with it), or the run a claimed one executes told to
    stop — only a dispatch of the owner's thread."""
    with transaction.atomic():
        dispatch = store.load_dispatch(dispatch_id)
        if dispatch is None or not _owned(dispatch.thread_id, owner_id):
            return False
        queued = store.cancel(dispatch_id, now_ms())
        if queued is not None:
            terminalize_run_for_dispatch(queued)
            return True
    current = store.load_dispatch(dispatch_id)
    if current is None or current.status is not DispatchStatus.CLAIMED:
        return False
    return deliver_live_command(
        LiveRunTarget(current.thread_id, current.run_id, current.dispatch_id), {"kind": "cancel"}
    )


def _cancel_retrying(run: RunRecord, owner_id: int | None) -> bool:
    """A run left Running by an attempt that failed transiently: its dispatch waits queued for the retry
    (no worker holds it). Cancel that dispatch — the run's own, on its thread — which ends the run."""
    with transaction.atomic():
        dispatch = store.load_dispatch(run.dispatch_id or "")
        if (
            dispatch is None
            or dispatch.run_id != run.run_id
            or dispatch.thread_id != run.thread_id
            or not _owned(run.thread_id, owner_id)
        ):
            return False
        queued = store.cancel(dispatch.dispatch_id, now_ms())
        if queued is not None:
            terminalize_run_for_dispatch(queued)
    return queued is not None


def _cancel_waiting(run: RunRecord, owner_id: int | None) -> bool:
    """A durably waiting run holds no worker: cancel its queued resumes and finish it as cancelled, in one
    transaction, only while it is still waiting (a resume that started meanwhile owns it)."""
    with transaction.atomic():
        if not _owned(run.thread_id, owner_id):
            return False
        now = now_ms()
        for dispatch in store.list_dispatches(run.thread_id, [DispatchStatus.QUEUED]):
            if dispatch.run_id == run.run_id:
                store.cancel(dispatch.dispatch_id, now)
        # its suspended tool calls are answered as cancelled in the statement that ends it (history.py)
        done = run_store().cancel_waiting_run(
            run_id=run.run_id, now=now, closing=history.closer(history.CANCELLED)
        )
        if done is None:
            transaction.set_rollback(True)
            return False
        emit_finish_on_commit(done, done.dispatch_id or "")
    return True


# --- decisions (HITL) --------------------------------------------------------------------------------


AlreadyDecided = decision_rows.AlreadyDecided
Decided = decision_rows.Decided


@dataclass(frozen=True, slots=True)
class DecisionSent:
    """Decisions that reached their run: handed to the worker holding it (`live`), or queued as its
    resume (`dispatch_id`)."""

    run_id: str
    thread_id: str
    live: bool
    dispatch_id: str | None = None


Decisions = Sequence[tuple[str, ToolCallResume]]


def send_decision(
    target: RunOrThread, tool_call_id: str, resume: ToolCallResume, *, owner_id: int | None = None
) -> DecisionSent | None:
    """`send_decisions` with one decision."""
    return send_decisions(target, [(tool_call_id, resume)], owner_id=owner_id)


def send_decisions(
    target: RunOrThread, decisions: Decisions, *, owner_id: int | None = None
) -> DecisionSent | None:
    """Decide suspended tool calls of the run `target` names (the owner's only), each exactly once.

    A run suspended live in a worker: the decisions are claimed (committed) first, then delivered; one
    that is not acknowledged (the run closed its inbox) takes the durable path once the run has left
    Running. A run waiting durably: the claim and the resume dispatch that carries the decisions are
    one transaction. None when the run is unknown, not the owner's, or not waiting for these calls;
    `AlreadyDecided` (nothing written) when a call has its decision already."""
    calls = [call for call, _ in decisions]
    if not decisions or len(set(calls)) != len(calls):
        raise InvalidInput("each tool call takes one decision per request")
    run = _run_for(target, owner_id)
    if run is None:
        return None
    live = _live_target(run)
    if live is None:
        return _queue_resume(run, decisions, owner_id, claimed=False)
    with transaction.atomic():  # committed before the delivery: a second sender finds the claim
        if not decision_rows.claim(
            run.run_id, decisions, owner_id=owner_id, via=decision_rows.LIVE, now=now_ms()
        ):
            return None
    if deliver_live_command(live, _decision_command(decisions)):
        return DecisionSent(run.run_id, run.thread_id, live=True)
    # Not delivered: the run closed its inbox and is ending. Once its finish commits it is waiting (take
    # the durable path) or done (nothing to decide: the claim is given back).
    sent = _queue_resume(_wait_not_running(run), decisions, owner_id, claimed=True)
    if sent is None:
        with transaction.atomic():
            decision_rows.release(run.run_id, decisions)
    return sent


def decided(run_id: str, tool_call_ids: Sequence[str], *, owner_id: int | None = None) -> list[Decided]:
    """The decisions taken for these tool calls of the run (the owner's run only, when one is given)."""
    return decision_rows.decided(run_id, tool_call_ids, owner_id=owner_id)


def _queue_resume(
    run: RunRecord, decisions: Decisions, owner_id: int | None, *, claimed: bool
) -> DecisionSent | None:
    """A decision-only resume of a durably waiting run whose tickets mention every call, queued in the
    transaction that claims the decisions (or names the claim made before a live delivery failed)."""
    tickets = set()
    if run.is_resumable_waiting and run.waiting is not None:
        tickets = {t.tool_call_id for t in run.waiting.tickets} | set(run.waiting.ticket_ids)
    if not tickets or any(call not in tickets for call, _ in decisions):
        # not waiting for these calls (any more): a call decided before is told so, not "not found"
        taken = decision_rows.decided(run.run_id, [call for call, _ in decisions], owner_id=owner_id)
        if taken and not claimed:
            raise AlreadyDecided(taken[0])
        return None
    try:
        with transaction.atomic():
            if not claimed and not decision_rows.claim(
                run.run_id, decisions, owner_id=owner_id, via=decision_rows.QUEUED, now=now_ms()
            ):
                return None
            # the submit re-checks under the thread's row lock that the run is still open for a resume
            # and that the thread is the owner's; either refusal rolls the claim back with it
            submitted = submit_background(
                RunRequest(thread_id=run.thread_id, decisions=list(decisions), continue_run_id=run.run_id),
                owner_id=owner_id,
            )
            decision_rows.queued(run.run_id, decisions, submitted.dispatch_id)
    except (InvalidInput, NotFound):
        return None
    return DecisionSent(run.run_id, run.thread_id, live=False, dispatch_id=submitted.dispatch_id)


def _decision_command(decisions: Decisions) -> dict[str, Any]:
    return {"kind": "decision", "decisions": [[call, r.model_dump(mode="json")] for call, r in decisions]}


def _wait_not_running(run: RunRecord) -> RunRecord:
    """The run once it has left Running under the same dispatch (bounded by AWAKEN_REMOTE_CANCEL_WAIT_MS)."""
    deadline = time.monotonic() + awaken_settings.REMOTE_CANCEL_WAIT_MS / 1000
    while True:
        current = run_store().load_run(run_id=run.run_id) or run
        ended = current.status is not RunStatus.RUNNING or current.dispatch_id != run.dispatch_id
        if ended or time.monotonic() >= deadline:
            return current
        time.sleep(REMOTE_CANCEL_POLL_S)


def send_decision_live(
    target: LiveRunTarget, tool_call_id: str, resume: ToolCallResume, *, owner_id: int | None = None
) -> bool:
    """A decision for the run executing as exactly `target`, live only: claimed first (exactly once, like
    every decision), given back when no worker acknowledged it (the reference's `deliver_live_decision`)."""
    decisions = [(tool_call_id, resume)]
    with transaction.atomic():
        if not decision_rows.claim(
            target.run_id, decisions, owner_id=owner_id, via=decision_rows.LIVE, now=now_ms()
        ):
            return False
    if deliver_live_command(target, _decision_command(decisions)):
        return True
    with transaction.atomic():
        decision_rows.release(target.run_id, decisions)
    return False


def wake_run(run: RunRecord) -> SubmitResult:
    """An internal wake (e.g. background tasks finished) for a waiting run."""
    wake = ChatMessage.model_validate(
        {"role": "user", "content": "<background-tasks-updated />", "visibility": "internal"}
    )
    return submit_background(
        RunRequest(
            thread_id=run.thread_id,
            messages=[wake],
            agent_id=run.agent_id,
            origin=RunOrigin.INTERNAL,
            run_mode=RunMode.INTERNAL_WAKE,
            continue_run_id=run.run_id,
        )
    )


# --- reads -------------------------------------------------------------------------------------------


def load_dispatch(dispatch_id: str) -> DispatchRecord | None:
    return store.load_dispatch(dispatch_id)


def list_dispatches(
    thread_id: str, status_filter: list[DispatchStatus] | None = None, limit: int = 100, offset: int = 0
) -> list[DispatchRecord]:
    return store.list_dispatches(thread_id, status_filter, limit, offset)


def count_dispatches(thread_id: str, status_filter: list[DispatchStatus] | None = None) -> int:
    return store.count_thread_dispatches(thread_id, status_filter)


def queued_thread_ids() -> list[str]:
    return store.queued_thread_ids()


__all__ = [
    "ACTIVE_RUN_CONFLICT_MESSAGE",
    "ActiveRunConflict",
    "AlreadyDecided",
    "ControlTarget",
    "Decided",
    "DecisionSent",
    "Delivered",
    "DispatchTarget",
    "IdempotencyKey",
    "InboxDecides",
    "InterruptThroughPort",
    "InvalidInput",
    "MailboxError",
    "MultitaskStrategy",
    "Replayed",
    "RunTarget",
    "StoreError",
    "SubmitRefused",
    "SubmitResult",
    "SubmitStatus",
    "ThreadBusy",
    "ThreadTarget",
    "cancel",
    "count_dispatches",
    "decided",
    "fusable",
    "interrupt",
    "interrupt_detailed",
    "list_dispatches",
    "load_dispatch",
    "queued_thread_ids",
    "send_decision",
    "send_decision_live",
    "send_decisions",
    "submit",
    "submit_as",
    "submit_background",
    "submit_fused",
    "submit_live_then_queue",
    "wake_run",
]
