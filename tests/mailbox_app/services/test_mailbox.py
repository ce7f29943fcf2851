"""The mailbox service (mailbox_app/services/mailbox.py): submit results and errors, background and foreground
submits, interrupt, decisions, and live-then-queue delivery to a remote running run (spec §4.2-§4.9).
The unit tests run in pytest-django's rolled-back transaction (doorbells never fire); the concurrent and
remote-cancel ones use committed data and other threads' connections.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.db import connection, transaction

from mailbox_app import store
from mailbox_app.contract.ids import consumer_id, now_ms
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchRecord, DispatchStatus, LiveRunTarget
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import RunRequest, validate_run_inputs
from mailbox_app.contract.storage import AlreadyExists, InvalidInput, NotFound, StoreError
from mailbox_app.realtime import events
from mailbox_app.realtime.live import LiveSubscription
from mailbox_app.services import mailbox
from mailbox_app.store import conformance
from mailbox_app.worker.execution import execute_claimed
from mailbox_app.worker.registry import local_runs
from runs_app import store as run_store
from runs_app.models import Thread
from tests.support.agents import RECORDER, STUBBORN_SAW_CANCEL
from tests.support.engine import LONG_LEASE, concurrently, dispatch_in, run_in
from tests.support.runs import (
    enqueue_prepared,
    fresh_thread_id,
    resume_decision,
    seed_run,
    thread_texts,
    user_request,
)
from tests.support.waiting import wait_until

LIVE_ACK_TIMEOUT_MS = 200


def _run_count(thread_id: str) -> int:
    return run_store.list_runs(thread_id=thread_id).total


@contextmanager
def _subscriber(target: LiveRunTarget, accept: bool, captured: list[dict[str, Any]]) -> Iterator[None]:
    """A remote run's live forwarder on Redis: records each command; acks it only when `accept`."""

    def handler(command: dict[str, Any]) -> bool:
        captured.append(command)
        return accept

    subscription = LiveSubscription(target, handler)
    try:
        yield
    finally:
        subscription.close()


def test_submit_status_has_running_and_queued_only() -> None:
    """seed: dispatch_status_enum_variants"""
    assert list(mailbox.SubmitStatus) == [mailbox.SubmitStatus.RUNNING, mailbox.SubmitStatus.QUEUED]
    assert mailbox.SubmitStatus.RUNNING.value == "running"
    assert mailbox.SubmitStatus.QUEUED.value == "queued"


def test_submit_status_round_trips_its_wire_value() -> None:
    """seed: dispatch_status_queued_zero"""
    result = mailbox.SubmitResult("d", "r", "t", mailbox.SubmitStatus.QUEUED)
    wire = json.loads(json.dumps(dataclasses.asdict(result)))
    assert wire["status"] == "queued"
    assert mailbox.SubmitStatus(wire["status"]) is mailbox.SubmitStatus.QUEUED
    assert mailbox.SubmitStatus("running") is mailbox.SubmitStatus.RUNNING
    with pytest.raises(ValueError):
        mailbox.SubmitStatus("claimed")  # a store status is not a submit status


def test_submit_result_fields() -> None:
    """seed: mailbox_submit_result_fields"""
    result = mailbox.SubmitResult(
        dispatch_id="dispatch-1", run_id="run-1", thread_id="thread-1", status=mailbox.SubmitStatus.RUNNING
    )
    assert result.dispatch_id == "dispatch-1"
    assert result.run_id == "run-1"
    assert result.thread_id == "thread-1"
    assert result.status is mailbox.SubmitStatus.RUNNING
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.status = mailbox.SubmitStatus.QUEUED  # type: ignore[misc]


