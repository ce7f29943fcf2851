"""What the thread/run store holds and returns (the reference's `ThreadRunStore` records), and the
store errors both apps raise and map (the reference's `StorageError`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.message import FROZEN_MODEL, RunMessageInput
from mailbox_app.contract.suspension import RunResumeDecision, RunWaitingState
from mailbox_app.contract.usage import AttemptUsage


class RunRequestSnapshot(BaseModel):
    model_config = FROZEN_MODEL
    origin: str = "user"
    sender_id: str | None = None
    input_message_ids: list[str] = Field(default_factory=list)
    input_message_count: int = 0
    request_extras: dict[str, Any] | None = None
    decisions: list[RunResumeDecision] = Field(default_factory=list)
    frontend_tools: list[dict[str, Any]] = Field(default_factory=list)
    parent_thread_id: str | None = None
    transport_request_id: str | None = None


class TerminationReason(BaseModel):
    """`{"type": natural_end|behavior_requested|stopped|cancelled|blocked|suspended|error, "value": …}`."""

    model_config = FROZEN_MODEL
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
    input_tokens: int = 0  # summed over usage_attempts
    output_tokens: int = 0
    cost: float | None = None  # summed over usage_attempts; None: no attempt reported a cost
    usage_attempts: list[AttemptUsage] = Field(default_factory=list)  # mailbox_app/contract/usage.py
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
    # the thread's own inbox policy (mailbox_app/contract/inbox.py InboxPolicy as JSON); None: the defaults
    inbox: dict[str, Any] | None = None
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


# --- errors -------------------------------------------------------------------------------------


class StoreError(Exception):
    """Base of every store error."""


class NotFound(StoreError):
    pass


class AlreadyExists(StoreError):
    pass


class InvalidInput(StoreError):
    """Input the store or the mailbox refuses (no messages, a corrupt snapshot, a bad id). Not named
    `ValidationError`: pydantic's and DRF's are imported beside it in the API layer."""


class VersionConflict(StoreError):
    """A fenced write lost: wrong claim token, not claimed, or a stale dispatch epoch."""

    def __init__(self, message: str, *, expected: int = 0, actual: int = 1) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual
