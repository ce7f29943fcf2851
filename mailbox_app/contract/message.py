"""Messages of a thread's log (spec §1.9–§1.10): roles, visibility, tool calls, the stored record."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

FROZEN_MODEL = ConfigDict(frozen=True, extra="forbid")


class Role(StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


class Visibility(StrEnum):
    ALL = "all"
    INTERNAL = "internal"


class ToolCall(BaseModel):
    model_config = FROZEN_MODEL
    id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ChatMessage(BaseModel):
    """One message of a thread. `content` is a list of blocks; a plain string becomes one text block."""

    model_config = FROZEN_MODEL
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

    model_config = FROZEN_MODEL
    message_id: str
    thread_id: str
    seq: int
    message: ChatMessage
    produced_by_run_id: str | None = None
    step_index: int | None = None
    tool_call_id: str | None = None
    created_at: int


class MessageSeqRange(BaseModel):
    model_config = FROZEN_MODEL
    from_seq: int = Field(ge=1)
    to_seq: int = Field(ge=1)


class RunMessageInput(BaseModel):
    model_config = FROZEN_MODEL
    thread_id: str
    range: MessageSeqRange | None = None
    trigger_message_ids: list[str] = Field(default_factory=list)
    selected_message_ids: list[str] = Field(default_factory=list)