def test_mailbox_error_display() -> None:
    """seed: mailbox_error_display

    Our errors are typed (the HTTP layer maps the type); `str()` is the bare reason, as the reference's
    inner message. The 409 conflict is its own type carrying the reference's exact message.
    """
    conflict = mailbox.ActiveRunConflict()
    assert isinstance(conflict, mailbox.MailboxError)
    assert str(conflict) == mailbox.ACTIVE_RUN_CONFLICT_MESSAGE
    assert mailbox.ACTIVE_RUN_CONFLICT_MESSAGE == "thread has an active run; cannot claim inline"
    validation = InvalidInput("test")
    assert isinstance(validation, StoreError) and not isinstance(validation, mailbox.MailboxError)
    assert str(validation) == "test"
    with pytest.raises(InvalidInput) as raised:
        validate_run_inputs("t", [], allow_empty=False)
    assert str(raised.value) == "at least one message is required"


@pytest.mark.django_db
def test_store_errors_surface_from_submit_and_roll_back_the_prepare() -> None:
    """seed: mailbox_error_store_variant

    A storage failure (duplicate dispatch id) reaches the caller as a typed `StoreError`, and the run and
    message prepared in the same transaction are rolled back with it.
    """
    first = mailbox.submit_background(
        RunRequest(thread_id="thread-store-err", messages=[ChatMessage.user("first")], dispatch_id_hint="dup")
    )
    assert first.dispatch_id == "dup"
    with pytest.raises(AlreadyExists) as raised:
        mailbox.submit_background(
            RunRequest(
                thread_id="thread-store-err", messages=[ChatMessage.user("second")], dispatch_id_hint="dup"
            )
        )
    assert isinstance(raised.value, StoreError)
    assert "dup" in str(raised.value)
    assert thread_texts("thread-store-err") == ["first"]
    assert _run_count("thread-store-err") == 1
    assert [d.dispatch_id for d in store.list_dispatches("thread-store-err")] == ["dup"]
    with pytest.raises(NotFound):
        conformance.ack("no-such-dispatch", "token", now_ms())


def test_inline_claim_guard_is_sixty_seconds() -> None:
    """seed: inline_claim_guard_is_reasonable"""
    assert mailbox.INLINE_CLAIM_GUARD_MS == 60_000


@pytest.mark.django_db
def test_foreground_dispatch_is_guarded_from_queue_scans() -> None:
    """seed: inline_claim_guard_is_reasonable

    The inline dispatch is enqueued 60 s in the future (queue scans leave it alone) and claimed by id.
    """
    result = mailbox.submit(RunRequest(thread_id="thread-guard", messages=[ChatMessage.user("go")]))
    assert result.status is mailbox.SubmitStatus.RUNNING
    dispatch = store.load_dispatch(result.dispatch_id)
    assert dispatch is not None and dispatch.status is DispatchStatus.CLAIMED
    assert dispatch.available_at - dispatch.created_at == mailbox.INLINE_CLAIM_GUARD_MS


@pytest.mark.django_db
def test_list_dispatches_returns_every_submitted_dispatch() -> None:
    """seed: list_dispatches_returns_entries"""
    results = [
        mailbox.submit_background(
            RunRequest(thread_id="thread-list", messages=[ChatMessage.user("msg")], agent_id=f"agent-{i}")
        )
        for i in range(3)
    ]
    listed = mailbox.list_dispatches("thread-list")
    assert [d.dispatch_id for d in listed] == [r.dispatch_id for r in results]
    assert [d.run_id for d in listed] == [r.run_id for r in results]
    assert len({r.run_id for r in results}) == 3
    assert [d.status for d in listed] == [
        DispatchStatus.CLAIMED,
        DispatchStatus.QUEUED,
        DispatchStatus.QUEUED,
    ]
    agents = [run_store.load_run(run_id=r.run_id).agent_id for r in results]  # type: ignore[union-attr]
    assert agents == ["agent-0", "agent-1", "agent-2"]
    assert mailbox.list_dispatches("thread-list", [DispatchStatus.QUEUED]) == listed[1:]


