"""A front end's submit that answers the waiting run's tool calls instead of saying something new:
each answer is a decision for that run (resume with a payload, or cancel), and the response streams
the run's continuation in the front end's protocol, from the event after its waiting finish.

  ag-ui   a `RunAgentInput` with `resume: [{interruptId, status: resolved|cancelled, payload}]`
  ai-sdk  `useChat`'s request after `addToolApprovalResponse`: the last (assistant) message's tool
          parts in state `approval-responded` (`approval.approved` -> resume with
          `{"approved": true, "reason"?}`, else cancel)

A body that also carries a new user message is an ordinary submit (which interrupts the waiting run).
This module only reads the body; `runs_app.services.control.answer_waiting_run` delivers the decisions and the
view streams the continuation."""

from __future__ import annotations

from typing import Any

from runs_app.api.inputs import InputError
from runs_app.api.protocols import ag_ui, ai_sdk
from runs_app.api.protocols.framing import new_user_messages
from runs_app.services.control import Decision

ACTIONS = {"resolved": "resume", "cancelled": "cancel"}
FIELD = "resume"
APPROVAL_FIELD = "messages"


def requested_decisions(protocol: str, body: Any) -> tuple[str, list[Decision]] | None:
    """(the thread the body names, its decisions) when the submit answers the waiting run's tool calls;
    None when it is an ordinary submit. A malformed answer is a 400 naming its field."""
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
    return str(named_thread or ""), decisions


def answers_field(protocol: str) -> str:
    """The body field that carries `protocol`'s answers (named by a 404 for an unknown tool call)."""
    return FIELD if protocol == ag_ui.NAME else APPROVAL_FIELD


def _approval_decisions(messages: Any) -> list[Decision]:
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
            decisions.append(Decision(call_id, "resume", payload))
        else:
            decisions.append(Decision(call_id, "cancel", {"reason": approval.get("reason")}))
    return decisions


def _resume_decisions(raw: Any) -> list[Decision]:
    if not isinstance(raw, list):
        raise InputError("resume must be a list of {interruptId, status, payload}", field=FIELD)
    decisions = []
    for entry in raw:
        if not isinstance(entry, dict) or not isinstance(entry.get("interruptId"), str):
            raise InputError("each resume entry needs an interruptId", field=FIELD)
        action = ACTIONS.get(str(entry.get("status")))
        if action is None:
            raise InputError("a resume entry's status must be resolved or cancelled", field=FIELD)
        decisions.append(Decision(entry["interruptId"], action, entry.get("payload")))
    return decisions
