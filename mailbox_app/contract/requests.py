"""What the executor receives (`RunRequest`), the extras stored on a run snapshot, and input validation."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mailbox_app.contract.ids import uuid7
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.storage import InvalidInput, RunRequestSnapshot
from mailbox_app.contract.suspension import RunResumeDecision, ToolCallResume


class RunMode(StrEnum):
    FOREGROUND = "foreground"
    SCHEDULED = "scheduled"
    RESUME = "resume"
    INTERNAL_WAKE = "internal_wake"


class AdapterKind(StrEnum):
    INTERNAL = "internal"
    ACP = "acp"
    AI_SDK = "ai_sdk"
    AG_UI = "ag_ui"
    A2A = "a2a"


class RunOrigin(StrEnum):
    USER = "user"
    A2A = "a2a"
    INTERNAL = "internal"


class RunRequest(BaseModel):
    """One activation of a run, as the mailbox hands it to the executor (spec §1.12)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    thread_id: str
    messages: list[ChatMessage] = Field(default_factory=list)
    messages_already_persisted: bool = False
    agent_id: str | None = None
    overrides: dict[str, Any] | None = None
    decisions: list[tuple[str, ToolCallResume]] = Field(default_factory=list)
    frontend_tools: list[dict[str, Any]] = Field(default_factory=list)
    origin: RunOrigin = RunOrigin.USER
    run_mode: RunMode = RunMode.FOREGROUND
    adapter: AdapterKind = AdapterKind.INTERNAL
    parent_run_id: str | None = None
    parent_thread_id: str | None = None
    continue_run_id: str | None = None
    run_id_hint: str | None = None
    dispatch_id_hint: str | None = None
    dispatch_id: str | None = None
    session_id: str | None = None
    transport_request_id: str | None = None
    dedupe_key: str | None = None
    # the dispatch's priority (0-255, lower first; the reference's field); None: the default, 128
    priority: int | None = Field(default=None, ge=0, le=255)
    # Kept on a new run (not on a run the request continues): the submitter's metadata and the time
    # budget of each activation (None: AWAKEN_RUN_TIMEOUT_MS); `start_after_ms` delays the dispatch.
    metadata: dict[str, Any] | None = None
    timeout_ms: int | None = Field(default=None, gt=0)
    start_after_ms: int = Field(default=0, ge=0)
    # the submit's trace context (W3C headers), kept with the dispatch's request so every attempt links
    # to it (mailbox_app/observability/tracing.py); None while tracing is off
    trace_context: dict[str, str] | None = None

    def with_(self, **changes: Any) -> RunRequest:
        return self.model_copy(update=changes)


class RunRequestExtras(BaseModel):
    """The opaque JSON kept in `RunRequestSnapshot.request_extras` (spec §1.12)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    overrides: dict[str, Any] | None = None
    decisions: list[tuple[str, ToolCallResume]] | None = None
    frontend_tools: list[dict[str, Any]] | None = None
    continue_run_id: str | None = None
    run_id_hint: str | None = None
    dispatch_id_hint: str | None = None
    parent_thread_id: str | None = None
    transport_request_id: str | None = None
    run_mode: RunMode = RunMode.FOREGROUND
    adapter: AdapterKind = AdapterKind.INTERNAL
    trace_context: dict[str, str] | None = None

    @classmethod
    def from_request(cls, request: RunRequest) -> RunRequestExtras:
        return cls(
            trace_context=request.trace_context or None,
            overrides=request.overrides or None,
            decisions=request.decisions or None,
            frontend_tools=request.frontend_tools or None,
            continue_run_id=request.continue_run_id,
            run_id_hint=request.run_id_hint,
            dispatch_id_hint=request.dispatch_id_hint,
            parent_thread_id=request.parent_thread_id,
            transport_request_id=request.transport_request_id,
            run_mode=request.run_mode,
            adapter=request.adapter,
        )

    def to_value(self) -> dict[str, Any] | None:
        """JSON with empty fields omitted; None iff everything is empty and modes are the defaults."""
        value = self.model_dump(mode="json", exclude_none=True)
        if value == {"run_mode": RunMode.FOREGROUND.value, "adapter": AdapterKind.INTERNAL.value}:
            return None
        return value

    @classmethod
    def from_value(cls, value: Any) -> RunRequestExtras:
        try:
            return cls.model_validate(value)
        except ValidationError as exc:
            raise InvalidInput(f"corrupt request_extras: {exc.errors()[0]['msg']}") from None

    def apply_to(self, request: RunRequest) -> RunRequest:
        changes: dict[str, Any] = {"run_mode": self.run_mode, "adapter": self.adapter}
        for name in (
            "overrides",
            "decisions",
            "frontend_tools",
            "continue_run_id",
            "run_id_hint",
            "dispatch_id_hint",
            "parent_thread_id",
            "transport_request_id",
            "trace_context",
        ):
            value = getattr(self, name)
            if value:
                changes[name] = value
        return request.with_(**changes)


def validate_run_inputs(
    thread_id: str | None, messages: list[ChatMessage], *, allow_empty: bool
) -> tuple[str, list[ChatMessage]]:
    """Messages are required unless the request carries decisions; a blank thread id gets a UUID v7."""
    if not messages and not allow_empty:
        raise InvalidInput("at least one message is required")
    trimmed = (thread_id or "").strip()
    return (trimmed or uuid7()), messages


def normalize_message_ids(messages: list[ChatMessage]) -> list[ChatMessage]:
    return [m if m.id else m.model_copy(update={"id": uuid7()}) for m in messages]


def normalize_mailbox_run_mode(request: RunRequest, *, background: bool) -> RunRequest:
    """Only foreground requests are re-labelled: resume / internal_wake / scheduled (spec §4.1)."""
    if request.run_mode is not RunMode.FOREGROUND:
        return request
    if request.decisions or request.continue_run_id:
        mode = RunMode.RESUME
    elif request.origin is RunOrigin.INTERNAL:
        mode = RunMode.INTERNAL_WAKE
    elif background:
        mode = RunMode.SCHEDULED
    else:
        mode = RunMode.FOREGROUND
    return request.with_(run_mode=mode)


def request_snapshot(request: RunRequest, messages: list[ChatMessage]) -> RunRequestSnapshot:
    """What a run and its dispatch keep of the request that created them (spec §4.9), `messages` being the
    request's messages with their ids."""
    return RunRequestSnapshot(
        origin=request.origin.value,
        input_message_ids=[m.id for m in messages if m.id],
        input_message_count=len(messages),
        request_extras=RunRequestExtras.from_request(request).to_value(),
        decisions=[RunResumeDecision(call_id=c, resume=r) for c, r in request.decisions],
        frontend_tools=list(request.frontend_tools),
        parent_thread_id=request.parent_thread_id,
        transport_request_id=request.transport_request_id,
    )