@pytest.mark.django_db
def test_submit_background_reports_running_then_queued() -> None:
    """seed: submit_background_returns_correct_status"""
    first = mailbox.submit_background(
        RunRequest(thread_id="thread-status", messages=[ChatMessage.user("a")], agent_id="agent-1")
    )
    assert first.status is mailbox.SubmitStatus.RUNNING, "an idle thread is claimed inline"
    second = mailbox.submit_background(
        RunRequest(thread_id="thread-status", messages=[ChatMessage.user("b")], agent_id="agent-1")
    )
    assert second.status is mailbox.SubmitStatus.QUEUED
    assert store.load_dispatch(first.dispatch_id).status is DispatchStatus.CLAIMED  # type: ignore[union-attr]
    assert store.load_dispatch(second.dispatch_id).status is DispatchStatus.QUEUED  # type: ignore[union-attr]


@pytest.mark.django_db
def test_interrupt_bumps_dispatch_epoch(clean_redis: Any) -> None:
    """seed: interrupt_bumps_dispatch_epoch"""
    mailbox.submit_background(
        RunRequest(thread_id="thread-int", messages=[ChatMessage.user("a")], agent_id="agent-1")
    )
    first = mailbox.interrupt("thread-int")
    assert first.new_dispatch_epoch > 0
    assert conformance.current_dispatch_epoch("thread-int") == first.new_dispatch_epoch
    assert first.active_dispatch is not None, "the claimed dispatch is reported, not superseded"
    second = mailbox.interrupt("thread-int")
    assert second.new_dispatch_epoch == first.new_dispatch_epoch + 1
    assert mailbox.interrupt("thread-never-seen").new_dispatch_epoch == 1


@pytest.mark.django_db
def test_interrupt_marks_superseded_queued_runs_cancelled() -> None:
    """seed: interrupt_marks_superseded_queued_runs_cancelled"""
    first = enqueue_prepared("thread-int-runs", "first", "agent")
    second = enqueue_prepared("thread-int-runs", "second", "agent")
    details = mailbox.interrupt_detailed("thread-int-runs")
    assert details.superseded_count == 2
    assert {d.dispatch_id for d in details.superseded_dispatches} == {first.dispatch_id, second.dispatch_id}
    assert details.active_dispatch is None
    for submitted in (first, second):
        dispatch = store.load_dispatch(submitted.dispatch_id)
        assert dispatch is not None and dispatch.status is DispatchStatus.SUPERSEDED
        assert dispatch.last_error == "queued dispatch superseded by interrupt"
        run = run_store.load_run(run_id=submitted.run_id)
        assert run is not None and run.status is RunStatus.DONE
        assert run.termination_reason is not None and run.termination_reason.type == "cancelled"
        assert run.dispatch_id == submitted.dispatch_id


@pytest.mark.django_db
def test_send_decision_to_unknown_id_returns_false() -> None:
    """seed: send_decision_unknown_id_returns_false"""
    assert mailbox.send_decision(mailbox.RunTarget("nonexistent"), "tc-1", resume_decision()) is None
    assert mailbox.send_decision(mailbox.ThreadTarget("nonexistent"), "tc-1", resume_decision()) is None
    assert store.list_dispatches("nonexistent") == []
    assert run_store.load_run(run_id="nonexistent") is None
    # a known run that is not waiting on that tool call is not a target either
    seed_run("run-known", "thread-known", RunStatus.DONE)
    assert mailbox.send_decision(mailbox.RunTarget("run-known"), "tc-1", resume_decision()) is None
    assert store.list_dispatches("thread-known") == []


