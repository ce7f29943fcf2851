"""The run-control service behind the API (spec §5.3 RunControlService): submit, inject input by mode,
cancel, interrupt and decide. Typed values in, typed results out, typed errors raised (`ControlError`);
no HTTP here — the API layer validates the request before and maps the answer and the errors after.

`in_transaction` (where a function takes it) runs inside the transaction that commits the submission,
with its result: the API records an idempotency key's answer there, so the key exists if and only if the
submission committed. An interrupt that comes first (`interrupt_then_queue`, a foreground submit) commits
on its own before it (spec §7.2).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from django.db import transaction
from pydantic import ValidationError

from mailbox_app.conf import awaken_settings
from mailbox_app.contract.ids import now_ms, uuid7
from mailbox_app.contract.inbox import InboxOutcome, InboxPolicy, resolve_policy
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import RunRequest
from mailbox_app.contract.storage import RunRecord, ThreadRecord
from mailbox_app.contract.suspension import ToolCallResume
from mailbox_app.realtime import events
from mailbox_app.services import inbox, mailbox
from mailbox_app.services.inbox import InboxResult
from mailbox_app.services.mailbox import IdempotencyKey, MultitaskStrategy, Replayed, SubmitResult
from mailbox_app.webhooks import outbox
from runs_app import store
from runs_app.services import selectors

log = logging.getLogger(__name__)
InTransaction = Callable[[SubmitResult], None]
InboxInTransaction = Callable[[InboxResult], None]


class InputMode(StrEnum):
    """How injected input reaches the thread (spec §5.3 inject_user_input / inject_run_input)."""

    QUEUE = "queue"
    LIVE_THEN_QUEUE = "live_then_queue"
    STEER = "steer"  # an alias of live_then_queue
    INTERRUPT_THEN_QUEUE = "interrupt_then_queue"
    RESUME_OPEN_RUN = "resume_open_run"
    AUTO = "auto"  # the thread's inbox policy decides (docs/inbox.md); without one, as `queue`

    @property
    def is_live(self) -> bool:
        return self in (InputMode.LIVE_THEN_QUEUE, InputMode.STEER)


class TargetKind(StrEnum):
    """What an identifier names: a cancel or a decision addresses a run, a thread or a dispatch."""

    RUN = "run"
    THREAD = "thread"
    DISPATCH = "dispatch"


# --- errors ----------------------------------------------------------------------------------------


class ControlError(Exception):
    """A run-control request that cannot be carried out; `code` is its machine-readable name."""

    code = "control_error"


class TargetNotFound(ControlError):
    """Nothing to act on: the run, thread or dispatch is unknown (or not the caller's), or idle."""

    def __init__(self, kind: TargetKind, identifier: str, *, detail: str | None = None) -> None:
        super().__init__(f"{kind.value} not found: {detail or identifier}")
        self.kind, self.identifier = kind, identifier
        self.code = f"{kind.value}_not_found"


class DecisionTargetNotFound(ControlError):
    """No run holds a suspended tool call with this id."""

    code = "decision_target_not_found"

    def __init__(self, tool_call_id: str, kind: TargetKind, identifier: str) -> None:
        super().__init__(f"no suspended tool call {tool_call_id} on {kind.value} {identifier}")
        self.tool_call_id = tool_call_id


class AlreadyDecided(ControlError):
    """The tool call has its decision already (one decision per call): nothing of this one was written."""

    code = "already_decided"

    def __init__(self, decided: mailbox.Decided) -> None:
        super().__init__(
            f"tool call {decided.tool_call_id} is already decided ({decided.action}); "
            "a tool call takes one decision"
        )
        self.decided = decided


class NotWaiting(ControlError):
    """Decisions for a thread whose run is not waiting for one."""

    code = "not_waiting"

    def __init__(self, thread_id: str) -> None:
        super().__init__(f"no run waiting for a decision on thread {thread_id}")


# --- values ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    """A caller's answer to a suspended tool call: `resume` (with `payload`) or `cancel`."""

    tool_call_id: str
    action: str
    payload: Any = None


@dataclass(frozen=True, slots=True)
class Interrupted:
    thread_id: str
    superseded_count: int
    active_dispatch_id: str | None


@dataclass(frozen=True, slots=True)
class Answered:
    """Decisions delivered to a thread's waiting run; its continuation's events follow `after_event_id`
    (None: the stream was empty when the decisions were sent)."""

    run_id: str
    thread_id: str
    after_event_id: str | None


# --- submit ----------------------------------------------------------------------------------------


def submit(
    request: RunRequest,
    strategy: MultitaskStrategy,
    *,
    owner_id: int,
    webhook: str | None = None,
    in_transaction: InTransaction | None = None,
) -> SubmitResult:
    """A new run under a multitask strategy; `webhook` subscribes to it in the submit's transaction."""

    def committing(result: SubmitResult) -> None:
        if webhook:
            outbox.subscribe(result.run_id, webhook, owner_id=owner_id)
        if in_transaction is not None:
            in_transaction(result)

    return mailbox.submit_as(request, strategy, owner_id=owner_id, in_transaction=committing)


def submit_fused(
    request: RunRequest,
    strategy: MultitaskStrategy,
    *,
    owner_id: int,
    webhook: str | None = None,
    idempotency: IdempotencyKey | None = None,
    defer_to_inbox: bool = False,
) -> SubmitResult | Replayed:
    """A submit the mailbox makes in one statement (when `mailbox.fusable()`): the thread's owner
    checked, the webhook subscription and the idempotency key's answer written by that statement; a key
    answered before is `Replayed`, nothing written. With `defer_to_inbox`, a thread with an inbox policy
    of its own raises `mailbox.InboxDecides` instead (nothing written): the caller delivers to the inbox
    (`deliver_to_inbox`). An `interrupt` submit on a thread with a claim raises
    `mailbox.InterruptThroughPort` (nothing written): the caller submits through `submit`."""
    return mailbox.submit_fused(
        request,
        owner_id=owner_id,
        reject_if_busy=strategy is MultitaskStrategy.REJECT,
        interrupt=strategy is MultitaskStrategy.INTERRUPT,
        webhook=webhook,
        idempotency=idempotency,
        defer_to_inbox=defer_to_inbox,
    )


# --- the inbox -------------------------------------------------------------------------------------


def inbox_defaults_configured() -> bool:
    """Whether a thread without a policy of its own may still have one (AWAKEN_INBOX_DEFAULT or
    AWAKEN_INBOX_AGENT_DEFAULTS is set)."""
    return awaken_settings.INBOX_DEFAULT is not None or bool(awaken_settings.INBOX_AGENT_DEFAULTS)


def inbox_policy(thread: ThreadRecord | None, agent_id: str | None) -> InboxPolicy | None:
    """The policy that applies to the thread (docs/inbox.md): its own, else the default of its agent
    (`agent_id`, else its latest run's), else the project's; None: none. Reads the latest run only when
    per-agent defaults are configured and no agent is named. A stored policy that does not validate
    (the API validates what it stores; one written by hand may not) is ignored, with a warning."""
    explicit = None
    if thread is not None and thread.inbox is not None:
        try:
            explicit = InboxPolicy.model_validate(thread.inbox)
        except ValidationError:
            log.warning(
                "thread %s: its inbox policy %r is invalid; the defaults apply", thread.id, thread.inbox
            )
    agent_defaults = dict(awaken_settings.INBOX_AGENT_DEFAULTS)
    agent = agent_id
    if explicit is None and agent is None and agent_defaults and thread is not None:
        latest = store.latest_run(thread_id=thread.id)
        agent = latest.agent_id if latest is not None else None
    return resolve_policy(explicit, agent, agent_defaults, awaken_settings.INBOX_DEFAULT)


def deliver_to_inbox(
    request: RunRequest,
    policy: InboxPolicy,
    *,
    owner_id: int,
    webhook: str | None = None,
    in_transaction: InboxInTransaction | None = None,
) -> InboxResult:
    """The request's messages through the thread's inbox under `policy`, in one transaction with the
    webhook subscription (on the run they went to) and `in_transaction`."""
    with transaction.atomic():
        result = inbox.deliver(request, policy, owner_id=owner_id)
        if webhook:
            outbox.subscribe(result.run_id, webhook, owner_id=owner_id)
        if in_transaction is not None:
            in_transaction(result)
    return result


def deliver_messages(
    thread: ThreadRecord,
    messages: Sequence[ChatMessage],
    *,
    owner_id: int,
    agent_id: str | None = None,
    in_transaction: InboxInTransaction | None = None,
) -> InboxResult:
    """The `auto` mode of a thread's messages: its inbox policy decides; a thread without one queues
    them as the `queue` mode does (answered `queued`)."""
    request = RunRequest(thread_id=thread.id, messages=list(messages), agent_id=agent_id)
    policy = inbox_policy(thread, agent_id)
    if policy is not None:
        return deliver_to_inbox(request, policy, owner_id=owner_id, in_transaction=in_transaction)

    def queued(result: SubmitResult) -> None:
        if in_transaction is not None:
            in_transaction(as_inbox_result(result))

    submitted = _committed(lambda: mailbox.submit_background(request, owner_id=owner_id), queued)
    return as_inbox_result(submitted)


def as_inbox_result(result: SubmitResult) -> InboxResult:
    """A submit that did not go through an inbox, in the inbox's terms: `queued`."""
    return InboxResult(
        InboxOutcome.QUEUED, result.dispatch_id, result.run_id, result.thread_id, result.status
    )


# --- inject ----------------------------------------------------------------------------------------


def inject_user_input(
    thread_id: str,
    messages: Sequence[ChatMessage],
    *,
    mode: InputMode,
    owner_id: int,
    agent_id: str | None = None,
    in_transaction: InTransaction | None = None,
) -> SubmitResult:
    """spec §5.3 inject_user_input (and its live-then-queue variant) on a thread, by mode."""
    request = RunRequest(thread_id=thread_id, messages=list(messages), agent_id=agent_id)
    return _inject(request, mode, owner_id=owner_id, expected_run_id=None, in_transaction=in_transaction)


def inject_run_input(
    run: RunRecord,
    messages: Sequence[ChatMessage],
    *,
    mode: InputMode,
    owner_id: int,
    in_transaction: InTransaction | None = None,
) -> SubmitResult:
    """spec §5.3 inject_run_input: live modes steer this very run; otherwise a resumable waiting run is
    continued, unless the mode interrupts first; anything else is input for the run's thread."""
    request = RunRequest(thread_id=run.thread_id, messages=list(messages), agent_id=run.agent_id)
    if mode.is_live:
        return _inject(
            request, mode, owner_id=owner_id, expected_run_id=run.run_id, in_transaction=in_transaction
        )
    if mode is not InputMode.INTERRUPT_THEN_QUEUE and run.is_resumable_waiting:
        resume = request.with_(continue_run_id=run.run_id)
        return _committed(lambda: mailbox.submit_background(resume, owner_id=owner_id), in_transaction)
    return _inject(request, mode, owner_id=owner_id, expected_run_id=None, in_transaction=in_transaction)


def _inject(
    request: RunRequest,
    mode: InputMode,
    *,
    owner_id: int,
    expected_run_id: str | None,
    in_transaction: InTransaction | None,
) -> SubmitResult:
    if mode is InputMode.INTERRUPT_THEN_QUEUE:
        if selectors.owned_thread(owner_id, request.thread_id) is None:  # never another user's thread
            raise TargetNotFound(TargetKind.THREAD, request.thread_id)
        mailbox.interrupt(request.thread_id)  # commits on its own, before the submission

    def submission() -> SubmitResult:
        if mode.is_live:
            return mailbox.submit_live_then_queue(request, expected_run_id=expected_run_id, owner_id=owner_id)
        if mode is InputMode.RESUME_OPEN_RUN:
            run = _open_waiting_run(request.thread_id)
            resumed = request.with_(agent_id=run.agent_id, continue_run_id=run.run_id)
            return mailbox.submit_background(resumed, owner_id=owner_id)
        return mailbox.submit_background(request, owner_id=owner_id)

    return _committed(submission, in_transaction)


def _committed(submission: Callable[[], SubmitResult], in_transaction: InTransaction | None) -> SubmitResult:
    """`submission` and `in_transaction` in one transaction (the service's own become savepoints)."""
    with transaction.atomic():
        result = submission()
        if in_transaction is not None:
            in_transaction(result)
    return result


def _open_waiting_run(thread_id: str) -> RunRecord:
    thread = store.load_thread(thread_id=thread_id)
    run = store.load_run(run_id=thread.open_run_id) if thread and thread.open_run_id else None
    if run is None or run.thread_id != thread_id or not run.is_resumable_waiting:
        raise TargetNotFound(TargetKind.RUN, thread_id, detail=f"open run for thread {thread_id}")
    return run


# --- cancel, interrupt -----------------------------------------------------------------------------


def target(kind: TargetKind, identifier: str) -> mailbox.ControlTarget:
    """The mailbox's typed target for a route's id: the id is read as the kind the route names, never as
    another (a thread may be named after someone else's run or dispatch id)."""
    if kind is TargetKind.RUN:
        return mailbox.RunTarget(identifier)
    if kind is TargetKind.THREAD:
        return mailbox.ThreadTarget(identifier)
    return mailbox.DispatchTarget(identifier)


def cancel(kind: TargetKind, identifier: str, *, owner_id: int) -> None:
    """spec §5.3 cancel_run: cancel what the id names (queued or running, here or elsewhere), only if it
    is the owner's; anything else is TargetNotFound, as an id that does not exist."""
    if not mailbox.cancel(target(kind, identifier), owner_id=owner_id):
        raise TargetNotFound(kind, identifier)


def interrupt_thread(thread_id: str) -> Interrupted:
    """spec §5.3 interrupt_thread: only an interrupt that found an active claim or superseded queued
    work did anything; otherwise the thread has nothing to interrupt (ThreadNotFound)."""
    details = mailbox.interrupt(thread_id)
    if details.active_dispatch is None and details.superseded_count == 0:
        raise TargetNotFound(TargetKind.THREAD, thread_id)
    active = details.active_dispatch
    return Interrupted(thread_id, details.superseded_count, None if active is None else active.dispatch_id)


# --- decisions -------------------------------------------------------------------------------------


def tool_call_resume(decision: Decision) -> ToolCallResume:
    """The decision as the run receives it: a fresh decision id (UUID v7) stamped now."""
    return ToolCallResume(
        decision_id=uuid7(), action=decision.action, result=decision.payload, updated_at=now_ms()
    )


def decide(kind: TargetKind, identifier: str, decision: Decision, *, owner_id: int) -> None:
    """spec §5.3 decide: deliver the decision to the run (or the thread's own run) holding the tool call,
    once: a second decision for the call is AlreadyDecided."""
    _decide(kind, identifier, [decision], owner_id=owner_id)


def _decide(kind: TargetKind, identifier: str, decisions: Sequence[Decision], *, owner_id: int) -> None:
    answers = [(d.tool_call_id, tool_call_resume(d)) for d in decisions]
    addressed = target(kind, identifier)
    assert not isinstance(addressed, mailbox.DispatchTarget)  # a decision names a run or a thread
    try:
        sent = mailbox.send_decisions(addressed, answers, owner_id=owner_id)
    except mailbox.AlreadyDecided as exc:
        raise AlreadyDecided(exc.decided) from None
    if sent is None:
        raise DecisionTargetNotFound(decisions[0].tool_call_id, kind, identifier)


def answer_waiting_run(thread_id: str, decisions: Sequence[Decision], *, owner_id: int) -> Answered:
    """A front end's answers to the thread's waiting run's tool calls: one resume of that run carrying
    them all (each call decided once). The stream position is read before deciding: the continuation's
    events come after it."""
    if not thread_id or selectors.owned_thread(owner_id, thread_id) is None:
        raise TargetNotFound(TargetKind.THREAD, thread_id or "(none)")
    run = _thread_run(thread_id)
    if run is None or run.status is not RunStatus.WAITING:
        # answered before (the run went on with the first answer): say so, rather than "not waiting"
        calls = [d.tool_call_id for d in decisions]
        taken = [] if run is None else mailbox.decided(run.run_id, calls, owner_id=owner_id)
        if taken:
            raise AlreadyDecided(taken[0])
        raise NotWaiting(thread_id)
    after = events.last_event_id(run.run_id)
    _decide(TargetKind.RUN, run.run_id, decisions, owner_id=owner_id)
    return Answered(run.run_id, thread_id, after)


def _thread_run(thread_id: str) -> RunRecord | None:
    """The thread's open run (one of its own), else its latest."""
    thread = store.load_thread(thread_id=thread_id)
    run = None
    if thread is not None and thread.open_run_id:
        run = store.load_run(run_id=thread.open_run_id)
    if run is None or run.thread_id != thread_id:
        run = store.latest_run(thread_id=thread_id)
    return run
