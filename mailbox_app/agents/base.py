"""The agent executor plug-in boundary: the `RunExecutor` protocol, what it gets and returns, its errors.

`classify_error` maps an executor error onto the mailbox outcome exactly as the reference does:
agent-not-found / resolve-failed / thread-already-running are permanent (dead letter), storage and
inference failures are transient (retry), agent-level errors complete the delivery (ack).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar, runtime_checkable

from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import RunRequest
from mailbox_app.contract.storage import TerminationReason
from mailbox_app.contract.suspension import RunWaitingState, ToolCallResume
from mailbox_app.contract.usage import Usage


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


class StepResultNotJSON(PhaseError):
    """A step's result (or the messages / state it returned) is not JSON: the run ends with this error
    and nothing of the step is recorded (retrying would only execute the step again)."""


class StepNotRecorded(StorageFailure):
    """The attempt lost its claim before it could record a step: it must stop (its finish is fenced
    out too); the step is recorded, if at all, by the attempt that holds the claim now."""


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
    """What an executor returns. `waiting` set => the run suspends (status Waiting) instead of finishing.

    `usage`: the tokens (and cost) this attempt used outside its steps; what its steps used is reported
    on each step's `StepOutput`. The attempt's usage is the sum of both (mailbox_app/contract/usage.py)."""

    final_output: str | None = None
    termination: TerminationReason = field(default_factory=lambda: TerminationReason(type="natural_end"))
    messages: tuple[ChatMessage, ...] = ()
    waiting: RunWaitingState | None = None
    state: dict[str, Any] | None = None
    usage: Usage | None = None


P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class StepOutput:
    """What a step may return instead of a bare JSON value: its result plus the messages it produced,
    the agent's state after it and what it used (`usage`: the tokens of the model call it made). All are
    kept with the journal, so an attempt that re-runs the run sees them (`RunContext.journal()`) and
    continues where the dead attempt stopped; a replayed step's usage is not counted again."""

    result: Any = None
    messages: tuple[ChatMessage, ...] = ()
    state: dict[str, Any] | None = None
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class RecordedStep:
    """One entry of a run's step journal, as recorded by the attempt that completed it."""

    key: str
    dispatch_id: str
    session_id: str
    attempt: int  # the dispatch's attempt (1 = its first) that recorded the step
    result: Any
    messages: tuple[ChatMessage, ...] | None  # None: the step returned a bare value, not a StepOutput
    state: dict[str, Any] | None
    result_bytes: int
    recorded_at: int
    usage: Usage | None = None  # what the step reported it used
    copied_from_run_id: str | None = None  # a replayed run's copy of the replayed run's step

    def value(self) -> Any:
        """What `RunContext.step` returns for this step: the bare result, or the `StepOutput`."""
        if self.messages is None:
            return self.result
        return StepOutput(self.result, self.messages, self.state, self.usage)


@dataclass(frozen=True, slots=True)
class Journal:
    """The steps of a run recorded so far, oldest first."""

    steps: tuple[RecordedStep, ...] = ()

    def get(self, key: str) -> RecordedStep | None:
        return next((s for s in self.steps if s.key == key), None)

    @property
    def messages(self) -> tuple[ChatMessage, ...]:
        """The messages the recorded steps produced, in step order (the run's produced-so-far)."""
        return tuple(m for s in self.steps for m in s.messages or ())

    @property
    def state(self) -> dict[str, Any] | None:
        """The state the latest step that returned one left."""
        return next((s.state for s in reversed(self.steps) if s.state is not None), None)


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

    def step(self, key: str, fn: Callable[Concatenate[str, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn(idempotency_key, *args, **kwargs)` at most once per run and `key`
        (mailbox_app/store/runs_tables/steps.py).

        The first attempt that completes the step records its result (JSON, or a `StepOutput`) in one
        transaction fenced by its claim token; any later call with this key in this run — a re-run
        attempt after a crash, or a second call in the same attempt — returns the recorded value without
        calling `fn` (and emits `step_replayed`). The value returned is always the JSON round trip, on
        the first call too. A step that was started but not recorded (the worker died inside `fn`)
        runs again in the next attempt: `idempotency_key` (`<run_id>:<key>`) is the same in every
        attempt, so handing it to an external API makes even that case exactly once. A result that is
        not JSON raises `StepResultNotJSON` (nothing recorded); a lost claim raises `StepNotRecorded`."""
        ...

    def journal(self) -> Journal:
        """The run's recorded steps (with their messages and state), as this attempt sees them."""
        ...


def tool_step_key(tool_call_id: str) -> str:
    return f"tool_call:{tool_call_id}"


def run_tool_call(
    context: RunContext,
    tool_call_id: str,
    name: str,
    tool: Callable[Concatenate[str, P], T],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """Run one tool call as a step keyed by its call id: executed at most once per run (see
    `RunContext.step`; `tool` gets the idempotency key first). A real execution emits `tool_call_start`
    and `tool_call_done`; a replayed one emits only `step_replayed`."""
    executed = False

    def execute(idempotency_key: str) -> T:
        nonlocal executed
        executed = True
        context.emit("tool_call_start", {"tool_call_id": tool_call_id, "name": name})
        return tool(idempotency_key, *args, **kwargs)

    result = context.step(tool_step_key(tool_call_id), execute)
    if executed:
        context.emit("tool_call_done", {"tool_call_id": tool_call_id, "name": name, "status": "completed"})
    return result


def request_decision(
    context: RunContext,
    tool_call_id: str,
    name: str,
    arguments: dict[str, Any],
    *,
    hold_s: float,
) -> ToolCallResume | None:
    """A tool call that needs a person's decision: its approval request goes out at once (the
    `tool_call_done` event with status `suspended`, which a stream shows as the decision buttons and a
    run wait answers with), then the run holds its claim up to `hold_s` for a live decision (the
    `AWAKEN_LIVE_SUSPEND_HOLD_MS` hold, usually), which is returned. None when no decision came in
    time (or the run was cancelled): the agent then returns its `RunResult(waiting=...)`, the run ends
    `waiting`, and a later decision resumes it through the queue. Without a hold the run is waiting
    at once. The event names the call, its arguments and the hold (`hold_ms`), so a reader needs
    nothing else to ask, and knows until when a decision is taken live."""
    hold_ms = max(int(hold_s * 1000), 0)
    request = {"tool_call_id": tool_call_id, "name": name, "arguments": arguments, "hold_ms": hold_ms}
    context.emit("tool_call_done", {**request, "status": "suspended"})
    if hold_ms <= 0:
        return None
    return context.wait_decision(tool_call_id, hold_s)


def resume_tool_call(context: RunContext, tool_call_id: str, decision: ToolCallResume) -> ToolCallResume:
    """A suspended tool call resumed by a decision: the decision is recorded as the call's step result
    (the key `run_tool_call` uses), so an attempt that re-runs after a crash acts on the decision the
    first one acted on — the recorded one, if another decision for the call arrives later."""

    def decide(_idempotency_key: str) -> dict[str, Any]:
        return decision.model_dump(mode="json")

    return ToolCallResume.model_validate(context.step(tool_step_key(tool_call_id), decide))


@runtime_checkable
class RunExecutor(Protocol):
    """The agent plug-in. Raise an `ExecutorError` subclass to fail; return a `RunResult` otherwise.

    An executor class may declare `max_tokens: int`, the most tokens one attempt of it uses: with token
    budgets (`AWAKEN_TOKEN_BUDGETS`) a claim reserves that much for it until its finish reports what it
    used (without it, the setting's `reserve_tokens`)."""

    def run(self, request: RunRequest, context: RunContext) -> RunResult: ...
