"""The dispatch queue's vocabulary (spec §2.1): dispatch statuses and the transitions between them, the
dispatch record the mailbox store returns (the reference's `RunDispatch`), and a live run's address."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from mailbox_app.contract.storage import StoreError


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


# from-status -> statuses reachable in one step (T1..T13 of spec §2.1; purge is a deletion), plus
# the operator's requeue of a dead letter (not in the reference, which has no way out of DeadLetter:
# `admin_actions.requeue_dead_letters`, the admin action and `manage.py mailbox_requeue`). This table is
# the truth: every status change the store makes is declared as a `Transition` checked against it.
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
    # operator requeue: fresh attempts, in the thread's current epoch
    DispatchStatus.DEAD_LETTER: frozenset({DispatchStatus.QUEUED}),
}


def can_transition(source: DispatchStatus, target: DispatchStatus) -> bool:
    """True when the state machine allows `source -> target` in one operation."""
    return target in ALLOWED_TRANSITIONS[source]


class IllegalTransition(StoreError):
    """A dispatch move the transition table does not allow; raised before anything is written."""


@dataclass(frozen=True, slots=True)
class Transition:
    """The status change one store operation makes: from any of `sources` to one of `targets`.

    Declared once per operation as a module constant and checked against `ALLOWED_TRANSITIONS` when it is
    declared (at import), so the hot paths pay nothing per call; the SQL's own `WHERE status = ...` stays
    the race-proof check at run time. `require` checks a status read under a row lock before a write
    whose statement has no status condition of its own."""

    operation: str
    sources: frozenset[DispatchStatus]
    targets: frozenset[DispatchStatus]

    def __post_init__(self) -> None:
        if not self.sources or not self.targets:
            raise IllegalTransition(f"{self.operation}: a transition needs a source and a target")
        illegal = sorted(f"{s.value} -> {t.value}" for s, t in self.edges if not can_transition(s, t))
        if illegal:
            raise IllegalTransition(f"{self.operation}: not in the transition table: {', '.join(illegal)}")

    @classmethod
    def of(
        cls, operation: str, sources: Iterable[DispatchStatus], targets: Iterable[DispatchStatus]
    ) -> Transition:
        return cls(operation, frozenset(sources), frozenset(targets))

    @property
    def edges(self) -> frozenset[tuple[DispatchStatus, DispatchStatus]]:
        return frozenset((s, t) for s in self.sources for t in self.targets)

    def require(self, status: DispatchStatus) -> None:
        """Raise `IllegalTransition` unless a row in `status` may take this operation."""
        if status not in self.sources:
            raise IllegalTransition(
                f"{self.operation}: a {status.value} dispatch cannot move to "
                f"{' / '.join(sorted(t.value for t in self.targets))}"
            )


@dataclass(frozen=True, slots=True)
class DispatchRecord:
    """A dispatch row. Times are Unix milliseconds."""

    dispatch_id: str
    thread_id: str
    run_id: str
    priority: int = 128
    dedupe_key: str | None = None
    dispatch_epoch: int = 0
    status: DispatchStatus = DispatchStatus.QUEUED
    available_at: int = 0
    attempt_count: int = 0
    max_attempts: int = 5
    last_error: str | None = None
    claim_token: str | None = None
    claimed_by: str | None = None
    lease_until: int | None = None
    dispatch_instance_id: str | None = None
    run_status: str | None = None
    termination: Any = None
    run_response: str | None = None
    run_error: str | None = None
    completed_at: int | None = None
    created_at: int = 0
    updated_at: int = 0
    # What this dispatch delivers (a `RunRequestSnapshot` as JSON: its input message ids, decisions,
    # extras); reconstruct reads it, so two dispatches of one run each deliver their own (spec §7.7).
    request: Any = None
    # The agent of the run it activates (per-agent concurrency limits count claimed rows by it).
    agent_key: str = ""

    def replace(self, **changes: Any) -> DispatchRecord:
        return dataclasses.replace(self, **changes)

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal

    def public_dict(self) -> dict[str, Any]:
        """Every field except the claim token (a fencing secret that never leaves the worker)."""
        data = dataclasses.asdict(self)
        data.pop("claim_token")
        data.pop("request")
        data["status"] = self.status.value
        return data


DISPATCH_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(DispatchRecord))


def dispatch_from_row(row: tuple[Any, ...]) -> DispatchRecord:
    values = list(row)
    values[6] = DispatchStatus(values[6])
    return DispatchRecord(*values)


@dataclass(frozen=True, slots=True)
class RunDispatchResult:
    """What `record_run_result` writes into the dispatch's runtime-trace projection."""

    run_id: str
    dispatch_instance_id: str
    status: str
    termination: Any = None
    response: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class MailboxInterrupt:
    """Outcome of an interrupt: the new epoch, the claimed dispatch to cancel, what was superseded."""

    new_dispatch_epoch: int
    active_dispatch: DispatchRecord | None
    superseded_count: int
    superseded_dispatches: list[DispatchRecord] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class LiveRunTarget:
    thread_id: str
    run_id: str
    dispatch_id: str | None = None

    @property
    def channel(self) -> str:
        return f"mailbox:live:{self.thread_id}:{self.run_id}:{self.dispatch_id or '-'}"


class LocalRun(Protocol):
    """A run this process executes, as the mailbox service sees it: addressable and able to take a live
    command (cancel, messages, decision) without a Redis round trip."""

    @property
    def thread_id(self) -> str: ...

    @property
    def run_id(self) -> str: ...

    @property
    def dispatch_id(self) -> str: ...

    def on_live_command(self, command: dict[str, Any]) -> bool: ...
