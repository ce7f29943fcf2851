"""One activation inside a worker (the reference's runtime side): the in-process state of a running run,
the `RunContext` the agent gets, the agent call, and the run record it leaves (computed, not written:
the attempt's fenced finish transaction writes it)."""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Concatenate, ParamSpec, TypeVar

from mailbox_app.agents.base import Journal, MailboxRunOutcome, RunResult, classify_error
from mailbox_app.agents.registry import resolve_agent
from mailbox_app.contract.history import RunTranscript
from mailbox_app.contract.ids import now_ms
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchRecord, RunDispatchResult
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import RunMode, RunOrigin, RunRequest
from mailbox_app.contract.storage import RunRecord, TerminationReason
from mailbox_app.contract.suspension import ToolCallResume
from mailbox_app.contract.usage import AttemptUsage, Usage
from mailbox_app.observability import tracing
from mailbox_app.realtime import events
from mailbox_app.realtime.locks import lock_key
from mailbox_app.services import mailbox
from mailbox_app.services.timeouts import TIMED_OUT
from mailbox_app.store.ports import run_store
from mailbox_app.store.runs_tables import steps

log = logging.getLogger(__name__)
DECISION_RECEIVED = "decision_received"  # a live decision reached the run (the agent has yet to take it)
P = ParamSpec("P")
T = TypeVar("T")


@dataclass
class UsageMeter:
    """What one attempt used, read at its finish: the usage on its `RunResult` plus the usage of the steps
    it executed (its journal counts them), and the steps of earlier attempts that ended without a finish."""

    journal: steps.StepJournal | None = None

    def attempt(self, result: RunResult | None) -> Usage:
        executed = self.journal.executed_usage() if self.journal is not None else None
        return Usage.total((None if result is None else result.usage, executed))

    def unfinished(self, known: set[tuple[str, int]]) -> list[AttemptUsage]:
        return [] if self.journal is None else self.journal.unfinished_attempts(known)


@dataclass
class ActiveRun:
    """In-process state of a run this worker executes: cancellation, steering inbox, decisions.

    The inbox closes before the attempt's finish transaction (`close_inbox`): from then on a live
    command is answered "not delivered", so its sender takes the durable path; what was accepted but
    not taken by the agent is handed back by `close_inbox` and queued durably by the finish."""

    thread_id: str
    run_id: str
    dispatch_id: str
    claim_token: str = ""
    cancel_event: threading.Event = field(default_factory=threading.Event)
    steering: queue.Queue[ChatMessage] = field(default_factory=queue.Queue)
    decisions: queue.Queue[tuple[str, ToolCallResume]] = field(default_factory=queue.Queue)
    suspended: threading.Event = field(default_factory=threading.Event)
    lease_lost: threading.Event = field(default_factory=threading.Event)
    deadline_at: int | None = None  # the activation's deadline (Unix ms, the run's `deadline_at`)
    timed_out: threading.Event = field(default_factory=threading.Event)
    # the worker is shutting down: the run is cancelled and its claim given back (execution.py)
    handed_back: threading.Event = field(default_factory=threading.Event)
    # what the run has emitted so far: closes its open tool calls if it ends early (history.py)
    transcript: RunTranscript = field(default_factory=RunTranscript)
    # what the attempt used (tokens, cost), for its finish: the run's usage and its token budgets
    usage: UsageMeter = field(default_factory=UsageMeter)
    _inbox_lock: threading.Lock = field(default_factory=threading.Lock)
    _inbox_open: bool = True

    def check_deadline(self) -> bool:
        """Whether the run is cancelled, cancelling it first once its deadline has passed (the agent sees
        a timeout as a cancellation; the finish records termination `timeout`)."""
        if self.deadline_at is not None and not self.timed_out.is_set() and now_ms() >= self.deadline_at:
            self.timed_out.set()
            self.cancel_event.set()
        return self.cancel_event.is_set()

    def hand_back(self) -> None:
        """Ask the run to stop because this worker is shutting down: the agent sees a cancellation, and
        the attempt gives its claim back instead of ending the run (`execution._run_with_lease`)."""
        self.handed_back.set()
        self.cancel_event.set()

    def on_live_command(self, command: dict[str, Any]) -> bool:
        """Accept a live command; returning True acknowledges it to the sender (the run will read it)."""
        with self._inbox_lock:
            if not self._inbox_open:
                return False
            kind = command.get("kind")
            if kind == "cancel":
                self.cancel_event.set()
                return True
            if kind == "messages":
                for raw in command.get("messages", []):
                    self.steering.put(ChatMessage.model_validate(raw))
                return True
            if kind == "decision":
                for call_id, resume in command.get("decisions", []):
                    decision = ToolCallResume.model_validate(resume)
                    self.decisions.put((call_id, decision))
                    self._announce_decision(call_id, decision)
                return True
        self.cancel_event.set()  # unknown command: fail safe, like the reference
        return False

    def _announce_decision(self, call_id: str, decision: ToolCallResume) -> None:
        """`decision_received` on the run's stream before the sender hears "delivered": from then on a
        reader (a join right after the decision, runs_app/api/run_wait.py) sees that the approval
        request it answered is no longer open, before the agent itself takes the decision."""
        try:
            events.append_fenced(
                self.run_id,
                lock_key(self.thread_id),
                self.claim_token,
                DECISION_RECEIVED,
                {"tool_call_id": call_id, "action": decision.action},
            )
        except Exception:  # the stream is advisory; the decision itself is taken
            log.warning("run %s: decision_received not appended", self.run_id, exc_info=True)

    def close_inbox(self) -> tuple[list[ChatMessage], list[tuple[str, ToolCallResume]]]:
        """Stop accepting commands; returns the steering messages and decisions accepted but not taken."""
        with self._inbox_lock:
            self._inbox_open = False
        return _drain(self.steering), _drain(self.decisions)


