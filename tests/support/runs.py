"""Runs and dispatches written the way the submit paths write them, without ringing any worker."""

from __future__ import annotations

from typing import Any

from mailbox_app import store
from mailbox_app.contract.ids import uuid7
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchRecord
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import RunRequest, validate_run_inputs
from mailbox_app.contract.storage import RunRecord
from mailbox_app.contract.suspension import RunWaitingState, ToolCallResume
from mailbox_app.services.preparation import build_dispatch, prepare_run_for_dispatch
from runs_app import store as run_store

FRONTEND_TOOL = {"id": "ft1", "name": "FT1", "description": "desc"}


def fresh_thread_id(prefix: str) -> str:
    return f"{prefix}-{uuid7()[-12:]}"


def user_request(thread_id: str, text: str, agent_id: str = "counting", **extra: Any) -> RunRequest:
    return RunRequest(thread_id=thread_id, messages=[ChatMessage.user(text)], agent_id=agent_id, **extra)


def resume_decision(decision_id: str = "d-1") -> ToolCallResume:
    return ToolCallResume(decision_id=decision_id, action="resume", result={"approved": True})


def prepare(thread_id: str, text: str, **extra: Any) -> tuple[RunRequest, str]:
    """validate_run_inputs + prepare_run_for_dispatch, the way every submit path starts."""
    request = RunRequest(thread_id=thread_id, messages=[ChatMessage.user(text)], **extra)
    tid, messages = validate_run_inputs(request.thread_id, request.messages, allow_empty=False)
    return prepare_run_for_dispatch(request, tid, messages)


def enqueue_prepared(thread_id: str, text: str, agent_id: str = "counting", **changes: Any) -> DispatchRecord:
    """Prepare the run and enqueue its dispatch without ringing any worker (a crash before the doorbell)."""
    request = user_request(thread_id, text, agent_id)
    tid, messages = validate_run_inputs(request.thread_id, request.messages, allow_empty=False)
    request, _ = prepare_run_for_dispatch(request, tid, messages)
    dispatch = build_dispatch(request, tid)
    return store.enqueue(dispatch.replace(**changes) if changes else dispatch)


def seed_run(
    run_id: str,
    thread_id: str,
    status: RunStatus,
    *,
    waiting_reason: str | None = None,
    agent_id: str = "agent",
    updated_at: int = 1,
    messages: tuple[ChatMessage, ...] = (),
    **fields: Any,
) -> RunRecord:
    """A run checkpointed straight into the store in the given status."""
    run = RunRecord(
        run_id=run_id,
        thread_id=thread_id,
        agent_id=agent_id,
        status=status,
        waiting=None if waiting_reason is None else RunWaitingState(reason=waiting_reason),
        created_at=1,
        updated_at=updated_at,
        steps=2,
        **fields,
    )
    run_store.checkpoint(thread_id=thread_id, messages=list(messages), run=run, now=updated_at)
    return run


def thread_texts(thread_id: str) -> list[str]:
    return [m.text for m in run_store.load_messages(thread_id=thread_id) or []]
