"""Dispatch statuses and the allowed transitions between them (spec §2.1). Pure: no queries."""

from __future__ import annotations

from enum import StrEnum


class DispatchStatus(StrEnum):
    QUEUED = "queued"
    CLAIMED = "claimed"
    ACKED = "acked"
    CANCELLED = "cancelled"
    SUPERSEDED = "superseded"
    DEAD_LETTER = "dead_letter"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES: frozenset[DispatchStatus] = frozenset(
    {
        DispatchStatus.ACKED,
        DispatchStatus.CANCELLED,
        DispatchStatus.SUPERSEDED,
        DispatchStatus.DEAD_LETTER,
    }
)

# from-status -> statuses reachable in one step (T1..T13 of the contract; purge is a deletion).
ALLOWED_TRANSITIONS: dict[DispatchStatus, frozenset[DispatchStatus]] = {
    DispatchStatus.QUEUED: frozenset(
        {DispatchStatus.CLAIMED, DispatchStatus.SUPERSEDED, DispatchStatus.CANCELLED}
    ),
    DispatchStatus.CLAIMED: frozenset(
        {
            DispatchStatus.ACKED,
            DispatchStatus.QUEUED,
            DispatchStatus.DEAD_LETTER,
            DispatchStatus.SUPERSEDED,
        }
    ),
    DispatchStatus.ACKED: frozenset(),
    DispatchStatus.CANCELLED: frozenset(),
    DispatchStatus.SUPERSEDED: frozenset(),
    DispatchStatus.DEAD_LETTER: frozenset(),
}


def can_transition(source: DispatchStatus, target: DispatchStatus) -> bool:
    """True when the state machine allows `source -> target` in one operation."""
    return target in ALLOWED_TRANSITIONS[source]


class RunStatus(StrEnum):
    CREATED = "created"
    RUNNING = "running"
    WAITING = "waiting"
    DONE = "done"

    @property
    def is_terminal(self) -> bool:
        return self is RunStatus.DONE


RUN_TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.CREATED: frozenset({RunStatus.CREATED, RunStatus.RUNNING, RunStatus.DONE}),
    RunStatus.RUNNING: frozenset({RunStatus.RUNNING, RunStatus.WAITING, RunStatus.DONE}),
    RunStatus.WAITING: frozenset({RunStatus.WAITING, RunStatus.RUNNING, RunStatus.DONE}),
    RunStatus.DONE: frozenset({RunStatus.DONE}),
}


def can_run_transition(source: RunStatus, target: RunStatus) -> bool:
    """RunRecord status rule of spec §1.8: same->same, Created->Running|Done, Running<->Waiting, ->Done."""
    return target in RUN_TRANSITIONS[source]