@pytest.mark.django_db
def test_foreground_submit_fails_when_another_consumer_holds_the_claim(settings: Any) -> None:
    """seed: submit_inline_claim_fails_when_thread_already_claimed"""
    settings.AWAKEN_REMOTE_CANCEL_WAIT_MS = 200
    settings.AWAKEN_LIVE_ACK_TIMEOUT_MS = LIVE_ACK_TIMEOUT_MS
    active = enqueue_prepared("thread-clash", "first", "agent")
    claimed = store.claim_dispatch(active.dispatch_id, "other-host:4242", 30_000, now_ms())
    assert claimed is not None

    with pytest.raises(mailbox.ActiveRunConflict):
        mailbox.submit(RunRequest(thread_id="thread-clash", messages=[ChatMessage.user("second")]))

    assert thread_texts("thread-clash") == ["first"], "no new message"
    assert _run_count("thread-clash") == 1, "no new run"
    dispatches = store.list_dispatches("thread-clash")
    assert [d.dispatch_id for d in dispatches] == [active.dispatch_id], "no new dispatch"
    assert dispatches[0].status is DispatchStatus.CLAIMED
    assert dispatches[0].claim_token == claimed.claim_token
    assert conformance.current_dispatch_epoch("thread-clash") == 1, "the interrupt itself is not rolled back"


@pytest.mark.django_db
def test_foreground_submit_conflicts_when_own_claim_has_no_local_run(settings: Any) -> None:
    """seed: foreground_submit_does_not_prepare_replacement_when_local_cancel_times_out

    The claim belongs to this process's consumer id, but no local run and no live subscriber holds it:
    nothing can release it within the wait, so the submit answers 409 before writing anything.
    """

    settings.AWAKEN_REMOTE_CANCEL_WAIT_MS = 200
    active = enqueue_prepared("thread-local-timeout", "active", "agent")
    assert store.claim_dispatch(active.dispatch_id, consumer_id(), 30_000, now_ms()) is not None

    with pytest.raises(mailbox.ActiveRunConflict):
        mailbox.submit(
            RunRequest(thread_id="thread-local-timeout", messages=[ChatMessage.user("replacement")])
        )

    assert thread_texts("thread-local-timeout") == ["active"]
    dispatches = store.list_dispatches("thread-local-timeout")
    assert [(d.dispatch_id, d.status) for d in dispatches] == [(active.dispatch_id, DispatchStatus.CLAIMED)]
    assert _run_count("thread-local-timeout") == 1


@pytest.mark.django_db
def test_foreground_submit_conflicts_when_remote_acks_cancel_but_keeps_claim(settings: Any) -> None:
    """seed: foreground_submit_does_not_prepare_replacement_when_remote_cancel_times_out"""
    settings.AWAKEN_REMOTE_CANCEL_WAIT_MS = 250
    active = enqueue_prepared("thread-remote-timeout", "active", "agent")
    assert store.claim_dispatch(active.dispatch_id, "remote-host:1", 30_000, now_ms()) is not None
    captured: list[dict[str, Any]] = []
    target = LiveRunTarget(active.thread_id, active.run_id, active.dispatch_id)

    with _subscriber(target, accept=True, captured=captured), pytest.raises(mailbox.ActiveRunConflict):
        mailbox.submit(
            RunRequest(thread_id="thread-remote-timeout", messages=[ChatMessage.user("replacement")])
        )

    assert {"kind": "cancel"} in captured, "the remote run was asked to cancel"
    assert thread_texts("thread-remote-timeout") == ["active"]
    dispatches = store.list_dispatches("thread-remote-timeout")
    assert [(d.dispatch_id, d.status) for d in dispatches] == [(active.dispatch_id, DispatchStatus.CLAIMED)]
    assert _run_count("thread-remote-timeout") == 1


def _seed_remote_running_run(thread_id: str, run_id: str) -> LiveRunTarget:
    seed_run(run_id, thread_id, RunStatus.RUNNING, dispatch_id=f"dispatch-of-{run_id}")
    return LiveRunTarget(thread_id, run_id, f"dispatch-of-{run_id}")


