"""Run statuses and the run lifecycle (spec §1.8): which status a run record may move to. Pure."""

from __future__ import annotations

from enum import StrEnum


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


class RunEdge(StrEnum):
    """A named move outside the spec's rule, taken only by the one operation that names it."""

    REQUEUE_DEAD_LETTER = "requeue_dead_letter"


# edge -> (source, target). Not part of RUN_TRANSITIONS: checkpoints, starts and finishes never take
# these (`can_run_transition` without `via` is the spec's rule, and Done stays Done).
OPERATOR_RUN_TRANSITIONS: dict[RunEdge, tuple[RunStatus, RunStatus]] = {
    # Done -> Created: an operator requeued the dead-lettered dispatch that ended the run (the admin
    # action, `manage.py mailbox_requeue`). The work runs again and its result must land on the run the
    # client already knows (its id is in the submit's answer, the stream, the webhooks), so that run is
    # reopened rather than a fresh one created. Only the dispatch that ended it, only while that
    # dispatch is dead-lettered, never a run that ended naturally (`RunStore.reopen_run` checks all
    # three under the run's row lock); the reference has no requeue, so it has no such edge.
    RunEdge.REQUEUE_DEAD_LETTER: (RunStatus.DONE, RunStatus.CREATED),
}


class RunReopen(StrEnum):
    """What `RunStore.reopen_run` did for a dead letter an operator requeues."""

    REOPENED = "reopened"  # Done -> Created by the REQUEUE_DEAD_LETTER edge
    OPEN = "open"  # not done: it takes the requeued dispatch as it is
    MISSING = "missing"  # no such run: the dispatch's next attempt dead-letters it again
    REFUSED = "refused"  # done, and not by this dead letter: it stays done, the dispatch dead-lettered


def can_run_transition(source: RunStatus, target: RunStatus, *, via: RunEdge | None = None) -> bool:
    """RunRecord status rule of spec §1.8: same->same, Created->Running|Done, Running<->Waiting, ->Done;
    with `via`, exactly the named operator edge."""
    if via is not None:
        return OPERATOR_RUN_TRANSITIONS[via] == (source, target)
    return target in RUN_TRANSITIONS[source]