def _drain(inbox: queue.Queue[Any]) -> list[Any]:
    items: list[Any] = []
    while True:
        try:
            items.append(inbox.get_nowait())
        except queue.Empty:
            return items


class AttemptContext:
    """The `RunContext` handed to an executor."""

    def __init__(self, active: ActiveRun, request: RunRequest) -> None:
        self._active = active
        self._request = request
        self.thread_id = active.thread_id
        self.run_id = active.run_id
        self.dispatch_id = active.dispatch_id
        self._journal = steps.StepJournal(  # reads nothing until the agent's first step
            run_id=active.run_id,
            dispatch_id=active.dispatch_id,
            claim_token=active.claim_token,
            session_id=request.session_id or "",
            emit=self.emit,
            lease_lost=active.lease_lost,
        )
        active.usage.journal = self._journal

    def step(self, key: str, fn: Callable[Concatenate[str, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        with tracing.span(tracing.STEP, {"awaken.step_key": key, "awaken.run_id": self.run_id}):
            return self._journal.step(key, fn, *args, **kwargs)

    def journal(self) -> Journal:
        return self._journal.journal()

    def thread_messages(self) -> list[ChatMessage]:
        return run_store().load_messages(thread_id=self.thread_id) or []

    def emit(self, event_type: str, data: dict[str, Any]) -> None:
        """Append to the run's stream while this attempt still holds the thread (see events.py)."""
        self._active.transcript.record(event_type, data)
        if self._active.lease_lost.is_set():
            return
        events.append_fenced(
            self.run_id, lock_key(self.thread_id), self._active.claim_token, event_type, data
        )
        if event_type == "tool_call_done" and data.get("status") == "suspended":
            self._active.suspended.set()
        elif event_type == "tool_call_resumed":
            self._active.suspended.clear()

    def is_cancelled(self) -> bool:
        return self._active.check_deadline()

    def wait_cancelled(self, timeout_s: float) -> bool:
        deadline = self._active.deadline_at
        if deadline is not None:  # wake at the deadline, not after it
            timeout_s = min(timeout_s, max(deadline - now_ms(), 0) / 1000)
        return self._active.cancel_event.wait(timeout_s) or self._active.check_deadline()

    def take_steering(self) -> list[ChatMessage]:
        taken: list[ChatMessage] = []
        while True:
            try:
                message = self._active.steering.get_nowait()
            except queue.Empty:
                return taken
            self.emit("steering_received", {"message_id": message.id, "text": message.text})
            taken.append(message)

    def wait_decision(self, tool_call_id: str, timeout_s: float) -> ToolCallResume | None:
        deadline = now_ms() + int(timeout_s * 1000)
        while (left := deadline - now_ms()) > 0 and not self.is_cancelled():
            try:
                call_id, resume = self._active.decisions.get(timeout=min(left / 1000, 0.05))
            except queue.Empty:
                continue
            if call_id == tool_call_id:
                return resume
        return None

    def set_suspended(self, suspended: bool) -> None:
        if suspended:
            self._active.suspended.set()
        else:
            self._active.suspended.clear()

    def notify_background_task_done(self, *, task_id: str, result: dict[str, Any]) -> str:
        wake = ChatMessage.model_validate(
            {
                "role": "user",
                "content": (
                    f'<background-task-event kind="completed" task_id="{task_id}">'
                    f"{json.dumps(result)}</background-task-event>"
                ),
                "visibility": "internal",
            }
        )
        submitted = mailbox.submit_background(
            RunRequest(
                thread_id=self.thread_id,
                messages=[wake],
                origin=RunOrigin.INTERNAL,
                run_mode=RunMode.INTERNAL_WAKE,
                continue_run_id=self.run_id,
            )
        )
        return submitted.dispatch_id


def call_agent(
    run: RunRecord, request: RunRequest, active: ActiveRun
) -> tuple[MailboxRunOutcome, RunResult | None, BaseException | None]:
    """Run the executor; everything it raises is classified onto the mailbox outcome."""
    context = AttemptContext(active, request)
    ids = {"awaken.agent_id": run.agent_id, "awaken.run_id": run.run_id}
    with tracing.span(tracing.AGENT, ids) as current:
        try:
            executor = resolve_agent(run.agent_id)
            outcome, result, error = classify_error(None), executor.run(request, context), None
        except Exception as exc:  # noqa: BLE001 - the executor is user code; classify everything it raises
            outcome, result, error = classify_error(exc), None, exc
        tracing.set_attributes(current, {"awaken.outcome": outcome.kind.value})
    if active.timed_out.is_set():
        # Cancelled by its deadline: the run ends `timeout` whatever the agent answered (its output and
        # messages are kept; an error raised on the way out is not retried, a suspension is not kept).
        ended = replace(result or RunResult(), termination=TIMED_OUT, waiting=None)
        return classify_error(None), ended, None
    return outcome, result, error


@dataclass(frozen=True, slots=True)
class FinalRun:
    """What a completed activation leaves: the run's final record and the messages it produced."""

    run: RunRecord
    messages: list[ChatMessage]


def final_run(
    running: RunRecord,
    result: RunResult | None,
    error: BaseException | None,
    cancelled: bool,
    now: int,
    *,
    usage: list[AttemptUsage] | None = None,
) -> FinalRun:
    """The run after an activation whose outcome completes the delivery (pure: nothing is written).
    `usage`: the attempts to add to the run's usage (this one, and earlier ones that ended without a
    finish); the run's tokens and cost are the sums over all its listed attempts."""
    update: dict[str, Any] = {"updated_at": now}
    if usage:
        update |= usage_update(running, usage)
    messages: list[ChatMessage] = []
    if error is not None:
        termination = TerminationReason(type="error", value=str(error))
        update |= {"status": RunStatus.DONE, "error_payload": {"message": str(error)}, "finished_at": now}
    elif result is not None and result.waiting is not None and not cancelled:
        termination = result.termination
        update |= {"status": RunStatus.WAITING, "waiting": result.waiting}
    else:
        assert result is not None
        termination = result.termination
        if cancelled and termination.type == "natural_end" and not result.final_output:
            termination = TerminationReason(type="cancelled")
        messages = [_stamp(m, running.run_id) for m in result.messages]
        update |= {"status": RunStatus.DONE, "final_output": result.final_output, "finished_at": now}
    update["termination_reason"] = termination
    if result is not None and result.state is not None:
        update["state"] = result.state
    update["steps"] = running.steps + 1
    return FinalRun(running.model_copy(update=update), messages)


def usage_update(running: RunRecord, added: list[AttemptUsage]) -> dict[str, Any]:
    """The run's usage fields with `added` attempts listed: the tokens and the cost summed over all."""
    attempts = [*running.usage_attempts, *added]
    total = Usage.total(a.usage for a in attempts)
    return {
        "usage_attempts": attempts,
        "input_tokens": total.input_tokens,
        "output_tokens": total.output_tokens,
        "cost": total.cost,
    }


def _stamp(message: ChatMessage, run_id: str) -> ChatMessage:
    return message.model_copy(update={"metadata": {**(message.metadata or {}), "run_id": run_id}})


def finished_run_result(dispatch: DispatchRecord, instance_id: str, run: RunRecord) -> RunDispatchResult:
    """The dispatch-side projection of a run that is already done (nothing is executed)."""
    payload = run.error_payload
    return dispatch_result(
        dispatch,
        instance_id,
        RunStatus.DONE.value,
        termination=run.termination_reason,
        response=run.final_output,
        error=str(payload.get("message")) if isinstance(payload, dict) and payload.get("message") else None,
    )


def dispatch_result(
    dispatch: DispatchRecord,
    instance_id: str,
    status: str,
    *,
    termination: TerminationReason | None = None,
    response: str | None = None,
    error: str | None = None,
) -> RunDispatchResult:
    return RunDispatchResult(
        run_id=dispatch.run_id,
        dispatch_instance_id=instance_id,
        status=status,
        termination=None if termination is None else termination.model_dump(mode="json"),
        response=response,
        error=error,
    )