@pytest.mark.django_db
def test_live_then_queue_publishes_to_remote_running_run(settings: Any) -> None:
    """seed: live_then_queue_publishes_for_remote_active_run"""
    target = _seed_remote_running_run("thread-remote", "run-remote")
    captured: list[dict[str, Any]] = []
    with _subscriber(target, accept=True, captured=captured):
        result = mailbox.submit_live_then_queue(
            RunRequest(
                thread_id="thread-remote", messages=[ChatMessage.user("steer-remote")], agent_id="agent"
            )
        )
    assert result.status is mailbox.SubmitStatus.RUNNING
    assert result.run_id == "run-remote"
    assert result.dispatch_id == target.dispatch_id
    assert len(captured) == 1 and captured[0]["kind"] == "messages"
    assert [ChatMessage.model_validate(m).text for m in captured[0]["messages"]] == ["steer-remote"]
    assert store.list_dispatches("thread-remote") == [], "live delivery creates no dispatch"
    assert thread_texts("thread-remote") == ["steer-remote"]


@pytest.mark.django_db
def test_live_then_queue_falls_back_when_subscriber_drops_receipt(settings: Any) -> None:
    """seed: live_then_queue_falls_back_when_subscriber_drops_receipt"""
    settings.AWAKEN_LIVE_ACK_TIMEOUT_MS = LIVE_ACK_TIMEOUT_MS
    target = _seed_remote_running_run("thread-dropped", "run-dropped")
    captured: list[dict[str, Any]] = []
    with _subscriber(target, accept=False, captured=captured):
        result = mailbox.submit_live_then_queue(
            RunRequest(thread_id="thread-dropped", messages=[ChatMessage.user("hello?")], agent_id="agent")
        )
    assert len(captured) == 1, "the subscriber saw the command but never acked it"
    dispatches = store.list_dispatches("thread-dropped")
    assert [d.dispatch_id for d in dispatches] == [result.dispatch_id]
    assert result.run_id != "run-dropped"


@pytest.mark.django_db
def test_live_then_queue_is_at_least_once_when_ack_is_lost(settings: Any) -> None:
    """seed: live_then_queue_is_at_least_once_when_ack_lost"""
    settings.AWAKEN_LIVE_ACK_TIMEOUT_MS = LIVE_ACK_TIMEOUT_MS
    target = _seed_remote_running_run("thread-ack-lost", "run-ack-lost")
    captured: list[dict[str, Any]] = []
    with _subscriber(target, accept=False, captured=captured):
        result = mailbox.submit_live_then_queue(
            RunRequest(thread_id="thread-ack-lost", messages=[ChatMessage.user("steer-payload")])
        )
    received = [ChatMessage.model_validate(m).text for c in captured for m in c["messages"]]
    assert received == ["steer-payload"], "the remote run observed the payload"
    dispatches = store.list_dispatches("thread-ack-lost")
    assert [d.dispatch_id for d in dispatches] == [result.dispatch_id], "and it was queued durably too"
    run = run_store.load_run(run_id=result.run_id)
    assert run is not None and run.request is not None
    live_id = captured[0]["messages"][0]["id"]
    assert run.request.input_message_ids == [live_id], "both copies carry the same message id"
    assert thread_texts("thread-ack-lost") == ["steer-payload"], "persisted once"


@pytest.mark.django_db
def test_live_then_queue_never_steers_a_mismatched_expected_run(settings: Any) -> None:
    """seed: live_then_queue_rejects_remote_mismatched_expected_run_id"""
    target = _seed_remote_running_run("thread-mismatch", "run-actual")
    captured: list[dict[str, Any]] = []
    with _subscriber(target, accept=True, captured=captured):
        result = mailbox.submit_live_then_queue(
            RunRequest(thread_id="thread-mismatch", messages=[ChatMessage.user("wrong-run")]),
            expected_run_id="run-stale",
        )
    assert result.run_id != "run-actual"
    assert captured == [], "nothing was published to the running run"
    assert [d.dispatch_id for d in store.list_dispatches("thread-mismatch")] == [result.dispatch_id]


