"""The engine end to end on a real Celery worker: submit paths, retries, dead letters, cancel, steer."""

from __future__ import annotations

from typing import Any

from mailbox_app import store
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchStatus
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import RunRequest
from mailbox_app.contract.suspension import ToolCallResume
from mailbox_app.realtime import events
from mailbox_app.services import mailbox
from runs_app import store as run_store
from tests.support.waiting import wait_until


def _request(thread_id: str, text: str, **extra: Any) -> RunRequest:
    return RunRequest(thread_id=thread_id, messages=[ChatMessage.user(text)], **extra)


def _dispatch_status(dispatch_id: str) -> DispatchStatus | None:
    d = store.load_dispatch(dispatch_id)
    return None if d is None else d.status


def _run_done(run_id: str) -> Any:
    run = run_store.load_run(run_id=run_id)
    return run if run is not None and run.status is RunStatus.DONE else None


def test_background_echo_runs_to_ack(mailbox_worker: Any) -> None:
    """seed: submit_background_enqueues_dispatch"""
    result = mailbox.submit_background(_request("t-bg", "hello world", agent_id="echo"))
    assert result.dispatch_id and result.run_id and result.dispatch_id != result.run_id
    run = wait_until(lambda: _run_done(result.run_id), what="run done")
    assert run.final_output == "echo: hello world"
    assert run.termination_reason.type == "natural_end"
    dispatch = wait_until(
        lambda: (
            _dispatch_status(result.dispatch_id) is DispatchStatus.ACKED
            and store.load_dispatch(result.dispatch_id)
        )
    )
    assert dispatch.run_status == "done" and dispatch.run_response == "echo: hello world"
    texts = [m.text for m in run_store.load_messages(thread_id="t-bg") or []]
    assert texts == ["hello world", "echo: hello world"]
    kinds = [e.type for e in events.read_events(result.run_id)]
    assert kinds[0] == "run_start" and kinds[-1] == "run_finish" and kinds.count("text_delta") == 3


def test_foreground_submit_runs_inline_claim(mailbox_worker: Any) -> None:
    result = mailbox.submit(_request("t-fg", "hi", agent_id="echo"))
    assert result.status is mailbox.SubmitStatus.RUNNING
    run = wait_until(lambda: _run_done(result.run_id))
    assert run.final_output == "echo: hi"
    wait_until(lambda: _dispatch_status(result.dispatch_id) is DispatchStatus.ACKED)


def test_transient_failures_retry_then_dead_letter(mailbox_worker: Any, engine_settings: Any) -> None:
    result = mailbox.submit_background(_request("t-tr", "fail transient", agent_id="echo"))
    dead = wait_until(
        lambda: (
            (d := store.load_dispatch(result.dispatch_id)) and d.status is DispatchStatus.DEAD_LETTER and d
        ),
        what="dead letter after retries",
    )
    assert dead.attempt_count == engine_settings.AWAKEN_MAILBOX.default_max_attempts
    run = wait_until(lambda: _run_done(result.run_id))
    assert run.termination_reason.type == "error"
    assert "transient" in run.error_payload["message"]


def test_permanent_failure_dead_letters_at_once(mailbox_worker: Any) -> None:
    """seed: background_permanent_error_records_run_result_before_dead_letter"""
    result = mailbox.submit_background(_request("t-perm", "fail permanent", agent_id="echo"))
    dead = wait_until(
        lambda: (
            (d := store.load_dispatch(result.dispatch_id)) and d.status is DispatchStatus.DEAD_LETTER and d
        )
    )
    assert dead.attempt_count == 0
    assert dead.run_error and "permanent" in dead.run_error
    assert dead.dispatch_instance_id is not None
    run = wait_until(lambda: _run_done(result.run_id))
    assert run.termination_reason.type == "error"


def test_unknown_agent_is_dead_lettered(mailbox_worker: Any) -> None:
    result = mailbox.submit_background(_request("t-unknown", "hi", agent_id="nope"))
    dead = wait_until(
        lambda: (
            (d := store.load_dispatch(result.dispatch_id)) and d.status is DispatchStatus.DEAD_LETTER and d
        )
    )
    assert "nope" in (dead.last_error or "")


def test_foreground_submit_interrupts_running_background(mailbox_worker: Any) -> None:
    """seed: foreground_submit_marks_prior_queued_run_cancelled"""
    first = mailbox.submit_background(_request("t-int", "sleep 10", agent_id="echo"))
    wait_until(lambda: (r := run_store.load_run(run_id=first.run_id)) and r.status is RunStatus.RUNNING)
    queued = mailbox.submit_background(_request("t-int", "later", agent_id="echo"))
    assert queued.status is mailbox.SubmitStatus.QUEUED
    fg = mailbox.submit(_request("t-int", "now", agent_id="echo"))
    assert fg.status is mailbox.SubmitStatus.RUNNING
    first_run = wait_until(lambda: _run_done(first.run_id))
    assert first_run.termination_reason.type == "cancelled"
    assert _dispatch_status(first.dispatch_id) is DispatchStatus.SUPERSEDED
    assert _dispatch_status(queued.dispatch_id) is DispatchStatus.SUPERSEDED
    queued_run = wait_until(lambda: _run_done(queued.run_id))
    assert queued_run.termination_reason.type == "cancelled"
    fg_run = wait_until(lambda: _run_done(fg.run_id))
    assert fg_run.final_output == "echo: now"


