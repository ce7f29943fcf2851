"""Suspended tool calls and the decisions that resume them (spec §1.11–§1.12)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from mailbox_app.contract.message import FROZEN_MODEL


class ToolCallResume(BaseModel):
    """A human decision for a suspended tool call."""

    model_config = FROZEN_MODEL
    decision_id: str
    action: str  # "resume" | "cancel"
    result: Any = None
    reason: str | None = None
    updated_at: int = 0


class RunResumeDecision(BaseModel):
    model_config = FROZEN_MODEL
    call_id: str
    resume: ToolCallResume


class WaitingTicket(BaseModel):
    model_config = FROZEN_MODEL
    ticket_id: str
    tool_call_id: str
    tool_name: str
    arguments: Any = None
    resume_mode: str = "replay_tool_call"
    reason: str | None = None
    updated_at: int = 0


class RunWaitingState(BaseModel):
    model_config = FROZEN_MODEL
    reason: str
    ticket_ids: list[str] = Field(default_factory=list)
    tickets: list[WaitingTicket] = Field(default_factory=list)
    since_dispatch_id: str | None = None
    message: str | None = None