@pytest.mark.django_db
def test_live_then_queue_falls_back_when_run_cannot_accept(settings: Any) -> None:
    """seed: live_then_queue_falls_back_to_durable_dispatch_when_receiver_unavailable"""
    settings.AWAKEN_LIVE_ACK_TIMEOUT_MS = LIVE_ACK_TIMEOUT_MS
    active = enqueue_prepared("thread-live-fallback", "active", "agent")
    claimed = store.claim_dispatch(active.dispatch_id, "test-consumer", 30_000, now_ms())
    assert claimed is not None
    running = run_store.load_run(run_id=active.run_id)
    assert running is not None
    run_store.checkpoint(
        thread_id="thread-live-fallback",
        messages=[],
        run=running.model_copy(update={"status": RunStatus.RUNNING, "dispatch_id": active.dispatch_id}),
    )
    captured: list[dict[str, Any]] = []
    target = LiveRunTarget(active.thread_id, active.run_id, active.dispatch_id)
    with _subscriber(target, accept=False, captured=captured):
        result = mailbox.submit_live_then_queue(
            RunRequest(thread_id="thread-live-fallback", messages=[ChatMessage.user("fallback")])
        )
    assert len(captured) == 1
    assert result.status is mailbox.SubmitStatus.QUEUED
    assert result.dispatch_id != active.dispatch_id
    assert thread_texts("thread-live-fallback").count("fallback") == 1, "persisted once"
    queued = store.list_dispatches("thread-live-fallback", [DispatchStatus.QUEUED])
    assert [d.dispatch_id for d in queued] == [result.dispatch_id]


@pytest.mark.django_db
def test_user_input_waiting_run_is_reused_by_incoming_message() -> None:
    """seed: structured_user_input_waiting_thread_is_reused_by_incoming_message"""
    seed_run("run-user-input", "thread-user-input", RunStatus.WAITING, waiting_reason="user_input")
    result = mailbox.submit_background(
        RunRequest(thread_id="thread-user-input", messages=[ChatMessage.user("continue")], agent_id="agent")
    )
    assert result.run_id == "run-user-input"
    assert store.load_dispatch(result.dispatch_id).run_id == "run-user-input"  # type: ignore[union-attr]
    assert _run_count("thread-user-input") == 1
    run = run_store.load_run(run_id="run-user-input")
    assert run is not None and run.status is RunStatus.WAITING
    assert run.request is not None and run.request.input_message_count == 1


def _stream_id(event_id: str) -> tuple[int, int]:
    ms, seq = event_id.split("-")
    return int(ms), int(seq)


def test_foreground_submit_streams_events_that_can_be_reread_from_any_id(worker: Any) -> None:
    """seed: submit_returns_event_channel
    seed: reconnect_sink_succeeds_for_running_worker
    """
    thread_id = fresh_thread_id("thread-stream")
    result = mailbox.submit(user_request(thread_id, "hi", agent_id="blocking"))
    assert result.thread_id == thread_id
    assert result.dispatch_id and result.dispatch_id != result.run_id
    assert result.status is mailbox.SubmitStatus.RUNNING

    early = wait_until(lambda: events.read_events(result.run_id), what="first events")
    assert early[0].type == "run_start" and early[0].data["dispatch_id"] == result.dispatch_id
    assert events.has_stream(result.run_id)
    resume_from = early[-1].id

    RECORDER.release.set()
    later: list[events.RunEvent] = []
    deadline = time.monotonic() + 15
    while not any(e.type == events.RUN_FINISH for e in later) and time.monotonic() < deadline:
        later += events.read_events(result.run_id, after=later[-1].id if later else resume_from, block_ms=500)
    assert later and later[-1].type == events.RUN_FINISH
    assert all(_stream_id(e.id) > _stream_id(resume_from) for e in later), "only newer events"
    replay = events.read_events(result.run_id)
    assert [e.id for e in replay] == [e.id for e in early] + [e.id for e in later]


