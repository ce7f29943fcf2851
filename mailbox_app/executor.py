"""The agent executor plug-in boundary: the `RunExecutor` protocol, what it gets and returns, its errors.

`classify_error` maps an executor error onto the mailbox outcome exactly as the reference does:
agent-not-found / resolve-failed / thread-already-running are permanent (dead letter), storage and
inference failures are transient (retry), agent-level errors complete the delivery (ack).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from mailbox_app.payloads import ChatMessage, RunWaitingState, TerminationReason, ToolCallResume
from mailbox_app.requests import RunRequest


class ExecutorError(Exception):
    """Base of the errors an executor may raise."""


class AgentNotFound(ExecutorError):
    def __init__(self, agent_id: str) -> None:
        super().__init__(f"agent not found: {agent_id}")
        self.agent_id = agent_id


class ResolveFailed(ExecutorError):
    pass


class ThreadAlreadyRunning(ExecutorError):
    pass


class StorageFailure(ExecutorError):
    pass


class InferenceFailed(ExecutorError):
    pass


class PhaseError(ExecutorError):
    """An agent-level failure: not retried, the delivery is consumed."""


class InvalidResume(ExecutorError):
    """A decision or continue_run_id that no longer matches anything: not retried."""


class OutcomeKind(StrEnum):
    COMPLETED = "completed"
    TRANSIENT_ERROR = "transient_error"
    PERMANENT_ERROR = "permanent_error"


@dataclass(frozen=True, slots=True)
class MailboxRunOutcome:
    kind: OutcomeKind
    message: str | None = None

    @property
    def metric_label(self) -> str:
        return self.kind.value


COMPLETED = MailboxRunOutcome(OutcomeKind.COMPLETED)


def classify_error(error: BaseException | None) -> MailboxRunOutcome:
    if error is None:
        return COMPLETED
    if isinstance(error, ThreadAlreadyRunning | AgentNotFound | ResolveFailed):
        return MailboxRunOutcome(OutcomeKind.PERMANENT_ERROR, str(error))
    if isinstance(error, PhaseError | InvalidResume):
        return COMPLETED
    # storage, inference, and anything unexpected: retry with backoff, dead-letter at max_attempts
    return MailboxRunOutcome(OutcomeKind.TRANSIENT_ERROR, str(error) or error.__class__.__name__)


@dataclass(frozen=True)
class RunResult:
    """What an executor returns. `waiting` set => the run suspends (status Waiting) instead of finishing."""

    final_output: str | None = None
    termination: TerminationReason = field(default_factory=lambda: TerminationReason(type="natural_end"))
    messages: tuple[ChatMessage, ...] = ()
    waiting: RunWaitingState | None = None
    state: dict[str, Any] | None = None


class RunContext(Protocol):
    """What the mailbox gives a running agent."""

    thread_id: str
    run_id: str
    dispatch_id: str

    def thread_messages(self) -> list[ChatMessage]: ...

    def emit(self, event_type: str, data: dict[str, Any]) -> None: ...

    def is_cancelled(self) -> bool: ...

    def wait_cancelled(self, timeout_s: float) -> bool: ...

    def take_steering(self) -> list[ChatMessage]: ...

    def wait_decision(self, tool_call_id: str, timeout_s: float) -> ToolCallResume | None: ...

    def set_suspended(self, suspended: bool) -> None: ...

    def notify_background_task_done(self, *, task_id: str, result: dict[str, Any]) -> str: ...


@runtime_checkable
class RunExecutor(Protocol):
    """The agent plug-in. Raise an `ExecutorError` subclass to fail; return a `RunResult` otherwise."""

    def run(self, request: RunRequest, context: RunContext) -> RunResult: ...
