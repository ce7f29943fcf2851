"""Preparing a run for dispatch (mailbox_app/services/preparation.py): the pre-created run and thread
projection,
`build_dispatch`, `reconstruct_run_request`, and which waiting run an incoming message reuses (spec §4.4).
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from mailbox_app import store
from mailbox_app.contract.config import MailboxConfig
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchRecord, DispatchStatus
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import RunOrigin, RunRequest, RunRequestExtras, validate_run_inputs
from mailbox_app.contract.storage import InvalidInput, RunRequestSnapshot
from mailbox_app.services import mailbox
from mailbox_app.services.preparation import (
    build_dispatch,
    prepare_run_for_dispatch,
    reconstruct_run_request,
    reusable_waiting_run_id,
)
from runs_app import store as run_store
from tests.support.runs import FRONTEND_TOOL, prepare, seed_run, thread_texts


@pytest.mark.django_db
def test_corrupt_request_extras_fail_validation() -> None:
    """seed: run_request_extras_corrupt_json_returns_error"""
    with pytest.raises(InvalidInput, match="corrupt request_extras"):
        RunRequestExtras.from_value({"overrides": "not-an-object", "decisions": 42})
    # the same corruption on a stored run snapshot fails the reconstruction of its activation
    seed_run(
        "run-corrupt",
        "thread-corrupt",
        RunStatus.CREATED,
        request=RunRequestSnapshot(request_extras={"decisions": 42}),
    )
    dispatch = DispatchRecord(dispatch_id="d-corrupt", thread_id="thread-corrupt", run_id="run-corrupt")
    with pytest.raises(InvalidInput, match="corrupt request_extras"):
        reconstruct_run_request(dispatch)


def test_build_dispatch_sets_fields(settings: Any) -> None:
    """seed: build_dispatch_sets_correct_fields"""
    settings.AWAKEN_MAILBOX = MailboxConfig()
    request = RunRequest(thread_id="thread-42", messages=[ChatMessage.user("test")], run_id_hint="run-42")
    dispatch = build_dispatch(request, "thread-42", now=5_000)
    assert dispatch.thread_id == "thread-42"
    assert dispatch.run_id == "run-42"
    assert dispatch.dispatch_id != "run-42" and uuid.UUID(dispatch.dispatch_id).version == 7
    assert dispatch.status is DispatchStatus.QUEUED
    assert dispatch.attempt_count == 0
    assert dispatch.max_attempts == 5
    assert dispatch.priority == 128
    assert dispatch.dispatch_epoch == 0
    assert dispatch.dedupe_key is None
    assert dispatch.available_at == dispatch.created_at == dispatch.updated_at == 5_000
    assert dispatch.claim_token is None and dispatch.claimed_by is None and dispatch.lease_until is None
    assert dispatch.last_error is None and dispatch.completed_at is None
    hinted = build_dispatch(request.with_(dispatch_id_hint="task-1", continue_run_id="run-open"), "thread-42")
    assert hinted.dispatch_id == "task-1"
    assert hinted.run_id == "run-open", "continue_run_id wins over run_id_hint"
    settings.AWAKEN_MAILBOX = MailboxConfig(default_max_attempts=3)
    assert build_dispatch(request, "thread-42").max_attempts == 3


def test_build_dispatch_requires_prepared_run_id() -> None:
    """seed: build_dispatch_requires_prepared_run_id"""
    with pytest.raises(InvalidInput, match="run_id missing after preparation"):
        build_dispatch(RunRequest(thread_id="thread-1", messages=[ChatMessage.user("hi")]), "thread-1")
    with pytest.raises(InvalidInput, match="run_id missing after preparation"):
        build_dispatch(RunRequest(thread_id="thread-1", run_id_hint=""), "thread-1")


@pytest.mark.django_db
def test_prepare_precreates_created_run_and_thread_projection() -> None:
    """seed: prepare_run_for_dispatch_precreates_created_run_and_thread_projection"""
    request = RunRequest(
        thread_id="thread-created",
        messages=[ChatMessage.user("plan this", id="m-created")],
        agent_id="agent-created",
        transport_request_id="transport-created",
    )
    thread_id, messages = validate_run_inputs(request.thread_id, request.messages, allow_empty=False)
    prepared, run_id = prepare_run_for_dispatch(request, thread_id, messages)

    assert prepared.run_id_hint == run_id and prepared.continue_run_id is None
    assert uuid.UUID(run_id).version == 7
    run = run_store.load_run(run_id=run_id)
    assert run is not None
    assert run.status is RunStatus.CREATED
    assert run.agent_id == "agent-created"
    assert run.transport_request_id == "transport-created"
    assert run.dispatch_id is None and run.session_id is None
    snapshot = run.request
    assert snapshot is not None
    assert snapshot.input_message_ids == ["m-created"], "snapshots reference log messages by id"
    assert snapshot.input_message_count == 1
    assert snapshot.transport_request_id == "transport-created"
    assert run.input is not None and run.input.thread_id == "thread-created"
    assert run.input.range is not None and (run.input.range.from_seq, run.input.range.to_seq) == (1, 1)
    assert run.input.trigger_message_ids == ["m-created"]
    thread = run_store.load_thread(thread_id="thread-created")
    assert thread is not None
    assert thread.open_run_id == run_id
    assert thread.latest_run_id == run_id
    assert thread.active_run_id is None
    assert thread_texts("thread-created") == ["plan this"]


@pytest.mark.django_db
def test_prepare_inherits_agent_and_state_from_previous_run() -> None:
    """seed: prepare_run_for_dispatch_inherits_previous_runtime_state"""
    state = {"revision": 7, "extensions": {"remote": {"context_id": "remote-ctx-1"}}}
    seed_run(
        "run-prev",
        "thread-state",
        RunStatus.DONE,
        agent_id="agent-prev",
        messages=(ChatMessage.user("first"),),
        state=state,
    )
    _, run_id = prepare("thread-state", "second")
    run = run_store.load_run(run_id=run_id)
    assert run is not None and run.run_id != "run-prev"
    assert run.status is RunStatus.CREATED
    assert run.agent_id == "agent-prev"
    assert run.input is not None and run.input.range is not None
    assert (run.input.range.from_seq, run.input.range.to_seq) == (1, 2)
    assert run.state == state
    # a still-Created previous run is not inherited from
    _, third = prepare("thread-state", "third")
    inherited = run_store.load_run(run_id=third)
    assert inherited is not None and inherited.agent_id == "default" and inherited.state is None


@pytest.mark.django_db
def test_prepare_keeps_frontend_tools_and_extras_on_snapshot() -> None:
    """seed: prepare_run_preserves_request_extras_on_run_snapshot"""
    request, run_id = prepare("thread-ext", "hi", agent_id="a1", frontend_tools=[FRONTEND_TOOL])
    run = run_store.load_run(run_id=run_id)
    assert run is not None and run.request is not None
    assert run.request.frontend_tools == [FRONTEND_TOOL]
    assert run.request.request_extras is not None
    assert run.request.request_extras["frontend_tools"] == [FRONTEND_TOOL]
    reconstructed = reconstruct_run_request(build_dispatch(request, "thread-ext"))
    assert reconstructed.frontend_tools == [FRONTEND_TOOL]
    assert [m.text for m in reconstructed.messages] == ["hi"]


@pytest.mark.django_db
def test_prepare_round_trips_parent_thread_id() -> None:
    """seed: prepare_run_round_trips_parent_thread_id"""
    run_store.ensure_thread(thread_id="thread-parent")
    request, run_id = prepare("thread-child", "hi", agent_id="agent", parent_thread_id="thread-parent")
    run = run_store.load_run(run_id=run_id)
    assert run is not None and run.request is not None
    assert run.request.parent_thread_id == "thread-parent"
    child = run_store.load_thread(thread_id="thread-child")
    assert child is not None and child.parent_thread_id == "thread-parent"
    assert (
        reconstruct_run_request(build_dispatch(request, "thread-child")).parent_thread_id == "thread-parent"
    )


@pytest.mark.django_db
def test_prepare_preserves_origin_and_parent_run() -> None:
    """seed: prepare_run_preserves_origin_metadata"""
    _, run_id = prepare(
        "thread-meta", "hi", agent_id="a1", origin=RunOrigin.A2A, parent_run_id="parent-run-1"
    )
    run = run_store.load_run(run_id=run_id)
    assert run is not None and run.request is not None
    assert run.request.origin == "a2a"
    assert run.parent_run_id == "parent-run-1"


@pytest.mark.django_db
def test_prepare_defaults_origin_to_user() -> None:
    """seed: prepare_run_defaults_origin_to_user"""
    _, run_id = prepare("thread-default", "hi")
    run = run_store.load_run(run_id=run_id)
    assert run is not None and run.request is not None
    assert run.request.origin == "user"
    assert run.parent_run_id is None


@pytest.mark.django_db
def test_prepare_a2a_origin_round_trips_to_the_executor_request() -> None:
    """seed: prepare_run_origin_a2a_roundtrip"""
    request, run_id = prepare("thread-a2a", "hi", origin=RunOrigin.A2A, parent_run_id="parent-123")
    run = run_store.load_run(run_id=run_id)
    assert run is not None and run.request is not None
    assert run.request.origin == "a2a"
    assert run.parent_run_id == "parent-123"
    reconstructed = reconstruct_run_request(build_dispatch(request, "thread-a2a"))
    assert reconstructed.origin is RunOrigin.A2A
    assert reconstructed.parent_run_id == "parent-123"
    assert reconstructed.run_id_hint == run_id


@pytest.mark.django_db
def test_reusable_waiting_run_prefers_open_run_over_latest_run() -> None:
    """seed: reusable_waiting_run_prefers_thread_open_run_projection_over_latest_run"""
    thread_id = "thread-open-projection"
    seed_run(
        "run-newer-latest", thread_id, RunStatus.WAITING, waiting_reason="background_tasks", updated_at=20
    )
    seed_run("run-open", thread_id, RunStatus.WAITING, waiting_reason="user_input", updated_at=10)
    thread = run_store.load_thread(thread_id=thread_id)
    assert thread is not None and thread.open_run_id == "run-open"
    assert run_store.latest_run(thread_id=thread_id).run_id == "run-newer-latest"  # type: ignore[union-attr]

    assert reusable_waiting_run_id(thread_id) == "run-open"
    result = mailbox.submit_background(
        RunRequest(thread_id=thread_id, messages=[ChatMessage.user("continue open")], agent_id="agent")
    )
    assert result.run_id == "run-open"
    dispatch = store.load_dispatch(result.dispatch_id)
    assert dispatch is not None
    executor_request = reconstruct_run_request(dispatch)
    assert executor_request.continue_run_id == "run-open"
    assert [m.text for m in executor_request.messages] == ["continue open"]


@pytest.mark.django_db
def test_reusable_waiting_run_found_in_the_store() -> None:
    """seed: thread_context_cache_used_by_reusable_waiting_run_id"""
    seed_run(
        "run-waiting",
        "thread-ctx-reuse",
        RunStatus.WAITING,
        waiting_reason="background_tasks",
        messages=(ChatMessage.user("hi"),),
    )
    assert reusable_waiting_run_id("thread-ctx-reuse") == "run-waiting"
    assert reusable_waiting_run_id("thread-unknown") is None


@pytest.mark.django_db
def test_reusable_waiting_run_id_reads_the_fresh_durable_state() -> None:
    """seed: reusable_waiting_run_id_ignores_stale_worker_cache"""
    waiting = seed_run(
        "run-waiting",
        "thread-stale-cache",
        RunStatus.WAITING,
        waiting_reason="background_tasks",
        messages=(ChatMessage.user("hi"),),
    )
    assert reusable_waiting_run_id("thread-stale-cache") == "run-waiting"
    done = waiting.model_copy(update={"status": RunStatus.DONE, "waiting": None, "updated_at": 2})
    run_store.checkpoint(
        thread_id="thread-stale-cache", messages=[ChatMessage.assistant("done")], run=done, now=2
    )
    assert reusable_waiting_run_id("thread-stale-cache") is None


@pytest.mark.django_db
def test_done_run_is_never_reusable() -> None:
    """seed: reusable_waiting_run_id_returns_none_for_done_cached_run"""
    seed_run("run-done", "thread-done-run", RunStatus.DONE, messages=(ChatMessage.user("hi"),))
    assert reusable_waiting_run_id("thread-done-run") is None
    _, run_id = prepare("thread-done-run", "again")
    assert run_id != "run-done"
    with pytest.raises(InvalidInput, match="not open for dispatch"):
        prepare("thread-done-run", "forced", continue_run_id="run-done")


@pytest.mark.django_db
def test_prepare_updates_the_durable_thread_and_latest_run() -> None:
    """seed: thread_context_cache_updated_after_prepare_checkpoint"""
    seed_run("run-prev", "thread-ctx-checkpoint", RunStatus.DONE, messages=(ChatMessage.user("first"),))
    _, run_id = prepare("thread-ctx-checkpoint", "second", agent_id="agent")
    assert thread_texts("thread-ctx-checkpoint") == ["first", "second"]
    assert run_store.latest_run(thread_id="thread-ctx-checkpoint").run_id == run_id  # type: ignore[union-attr]
    thread = run_store.load_thread(thread_id="thread-ctx-checkpoint")
    assert thread is not None
    assert thread.latest_run_id == run_id and thread.open_run_id == run_id
    assert thread.message_count == 2


@pytest.mark.django_db
def test_prepare_and_reconstruct_use_the_durable_log() -> None:
    """seed: prepare_run_falls_back_to_store_without_cache"""
    seed_run("run-prev", "thread-no-cache", RunStatus.DONE, messages=(ChatMessage.user("first"),))
    request, run_id = prepare("thread-no-cache", "second", agent_id="agent")
    assert run_id and run_id != "run-prev"
    assert thread_texts("thread-no-cache") == ["first", "second"]
    reconstructed = reconstruct_run_request(build_dispatch(request, "thread-no-cache"))
    assert [m.text for m in reconstructed.messages] == ["second"]
    assert reconstructed.messages_already_persisted is True


@pytest.mark.django_db
def test_prepare_appends_after_the_active_runs_newer_output() -> None:
    """seed: prepare_run_uses_durable_messages_when_active_cache_is_stale"""
    active = seed_run(
        "run-active", "thread-stale-log", RunStatus.RUNNING, messages=(ChatMessage.user("first"),)
    )
    snapshot_at_start = thread_texts("thread-stale-log")
    run_store.checkpoint(
        thread_id="thread-stale-log", messages=[ChatMessage.assistant("active output")], run=active
    )
    _, run_id = prepare("thread-stale-log", "second", agent_id="agent")
    assert snapshot_at_start == ["first"]
    assert thread_texts("thread-stale-log") == ["first", "active output", "second"]
    run = run_store.load_run(run_id=run_id)
    assert run is not None and run.input is not None and run.input.range is not None
    assert (run.input.range.from_seq, run.input.range.to_seq) == (1, 3)
