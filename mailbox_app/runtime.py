"""Runs one activation through the agent and keeps the run record in step (the reference's runtime side):
checkpoint Running, call the executor, checkpoint Done or Waiting, stream events."""

from __future__ import annotations

import json
import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any

from mailbox_app import events
from mailbox_app.agents import resolve_agent
from mailbox_app.executor import (
    MailboxRunOutcome,
    OutcomeKind,
    RunResult,
    classify_error,
)
from mailbox_app.ids import now_ms
from mailbox_app.payloads import ChatMessage, RunRecord, TerminationReason, ToolCallResume
from mailbox_app.ports import run_store
from mailbox_app.records import DispatchRecord, RunDispatchResult
from mailbox_app.requests import RunMode, RunOrigin, RunRequest
from mailbox_app.states import RunStatus

log = logging.getLogger(__name__)


@dataclass
class ActiveRun:
    """In-process state of a run this worker executes: cancellation, steering inbox, decisions."""

    thread_id: str
    run_id: str
    dispatch_id: str
    cancel_event: threading.Event = field(default_factory=threading.Event)
    steering: queue.Queue[ChatMessage] = field(default_factory=queue.Queue)
    decisions: queue.Queue[tuple[str, ToolCallResume]] = field(default_factory=queue.Queue)
    suspended: threading.Event = field(default_factory=threading.Event)
    lease_lost: threading.Event = field(default_factory=threading.Event)

    def on_live_command(self, command: dict[str, Any]) -> bool:
        """Accept a live command; returning True acknowledges it to the sender."""
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
                self.decisions.put((call_id, ToolCallResume.model_validate(resume)))
            return True
        self.cancel_event.set()  # unknown command: fail safe, like the reference
        return False


class _Context:
    """The `RunContext` handed to an executor."""

    def __init__(self, active: ActiveRun, request: RunRequest) -> None:
        self._active = active
        self._request = request
        self.thread_id = active.thread_id
        self.run_id = active.run_id
        self.dispatch_id = active.dispatch_id

    def thread_messages(self) -> list[ChatMessage]:
        return run_store().load_messages(thread_id=self.thread_id) or []

    def emit(self, event_type: str, data: dict[str, Any]) -> None:
        events.append_event(self.run_id, event_type, data)
        if event_type == "tool_call_done" and data.get("status") == "suspended":
            self._active.suspended.set()
        elif event_type == "tool_call_resumed":
            self._active.suspended.clear()

    def is_cancelled(self) -> bool:
        return self._active.cancel_event.is_set()

    def wait_cancelled(self, timeout_s: float) -> bool:
        return self._active.cancel_event.wait(timeout_s)

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
        from mailbox_app import service

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
        submitted = service.submit_background(
            RunRequest(
                thread_id=self.thread_id,
                messages=[wake],
                origin=RunOrigin.INTERNAL,
                run_mode=RunMode.INTERNAL_WAKE,
                continue_run_id=self.run_id,
            )
        )
        return submitted.dispatch_id


