"""The front-end protocol adapters as pure transforms of a run's event stream (no server): what a resume
point sends first, a retry, a run that ended before it started, and the frame ids a client resumes from;
front ends' own submit bodies; an AG-UI resume that cannot be delivered. The official clients read the
same adapters from the real server in test_frontends.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from rest_framework.test import APIClient

from mailbox_app.realtime.events import RunEvent
from runs_app.api.protocols import selection
from runs_app.api.protocols.framing import KEEPALIVE
from tests.support.api import post_json

RUN, THREAD = "run-1", "thread-1"
FINISH_DONE = {"status": "done", "termination": {"type": "natural_end"}, "final_output": "echo: hi there"}


def _events(*items: tuple[str, dict[str, Any]] | None) -> list[RunEvent | None]:
    return [
        None if item is None else RunEvent(id=f"{i + 1}-0", type=item[0], data=item[1])
        for i, item in enumerate(items)
    ]


def _stream(protocol: str, items: list[RunEvent | None], *, after: str = "0-0") -> list[str]:
    async def source() -> AsyncIterator[RunEvent | None]:
        for item in items:
            yield item

    async def collect() -> list[str]:
        encoded = selection.encode(protocol, source(), run_id=RUN, thread_id=THREAD, resume_after=after)
        return [text async for text in encoded]

    return asyncio.run(collect())


def _chunks(texts: list[str]) -> list[Any]:
    data = [line[6:] for text in texts for line in text.split("\n") if line.startswith("data: ")]
    return [json.loads(d) for d in data if d != "[DONE]"]


def _ids(texts: list[str]) -> list[str]:
    return [line[4:] for text in texts for line in text.split("\n") if line.startswith("id: ")]


TEXT_RUN = _events(
    ("run_start", {"run_id": RUN, "dispatch_id": "d-1"}),
    ("text_delta", {"delta": "echo:"}),
    None,
    ("text_delta", {"delta": " hi"}),
    ("text_delta", {"delta": " there"}),
    ("run_finish", FINISH_DONE),
)


def test_ai_sdk_frames_a_text_run_with_one_id_per_event_on_its_last_frame() -> None:
    texts = _stream("ai-sdk", TEXT_RUN)
    assert [c["type"] for c in _chunks(texts)] == [
        "start", "text-start", "text-delta", "text-delta", "text-delta", "text-end", "finish",
    ]  # fmt: skip
    assert _ids(texts) == ["1-0", "2-0", "4-0", "5-0", "6-0"]
    assert KEEPALIVE in texts and texts[-1] == "data: [DONE]\n\n"
    assert texts[1].index("text-start") < texts[1].index("id: 2-0") < texts[1].index("text-delta")


@pytest.mark.parametrize("protocol", ["ai-sdk", "ag-ui"])
def test_a_resume_mid_text_reopens_the_message_and_its_text_part_first(protocol: str) -> None:
    resumed = _chunks(_stream(protocol, TEXT_RUN, after="2-0"))
    if protocol == "ai-sdk":
        assert [c["type"] for c in resumed][:3] == ["start", "text-start", "text-delta"]
        assert resumed[0]["messageId"] == RUN
        assert "".join(c["delta"] for c in resumed if c["type"] == "text-delta") == " hi there"
    else:
        assert [c["type"] for c in resumed][:3] == [
            "RUN_STARTED",
            "TEXT_MESSAGE_START",
            "TEXT_MESSAGE_CONTENT",
        ]
        assert resumed[1]["messageId"] == "msg-2-0"  # the same message id as the first response's
        assert "".join(c["delta"] for c in resumed if c["type"] == "TEXT_MESSAGE_CONTENT") == " hi there"
        assert resumed[-1]["type"] == "RUN_FINISHED" and resumed[-1]["result"] == "echo: hi there"


def test_a_retry_closes_the_text_and_the_next_attempt_goes_on_in_the_same_run() -> None:
    items = _events(
        ("run_start", {}),
        ("text_delta", {"delta": "partial"}),
        ("run_retry", {"attempt": 1, "retry_at": 5, "error": "boom"}),
        ("run_start", {}),
        ("text_delta", {"delta": "whole"}),
        ("run_finish", FINISH_DONE),
    )
    ag_ui = [c["type"] for c in _chunks(_stream("ag-ui", items))]
    assert ag_ui.count("RUN_STARTED") == 1 and ag_ui.count("TEXT_MESSAGE_START") == 2
    assert ag_ui.index("TEXT_MESSAGE_END") < ag_ui.index("CUSTOM") < ag_ui.index("RUN_FINISHED")
    ai_sdk = _chunks(_stream("ai-sdk", items))
    assert [c["type"] for c in ai_sdk].count("start") == 1
    assert next(c for c in ai_sdk if c["type"] == "data-retry")["data"]["error"] == "boom"


@pytest.mark.parametrize(
    ("termination", "ag_ui_last", "ai_sdk_tail"),
    [
        (
            {"type": "cancelled"},
            {"type": "RUN_FINISHED", "outcome": {"type": "cancelled"}},
            ["abort", "finish"],
        ),
        ({"type": "error", "value": "dead"}, {"type": "RUN_ERROR", "message": "dead"}, ["error", "finish"]),
    ],
)
def test_a_run_that_ended_before_it_started_still_opens_and_closes(
    termination: dict[str, Any], ag_ui_last: dict[str, Any], ai_sdk_tail: list[str]
) -> None:
    items = _events(("run_finish", {"status": "done", "termination": termination}))
    ag_ui = _chunks(_stream("ag-ui", items))
    assert ag_ui[0]["type"] == "RUN_STARTED" and ag_ui[0]["threadId"] == THREAD
    assert ag_ui_last.items() <= ag_ui[-1].items()
    assert [c["type"] for c in _chunks(_stream("ai-sdk", items))] == ["start", *ai_sdk_tail]


def test_a_suspended_tool_call_is_an_approval_request_and_an_interrupt() -> None:
    items = _events(
        ("run_start", {}),
        ("tool_call_start", {"tool_call_id": "c1", "name": "approve", "question": "ok?"}),
        ("tool_call_done", {"tool_call_id": "c1", "status": "suspended"}),
        ("run_finish", {"status": "waiting", "termination": {"type": "suspended"}}),
    )
    ai_sdk = _chunks(_stream("ai-sdk", items))
    assert {"type": "tool-approval-request", "approvalId": "c1", "toolCallId": "c1"} in ai_sdk
    assert ai_sdk[-1]["finishReason"] == "tool-calls"
    finished = _chunks(_stream("ag-ui", items))[-1]
    assert finished["outcome"] == {
        "type": "interrupt",
        "interrupts": [{"id": "c1", "reason": "tool_call", "toolCallId": "c1", "message": "ok?"}],
    }


def test_unknown_events_pass_through_without_entering_the_message() -> None:
    items = _events(("run_start", {}), ("custom_thing", {"x": 1}), ("run_finish", FINISH_DONE))
    assert {
        "type": "data-run-event",
        "data": {"type": "custom_thing", "data": {"x": 1}},
        "transient": True,
    } in (_chunks(_stream("ai-sdk", items)))
    raw = _chunks(_stream("ag-ui", items))[1]
    assert raw["type"] == "RAW" and raw["event"] == {"type": "custom_thing", "data": {"x": 1}}


def test_a_front_ends_own_submit_body_becomes_its_new_user_messages() -> None:
    ui_messages = [
        {"id": "u1", "role": "user", "parts": [{"type": "text", "text": "one"}]},
        {"id": "a1", "role": "assistant", "parts": [{"type": "text", "text": "echo: one"}]},
        {
            "id": "u2",
            "role": "user",
            "parts": [{"type": "text", "text": "t"}, {"type": "text", "text": "wo"}],
        },
    ]
    use_chat = {"id": "chat-1", "messages": ui_messages, "trigger": "submit-message", "agent_id": "echo"}
    assert selection.submit_body("ai-sdk", use_chat) == {
        "agent_id": "echo",
        "thread_id": "chat-1",
        "messages": [{"role": "user", "content": "two"}],
    }
    run_agent_input = {
        "threadId": "t-9",
        "runId": "client-run",
        "state": {},
        "tools": [],
        "messages": [
            {"id": "a0", "role": "assistant", "content": "hi"},
            {"id": "tool", "role": "tool", "content": "{}", "toolCallId": "c1"},
            {"id": "u1", "role": "user", "content": [{"type": "text", "text": "parts"}]},
            {"id": "u2", "role": "user", "content": "plain"},
        ],
    }
    assert selection.submit_body("ag-ui", run_agent_input) == {
        "thread_id": "t-9",
        "messages": [{"role": "user", "content": "parts"}, {"role": "user", "content": "plain"}],
    }
    ours = {"messages": [{"role": "user", "content": "x"}], "stream": True}
    assert selection.submit_body("ai-sdk", ours) is ours and selection.submit_body("ag-ui", ours) is ours
    assert selection.submit_body("native", use_chat) is use_chat


@pytest.mark.django_db
def test_an_ag_ui_resume_that_cannot_be_delivered_is_a_4xx_naming_what(
    alice: APIClient, bob: APIClient
) -> None:
    url = "/api/v1/threads/t-resume/runs?protocol=ag-ui"
    body = {"threadId": "t-resume", "messages": [{"id": "a", "role": "assistant", "content": "hi"}]}
    entry = {"interruptId": "call-1", "status": "resolved", "payload": {}}
    bad = post_json(alice, url, body | {"resume": [{"interruptId": "call-1", "status": "maybe"}]})
    assert bad.status_code == 400 and bad.json()["field"] == "resume"
    assert post_json(alice, url, body | {"resume": [entry]}).status_code == 404  # no such thread (yet)
    created = post_json(
        alice, "/api/v1/threads/t-resume/mailbox", {"messages": [{"role": "user", "content": "x"}]}
    )
    assert created.status_code == 201
    not_waiting = post_json(alice, url, body | {"resume": [entry]})
    assert not_waiting.status_code == 409 and not_waiting.json()["code"] == "not_waiting"
    assert post_json(bob, url, body | {"resume": [entry]}).status_code == 404  # not bob's thread
