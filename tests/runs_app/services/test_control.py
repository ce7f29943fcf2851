"""runs_app.services.control, the run-control service (spec §5.3), called with typed values: what it refuses
(its
typed errors), what it submits, and that `in_transaction` runs inside the submission's transaction."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection

from mailbox_app.contract.ids import now_ms
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchStatus
from mailbox_app.contract.message import ChatMessage
from mailbox_app.services import mailbox
from mailbox_app.services.mailbox import SubmitResult
from runs_app import store as run_store
from runs_app.services import control
from tests.support.runs import enqueue_prepared, seed_run

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner() -> int:
    return int(get_user_model().objects.create_user(username="frank", password="pw").pk)


def _say(text: str) -> list[ChatMessage]:
    return [ChatMessage.user(text)]


def test_cancel_of_nothing_is_target_not_found(owner: int) -> None:
    with pytest.raises(control.TargetNotFound) as caught:
        control.cancel(control.TargetKind.RUN, "no-such-run", owner_id=owner)
    assert (str(caught.value), caught.value.code) == ("run not found: no-such-run", "run_not_found")


def test_interrupt_of_an_idle_thread_is_thread_not_found(owner: int) -> None:
    run_store.ensure_thread(thread_id="t-idle", owner_id=owner)
    with pytest.raises(control.TargetNotFound) as caught:
        control.interrupt_thread("t-idle")
    assert caught.value.code == "thread_not_found"


def test_interrupt_supersedes_queued_work(owner: int) -> None:
    run_store.ensure_thread(thread_id="t-q", owner_id=owner)
    queued = enqueue_prepared("t-q", "later")
    done = control.interrupt_thread("t-q")
    assert done == control.Interrupted("t-q", superseded_count=1, active_dispatch_id=None)
    dispatch = mailbox.load_dispatch(queued.dispatch_id)
    assert dispatch is not None and dispatch.status is DispatchStatus.SUPERSEDED


def test_resume_open_run_without_a_waiting_run_is_run_not_found(owner: int) -> None:
    run_store.ensure_thread(thread_id="t-none", owner_id=owner)
    with pytest.raises(control.TargetNotFound) as caught:
        control.inject_user_input(
            "t-none", _say("go on"), mode=control.InputMode.RESUME_OPEN_RUN, owner_id=owner
        )
    assert str(caught.value) == "run not found: open run for thread t-none"


def test_queue_input_records_in_the_submissions_transaction(owner: int) -> None:
    run_store.ensure_thread(thread_id="t-in", owner_id=owner)
    seen: list[tuple[SubmitResult, bool]] = []
    depth = len(connection.savepoint_ids)  # the test's own transaction is open around everything

    def in_transaction(result: SubmitResult) -> None:
        seen.append((result, len(connection.savepoint_ids) > depth))

    result = control.inject_user_input(
        "t-in", _say("hi"), mode=control.InputMode.QUEUE, owner_id=owner, in_transaction=in_transaction
    )
    assert seen == [(result, True)]
    assert result.thread_id == "t-in"
    run = run_store.load_run(run_id=result.run_id)
    assert run is not None and run.status is RunStatus.CREATED


def test_run_input_on_a_resumable_waiting_run_continues_it(owner: int) -> None:
    run_store.ensure_thread(thread_id="t-w", owner_id=owner)
    waiting = seed_run("r-w", "t-w", RunStatus.WAITING, waiting_reason="tool_calls")
    result = control.inject_run_input(waiting, _say("more"), mode=control.InputMode.QUEUE, owner_id=owner)
    assert result.run_id == "r-w"
    dispatch = mailbox.load_dispatch(result.dispatch_id)
    assert dispatch is not None and dispatch.run_id == "r-w"


def test_run_input_interrupt_then_queue_resumes_it_through_the_queue(owner: int) -> None:
    """interrupt_then_queue goes through the thread's input; a waiting run it finds is then resumed by
    the queue (spec §4.9), so the answer names that same run."""
    run_store.ensure_thread(thread_id="t-wi", owner_id=owner)
    waiting = seed_run("r-wi", "t-wi", RunStatus.WAITING, waiting_reason="tool_calls")
    result = control.inject_run_input(
        waiting, _say("anew"), mode=control.InputMode.INTERRUPT_THEN_QUEUE, owner_id=owner
    )
    assert (result.thread_id, result.run_id) == ("t-wi", "r-wi")


def test_decide_with_no_suspended_call_is_decision_target_not_found(owner: int) -> None:
    decision = control.Decision("call-x", "resume", {"ok": True})
    with pytest.raises(control.DecisionTargetNotFound) as caught:
        control.decide(control.TargetKind.THREAD, "t-nothing", decision, owner_id=owner)
    assert str(caught.value) == "no suspended tool call call-x on thread t-nothing"
    assert caught.value.code == "decision_target_not_found"


def test_a_decision_gets_a_fresh_id_and_the_time_it_was_made() -> None:
    before = now_ms()
    first = control.tool_call_resume(control.Decision("c", "cancel", {"reason": "no"}))
    second = control.tool_call_resume(control.Decision("c", "cancel", {"reason": "no"}))
    assert first.decision_id != second.decision_id
    assert (first.action, first.result) == ("cancel", {"reason": "no"})
    assert before <= first.updated_at <= now_ms()


@pytest.mark.parametrize(
    ("thread", "error"),
    [("", control.TargetNotFound), ("t-other", control.TargetNotFound), ("t-mine", control.NotWaiting)],
)
def test_answers_need_the_callers_thread_with_a_waiting_run(owner: int, thread: str, error: Any) -> None:
    run_store.ensure_thread(thread_id="t-mine", owner_id=owner)
    run_store.ensure_thread(thread_id="t-other", owner_id=None)
    answers = [control.Decision("c1", "resume")]
    with pytest.raises(error):
        control.answer_waiting_run(thread, answers, owner_id=owner)