def run_activation(
    dispatch: DispatchRecord, request: RunRequest, instance_id: str, active: ActiveRun
) -> tuple[MailboxRunOutcome, RunDispatchResult]:
    """Execute one activation; returns the mailbox outcome and what to record on the dispatch."""
    store = run_store()
    run = store.load_run(run_id=dispatch.run_id)
    if run is None:  # reconstruct checked it; a concurrent delete is a permanent error
        outcome = MailboxRunOutcome(OutcomeKind.PERMANENT_ERROR, f"run {dispatch.run_id} vanished")
        return outcome, _result(dispatch, instance_id, "done", error=outcome.message)
    now = now_ms()
    running = run.model_copy(
        update={
            "status": RunStatus.RUNNING,
            "dispatch_id": dispatch.dispatch_id,
            "session_id": instance_id,
            "started_at": run.started_at or now,
            "waiting": None,
            "updated_at": now,
        }
    )
    store.checkpoint(thread_id=run.thread_id, messages=[], run=running, now=now)
    events.append_event(
        run.run_id,
        "run_start",
        {"run_id": run.run_id, "thread_id": run.thread_id, "dispatch_id": dispatch.dispatch_id},
    )
    context = _Context(active, request)
    result: RunResult | None = None
    error: BaseException | None = None
    try:
        result = resolve_agent(run.agent_id).run(request, context)
    except Exception as exc:  # noqa: BLE001 - the executor is user code; classify everything it raises
        error = exc
    outcome = classify_error(error)
    if active.lease_lost.is_set():
        # Another worker may own this dispatch now: leave the run as it is for the retry.
        return outcome, _result(dispatch, instance_id, "running")
    if error is not None and outcome.kind is not OutcomeKind.COMPLETED:
        failed = TerminationReason(type="error", value=outcome.message)
        _emit_finish(run.run_id, failed, None, dispatch)
        # the dispatch's trace says how this attempt ended; a nack that requeues clears it again
        return outcome, _result(dispatch, instance_id, "done", termination=failed, error=outcome.message)
    final = _finish_run(running, result, error, active)
    _emit_finish(run.run_id, final.termination_reason, final.final_output, dispatch, status=final.status)
    return outcome, _result(
        dispatch,
        instance_id,
        final.status.value,
        termination=final.termination_reason,
        response=final.final_output,
        error=None if error is None else str(error),
    )


def _finish_run(
    running: RunRecord, result: RunResult | None, error: BaseException | None, active: ActiveRun
) -> RunRecord:
    now = now_ms()
    update: dict[str, Any] = {"updated_at": now}
    messages: list[ChatMessage] = []
    if error is not None:
        termination = TerminationReason(type="error", value=str(error))
        update |= {"status": RunStatus.DONE, "error_payload": {"message": str(error)}, "finished_at": now}
    elif result is not None and result.waiting is not None and not active.cancel_event.is_set():
        termination = result.termination
        update |= {"status": RunStatus.WAITING, "waiting": result.waiting}
    else:
        assert result is not None
        termination = result.termination
        if active.cancel_event.is_set() and termination.type == "natural_end" and not result.final_output:
            termination = TerminationReason(type="cancelled")
        messages = [_stamp(m, running.run_id) for m in result.messages]
        update |= {"status": RunStatus.DONE, "final_output": result.final_output, "finished_at": now}
    update["termination_reason"] = termination
    if result is not None and result.state is not None:
        update["state"] = result.state
    update["steps"] = running.steps + 1
    final = running.model_copy(update=update)
    run_store().checkpoint(thread_id=running.thread_id, messages=messages, run=final, now=now)
    return final


def _stamp(message: ChatMessage, run_id: str) -> ChatMessage:
    return message.model_copy(update={"metadata": {**(message.metadata or {}), "run_id": run_id}})


def _emit_finish(
    run_id: str,
    termination: TerminationReason | None,
    final_output: str | None,
    dispatch: DispatchRecord,
    *,
    status: RunStatus = RunStatus.DONE,
) -> None:
    events.append_event(
        run_id,
        events.RUN_FINISH,
        {
            "run_id": run_id,
            "dispatch_id": dispatch.dispatch_id,
            "status": status.value,
            "termination": None if termination is None else termination.model_dump(mode="json"),
            "final_output": final_output,
        },
    )


def finished_run_result(dispatch: DispatchRecord, instance_id: str, run: RunRecord) -> RunDispatchResult:
    """The dispatch-side projection of a run that is already done (nothing is executed)."""
    payload = run.error_payload
    return _result(
        dispatch,
        instance_id,
        RunStatus.DONE.value,
        termination=run.termination_reason,
        response=run.final_output,
        error=str(payload.get("message")) if isinstance(payload, dict) and payload.get("message") else None,
    )


def _result(
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