def test_concurrent_background_submits_on_one_thread_run_one_at_a_time(worker: Any) -> None:
    """seed: concurrent_submit_background_same_thread_only_one_runs"""
    thread_id = fresh_thread_id("thread-conc")
    results = concurrently(
        [
            lambda i=i: mailbox.submit_background(user_request(thread_id, f"msg-{i}", agent_id="blocking"))
            for i in range(5)
        ]
    )
    assert all(isinstance(r, mailbox.SubmitResult) for r in results), results
    assert sum(r.status is mailbox.SubmitStatus.RUNNING for r in results) == 1
    assert len(store.list_dispatches(thread_id, [DispatchStatus.CLAIMED])) <= 1
    assert RECORDER.started.wait(10)
    assert len(store.list_dispatches(thread_id, [DispatchStatus.CLAIMED])) == 1

    RECORDER.release.set()
    for result in results:
        dispatch_in(result.dispatch_id, DispatchStatus.ACKED)
    with RECORDER.lock:
        assert sorted(c.dispatch_id or "" for c in RECORDER.calls) == sorted(r.dispatch_id for r in results)


def test_concurrent_foreground_submits_on_one_thread_claim_one_at_a_time(worker: Any) -> None:
    """seed: concurrent_submit_same_thread_only_one_claims"""
    thread_id = fresh_thread_id("thread-stream-conc")
    results = concurrently(
        [lambda i=i: mailbox.submit(user_request(thread_id, f"msg-{i}")) for i in range(3)]
    )
    ok = [r for r in results if isinstance(r, mailbox.SubmitResult)]
    failed = [r for r in results if not isinstance(r, mailbox.SubmitResult)]
    assert ok, results
    assert all(isinstance(r, mailbox.ActiveRunConflict) for r in failed), failed
    assert len(store.list_dispatches(thread_id, [DispatchStatus.CLAIMED])) <= 1
    for result in ok:
        run_in(result.run_id, RunStatus.DONE)
    wait_until(
        lambda: store.list_dispatches(thread_id, [DispatchStatus.CLAIMED, DispatchStatus.QUEUED]) == []
    )


def test_foreground_submit_cancels_remote_active_run_then_claims(engine: Any) -> None:
    """seed: foreground_submit_sends_live_cancel_for_remote_active_dispatch"""
    thread_id = fresh_thread_id("thread-remote-foreground")
    active = enqueue_prepared(thread_id, "active")
    claimed = store.claim_dispatch(active.dispatch_id, "remote-consumer", 30_000, now_ms())
    assert claimed is not None and claimed.claim_token
    captured: list[dict[str, Any]] = []

    def remote_forwarder(command: dict[str, Any]) -> bool:
        """The other process: on cancel it stops its run and releases its claim (ack, or superseded)."""
        captured.append(command)
        if command.get("kind") == "cancel":
            try:
                conformance.ack(active.dispatch_id, claimed.claim_token or "", now_ms())
            except Exception:  # noqa: BLE001 - a stale-epoch ack supersedes instead; both release
                pass
            finally:
                connection.close()
        return True

    subscription = LiveSubscription(
        LiveRunTarget(thread_id, active.run_id, active.dispatch_id), remote_forwarder
    )
    try:
        submitted = mailbox.submit(user_request(thread_id, "replacement"))
    finally:
        subscription.close()

    assert submitted.status is mailbox.SubmitStatus.RUNNING
    assert submitted.dispatch_id != active.dispatch_id
    assert {"kind": "cancel"} in captured
    released = store.load_dispatch(active.dispatch_id)
    assert released is not None and released.status in {DispatchStatus.ACKED, DispatchStatus.SUPERSEDED}
    claims = store.list_dispatches(thread_id, [DispatchStatus.CLAIMED])
    assert [d.dispatch_id for d in claims] == [submitted.dispatch_id]


