"""Pause and resume a thread, an agent or everything (docs/inbox.md): the API (a thread of the caller),
the commands `mailbox_pause` / `mailbox_resume` and the admin's actions all come here.

A pause is a row (mailbox_app/store/pauses.py) that every claim checks in its own statement; once
`pause` returns, nothing of its scope is claimed, and submits are still accepted and queued. With
`interrupt`, the runs of the scope in progress are asked to stop too (their dispatches end cancelled;
what is queued stays queued). A resume deletes the row and rings every thread of the scope with queued
work, for the time its next dispatch is due: they are claimed in their order, by whichever workers are
free. An operator's pause is resumed by an operator only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mailbox_app.contract.ids import now_ms
from mailbox_app.contract.inbox import PauseRecord, PauseScope
from mailbox_app.realtime import doorbells
from mailbox_app.services import mailbox
from mailbox_app.store import pauses as pause_rows

RING_LIMIT = 1000  # threads a resume rings at once; the sweep rings the rest


class PausedByOperator(Exception):
    """A resume through the API of a pause an operator made: only an operator resumes it."""

    def __init__(self, pause: PauseRecord) -> None:
        super().__init__(f"{pause.label} was paused by {pause.paused_by}; only an operator can resume it")
        self.pause = pause


@dataclass(frozen=True, slots=True)
class Paused:
    pause: PauseRecord
    created: bool  # False: the scope was paused already (the first pause stands)
    stopped_runs: list[str] = field(default_factory=list)  # runs asked to stop (`interrupt`)


@dataclass(frozen=True, slots=True)
class Resumed:
    pause: PauseRecord | None  # None: the scope was not paused
    rung_threads: int = 0


def pause(
    scope: PauseScope,
    key: str = "",
    *,
    paused_by: str,
    by_operator: bool,
    reason: str = "",
    interrupt: bool = False,
) -> Paused:
    """Pause the scope (committed on return: from then on none of its dispatches is claimed); with
    `interrupt`, ask each run of the scope in progress to stop."""
    record, created = pause_rows.pause(
        scope, key, paused_by=paused_by, by_operator=by_operator, reason=reason, now=now_ms()
    )
    stopped: list[str] = []
    if interrupt:
        for active in pause_rows.claimed_in_scope(scope, key):
            mailbox.cancel_active_dispatch(active, wait=False)
            stopped.append(active.run_id)
    return Paused(record, created, stopped)


def resume(scope: PauseScope, key: str = "", *, by_operator: bool) -> Resumed:
    """Resume the scope and ring its threads. Raises PausedByOperator (nothing changed) when an
    operator's pause is resumed by someone who is not."""
    removed = pause_rows.resume(scope, key, include_operator=by_operator)
    if removed is None:
        existing = pause_rows.pause_of(scope, key)
        if existing is not None:  # an operator's pause, and this is not an operator
            raise PausedByOperator(existing)
        return Resumed(None)
    return Resumed(removed, ring(scope, key))


def ring(scope: PauseScope, key: str = "") -> int:
    """Ring every unclaimed thread with queued work in the scope, each for when its next dispatch is
    due (a dispatch still delayed is rung at its time, or by the sweep when that is far off)."""
    due = pause_rows.queued_in_scope(scope, key, RING_LIMIT)
    for thread_id, available_at in due:
        doorbells.ring_at(thread_id, None, available_at)
    return len(due)


def pause_of(scope: PauseScope, key: str = "") -> PauseRecord | None:
    return pause_rows.pause_of(scope, key)


def pauses_holding(thread_id: str, agent_keys: list[str]) -> list[PauseRecord]:
    """The pauses that hold the thread (or a dispatch of one of `agent_keys` on it), oldest first."""
    return pause_rows.pauses_holding(thread_id, agent_keys)


def list_pauses() -> list[PauseRecord]:
    return pause_rows.list_pauses()
