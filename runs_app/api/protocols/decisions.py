"""An AG-UI `RunAgentInput` that answers interrupts (`resume: [{interruptId, status, payload}]`, no new
user message) on a streaming submit: each entry is a decision for the waiting run's tool call
(`resolved` -> resume with the payload, `cancelled` -> cancel), and the answer streams that run's
continuation in AG-UI, from the event after its waiting finish."""

from __future__ import annotations

from typing import Any

from django.http import StreamingHttpResponse
from rest_framework.request import Request

from mailbox_app import events, service
from mailbox_app.ids import now_ms, uuid7
from mailbox_app.payloads import RunRecord, ToolCallResume
from mailbox_app.redis_client import get_redis
from mailbox_app.states import RunStatus
from runs_app import selectors, store
from runs_app.api.errors import ApiError, not_found
from runs_app.api.inputs import InputError
from runs_app.api.protocols import ag_ui
from runs_app.api.protocols.framing import START, new_user_messages
from runs_app.api.protocols.selection import requested_protocol
from runs_app.api.sse import stream_response

ACTIONS = {"resolved": "resume", "cancelled": "cancel"}
FIELD = "resume"


def answer_interrupts(
    request: Request, thread_id: str | None, *, owner_id: int
) -> StreamingHttpResponse | None:
    """The continuation's stream when the request is an AG-UI resume; None for any other submit."""
    body = request.data
    if requested_protocol(request) != ag_ui.NAME or not isinstance(body, dict) or not body.get(FIELD):
        return None
    messages = body.get("messages")
    if isinstance(messages, list) and new_user_messages(messages, lambda m: ""):
        return None  # a new message with the answers: an ordinary submit (it interrupts the waiting run)
    decisions = _decisions(body[FIELD])
    thread = thread_id or str(body.get("threadId") or "")
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
                field=FIELD,
            )
    headers = {"X-Run-Id": run.run_id, "X-Thread-Id": thread}
    return stream_response(run.run_id, after=after, protocol=ag_ui.NAME, thread_id=thread, headers=headers)


def _decisions(raw: Any) -> list[tuple[str, ToolCallResume]]:
    if not isinstance(raw, list):
        raise InputError("resume must be a list of {interruptId, status, payload}", field=FIELD)
    decisions = []
    for entry in raw:
        if not isinstance(entry, dict) or not isinstance(entry.get("interruptId"), str):
            raise InputError("each resume entry needs an interruptId", field=FIELD)
        action = ACTIONS.get(str(entry.get("status")))
        if action is None:
            raise InputError("a resume entry's status must be resolved or cancelled", field=FIELD)
        resume = ToolCallResume(
            decision_id=uuid7(), action=action, result=entry.get("payload"), updated_at=now_ms()
        )
        decisions.append((entry["interruptId"], resume))
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
    entries: Any = get_redis().xrevrange(events.stream_key(run_id), count=1)
    if not entries:
        return START
    event_id = entries[0][0]
    return event_id.decode() if isinstance(event_id, bytes) else str(event_id)
