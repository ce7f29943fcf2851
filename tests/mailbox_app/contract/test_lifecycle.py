"""The run status machine (mailbox_app/contract/lifecycle.py, contract §1.8), as pure tests."""

from __future__ import annotations

import pytest

from mailbox_app.contract.lifecycle import RUN_TRANSITIONS, RunStatus, can_run_transition

CR = RunStatus.CREATED
RU = RunStatus.RUNNING
WA = RunStatus.WAITING
DO = RunStatus.DONE

# same -> same; Created -> Running | Done; Running -> Waiting | Done; Waiting -> Running | Done;
# Done -> nothing else.
EXPECTED_RUN_TRANSITIONS: set[tuple[RunStatus, RunStatus]] = {
    (CR, CR),
    (CR, RU),
    (CR, DO),
    (RU, RU),
    (RU, WA),
    (RU, DO),
    (WA, WA),
    (WA, RU),
    (WA, DO),
    (DO, DO),
}

RUN_PAIRS = [(src, dst) for src in RunStatus for dst in RunStatus]


def test_run_statuses_are_the_four_snake_case_values() -> None:
    assert [s.value for s in RunStatus] == ["created", "running", "waiting", "done"]
    assert len(RUN_PAIRS) == 16


@pytest.mark.parametrize(("source", "target"), RUN_PAIRS, ids=lambda s: s.value)
def test_run_transition_matrix(source: RunStatus, target: RunStatus) -> None:
    """Each of the 16 run-status pairs is allowed exactly when contract §1.8 allows it."""
    expected = (source, target) in EXPECTED_RUN_TRANSITIONS
    assert can_run_transition(source, target) is expected, (
        f"{source.value} -> {target.value} should be {'allowed' if expected else 'forbidden'}"
    )
    assert (target in RUN_TRANSITIONS[source]) is expected


def test_run_status_terminal_is_done_only() -> None:
    """`is_terminal` holds for Done only; Done reaches nothing but itself, and never goes back to Created."""
    assert [s for s in RunStatus if s.is_terminal] == [DO]
    assert {t for t in RunStatus if can_run_transition(DO, t)} == {DO}
    assert {s for s in RunStatus if can_run_transition(s, CR)} == {CR}
