"""The dispatch state machine (mailbox_app/contract/mailbox.py): the statuses and the transition table of
contract §2.1, as pure tests (no database)."""

from __future__ import annotations

import pytest

from mailbox_app.contract.mailbox import (
    ALLOWED_TRANSITIONS,
    TERMINAL_STATUSES,
    DispatchStatus,
    can_transition,
)

Q = DispatchStatus.QUEUED
C = DispatchStatus.CLAIMED
A = DispatchStatus.ACKED
X = DispatchStatus.CANCELLED
S = DispatchStatus.SUPERSEDED
D = DispatchStatus.DEAD_LETTER

# --- dispatch state machine (contract §2.1) ---------------------------------------------------

# Every (from, to) pair the transition table T1..T13 of contract §2.1 allows, plus the operator's requeue
# of a dead letter; anything else is forbidden. T14 (purge) deletes a row and is not a status transition.
EXPECTED_DISPATCH_TRANSITIONS: dict[tuple[DispatchStatus, DispatchStatus], str] = {
    (Q, C): "T2 claim / T3 claim_dispatch",
    (Q, S): "T4 interrupt / T5 stale epoch at claim time",
    (Q, X): "T6 cancel",
    (C, A): "T7 ack",
    (C, Q): "T8 nack with attempts left / T10 lease reclaim with attempts left",
    (C, D): "T9 nack exhausted or dead_letter / T10 lease reclaim exhausted",
    (C, S): "T11 stale epoch on a claimed op / T12 stale reclaim / T13 supersede_claimed",
    (D, Q): "operator requeue (admin action, manage.py mailbox_requeue)",
}

ALL_DISPATCH_STATUSES = [Q, C, A, X, S, D]
DISPATCH_PAIRS = [(src, dst) for src in ALL_DISPATCH_STATUSES for dst in ALL_DISPATCH_STATUSES]


def test_dispatch_statuses_are_the_six_lowercase_values() -> None:
    """The six statuses of contract §1.2, spelled in lowercase as the database stores them."""
    assert {s.value for s in DispatchStatus} == {
        "queued",
        "claimed",
        "acked",
        "cancelled",
        "superseded",
        "dead_letter",
    }
    assert len(DISPATCH_PAIRS) == 36


@pytest.mark.parametrize(("source", "target"), DISPATCH_PAIRS, ids=lambda s: s.value)
def test_dispatch_transition_matrix(source: DispatchStatus, target: DispatchStatus) -> None:
    """Each of the 36 (from, to) pairs is allowed exactly when the contract's table lists it."""
    expected = (source, target) in EXPECTED_DISPATCH_TRANSITIONS
    assert can_transition(source, target) is expected, (
        f"{source.value} -> {target.value} should be {'allowed' if expected else 'forbidden'}"
    )
    assert (target in ALLOWED_TRANSITIONS[source]) is expected


def test_allowed_transitions_cover_every_status() -> None:
    """The transition map has a row for every status, so no status silently falls through."""
    assert set(ALLOWED_TRANSITIONS) == set(DispatchStatus)


def test_no_dispatch_status_transitions_to_itself() -> None:
    """Non-transition writes (extend_lease, record_*) keep a dispatch Claimed; none is a self-loop."""
    for status in DispatchStatus:
        assert not can_transition(status, status)


def test_terminal_dispatch_statuses() -> None:
    """Acked, Cancelled, Superseded and DeadLetter are terminal; Queued and Claimed are not (§1.2)."""
    assert {A, X, S, D} == TERMINAL_STATUSES
    for status in DispatchStatus:
        assert status.is_terminal is (status in {A, X, S, D})


@pytest.mark.parametrize("status", sorted(TERMINAL_STATUSES - {D}), ids=lambda s: s.value)
def test_terminal_dispatch_statuses_never_transition(status: DispatchStatus) -> None:
    """A terminal dispatch never changes status again (only purge deletes it)..."""
    assert ALLOWED_TRANSITIONS[status] == frozenset()
    for target in DispatchStatus:
        assert not can_transition(status, target)


def test_a_dead_letter_leaves_only_by_an_operator_requeue() -> None:
    """...except a dead letter, which an operator may requeue, and only to Queued."""
    assert ALLOWED_TRANSITIONS[D] == frozenset({Q})
    assert {src for src in DispatchStatus if can_transition(src, Q)} == {C, D}


def test_only_claimed_dispatches_reach_acked_or_dead_letter() -> None:
    """Acked and DeadLetter are entered only from Claimed; Cancelled only from Queued."""
    assert {src for src in DispatchStatus if can_transition(src, A)} == {C}
    assert {src for src in DispatchStatus if can_transition(src, D)} == {C}
    assert {src for src in DispatchStatus if can_transition(src, X)} == {Q}
    assert {src for src in DispatchStatus if can_transition(src, S)} == {Q, C}