def test_foreground_submit_conflicts_when_local_cancel_does_not_release_claim(engine: Any) -> None:
    """seed: foreground_submit_waits_for_local_cancelled_dispatch_to_release_claim"""
    engine.AWAKEN_MAILBOX = LONG_LEASE  # no lease renewal (which would supersede it) within the wait
    engine.AWAKEN_REMOTE_CANCEL_WAIT_MS = 300
    thread_id = fresh_thread_id("thread-local-cancel-window")
    active = enqueue_prepared(thread_id, "active", agent_id="stubborn")
    claimed = store.claim(thread_id, consumer_id(), LONG_LEASE.lease_ms, now_ms())
    assert [d.dispatch_id for d in claimed] == [active.dispatch_id]

    def execute() -> None:
        try:
            execute_claimed(claimed[0])
        finally:
            connection.close()

    runner = threading.Thread(target=execute, daemon=True)
    runner.start()
    assert RECORDER.started.wait(10)

    with pytest.raises(mailbox.ActiveRunConflict):
        mailbox.submit(user_request(thread_id, "replacement"))

    (local,) = local_runs()
    assert local.dispatch_id == active.dispatch_id and local.cancel_event.is_set(), "local cancel delivered"
    assert [m.text for m in run_store.load_messages(thread_id=thread_id) or []] == ["active"]
    dispatches = store.list_dispatches(thread_id)
    assert [(d.dispatch_id, d.status) for d in dispatches] == [(active.dispatch_id, DispatchStatus.CLAIMED)]
    assert run_store.list_runs(thread_id=thread_id).total == 1

    RECORDER.release.set()
    runner.join(15)
    assert STUBBORN_SAW_CANCEL == [True]
    final = store.load_dispatch(active.dispatch_id)
    assert final is not None and final.status is DispatchStatus.SUPERSEDED, "the stale claim never acks"


def test_empty_inline_claim_cancels_the_precreated_run(engine: Any) -> None:
    """seed: submit_inline_claim_empty_cancels_precreated_run

    Another consumer claims the thread between the submit's interrupt and its inline claim (the submit
    is held at its thread-row lock meanwhile): the inline claim finds nothing and the submit answers 409.
    The reference cancels the dispatch and finishes the pre-created run as cancelled; here the run, its
    message and the dispatch are written in the transaction that claims inline, so a lost claim leaves
    nothing of the submit behind (no half-written state) — the interrupt's own effects stay (§7.2).
    """

    thread_id = fresh_thread_id("thread-inline-empty")
    run_store.ensure_thread(thread_id=thread_id)
    outcome: list[Any] = []

    def submit() -> None:
        try:
            outcome.append(mailbox.submit(user_request(thread_id, "go")))
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            outcome.append(exc)
        finally:
            connection.close()

    with transaction.atomic():
        Thread.objects.select_for_update().get(id=thread_id)  # holds prepare_run_for_dispatch back
        submitter = threading.Thread(target=submit, daemon=True)
        submitter.start()
        wait_until(lambda: conformance.current_dispatch_epoch(thread_id) == 1, what="the submit's interrupt")
        other = store.enqueue(
            DispatchRecord(dispatch_id=f"other-{thread_id}", thread_id=thread_id, run_id="run-other")
        )
        assert store.claim_dispatch(other.dispatch_id, "other-consumer", 30_000, now_ms()) is not None
    submitter.join(15)

    assert len(outcome) == 1 and isinstance(outcome[0], mailbox.ActiveRunConflict), outcome
    assert mailbox.ACTIVE_RUN_CONFLICT_MESSAGE in str(outcome[0])
    mine = [d for d in store.list_dispatches(thread_id) if d.dispatch_id != other.dispatch_id]
    assert mine == []
    assert run_store.list_runs(thread_id=thread_id).items == []
    assert run_store.load_messages(thread_id=thread_id) is None
    assert store.load_dispatch(other.dispatch_id).status is DispatchStatus.CLAIMED  # type: ignore[union-attr]
