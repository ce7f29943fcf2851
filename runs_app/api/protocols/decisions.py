"""A front end's submit that answers the waiting run's tool calls instead of saying something new:
each answer is a decision for that run (resume with a payload, or cancel), and the response streams
the run's continuation in the front end's protocol, from the event after its waiting finish.

  ag-ui   a `RunAgentInput` with `resume: [{interruptId, status: resolved|cancelled, payload}]`
  ai-sdk  `useChat`'s request after `addToolApprovalResponse`: the last (assistant) message's tool
          parts in state `approval-responded` (`approval.approved` -> resume with
          `{"approved": true, "reason"?}`, else cancel)

A body that also carries a new user message is an ordinary submit (which interrupts the waiting run)."""

from __future__ import annotations

from typing import Any

from django.http import StreamingHttpResponse
from rest_framework.request import Request

from mailbox_app import events, service
from mailbox_app.contract.ids import now_ms, uuid7
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.storage import RunRecord
from mailbox_app.contract.suspension import ToolCallResume
from runs_app import selectors, store
from runs_app.api.errors import ApiError, not_found
from runs_app.api.inputs import InputError
from runs_app.api.protocols import ag_ui, ai_sdk
from runs_app.api.protocols.framing import START, new_user_messages
from runs_app.api.protocols.selection import requested_protocol
from runs_app.api.sse import stream_response

ACTIONS = {"resolved": "resume", "cancelled": "cancel"}
FIELD = "resume"
APPROVAL_FIELD = "messages"


def answer_decisions(
    request: Request, thread_id: str | None, *, owner_id: int
) -> StreamingHttpResponse | None:
    """The continuation's stream when the submit answers the waiting run's tool calls; None otherwise."""
    protocol, body = requested_protocol(request), request.data
    if protocol not in (ag_ui.NAME, ai_sdk.NAME) or not isinstance(body, dict):
        return None
    messages = body.get("messages")
    if isinstance(messages, list) and new_user_messages(messages, lambda m: ""):
        return None  # a new message with the answers: an ordinary submit (it interrupts the waiting run)
    if protocol == ag_ui.NAME:
        decisions = _resume_decisions(body[FIELD]) if body.get(FIELD) else []
        named_thread = body.get("threadId")
    else:
        decisions = _approval_decisions(messages)
        named_thread = body.get("id")
    if not decisions:
        return None
    thread = thread_id or str(named_thread or "")
    if not thread or selectors.owned_thread(owner_id, thread) is None:
        raise not_found("thread", thread or "(none)")
    run = _waiting_run(thread)
    after = _last_event_id(run.run_id)  # read before deciding: the continuation comes after it
    for call_id, resume in decisions:
        if not service.send_decision(run.run_id, call_id, resume, owner_id=owner_id):
            raise ApiError(
                f"no suspended tool call {call_id} on run {run.run_id}",
                code="decision_target_not_found",
                status_code=404,
                field=FIELD if protocol == ag_ui.NAME else APPROVAL_FIELD,
            )
    headers = {"X-Run-Id": run.run_id, "X-Thread-Id": thread}
    return stream_response(run.run_id, after=after, protocol=protocol, thread_id=thread, headers=headers)


def _decision(action: str, payload: Any) -> ToolCallResume:
    return ToolCallResume(decision_id=uuid7(), action=action, result=payload, updated_at=now_ms())


def _approval_decisions(messages: Any) -> list[tuple[str, ToolCallResume]]:
    last = messages[-1] if isinstance(messages, list) and messages else None
    if (
        not isinstance(last, dict)
        or last.get("role") != "assistant"
        or not isinstance(last.get("parts"), list)
    ):
        return []
    decisions = []
    for part in last["parts"]:
        if not isinstance(part, dict) or part.get("state") != "approval-responded":
            continue
        raw_approval = part.get("approval")
        approval: dict[str, Any] = raw_approval if isinstance(raw_approval, dict) else {}
        call_id = part.get("toolCallId") or approval.get("id")
        if not isinstance(call_id, str) or not call_id:
            raise InputError("an approval-responded tool part needs its toolCallId", field=APPROVAL_FIELD)
        if approval.get("approved") is True:
            payload = {"approved": True} | ({"reason": approval["reason"]} if approval.get("reason") else {})
            decisions.append((call_id, _decision("resume", payload)))
        else:
            decisions.append((call_id, _decision("cancel", {"reason": approval.get("reason")})))
    return decisions


def _resume_decisions(raw: Any) -> list[tuple[str, ToolCallResume]]:
    if not isinstance(raw, list):
        raise InputError("resume must be a list of {interruptId, status, payload}", field=FIELD)
    decisions = []
    for entry in raw:
        if not isinstance(entry, dict) or not isinstance(entry.get("interruptId"), str):
            raise InputError("each resume entry needs an interruptId", field=FIELD)
        action = ACTIONS.get(str(entry.get("status")))
        if action is None:
            raise InputError("a resume entry's status must be resolved or cancelled", field=FIELD)
        decisions.append((entry["interruptId"], _decision(action, entry.get("payload"))))
    return decisions


def _waiting_run(thread_id: str) -> RunRecord:
    thread = store.load_thread(thread_id=thread_id)
    run = None
    if thread is not None and thread.open_run_id:
        run = store.load_run(run_id=thread.open_run_id)
    run = run or store.latest_run(thread_id=thread_id)
    if run is None or run.status is not RunStatus.WAITING:
        raise ApiError(
            f"no run waiting for a decision on thread {thread_id}", code="not_waiting", status_code=409
        )
    return run


def _last_event_id(run_id: str) -> str:
    return events.last_event_id(run_id) or START
