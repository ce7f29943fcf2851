"""The executor boundary (mailbox_app/agents/base.py): error classification and the run outcome
(spec §4.12 step 11).
"""

from __future__ import annotations

from mailbox_app.agents.base import (
    COMPLETED,
    AgentNotFound,
    InferenceFailed,
    InvalidResume,
    MailboxRunOutcome,
    OutcomeKind,
    PhaseError,
    ResolveFailed,
    StorageFailure,
    ThreadAlreadyRunning,
    classify_error,
)


def test_classify_no_error_is_completed() -> None:
    """seed: classify_error_ok_is_completed"""
    outcome = classify_error(None)
    assert outcome is COMPLETED
    assert outcome.kind is OutcomeKind.COMPLETED and outcome.message is None


def test_classify_thread_already_running_is_permanent() -> None:
    """seed: classify_error_thread_already_running_is_permanent"""
    outcome = classify_error(ThreadAlreadyRunning("thread t1 already running"))
    assert outcome.kind is OutcomeKind.PERMANENT_ERROR
    assert outcome.message == "thread t1 already running"


def test_classify_agent_not_found_is_permanent() -> None:
    """seed: classify_error_agent_not_found_is_permanent"""
    outcome = classify_error(AgentNotFound("missing"))
    assert outcome.kind is OutcomeKind.PERMANENT_ERROR
    assert outcome.message is not None and "missing" in outcome.message


def test_classify_resolve_failed_is_permanent() -> None:
    """seed: classify_error_resolve_failed_is_permanent"""
    outcome = classify_error(ResolveFailed("not found"))
    assert outcome.kind is OutcomeKind.PERMANENT_ERROR
    assert outcome.message == "not found"


def test_classify_storage_failure_is_transient() -> None:
    """seed: classify_error_storage_error_is_transient"""
    outcome = classify_error(StorageFailure("disk full"))
    assert outcome.kind is OutcomeKind.TRANSIENT_ERROR
    assert outcome.message == "disk full"


def test_classify_inference_failure_is_transient() -> None:
    """seed: classify_error_inference_failed_is_transient"""
    outcome = classify_error(InferenceFailed("timeout"))
    assert outcome.kind is OutcomeKind.TRANSIENT_ERROR
    assert outcome.message == "timeout"


def test_classify_phase_error_is_completed() -> None:
    """seed: classify_error_phase_error_is_completed"""
    assert classify_error(PhaseError("unknown state key: bad")).kind is OutcomeKind.COMPLETED


def test_classify_invalid_resume_is_completed() -> None:
    """seed: classify_error_invalid_resume_is_completed"""
    assert classify_error(InvalidResume("bad resume")).kind is OutcomeKind.COMPLETED


def test_run_outcome_repr_carries_kind_and_message() -> None:
    """seed: mailbox_run_outcome_debug"""
    transient = MailboxRunOutcome(OutcomeKind.TRANSIENT_ERROR, "oops")
    permanent = MailboxRunOutcome(OutcomeKind.PERMANENT_ERROR, "fatal")
    assert "completed" in repr(COMPLETED).lower()
    assert "oops" in repr(transient) and "transient" in repr(transient).lower()
    assert "fatal" in repr(permanent) and "permanent" in repr(permanent).lower()
    assert transient != MailboxRunOutcome(OutcomeKind.TRANSIENT_ERROR, "other")


def test_run_outcome_metric_labels_are_stable() -> None:
    """seed: mailbox_run_outcome_metric_labels_are_stable"""
    assert COMPLETED.metric_label == "completed"
    assert MailboxRunOutcome(OutcomeKind.TRANSIENT_ERROR, "retry").metric_label == "transient_error"
    assert MailboxRunOutcome(OutcomeKind.PERMANENT_ERROR, "fatal").metric_label == "permanent_error"
