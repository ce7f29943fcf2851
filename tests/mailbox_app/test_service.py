"""Counterparts of the reference's pure and store-only `mailbox.rs` unit tests (spec §4, §6).

Everything here runs against the real PostgreSQL (pytest-django's rolled-back `db` transaction) and the
real Redis where a test needs live delivery or events; nothing runs a Celery worker (doorbells are
`on_commit` callbacks and never fire inside the rolled-back test transaction). Scenarios that need a worker,
other threads' connections or committed data live in `test_seed_engine.py`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from celery.signals import worker_ready
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from awaken_project.celery import app
from mailbox_app import events, maintenance, service, store, tasks
from mailbox_app.agents.base import (
    COMPLETED,
    AgentNotFound,
    InferenceFailed,
    InvalidResume,
    MailboxRunOutcome,
    OutcomeKind,
    PhaseError,
    ResolveFailed,
    RunContext,
    RunExecutor,
    RunResult,
    StorageFailure,
    ThreadAlreadyRunning,
    classify_error,
)
from mailbox_app.agents.registry import resolve_agent
from mailbox_app.config import MailboxConfig
from mailbox_app.contract.ids import consumer_id, now_ms
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchRecord, DispatchStatus, LiveRunTarget
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import (
    AdapterKind,
    RunMode,
    RunOrigin,
    RunRequest,
    RunRequestExtras,
    normalize_mailbox_run_mode,
    validate_run_inputs,
)
from mailbox_app.contract.storage import (
    AlreadyExists,
    NotFound,
    RunRecord,
    RunRequestSnapshot,
    StoreError,
    ValidationError,
)
from mailbox_app.contract.suspension import RunWaitingState, ToolCallResume
from mailbox_app.live import LiveSubscription
from mailbox_app.locks import ThreadLock
from mailbox_app.preparation import (
    build_dispatch,
    prepare_run_for_dispatch,
    reconstruct_run_request,
    reusable_waiting_run_id,
)
from mailbox_app.schedule import PERIODIC_TASKS, sync_periodic_tasks
from mailbox_app.worker.runtime import ActiveRun, _Context
from runs_app import store as run_store

LIVE_ACK_TIMEOUT_MS = 200
FRONTEND_TOOL = {"id": "ft1", "name": "FT1", "description": "desc"}


# --- helpers ---------------------------------------------------------------------------------------


def _resume(decision_id: str = "d-1") -> ToolCallResume:
    return ToolCallResume(decision_id=decision_id, action="resume", result={"approved": True})


def _prepare(thread_id: str, text: str, **extra: Any) -> tuple[RunRequest, str]:
    """validate_run_inputs + prepare_run_for_dispatch, the way every submit path starts."""
    request = RunRequest(thread_id=thread_id, messages=[ChatMessage.user(text)], **extra)
    tid, messages = validate_run_inputs(request.thread_id, request.messages, allow_empty=False)
    return prepare_run_for_dispatch(request, tid, messages)


def _enqueue_prepared(thread_id: str, text: str, **changes: Any) -> DispatchRecord:
    """A prepared run plus its queued dispatch, written without ringing any worker."""
    request, _ = _prepare(thread_id, text, agent_id="agent")
    dispatch = build_dispatch(request, thread_id)
    return store.enqueue(dispatch.replace(**changes) if changes else dispatch)


def _seed_run(
    run_id: str,
    thread_id: str,
    status: RunStatus,
    *,
    waiting_reason: str | None = None,
    agent_id: str = "agent",
    updated_at: int = 1,
    messages: tuple[ChatMessage, ...] = (),
    **fields: Any,
) -> RunRecord:
    run = RunRecord(
        run_id=run_id,
        thread_id=thread_id,
        agent_id=agent_id,
        status=status,
        waiting=None if waiting_reason is None else RunWaitingState(reason=waiting_reason),
        created_at=1,
        updated_at=updated_at,
        steps=2,
        **fields,
    )
    run_store.checkpoint(thread_id=thread_id, messages=list(messages), run=run, now=updated_at)
    return run


def _texts(thread_id: str) -> list[str]:
    return [m.text for m in run_store.load_messages(thread_id=thread_id) or []]


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


class PlainExecutor:
    """Any object with `run(request, context)`: no base class, no knowledge of the mailbox."""

    def run(self, request: RunRequest, context: RunContext) -> RunResult:
        return RunResult(final_output="plain")


class NotAnExecutor:
    def execute(self) -> None:
        return None


# --- RunRequest and input validation (spec §1.12, §4.1) ---------------------------------------------


def test_run_request_defaults() -> None:
    """seed: run_request_fields"""
    request = RunRequest(thread_id="t-1", messages=[ChatMessage.user("hello")], agent_id="agent-a")
    assert request.thread_id == "t-1"
    assert request.agent_id == "agent-a"
    assert len(request.messages) == 1
    assert request.run_mode is RunMode.FOREGROUND
    assert request.adapter is AdapterKind.INTERNAL
    assert request.origin is RunOrigin.USER
    assert request.messages_already_persisted is False
    assert request.decisions == [] and request.frontend_tools == []
    assert request.continue_run_id is None and request.run_id_hint is None
    assert request.dispatch_id is None and request.session_id is None


def test_validation_rejects_empty_messages_without_decisions() -> None:
    """seed: run_spec_validation_empty_messages_errors"""
    with pytest.raises(ValidationError, match="at least one message is required"):
        validate_run_inputs("thread-1", [], allow_empty=False)
    with pytest.raises(ValidationError, match="at least one message is required"):
        service.submit_background(RunRequest(thread_id="thread-1"))


def test_validation_allows_decision_only_resume() -> None:
    """seed: run_spec_validation_allows_decision_only_resume"""
    thread_id, messages = validate_run_inputs("thread-1", [], allow_empty=True)
    assert thread_id == "thread-1"
    assert messages == []
    decision_only = RunRequest(thread_id="thread-1", decisions=[("call-1", _resume())])
    assert normalize_mailbox_run_mode(decision_only, background=True).run_mode is RunMode.RESUME


def test_validation_blank_thread_id_generates_new_uuid7() -> None:
    """seed: run_spec_validation_blank_thread_id_generates_new"""
    first, _ = validate_run_inputs("  ", [ChatMessage.user("hi")], allow_empty=False)
    second, _ = validate_run_inputs(None, [ChatMessage.user("hi")], allow_empty=False)
    assert first.strip() == first and first
    assert uuid.UUID(first).version == 7 and uuid.UUID(second).version == 7
    assert first != second


def test_validation_trims_thread_id() -> None:
    """seed: run_spec_validation_trims_thread_id"""
    thread_id, _ = validate_run_inputs("  my-thread  ", [ChatMessage.user("hi")], allow_empty=False)
    assert thread_id == "my-thread"


def test_validate_run_inputs_preserves_normal_thread_id() -> None:
    """seed: validate_run_inputs_preserves_normal_thread_id"""
    message = ChatMessage.user("hi")
    thread_id, messages = validate_run_inputs("my-thread", [message], allow_empty=False)
    assert thread_id == "my-thread"
    assert messages == [message]


def test_validate_run_inputs_keeps_every_message_in_order() -> None:
    """seed: validate_run_inputs_multiple_messages"""
    given = [ChatMessage.user("a"), ChatMessage.user("b"), ChatMessage.user("c")]
    _, messages = validate_run_inputs("t", given, allow_empty=False)
    assert [m.text for m in messages] == ["a", "b", "c"]


def test_validate_run_inputs_empty_string_generates_uuid() -> None:
    """seed: validate_run_inputs_empty_string_generates_uuid"""
    thread_id, _ = validate_run_inputs("", [ChatMessage.user("hi")], allow_empty=False)
    assert len(thread_id) == 36
    assert uuid.UUID(thread_id).version == 7


# --- service result types ------------------------------------------------------------------------


def test_submit_status_has_running_and_queued_only() -> None:
    """seed: dispatch_status_enum_variants"""
    assert list(service.SubmitStatus) == [service.SubmitStatus.RUNNING, service.SubmitStatus.QUEUED]
    assert service.SubmitStatus.RUNNING.value == "running"
    assert service.SubmitStatus.QUEUED.value == "queued"


def test_submit_status_round_trips_its_wire_value() -> None:
    """seed: dispatch_status_queued_zero"""
    result = service.SubmitResult("d", "r", "t", service.SubmitStatus.QUEUED)
    wire = json.loads(json.dumps(dataclasses.asdict(result)))
    assert wire["status"] == "queued"
    assert service.SubmitStatus(wire["status"]) is service.SubmitStatus.QUEUED
    assert service.SubmitStatus("running") is service.SubmitStatus.RUNNING
    with pytest.raises(ValueError):
        service.SubmitStatus("claimed")  # a store status is not a submit status


def test_submit_result_fields() -> None:
    """seed: mailbox_submit_result_fields"""
    result = service.SubmitResult(
        dispatch_id="dispatch-1", run_id="run-1", thread_id="thread-1", status=service.SubmitStatus.RUNNING
    )
    assert result.dispatch_id == "dispatch-1"
    assert result.run_id == "run-1"
    assert result.thread_id == "thread-1"
    assert result.status is service.SubmitStatus.RUNNING
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.status = service.SubmitStatus.QUEUED  # type: ignore[misc]


def test_mailbox_error_display() -> None:
    """seed: mailbox_error_display

    Our errors are typed (the HTTP layer maps the type); `str()` is the bare reason, as the reference's
    inner message. The 409 conflict is its own type carrying the reference's exact message.
    """
    conflict = service.ActiveRunConflict()
    assert isinstance(conflict, service.MailboxError)
    assert str(conflict) == service.ACTIVE_RUN_CONFLICT_MESSAGE
    assert service.ACTIVE_RUN_CONFLICT_MESSAGE == "thread has an active run; cannot claim inline"
    validation = ValidationError("test")
    assert isinstance(validation, StoreError) and not isinstance(validation, service.MailboxError)
    assert str(validation) == "test"
    with pytest.raises(ValidationError) as raised:
        validate_run_inputs("t", [], allow_empty=False)
    assert str(raised.value) == "at least one message is required"


@pytest.mark.django_db
def test_store_errors_surface_from_submit_and_roll_back_the_prepare() -> None:
    """seed: mailbox_error_store_variant

    A storage failure (duplicate dispatch id) reaches the caller as a typed `StoreError`, and the run and
    message prepared in the same transaction are rolled back with it.
    """
    first = service.submit_background(
        RunRequest(thread_id="thread-store-err", messages=[ChatMessage.user("first")], dispatch_id_hint="dup")
    )
    assert first.dispatch_id == "dup"
    with pytest.raises(AlreadyExists) as raised:
        service.submit_background(
            RunRequest(
                thread_id="thread-store-err", messages=[ChatMessage.user("second")], dispatch_id_hint="dup"
            )
        )
    assert isinstance(raised.value, StoreError)
    assert "dup" in str(raised.value)
    assert _texts("thread-store-err") == ["first"]
    assert _run_count("thread-store-err") == 1
    assert [d.dispatch_id for d in store.list_dispatches("thread-store-err")] == ["dup"]
    with pytest.raises(NotFound):
        store.ack("no-such-dispatch", "token", now_ms())


# --- executor boundary and error classification (spec §4.12 step 11) -------------------------------


def test_any_run_executor_can_be_configured_as_an_agent(settings: Any) -> None:
    """seed: mailbox_construction_depends_on_runtime_boundary_not_agent_runtime"""

    settings.AWAKEN_AGENTS = {
        "plain": f"{__name__}.PlainExecutor",
        "broken": f"{__name__}.NotAnExecutor",
    }
    executor = resolve_agent("plain")
    assert isinstance(executor, PlainExecutor)
    assert isinstance(executor, RunExecutor)
    with pytest.raises(ResolveFailed, match=r"does not implement RunExecutor\.run"):
        resolve_agent("broken")
    with pytest.raises(AgentNotFound, match="nope"):
        resolve_agent("nope")


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


# --- suspension flag (spec §4.14 step 3) -----------------------------------------------------------


def test_context_emit_tracks_suspension_and_forwards_events(clean_redis: Any) -> None:
    """seed: suspension_aware_sink_sets_flag_on_suspended_tool_call"""
    # the attempt holds the thread (its emits are fenced by the thread lock's claim token)
    assert ThreadLock("thread-susp", "token-susp", 30_000).acquire()
    active = ActiveRun(
        thread_id="thread-susp", run_id="run-susp", dispatch_id="dispatch-susp", claim_token="token-susp"
    )
    context = _Context(active, RunRequest(thread_id="thread-susp"))

    context.emit("tool_call_done", {"tool_call_id": "c1", "status": "succeeded"})
    assert not active.suspended.is_set()
    context.emit("tool_call_done", {"tool_call_id": "c2", "status": "suspended"})
    assert active.suspended.is_set()
    context.emit("tool_call_done", {"tool_call_id": "c3", "status": "succeeded"})
    assert active.suspended.is_set(), "a later non-suspended tool call does not clear the flag"
    context.emit("tool_call_resumed", {"tool_call_id": "c2", "result": {"approved": True}})
    assert not active.suspended.is_set()

    forwarded = events.read_events("run-susp")
    assert [(e.type, e.data.get("tool_call_id")) for e in forwarded] == [
        ("tool_call_done", "c1"),
        ("tool_call_done", "c2"),
        ("tool_call_done", "c3"),
        ("tool_call_resumed", "c2"),
    ]
    assert forwarded[3].data["result"] == {"approved": True}


# --- RunRequestExtras (spec §1.12) -----------------------------------------------------------------


def test_request_extras_json_round_trip() -> None:
    """seed: run_request_extras_serde_roundtrip"""
    extras = RunRequestExtras(
        frontend_tools=[FRONTEND_TOOL], run_mode=RunMode.SCHEDULED, adapter=AdapterKind.ACP
    )
    value = extras.to_value()
    assert value is not None
    parsed = RunRequestExtras.from_value(json.loads(json.dumps(value)))
    assert parsed.frontend_tools == [FRONTEND_TOOL]
    assert parsed.decisions is None and parsed.overrides is None
    assert parsed.run_mode is RunMode.SCHEDULED
    assert parsed.adapter is AdapterKind.ACP
    assert "decisions" not in value and "overrides" not in value  # empty fields are omitted


def test_request_extras_all_defaults_serialise_to_none() -> None:
    """seed: run_request_extras_empty_returns_none"""
    assert RunRequestExtras().to_value() is None
    assert RunRequestExtras.from_request(RunRequest(thread_id="t", messages=[])).to_value() is None
    assert RunRequestExtras(adapter=AdapterKind.ACP).to_value() == {
        "run_mode": "foreground",
        "adapter": "acp",
    }
    assert RunRequestExtras(run_mode=RunMode.RESUME).to_value() == {
        "run_mode": "resume",
        "adapter": "internal",
    }


def test_request_extras_apply_to_request() -> None:
    """seed: run_request_extras_apply_to_request"""
    extras = RunRequestExtras(
        frontend_tools=[FRONTEND_TOOL],
        run_id_hint="run-1",
        dispatch_id_hint="dispatch-1",
        parent_thread_id="parent-thread",
        transport_request_id="transport-1",
        run_mode=RunMode.RESUME,
        adapter=AdapterKind.AG_UI,
    )
    request = RunRequest(thread_id="t1", messages=[ChatMessage.user("hi")])
    applied = extras.apply_to(request)
    assert applied.frontend_tools == [FRONTEND_TOOL]
    assert applied.run_id_hint == "run-1"
    assert applied.dispatch_id_hint == "dispatch-1"
    assert applied.parent_thread_id == "parent-thread"
    assert applied.transport_request_id == "transport-1"
    assert applied.run_mode is RunMode.RESUME
    assert applied.adapter is AdapterKind.AG_UI
    assert applied.thread_id == "t1" and [m.text for m in applied.messages] == ["hi"]
    assert applied.continue_run_id is None
    # run_mode and adapter are always applied, even when they are the defaults
    scheduled = request.with_(run_mode=RunMode.SCHEDULED, adapter=AdapterKind.ACP)
    assert RunRequestExtras().apply_to(scheduled).run_mode is RunMode.FOREGROUND
    assert RunRequestExtras().apply_to(scheduled).adapter is AdapterKind.INTERNAL


@pytest.mark.django_db
def test_corrupt_request_extras_fail_validation() -> None:
    """seed: run_request_extras_corrupt_json_returns_error"""
    with pytest.raises(ValidationError, match="corrupt request_extras"):
        RunRequestExtras.from_value({"overrides": "not-an-object", "decisions": 42})
    # the same corruption on a stored run snapshot fails the reconstruction of its activation
    _seed_run(
        "run-corrupt",
        "thread-corrupt",
        RunStatus.CREATED,
        request=RunRequestSnapshot(request_extras={"decisions": 42}),
    )
    dispatch = DispatchRecord(dispatch_id="d-corrupt", thread_id="thread-corrupt", run_id="run-corrupt")
    with pytest.raises(ValidationError, match="corrupt request_extras"):
        reconstruct_run_request(dispatch)


def test_request_extras_capture_decisions() -> None:
    """seed: build_dispatch_extras_roundtrip_with_decisions"""
    decisions = [("call-1", _resume("d-1"))]
    request = RunRequest(
        thread_id="thread-dec", messages=[ChatMessage.user("hi")], agent_id="a1", decisions=decisions
    )
    extras = RunRequestExtras.from_request(request)
    assert extras.decisions is not None and len(extras.decisions) == 1
    assert extras.decisions[0][0] == "call-1"
    value = extras.to_value()
    assert value is not None
    restored = RunRequestExtras.from_value(json.loads(json.dumps(value))).apply_to(
        RunRequest(thread_id="thread-dec")
    )
    assert restored.decisions == decisions


# --- build_dispatch (spec §4.9 step 7) ---------------------------------------------------------------


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
    with pytest.raises(ValidationError, match="run_id missing after preparation"):
        build_dispatch(RunRequest(thread_id="thread-1", messages=[ChatMessage.user("hi")]), "thread-1")
    with pytest.raises(ValidationError, match="run_id missing after preparation"):
        build_dispatch(RunRequest(thread_id="thread-1", run_id_hint=""), "thread-1")


def test_inline_claim_guard_is_sixty_seconds() -> None:
    """seed: inline_claim_guard_is_reasonable"""
    assert service.INLINE_CLAIM_GUARD_MS == 60_000


@pytest.mark.django_db
def test_foreground_dispatch_is_guarded_from_queue_scans() -> None:
    """seed: inline_claim_guard_is_reasonable

    The inline dispatch is enqueued 60 s in the future (queue scans leave it alone) and claimed by id.
    """
    result = service.submit(RunRequest(thread_id="thread-guard", messages=[ChatMessage.user("go")]))
    assert result.status is service.SubmitStatus.RUNNING
    dispatch = store.load_dispatch(result.dispatch_id)
    assert dispatch is not None and dispatch.status is DispatchStatus.CLAIMED
    assert dispatch.available_at - dispatch.created_at == service.INLINE_CLAIM_GUARD_MS


# --- prepare_run_for_dispatch (spec §4.9) ----------------------------------------------------------


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
    assert _texts("thread-created") == ["plan this"]


@pytest.mark.django_db
def test_prepare_inherits_agent_and_state_from_previous_run() -> None:
    """seed: prepare_run_for_dispatch_inherits_previous_runtime_state"""
    state = {"revision": 7, "extensions": {"remote": {"context_id": "remote-ctx-1"}}}
    _seed_run(
        "run-prev",
        "thread-state",
        RunStatus.DONE,
        agent_id="agent-prev",
        messages=(ChatMessage.user("first"),),
        state=state,
    )
    _, run_id = _prepare("thread-state", "second")
    run = run_store.load_run(run_id=run_id)
    assert run is not None and run.run_id != "run-prev"
    assert run.status is RunStatus.CREATED
    assert run.agent_id == "agent-prev"
    assert run.input is not None and run.input.range is not None
    assert (run.input.range.from_seq, run.input.range.to_seq) == (1, 2)
    assert run.state == state
    # a still-Created previous run is not inherited from
    _, third = _prepare("thread-state", "third")
    inherited = run_store.load_run(run_id=third)
    assert inherited is not None and inherited.agent_id == "default" and inherited.state is None


@pytest.mark.django_db
def test_prepare_keeps_frontend_tools_and_extras_on_snapshot() -> None:
    """seed: prepare_run_preserves_request_extras_on_run_snapshot"""
    request, run_id = _prepare("thread-ext", "hi", agent_id="a1", frontend_tools=[FRONTEND_TOOL])
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
    request, run_id = _prepare("thread-child", "hi", agent_id="agent", parent_thread_id="thread-parent")
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
    _, run_id = _prepare(
        "thread-meta", "hi", agent_id="a1", origin=RunOrigin.A2A, parent_run_id="parent-run-1"
    )
    run = run_store.load_run(run_id=run_id)
    assert run is not None and run.request is not None
    assert run.request.origin == "a2a"
    assert run.parent_run_id == "parent-run-1"


@pytest.mark.django_db
def test_prepare_defaults_origin_to_user() -> None:
    """seed: prepare_run_defaults_origin_to_user"""
    _, run_id = _prepare("thread-default", "hi")
    run = run_store.load_run(run_id=run_id)
    assert run is not None and run.request is not None
    assert run.request.origin == "user"
    assert run.parent_run_id is None


@pytest.mark.django_db
def test_prepare_a2a_origin_round_trips_to_the_executor_request() -> None:
    """seed: prepare_run_origin_a2a_roundtrip"""
    request, run_id = _prepare("thread-a2a", "hi", origin=RunOrigin.A2A, parent_run_id="parent-123")
    run = run_store.load_run(run_id=run_id)
    assert run is not None and run.request is not None
    assert run.request.origin == "a2a"
    assert run.parent_run_id == "parent-123"
    reconstructed = reconstruct_run_request(build_dispatch(request, "thread-a2a"))
    assert reconstructed.origin is RunOrigin.A2A
    assert reconstructed.parent_run_id == "parent-123"
    assert reconstructed.run_id_hint == run_id


# --- submit / list / interrupt / decisions (spec §4.3, §4.6, §4.8) --------------------------------------


@pytest.mark.django_db
def test_list_dispatches_returns_every_submitted_dispatch() -> None:
    """seed: list_dispatches_returns_entries"""
    results = [
        service.submit_background(
            RunRequest(thread_id="thread-list", messages=[ChatMessage.user("msg")], agent_id=f"agent-{i}")
        )
        for i in range(3)
    ]
    listed = service.list_dispatches("thread-list")
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
    assert service.list_dispatches("thread-list", [DispatchStatus.QUEUED]) == listed[1:]


@pytest.mark.django_db
def test_submit_background_reports_running_then_queued() -> None:
    """seed: submit_background_returns_correct_status"""
    first = service.submit_background(
        RunRequest(thread_id="thread-status", messages=[ChatMessage.user("a")], agent_id="agent-1")
    )
    assert first.status is service.SubmitStatus.RUNNING, "an idle thread is claimed inline"
    second = service.submit_background(
        RunRequest(thread_id="thread-status", messages=[ChatMessage.user("b")], agent_id="agent-1")
    )
    assert second.status is service.SubmitStatus.QUEUED
    assert store.load_dispatch(first.dispatch_id).status is DispatchStatus.CLAIMED  # type: ignore[union-attr]
    assert store.load_dispatch(second.dispatch_id).status is DispatchStatus.QUEUED  # type: ignore[union-attr]


@pytest.mark.django_db
def test_interrupt_bumps_dispatch_epoch(clean_redis: Any) -> None:
    """seed: interrupt_bumps_dispatch_epoch"""
    service.submit_background(
        RunRequest(thread_id="thread-int", messages=[ChatMessage.user("a")], agent_id="agent-1")
    )
    first = service.interrupt("thread-int")
    assert first.new_dispatch_epoch > 0
    assert store.current_dispatch_epoch("thread-int") == first.new_dispatch_epoch
    assert first.active_dispatch is not None, "the claimed dispatch is reported, not superseded"
    second = service.interrupt("thread-int")
    assert second.new_dispatch_epoch == first.new_dispatch_epoch + 1
    assert service.interrupt("thread-never-seen").new_dispatch_epoch == 1


@pytest.mark.django_db
def test_interrupt_marks_superseded_queued_runs_cancelled() -> None:
    """seed: interrupt_marks_superseded_queued_runs_cancelled"""
    first = _enqueue_prepared("thread-int-runs", "first")
    second = _enqueue_prepared("thread-int-runs", "second")
    details = service.interrupt_detailed("thread-int-runs")
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
    assert service.send_decision("nonexistent", "tc-1", _resume()) is False
    assert store.list_dispatches("nonexistent") == []
    assert run_store.load_run(run_id="nonexistent") is None
    # a known run that is not waiting on that tool call is not a target either
    _seed_run("run-known", "thread-known", RunStatus.DONE)
    assert service.send_decision("run-known", "tc-1", _resume()) is False
    assert store.list_dispatches("thread-known") == []


@pytest.mark.django_db
def test_foreground_submit_fails_when_another_consumer_holds_the_claim(settings: Any) -> None:
    """seed: submit_inline_claim_fails_when_thread_already_claimed"""
    settings.AWAKEN_REMOTE_CANCEL_WAIT_MS = 200
    settings.AWAKEN_LIVE_ACK_TIMEOUT_MS = LIVE_ACK_TIMEOUT_MS
    active = _enqueue_prepared("thread-clash", "first")
    claimed = store.claim_dispatch(active.dispatch_id, "other-host:4242", 30_000, now_ms())
    assert claimed is not None

    with pytest.raises(service.ActiveRunConflict):
        service.submit(RunRequest(thread_id="thread-clash", messages=[ChatMessage.user("second")]))

    assert _texts("thread-clash") == ["first"], "no new message"
    assert _run_count("thread-clash") == 1, "no new run"
    dispatches = store.list_dispatches("thread-clash")
    assert [d.dispatch_id for d in dispatches] == [active.dispatch_id], "no new dispatch"
    assert dispatches[0].status is DispatchStatus.CLAIMED
    assert dispatches[0].claim_token == claimed.claim_token
    assert store.current_dispatch_epoch("thread-clash") == 1, "the interrupt itself is not rolled back"


@pytest.mark.django_db
def test_foreground_submit_conflicts_when_own_claim_has_no_local_run(settings: Any) -> None:
    """seed: foreground_submit_does_not_prepare_replacement_when_local_cancel_times_out

    The claim belongs to this process's consumer id, but no local run and no live subscriber holds it:
    nothing can release it within the wait, so the submit answers 409 before writing anything.
    """

    settings.AWAKEN_REMOTE_CANCEL_WAIT_MS = 200
    active = _enqueue_prepared("thread-local-timeout", "active")
    assert store.claim_dispatch(active.dispatch_id, consumer_id(), 30_000, now_ms()) is not None

    with pytest.raises(service.ActiveRunConflict):
        service.submit(
            RunRequest(thread_id="thread-local-timeout", messages=[ChatMessage.user("replacement")])
        )

    assert _texts("thread-local-timeout") == ["active"]
    dispatches = store.list_dispatches("thread-local-timeout")
    assert [(d.dispatch_id, d.status) for d in dispatches] == [(active.dispatch_id, DispatchStatus.CLAIMED)]
    assert _run_count("thread-local-timeout") == 1


@pytest.mark.django_db
def test_foreground_submit_conflicts_when_remote_acks_cancel_but_keeps_claim(settings: Any) -> None:
    """seed: foreground_submit_does_not_prepare_replacement_when_remote_cancel_times_out"""
    settings.AWAKEN_REMOTE_CANCEL_WAIT_MS = 250
    active = _enqueue_prepared("thread-remote-timeout", "active")
    assert store.claim_dispatch(active.dispatch_id, "remote-host:1", 30_000, now_ms()) is not None
    captured: list[dict[str, Any]] = []
    target = LiveRunTarget(active.thread_id, active.run_id, active.dispatch_id)

    with _subscriber(target, accept=True, captured=captured), pytest.raises(service.ActiveRunConflict):
        service.submit(
            RunRequest(thread_id="thread-remote-timeout", messages=[ChatMessage.user("replacement")])
        )

    assert {"kind": "cancel"} in captured, "the remote run was asked to cancel"
    assert _texts("thread-remote-timeout") == ["active"]
    dispatches = store.list_dispatches("thread-remote-timeout")
    assert [(d.dispatch_id, d.status) for d in dispatches] == [(active.dispatch_id, DispatchStatus.CLAIMED)]
    assert _run_count("thread-remote-timeout") == 1


# --- live-then-queue against a run in another process (spec §4.4) ---------------------------------------


def _seed_remote_running_run(thread_id: str, run_id: str) -> LiveRunTarget:
    _seed_run(run_id, thread_id, RunStatus.RUNNING, dispatch_id=f"dispatch-of-{run_id}")
    return LiveRunTarget(thread_id, run_id, f"dispatch-of-{run_id}")


@pytest.mark.django_db
def test_live_then_queue_publishes_to_remote_running_run(settings: Any) -> None:
    """seed: live_then_queue_publishes_for_remote_active_run"""
    target = _seed_remote_running_run("thread-remote", "run-remote")
    captured: list[dict[str, Any]] = []
    with _subscriber(target, accept=True, captured=captured):
        result = service.submit_live_then_queue(
            RunRequest(
                thread_id="thread-remote", messages=[ChatMessage.user("steer-remote")], agent_id="agent"
            )
        )
    assert result.status is service.SubmitStatus.RUNNING
    assert result.run_id == "run-remote"
    assert result.dispatch_id == target.dispatch_id
    assert len(captured) == 1 and captured[0]["kind"] == "messages"
    assert [ChatMessage.model_validate(m).text for m in captured[0]["messages"]] == ["steer-remote"]
    assert store.list_dispatches("thread-remote") == [], "live delivery creates no dispatch"
    assert _texts("thread-remote") == ["steer-remote"]


@pytest.mark.django_db
def test_live_then_queue_falls_back_when_subscriber_drops_receipt(settings: Any) -> None:
    """seed: live_then_queue_falls_back_when_subscriber_drops_receipt"""
    settings.AWAKEN_LIVE_ACK_TIMEOUT_MS = LIVE_ACK_TIMEOUT_MS
    target = _seed_remote_running_run("thread-dropped", "run-dropped")
    captured: list[dict[str, Any]] = []
    with _subscriber(target, accept=False, captured=captured):
        result = service.submit_live_then_queue(
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
        result = service.submit_live_then_queue(
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
    assert _texts("thread-ack-lost") == ["steer-payload"], "persisted once"


@pytest.mark.django_db
def test_live_then_queue_never_steers_a_mismatched_expected_run(settings: Any) -> None:
    """seed: live_then_queue_rejects_remote_mismatched_expected_run_id"""
    target = _seed_remote_running_run("thread-mismatch", "run-actual")
    captured: list[dict[str, Any]] = []
    with _subscriber(target, accept=True, captured=captured):
        result = service.submit_live_then_queue(
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
    active = _enqueue_prepared("thread-live-fallback", "active")
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
        result = service.submit_live_then_queue(
            RunRequest(thread_id="thread-live-fallback", messages=[ChatMessage.user("fallback")])
        )
    assert len(captured) == 1
    assert result.status is service.SubmitStatus.QUEUED
    assert result.dispatch_id != active.dispatch_id
    assert _texts("thread-live-fallback").count("fallback") == 1, "persisted once"
    queued = store.list_dispatches("thread-live-fallback", [DispatchStatus.QUEUED])
    assert [d.dispatch_id for d in queued] == [result.dispatch_id]


# --- waiting-run reuse: always the durable store (spec §4.9 step 1, §7.10) ---------------------------


@pytest.mark.django_db
def test_user_input_waiting_run_is_reused_by_incoming_message() -> None:
    """seed: structured_user_input_waiting_thread_is_reused_by_incoming_message"""
    _seed_run("run-user-input", "thread-user-input", RunStatus.WAITING, waiting_reason="user_input")
    result = service.submit_background(
        RunRequest(thread_id="thread-user-input", messages=[ChatMessage.user("continue")], agent_id="agent")
    )
    assert result.run_id == "run-user-input"
    assert store.load_dispatch(result.dispatch_id).run_id == "run-user-input"  # type: ignore[union-attr]
    assert _run_count("thread-user-input") == 1
    run = run_store.load_run(run_id="run-user-input")
    assert run is not None and run.status is RunStatus.WAITING
    assert run.request is not None and run.request.input_message_count == 1


@pytest.mark.django_db
def test_reusable_waiting_run_prefers_open_run_over_latest_run() -> None:
    """seed: reusable_waiting_run_prefers_thread_open_run_projection_over_latest_run"""
    thread_id = "thread-open-projection"
    _seed_run(
        "run-newer-latest", thread_id, RunStatus.WAITING, waiting_reason="background_tasks", updated_at=20
    )
    _seed_run("run-open", thread_id, RunStatus.WAITING, waiting_reason="user_input", updated_at=10)
    thread = run_store.load_thread(thread_id=thread_id)
    assert thread is not None and thread.open_run_id == "run-open"
    assert run_store.latest_run(thread_id=thread_id).run_id == "run-newer-latest"  # type: ignore[union-attr]

    assert reusable_waiting_run_id(thread_id) == "run-open"
    result = service.submit_background(
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
    _seed_run(
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
    waiting = _seed_run(
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
    _seed_run("run-done", "thread-done-run", RunStatus.DONE, messages=(ChatMessage.user("hi"),))
    assert reusable_waiting_run_id("thread-done-run") is None
    _, run_id = _prepare("thread-done-run", "again")
    assert run_id != "run-done"
    with pytest.raises(ValidationError, match="not open for dispatch"):
        _prepare("thread-done-run", "forced", continue_run_id="run-done")


@pytest.mark.django_db
def test_prepare_updates_the_durable_thread_and_latest_run() -> None:
    """seed: thread_context_cache_updated_after_prepare_checkpoint"""
    _seed_run("run-prev", "thread-ctx-checkpoint", RunStatus.DONE, messages=(ChatMessage.user("first"),))
    _, run_id = _prepare("thread-ctx-checkpoint", "second", agent_id="agent")
    assert _texts("thread-ctx-checkpoint") == ["first", "second"]
    assert run_store.latest_run(thread_id="thread-ctx-checkpoint").run_id == run_id  # type: ignore[union-attr]
    thread = run_store.load_thread(thread_id="thread-ctx-checkpoint")
    assert thread is not None
    assert thread.latest_run_id == run_id and thread.open_run_id == run_id
    assert thread.message_count == 2


@pytest.mark.django_db
def test_prepare_and_reconstruct_use_the_durable_log() -> None:
    """seed: prepare_run_falls_back_to_store_without_cache"""
    _seed_run("run-prev", "thread-no-cache", RunStatus.DONE, messages=(ChatMessage.user("first"),))
    request, run_id = _prepare("thread-no-cache", "second", agent_id="agent")
    assert run_id and run_id != "run-prev"
    assert _texts("thread-no-cache") == ["first", "second"]
    reconstructed = reconstruct_run_request(build_dispatch(request, "thread-no-cache"))
    assert [m.text for m in reconstructed.messages] == ["second"]
    assert reconstructed.messages_already_persisted is True


@pytest.mark.django_db
def test_prepare_appends_after_the_active_runs_newer_output() -> None:
    """seed: prepare_run_uses_durable_messages_when_active_cache_is_stale"""
    active = _seed_run(
        "run-active", "thread-stale-log", RunStatus.RUNNING, messages=(ChatMessage.user("first"),)
    )
    snapshot_at_start = _texts("thread-stale-log")
    run_store.checkpoint(
        thread_id="thread-stale-log", messages=[ChatMessage.assistant("active output")], run=active
    )
    _, run_id = _prepare("thread-stale-log", "second", agent_id="agent")
    assert snapshot_at_start == ["first"]
    assert _texts("thread-stale-log") == ["first", "active output", "second"]
    run = run_store.load_run(run_id=run_id)
    assert run is not None and run.input is not None and run.input.range is not None
    assert (run.input.range.from_seq, run.input.range.to_seq) == (1, 3)


@pytest.mark.django_db
def test_run_context_reads_thread_messages_from_the_store() -> None:
    """seed: thread_context_load_populates_run_cache"""
    _seed_run("r1", "thread-load-test", RunStatus.DONE, messages=(ChatMessage.user("msg"),))
    context = _Context(
        ActiveRun(thread_id="thread-load-test", run_id="r1", dispatch_id="d1"),
        RunRequest(thread_id="thread-load-test"),
    )
    assert [m.text for m in context.thread_messages()] == ["msg"]
    run_store.append_messages(thread_id="thread-load-test", messages=[ChatMessage.user("later")])
    assert [m.text for m in context.thread_messages()] == ["msg", "later"], "never a stale snapshot"
    assert run_store.latest_run(thread_id="thread-load-test").run_id == "r1"  # type: ignore[union-attr]
    assert run_store.load_run(run_id="unknown") is None


# --- recovery, sweep, reconcile, GC (spec §4.15–§4.18) -------------------------------------------------


@pytest.mark.django_db
def test_recover_reconciles_runs_behind_cancelled_and_superseded_dispatches() -> None:
    """seed: recover_reconciles_terminal_cancelled_and_superseded_dispatches_after_crash"""
    cancelled = _enqueue_prepared("thread-reconcile-cancel", "cancel")
    superseded = _enqueue_prepared("thread-reconcile-supersede", "supersede")
    assert store.cancel(cancelled.dispatch_id, now_ms()) is not None
    assert store.interrupt("thread-reconcile-supersede", now_ms()).superseded_count == 1
    for submitted in (cancelled, superseded):
        before = run_store.load_run(run_id=submitted.run_id)
        assert before is not None and before.status is RunStatus.CREATED and before.dispatch_id is None

    report = maintenance.recover()
    assert (report.reclaimed, report.redriven, report.woken) == (0, 0, 0)
    assert report.reconciled == 2

    for submitted in (cancelled, superseded):
        run = run_store.load_run(run_id=submitted.run_id)
        assert run is not None and run.status is RunStatus.DONE
        assert run.termination_reason is not None and run.termination_reason.type == "cancelled"
        assert run.dispatch_id == submitted.dispatch_id
    assert maintenance.recover().reconciled == 0, "idempotent"


@pytest.mark.django_db
def test_sweep_dead_letters_expired_claim_at_max_attempts_and_errors_run() -> None:
    """seed: reclaim_dead_letter_marks_run_error"""
    dispatch = _enqueue_prepared("thread-reclaim-dead", "expire", max_attempts=1, available_at=1000)
    claimed = store.claim("thread-reclaim-dead", "stale-consumer", 100, 1000)
    assert len(claimed) == 1 and claimed[0].lease_until == 1100

    report = maintenance.sweep()
    assert (report.reclaimed, report.dead_lettered, report.reconciled) == (1, 1, 1)

    dead = store.load_dispatch(dispatch.dispatch_id)
    assert dead is not None and dead.status is DispatchStatus.DEAD_LETTER
    assert dead.attempt_count == 1
    run = run_store.load_run(run_id=dispatch.run_id)
    assert run is not None and run.status is RunStatus.DONE
    assert run.termination_reason is not None and run.termination_reason.type == "error"
    assert run.dispatch_id == dispatch.dispatch_id
    assert run.error_payload == {"message": dead.last_error}


@pytest.mark.django_db
def test_reconcile_task_repairs_run_left_behind_a_dead_letter() -> None:
    """seed: sweep_reconciles_dead_letter_dispatch_after_crash"""
    dispatch = _enqueue_prepared("thread-sweep-dead", "dead", available_at=1)
    claimed = store.claim("thread-sweep-dead", "stale-consumer", 100, now_ms())
    assert claimed and claimed[0].claim_token
    store.dead_letter(dispatch.dispatch_id, claimed[0].claim_token, "crashed after dead_letter", now_ms())
    before = run_store.load_run(run_id=dispatch.run_id)
    assert before is not None and before.status is RunStatus.CREATED

    assert tasks.reconcile() == 1  # the `mailbox.reconcile` beat task, every sweep interval

    run = run_store.load_run(run_id=dispatch.run_id)
    assert run is not None and run.status is RunStatus.DONE
    assert run.termination_reason is not None and run.termination_reason.type == "error"
    assert run.termination_reason.value == "crashed after dead_letter"
    assert run.error_payload == {"message": "crashed after dead_letter"}
    assert run.dispatch_id == dispatch.dispatch_id
    assert tasks.reconcile() == 0


@pytest.mark.django_db
def test_gc_is_harmless_when_empty_and_purges_only_old_terminal_rows(settings: Any) -> None:
    """seed: gc_idle_workers_noop_when_empty"""
    settings.AWAKEN_MAILBOX = MailboxConfig()
    assert maintenance.gc() == 0
    assert tasks.gc() == 0
    old = store.enqueue(
        DispatchRecord(
            dispatch_id="d-old", thread_id="thread-gc", run_id="r-old", created_at=1000, updated_at=1000
        )
    )
    token = store.claim("thread-gc", "c", 100, 1000)[0].claim_token
    assert token is not None
    store.ack(old.dispatch_id, token, 1000)
    fresh = _enqueue_prepared("thread-gc", "still queued")
    assert maintenance.gc() == 1
    assert store.load_dispatch("d-old") is None
    assert store.load_dispatch(fresh.dispatch_id).status is DispatchStatus.QUEUED  # type: ignore[union-attr]


@pytest.mark.django_db
def test_beat_schedule_rows_follow_config_and_keep_operator_switch(settings: Any) -> None:
    """seed: maintenance_callback_runs_on_gc_tick"""

    settings.AWAKEN_MAILBOX = MailboxConfig(sweep_interval_ms=7_000, gc_interval_ms=11_000)
    sync_periodic_tasks()
    rows = {p.name: p for p in PeriodicTask.objects.filter(name__in=list(PERIODIC_TASKS))}
    assert set(rows) == set(PERIODIC_TASKS)
    expected_every = {
        "mailbox.sweep": 7,
        "mailbox.reconcile": 7,
        "mailbox.gc": 11,
        "mailbox.redrive_webhooks": 7,
    }
    for row in rows.values():
        assert row.task in app.tasks, f"{row.task} must be a registered Celery task"
        assert row.interval is not None and row.interval.period == IntervalSchedule.SECONDS
        assert row.interval.every == expected_every[row.task]
        assert row.enabled
    assert sync_periodic_tasks() == 0, "idempotent"
    assert PeriodicTask.objects.filter(name__in=list(PERIODIC_TASKS)).count() == len(PERIODIC_TASKS) == 4

    gc_name = next(name for name, (task, _) in PERIODIC_TASKS.items() if task == "mailbox.gc")
    PeriodicTask.objects.filter(name=gc_name).update(enabled=False)
    settings.AWAKEN_MAILBOX = MailboxConfig(sweep_interval_ms=7_000, gc_interval_ms=13_000)
    assert sync_periodic_tasks() == 1
    gc_row = PeriodicTask.objects.get(name=gc_name)
    assert gc_row.interval is not None and gc_row.interval.every == 13
    assert gc_row.enabled is False, "an operator's switch survives a sync"


def test_startup_recovery_defaults_and_wiring() -> None:
    """seed: mailbox_lifecycle_config_defaults

    Startup recovery is the worker_ready hook; without AWAKEN_* overrides it makes 3 attempts 250 ms
    apart (the reference defaults to 1 attempt; ours retries a briefly unavailable database).
    """

    env = {k: v for k, v in os.environ.items() if not k.startswith("AWAKEN_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    probe = (
        "import awaken_project.settings as s; "
        "print(s.AWAKEN_STARTUP_RECOVERY_MAX_ATTEMPTS, s.AWAKEN_STARTUP_RECOVERY_RETRY_DELAY_MS)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert out == ["3", "250"]
    receivers = [key for key, _ in worker_ready.receivers]
    assert any(key[0] == "mailbox_recover" for key in receivers), "startup recovery runs on worker_ready"


# --- event stream reconnects (spec §4.21 reconnect_sink → Redis Streams) -------------------------------


def test_reading_events_of_an_unknown_run_yields_nothing(clean_redis: Any) -> None:
    """seed: reconnect_sink_returns_false_for_unknown_thread"""
    assert events.has_stream("run-never-existed") is False
    assert events.read_events("run-never-existed") == []
    assert events.read_events("run-never-existed", after="0-0", block_ms=50) == []


def test_reconnecting_to_a_finished_run_replays_but_yields_nothing_new(clean_redis: Any) -> None:
    """seed: reconnect_sink_returns_false_for_idle_worker"""
    start_id = events.append_event("run-idle", "run_start", {"run_id": "run-idle"})
    finish_id = events.append_event("run-idle", events.RUN_FINISH, {"run_id": "run-idle"})
    assert [e.id for e in events.read_events("run-idle")] == [start_id, finish_id]
    assert [e.type for e in events.read_events("run-idle", after=start_id)] == [events.RUN_FINISH]
    assert events.read_events("run-idle", after=finish_id) == []
    assert events.read_events("run-idle", after=finish_id, block_ms=50) == []
