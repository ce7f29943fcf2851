"""The dispatch transition table is the truth: every status change the store makes is a `Transition`
declared against it (checked at import), every edge of the table is some operation's, an illegal move
is refused with `IllegalTransition` before anything is written, and no other module writes a dispatch's
status."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mailbox_app import store
from mailbox_app.contract.ids import now_ms
from mailbox_app.contract.mailbox import (
    ALLOWED_TRANSITIONS,
    DispatchStatus,
    IllegalTransition,
    Transition,
    can_transition,
)
from mailbox_app.contract.storage import StoreError
from mailbox_app.store import claims, conformance, fenced, queue, upkeep
from tests.support.dispatches import make_dispatch

PROJECT_ROOT = Path(__file__).resolve().parents[3]

Q = DispatchStatus.QUEUED
C = DispatchStatus.CLAIMED
A = DispatchStatus.ACKED
X = DispatchStatus.CANCELLED
S = DispatchStatus.SUPERSEDED
D = DispatchStatus.DEAD_LETTER

TABLE_EDGES = {(src, dst) for src, targets in ALLOWED_TRANSITIONS.items() for dst in targets}

# The database functions (mailbox_app/store/*.sql) the claims, the fused submit and finish run
CLAIM_FUNCTIONS = (PROJECT_ROOT / "mailbox_app/store/claims.sql").read_text()
SUBMIT_FUNCTION = (PROJECT_ROOT / "mailbox_app/store/runs_tables/submit.sql").read_text()
ATTEMPT_FUNCTIONS = (PROJECT_ROOT / "mailbox_app/store/runs_tables/attempt.sql").read_text()

# The statements each declared transition runs: each must name every target status it declares.
STATEMENTS: dict[Transition, tuple[str, ...]] = {
    store.CLAIMING: (
        CLAIM_FUNCTIONS,
        claims.CLAIM_WITHIN_LIMITS,
        claims.CLAIM_BY_ID,
        claims.CLAIM_BY_ID_WITHIN_BUDGETS,
        claims.CLAIM_BY_ID_WITHIN_LIMITS,
        SUBMIT_FUNCTION,
    ),
    store.SUPERSEDING_STALE_QUEUED: (CLAIM_FUNCTIONS, claims.CLAIM_WITHIN_LIMITS),
    store.INTERRUPTING: (queue.SUPERSEDE_QUEUED_BY_INTERRUPT,),
    store.CANCELLING: (queue.CANCEL,),
    store.ACKING: (conformance.ACK,),
    store.NACKING: (fenced.NACK,),
    store.DEAD_LETTERING: (conformance.DEAD_LETTER,),
    store.SETTLING: (fenced.SETTLE, ATTEMPT_FUNCTIONS),
    store.RECLAIMING: (upkeep.LOCK_EXPIRED + upkeep.RECLAIM,),  # the rows LOCK_EXPIRED locked
    store.HANDING_BACK: (fenced.HAND_BACK,),
    store.SUPERSEDING_CLAIMED: (fenced.SUPERSEDE,),
    store.SUPERSEDING: (fenced.SUPERSEDE,),
    store.REQUEUEING_DEAD_LETTER: (upkeep.REQUEUE_DEAD_LETTERS,),
}


def test_every_declared_store_transition_is_in_the_table() -> None:
    for transition in store.TRANSITIONS:
        for source, target in transition.edges:
            assert can_transition(source, target), f"{transition.operation}: {source} -> {target}"


def test_every_edge_of_the_table_is_used_by_a_store_operation() -> None:
    used = {edge for transition in store.TRANSITIONS for edge in transition.edges}
    assert used == TABLE_EDGES
    assert (D, Q) in used  # the operator's requeue is an edge of the table, not a write behind it


# Transitions whose statement has no status condition: the caller read the row under its lock and
# checked the status in Python (`_supersede` through `SUPERSEDING.require`).
CHECKED_UNDER_LOCK = {store.SUPERSEDING, store.SUPERSEDING_CLAIMED}


def test_each_transition_statement_names_its_targets_and_its_sources() -> None:
    assert set(STATEMENTS) == set(store.TRANSITIONS)
    for transition, statements in STATEMENTS.items():
        for statement in statements:
            for status in transition.targets:
                assert f"'{status.value}'" in statement, (transition.operation, status)
        if transition in CHECKED_UNDER_LOCK:
            continue
        # the race-proof check stays in the SQL: the row must be in a source status when it is written
        conditions = [f"status = '{s.value}'" for s in transition.sources]
        for statement in statements:
            assert any(c in statement for c in conditions), transition.operation


@pytest.mark.parametrize(
    ("sources", "targets"),
    [([A], [Q]), ([X], [Q]), ([S], [C]), ([D], [C]), ([Q], [A]), ([C], [C]), ([Q], [Q, D])],
    ids=lambda statuses: "+".join(s.value for s in statuses),
)
def test_declaring_a_move_the_table_does_not_allow_raises(
    sources: list[DispatchStatus], targets: list[DispatchStatus]
) -> None:
    with pytest.raises(IllegalTransition, match="not in the transition table"):
        Transition.of("bad", sources, targets)
    assert issubclass(IllegalTransition, StoreError)


def test_a_transition_needs_a_source_and_a_target() -> None:
    with pytest.raises(IllegalTransition):
        Transition.of("nothing", [], [Q])


@pytest.mark.parametrize("status", [A, X, S, D], ids=lambda s: s.value)
def test_supersede_refuses_a_row_that_is_not_queued_or_claimed(status: DispatchStatus) -> None:
    with pytest.raises(IllegalTransition, match=f"a {status.value} dispatch cannot move to superseded"):
        store.SUPERSEDING.require(status)
    store.SUPERSEDING.require(Q)
    store.SUPERSEDING.require(C)


# Writers of the dispatch table: only the store (and the statements it runs) may change a row.
_WRITES = re.compile(
    r"UPDATE\s+mailbox_dispatch"
    r"|Dispatch\.objects[^\n]*\.(update|create|bulk_update|bulk_create|update_or_create|get_or_create)\(",
)
_ALLOWED_WRITERS = {
    f"mailbox_app/store/{name}.py" for name in ("queue", "claims", "fenced", "upkeep", "conformance")
}


def test_only_the_store_writes_dispatch_statuses() -> None:
    offenders = []
    for root in ("mailbox_app", "runs_app"):
        for path in sorted((PROJECT_ROOT / root).rglob("*.py")):
            relative = path.relative_to(PROJECT_ROOT).as_posix()
            if "/migrations/" in relative or relative in _ALLOWED_WRITERS:
                continue
            offenders += [f"{relative}: {m.group(0)}" for m in _WRITES.finditer(path.read_text())]
    assert offenders == []


# --- the requeue's store operations on real rows ------------------------------------------------------


def _dead_letter(dispatch_id: str, thread_id: str) -> None:
    now = now_ms()
    store.enqueue(make_dispatch(dispatch_id, thread_id, available_at=now, created_at=now, max_attempts=1))
    [claimed] = store.claim(thread_id, "c", 30_000, now)
    store.nack(dispatch_id, claimed.claim_token or "", now, "boom", now)


@pytest.mark.django_db
def test_requeue_moves_dead_letters_only() -> None:
    _dead_letter("tr-dead", "tr-t1")
    _dead_letter("tr-dead-2", "tr-t2")
    now = now_ms()
    store.enqueue(make_dispatch("tr-queued", "tr-t3", available_at=now, created_at=now))
    assert [d.dispatch_id for d in store.lock_dead_letters()] == ["tr-dead", "tr-dead-2"]
    assert [d.dispatch_id for d in store.lock_dead_letters(thread_id="tr-t2")] == ["tr-dead-2"]
    assert [d.dispatch_id for d in store.lock_dead_letters(dispatch_ids=["tr-dead", "tr-queued"])] == [
        "tr-dead"
    ]
    later = now + 5
    moved = store.requeue_dead_letters(["tr-dead", "tr-queued"], later)
    assert [d.dispatch_id for d in moved] == ["tr-dead"]
    [requeued] = moved
    assert (requeued.status, requeued.attempt_count, requeued.available_at) == (Q, 0, later)
    assert requeued.completed_at is None and requeued.run_status is None
    queued = store.load_dispatch("tr-queued")
    assert queued is not None and queued.updated_at == now  # not dead-lettered: untouched
    assert store.requeue_dead_letters(["tr-dead"], later + 1) == []  # queued now: not again
    assert store.requeue_dead_letters([], later) == []
