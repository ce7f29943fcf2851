"""RunRequest and its inputs (mailbox_app/contract/requests.py): defaults, `validate_run_inputs`, and
RunRequestExtras' JSON round trip (spec §1.12, §4.1).
"""

from __future__ import annotations

import json
import uuid

import pytest

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
from mailbox_app.contract.storage import InvalidInput
from mailbox_app.services import mailbox
from tests.support.runs import FRONTEND_TOOL, resume_decision


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
    with pytest.raises(InvalidInput, match="at least one message is required"):
        validate_run_inputs("thread-1", [], allow_empty=False)
    with pytest.raises(InvalidInput, match="at least one message is required"):
        mailbox.submit_background(RunRequest(thread_id="thread-1"))


def test_validation_allows_decision_only_resume() -> None:
    """seed: run_spec_validation_allows_decision_only_resume"""
    thread_id, messages = validate_run_inputs("thread-1", [], allow_empty=True)
    assert thread_id == "thread-1"
    assert messages == []
    decision_only = RunRequest(thread_id="thread-1", decisions=[("call-1", resume_decision())])
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


def test_request_extras_capture_decisions() -> None:
    """seed: build_dispatch_extras_roundtrip_with_decisions"""
    decisions = [("call-1", resume_decision("d-1"))]
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