def test_steering_reaches_running_run(mailbox_worker: Any) -> None:
    """seed: live_then_queue_steers_active_run_without_new_dispatch"""
    first = mailbox.submit_background(_request("t-steer", "sleep 1", agent_id="echo"))
    wait_until(lambda: (r := run_store.load_run(run_id=first.run_id)) and r.status is RunStatus.RUNNING)
    steered = mailbox.submit_live_then_queue(_request("t-steer", "turn left"))
    assert steered.status is mailbox.SubmitStatus.RUNNING
    assert steered.run_id == first.run_id and steered.dispatch_id == first.dispatch_id
    run = wait_until(lambda: _run_done(first.run_id))
    assert run.final_output == "slept 1 | steered: turn left"
    assert len(store.list_dispatches("t-steer")) == 1


def test_live_then_queue_falls_back_to_queue_when_idle(mailbox_worker: Any) -> None:
    """seed: live_then_queue_falls_back_to_queue_when_no_remote_subscriber"""
    result = mailbox.submit_live_then_queue(_request("t-fallback", "queued please", agent_id="echo"))
    run = wait_until(lambda: _run_done(result.run_id))
    assert run.final_output == "echo: queued please"


def test_hitl_durable_wait_then_decision_resumes_same_run(mailbox_worker: Any) -> None:

    result = mailbox.submit_background(_request("t-hitl", "ask ship it?", agent_id="echo"))
    waiting = wait_until(
        lambda: (r := run_store.load_run(run_id=result.run_id)) and r.status is RunStatus.WAITING and r
    )
    call_id = waiting.waiting.tickets[0].tool_call_id
    assert mailbox.send_decision(
        mailbox.RunTarget(result.run_id),
        call_id,
        ToolCallResume(decision_id="d1", action="resume", result={"ok": True}),
    )
    run = wait_until(lambda: _run_done(result.run_id))
    assert run.final_output == 'approved: {"ok": true}'
    assert len(store.list_dispatches("t-hitl")) == 2


def test_hitl_live_decision_while_run_holds_claim(mailbox_worker: Any, engine_settings: Any) -> None:
    """seed: send_decision_live_delivers_to_remote_waiting_run"""

    engine_settings.AWAKEN_LIVE_SUSPEND_HOLD_MS = 10_000
    result = mailbox.submit_background(_request("t-hitl-live", "ask deploy?", agent_id="echo"))
    start = wait_until(
        lambda: next((e for e in events.read_events(result.run_id) if e.type == "tool_call_start"), None)
    )
    call_id = start.data["tool_call_id"]
    assert mailbox.send_decision(
        mailbox.ThreadTarget("t-hitl-live"), call_id, ToolCallResume(decision_id="d2", action="cancel")
    )
    run = wait_until(lambda: _run_done(result.run_id))
    assert run.final_output == "denied"
    assert len(store.list_dispatches("t-hitl-live")) == 1


def test_cancel_running_run_by_thread_id(mailbox_worker: Any) -> None:
    result = mailbox.submit_background(_request("t-cancel", "sleep 10", agent_id="echo"))
    wait_until(lambda: (r := run_store.load_run(run_id=result.run_id)) and r.status is RunStatus.RUNNING)
    assert mailbox.cancel(mailbox.ThreadTarget("t-cancel"))
    run = wait_until(lambda: _run_done(result.run_id))
    assert run.termination_reason.type == "cancelled"
    wait_until(lambda: _dispatch_status(result.dispatch_id) is DispatchStatus.ACKED)


def test_cancel_queued_dispatch(mailbox_worker: Any) -> None:
    """seed: cancel_queued_dispatch_works"""
    blocker = mailbox.submit_background(_request("t-cq", "sleep 10", agent_id="echo"))
    wait_until(lambda: (r := run_store.load_run(run_id=blocker.run_id)) and r.status is RunStatus.RUNNING)
    queued = mailbox.submit_background(_request("t-cq", "later", agent_id="echo"))
    assert mailbox.cancel(mailbox.DispatchTarget(queued.dispatch_id))
    assert _dispatch_status(queued.dispatch_id) is DispatchStatus.CANCELLED
    run = run_store.load_run(run_id=queued.run_id)
    assert run is not None and run.status is RunStatus.DONE and run.termination_reason.type == "cancelled"
    assert run.dispatch_id == queued.dispatch_id
    assert mailbox.cancel(mailbox.RunTarget(blocker.run_id))
    wait_until(lambda: _run_done(blocker.run_id))
