"""Typed JSON shared by the mailbox and the run store: messages, run records and their parts (§1.8–§1.12).

These live in mailbox_app so the queue depends on no other app; runs_app persists them."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mailbox_app.states import RunStatus

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class Role(StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


class Visibility(StrEnum):
    ALL = "all"
    INTERNAL = "internal"


class ToolCall(BaseModel):
    model_config = _FROZEN
    id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ChatMessage(BaseModel):
    """One message of a thread. `content` is a list of blocks; a plain string becomes one text block."""

    model_config = _FROZEN
    id: str | None = None
    role: Role
    content: list[dict[str, Any]] = Field(default_factory=list)
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    visibility: Visibility = Visibility.ALL
    metadata: dict[str, Any] | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_to_blocks(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [{"type": "text", "text": value}]
        return value

    @property
    def text(self) -> str:
        return "".join(str(b.get("text", "")) for b in self.content if b.get("type") == "text")

    @classmethod
    def user(cls, text: str, **extra: Any) -> ChatMessage:
        return cls(role=Role.USER, content=text, **extra)  # type: ignore[arg-type]

    @classmethod
    def assistant(cls, text: str, **extra: Any) -> ChatMessage:
        return cls(role=Role.ASSISTANT, content=text, **extra)  # type: ignore[arg-type]


class MessageRecord(BaseModel):
    """A message's place in the durable thread log (1-based `seq`)."""

    model_config = _FROZEN
    message_id: str
    thread_id: str
    seq: int
    message: ChatMessage
    produced_by_run_id: str | None = None
    step_index: int | None = None
    tool_call_id: str | None = None
    created_at: int


class MessageSeqRange(BaseModel):
    model_config = _FROZEN
    from_seq: int = Field(ge=1)
    to_seq: int = Field(ge=1)


class RunMessageInput(BaseModel):
    model_config = _FROZEN
    thread_id: str
    range: MessageSeqRange | None = None
    trigger_message_ids: list[str] = Field(default_factory=list)
    selected_message_ids: list[str] = Field(default_factory=list)


class ToolCallResume(BaseModel):
    """A human decision for a suspended tool call."""

    model_config = _FROZEN
    decision_id: str
    action: str  # "resume" | "cancel"
    result: Any = None
    reason: str | None = None
    updated_at: int = 0


class RunResumeDecision(BaseModel):
    model_config = _FROZEN
    call_id: str
    resume: ToolCallResume


class RunRequestSnapshot(BaseModel):
    model_config = _FROZEN
    origin: str = "user"
    sender_id: str | None = None
    input_message_ids: list[str] = Field(default_factory=list)
    input_message_count: int = 0
    request_extras: dict[str, Any] | None = None
    decisions: list[RunResumeDecision] = Field(default_factory=list)
    frontend_tools: list[dict[str, Any]] = Field(default_factory=list)
    parent_thread_id: str | None = None
    transport_request_id: str | None = None


class WaitingTicket(BaseModel):
    model_config = _FROZEN
    ticket_id: str
    tool_call_id: str
    tool_name: str
    arguments: Any = None
    resume_mode: str = "replay_tool_call"
    reason: str | None = None
    updated_at: int = 0


class RunWaitingState(BaseModel):
    model_config = _FROZEN
    reason: str
    ticket_ids: list[str] = Field(default_factory=list)
    tickets: list[WaitingTicket] = Field(default_factory=list)
    since_dispatch_id: str | None = None
    message: str | None = None


class TerminationReason(BaseModel):
    """`{"type": natural_end|behavior_requested|stopped|cancelled|blocked|suspended|error, "value": …}`."""

    model_config = _FROZEN
    type: str
    value: Any = None


class RunRecord(BaseModel):
    """The source of truth for one user intent (spec §1.8). Timestamps are Unix milliseconds."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    run_id: str
    thread_id: str
    agent_id: str = "default"
    parent_run_id: str | None = None
    request: RunRequestSnapshot | None = None
    input: RunMessageInput | None = None
    output: dict[str, Any] | None = None
    status: RunStatus = RunStatus.CREATED
    termination_reason: TerminationReason | None = None
    final_output: str | None = None
    error_payload: Any = None
    dispatch_id: str | None = None
    session_id: str | None = None
    transport_request_id: str | None = None
    waiting: RunWaitingState | None = None
    outcome: dict[str, Any] | None = None
    created_at: int = 0
    started_at: int | None = None
    finished_at: int | None = None
    updated_at: int = 0
    steps: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    state: dict[str, Any] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    timeout_ms: int | None = None  # each activation's time budget (None: unbounded)
    deadline_at: int | None = None  # the current activation's deadline, set when it starts

    def waiting_reason(self) -> str | None:
        return self.waiting.reason if self.status is RunStatus.WAITING and self.waiting else None

    @property
    def is_resumable_waiting(self) -> bool:
        return self.waiting_reason() is not None

    @property
    def is_background_task_waiting(self) -> bool:
        return self.waiting_reason() == "background_tasks"


class ThreadRecord(BaseModel):
    model_config = ConfigDict(frozen=True)
    id: str
    owner_id: int | None = None
    resource_id: str | None = None
    parent_thread_id: str | None = None
    title: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    open_run_id: str | None = None
    active_run_id: str | None = None
    latest_run_id: str | None = None
    message_count: int = 0
    created_at: int = 0
    updated_at: int = 0


class RunPage(BaseModel):
    model_config = ConfigDict(frozen=True)
    items: list[RunRecord]
    total: int
    has_more: bool
