"""A thread's inbox (docs/inbox.md): the policy that decides what a message does on arrival — coalesce
with the messages around it into one run (debounce), steer the running run, queue for the next one, or
stop the running one — and the pauses that hold a scope's claims. Pure types."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_WAIT_MS_CAP = 3_600_000  # the longest a window may stay open (an hour)
DEFAULT_MAX_WAIT_FACTOR = 5  # max_wait_ms, when not given: this many times debounce_ms


class WhileRunning(StrEnum):
    """What a message does when the thread has a run active (a claimed dispatch)."""

    STEER = "steer"  # into the live run; when it cannot take it, queued for the next run (durable)
    QUEUE = "queue"  # into the next run (coalesced with the others that arrive meanwhile)
    INTERRUPT = "interrupt"  # latest wins: the active run is cancelled, the message starts the next one


class InboxPolicy(BaseModel):
    """`debounce_ms`: messages arriving within this long of each other (on a thread with no run active,
    or waiting for the next run) coalesce into one run whose input holds them all in arrival order; the
    run starts `debounce_ms` after the last, but never later than `max_wait_ms` after the first
    (default: 5 × debounce_ms). `while_running` applies when a run is active."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    debounce_ms: int = Field(default=0, ge=0, le=MAX_WAIT_MS_CAP)
    max_wait_ms: int | None = Field(default=None, ge=0, le=MAX_WAIT_MS_CAP)
    while_running: WhileRunning = WhileRunning.QUEUE

    @model_validator(mode="after")
    def _max_wait_covers_debounce(self) -> InboxPolicy:
        if self.max_wait_ms is not None and self.max_wait_ms < self.debounce_ms:
            raise ValueError(f"max_wait_ms ({self.max_wait_ms}) must be >= debounce_ms ({self.debounce_ms})")
        return self

    @property
    def window_cap_ms(self) -> int:
        """How long after its first message a window closes at the latest."""
        if self.max_wait_ms is not None:
            return self.max_wait_ms
        return min(self.debounce_ms * DEFAULT_MAX_WAIT_FACTOR, MAX_WAIT_MS_CAP)

    def start_at(self, *, opened_at: int, now: int) -> int:
        """When a window opened at `opened_at` starts, a message having arrived at `now`."""
        return min(now + self.debounce_ms, opened_at + self.window_cap_ms)

    def as_json(self) -> dict[str, Any]:
        return {
            "debounce_ms": self.debounce_ms,
            "max_wait_ms": self.window_cap_ms,
            "while_running": self.while_running.value,
        }


class InboxOutcome(StrEnum):
    """What became of a message delivered through the inbox."""

    COALESCED = "coalesced"  # joined the input of a dispatch not yet claimed (a debounce window)
    STEERED = "steered"  # delivered into the running run
    QUEUED = "queued"  # the first input of a new dispatch (which may already be claimed: `running`)


class ScheduleIfBusy(StrEnum):
    """What a schedule's firing does on a busy thread (a run active or work queued)."""

    SKIP = "skip"
    ENQUEUE = "enqueue"


class PauseScope(StrEnum):
    """What a pause holds: one thread, every dispatch of one agent, or everything."""

    THREAD = "thread"
    AGENT = "agent"
    ALL = "all"


def resolve_policy(
    explicit: InboxPolicy | None,
    agent_id: str | None,
    agent_defaults: dict[str, InboxPolicy],
    project_default: InboxPolicy | None,
) -> InboxPolicy | None:
    """The policy that applies: the thread's own, else its agent's default, else the project's."""
    if explicit is not None:
        return explicit
    if agent_id and agent_id in agent_defaults:
        return agent_defaults[agent_id]
    return project_default


@dataclass(frozen=True, slots=True)
class PauseRecord:
    """One pause (a row of `mailbox_pause`); `since` is Unix ms."""

    scope: PauseScope
    key: str
    paused_by: str
    by_operator: bool
    reason: str
    since: int

    @property
    def label(self) -> str:
        """`thread t-1`, `agent support`, `everything`."""
        return "everything" if self.scope is PauseScope.ALL else f"{self.scope.value} {self.key}"
