"""Interrupts and cancels close what they leave open (issue 10, item 2): a run ended while a tool call is
open — cancelled live, superseded by a foreground submit, dead-lettered, cancelled while waiting — leaves
its partial output and a cancelled result per open call in the history, written with its end; the next
run on the thread gets a history in which every tool call has a result."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from mailbox_app import store
from mailbox_app.agents.base import ResolveFailed, RunContext, RunResult
from mailbox_app.contract import history
from mailbox_app.contract.history import RunTranscript, closing_messages, open_tool_calls
from mailbox_app.contract.ids import now_ms
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchRecord, DispatchStatus
from mailbox_app.contract.message import ChatMessage, Role, ToolCall, Visibility
from mailbox_app.contract.requests import RunRequest
from mailbox_app.contract.storage import RunRecord, TerminationReason
from mailbox_app.contract.suspension import RunWaitingState, WaitingTicket
from mailbox_app.services import mailbox
from mailbox_app.services.reconcile import terminalize_run_for_dispatch
from runs_app import store as run_store
from tests.support.agents import TEST_AGENTS
from tests.support.api import post_json, user_client
from tests.support.waiting import wait_until

TOOL_STARTED = threading.Event()
SEEN: dict[str, list[ChatMessage]] = {}  # thread id -> the history the probe agent's run was given
CANCELLED = TerminationReason(type="cancelled")


class ToolCallAgent:
    """Says a few words, opens a tool call `lookup`, then — by the user's text — hangs until cancelled
    (`hang`), fails permanently (`crash`, dead-lettered) or ends as a timed-out run does (`timeout`)."""

    def run(self, request: RunRequest, context: RunContext) -> RunResult:
        text = next((m.text for m in reversed(request.messages) if m.role is Role.USER), "")
        context.emit("text_delta", {"delta": "Let me"})
        context.emit("text_delta", {"delta": " look"})
        context.emit(
            "tool_call_start", {"tool_call_id": "call-1", "name": "lookup", "arguments": {"q": text}}
        )
        TOOL_STARTED.set()
        if text == "crash":
            raise ResolveFailed("lookup backend gone")
        if text == "timeout":
            return RunResult(termination=TerminationReason(type="timeout"))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if context.wait_cancelled(0.02):
                return RunResult(termination=CANCELLED)
        return RunResult(final_output="never")


class ProbeAgent:
    """Records the history its run is given (what its model call would be sent), then answers."""

    def run(self, request: RunRequest, context: RunContext) -> RunResult:
        SEEN[context.thread_id] = context.thread_messages()
        return RunResult(final_output="ok", messages=(ChatMessage.assistant("ok"),))


@pytest.fixture
def agents(mailbox_worker: Any, engine_settings: Any) -> Any:
    engine_settings.AWAKEN_AGENTS = {
        **TEST_AGENTS,
        "toolcall": f"{__name__}.ToolCallAgent",
        "probe": f"{__name__}.ProbeAgent",
    }
    TOOL_STARTED.clear()
    SEEN.clear()
    return engine_settings


def _request(thread_id: str, text: str, agent_id: str) -> RunRequest:
    return RunRequest(thread_id=thread_id, messages=[ChatMessage.user(text)], agent_id=agent_id)


def _run_done(run_id: str) -> RunRecord | None:
    run = run_store.load_run(run_id=run_id)
    return run if run is not None and run.status is RunStatus.DONE else None


def _log(thread_id: str) -> list[ChatMessage]:
    return run_store.load_messages(thread_id=thread_id) or []


def _assert_closed(messages: list[ChatMessage], run_id: str, call_id: str, reason: str) -> None:
    """The run's partial assistant message carries the call; the tool result right after it closes it."""
    at = next(i for i, m in enumerate(messages) if m.tool_calls)
    partial, result = messages[at], messages[at + 1]
    assert history.is_partial(partial) and partial.role is Role.ASSISTANT
    assert (partial.metadata or {}).get("run_id") == run_id
    assert [c.id for c in partial.tool_calls or []] == [call_id]
    assert result.role is Role.TOOL and result.tool_call_id == call_id
    assert result.visibility is Visibility.INTERNAL
    assert json.loads(result.text) == {"status": "cancelled", "reason": reason}
    assert open_tool_calls(messages) == []


def _next_run_history(thread_id: str) -> list[ChatMessage]:
    """Submit the thread's next run through the normal path and return the history it was given."""
    nxt = mailbox.submit_background(_request(thread_id, "next", "probe"))
    wait_until(lambda: _run_done(nxt.run_id), what="next run done")
    seen = SEEN[thread_id]
    assert open_tool_calls(seen) == [], "the next run's model call would carry an unanswered tool call"
    assert seen[-1].text == "next"
    return seen


# --- end to end on a real worker ---------------------------------------------------------------------


def test_live_cancel_closes_the_open_tool_call_and_keeps_the_partial_text(agents: Any) -> None:
    # given a running run with an open tool call
    submitted = mailbox.submit_background(_request("t-hr-cancel", "hang", "toolcall"))
    assert TOOL_STARTED.wait(10)
    # when it is cancelled live
    assert mailbox.cancel(mailbox.RunTarget(submitted.run_id))
    run = wait_until(lambda: _run_done(submitted.run_id), what="cancelled run done")
    # then the history closes the call, written with the run's end
    assert run.termination_reason is not None and run.termination_reason.type == "cancelled"
    log = _log("t-hr-cancel")
    assert [m.role for m in log] == [Role.USER, Role.ASSISTANT, Role.TOOL]
    assert log[1].text == "Let me look"
    _assert_closed(log, submitted.run_id, "call-1", "cancelled")
    # and the API's view hides the internal result, the model's does not
    visible, _ = run_store.list_message_records(thread_id="t-hr-cancel")
    assert [r.message.role for r in visible] == [Role.USER, Role.ASSISTANT]
    seen = _next_run_history("t-hr-cancel")
    assert [m.role for m in seen] == [Role.USER, Role.ASSISTANT, Role.TOOL, Role.USER]


def test_foreground_submit_supersedes_and_closes_before_the_new_message(agents: Any) -> None:
    # given a running run with an open tool call
    first = mailbox.submit_background(_request("t-hr-fg", "hang", "toolcall"))
    assert TOOL_STARTED.wait(10)
    # when a foreground submit interrupts the thread
    second = mailbox.submit(_request("t-hr-fg", "next", "probe"))
    wait_until(lambda: _run_done(second.run_id), what="foreground run done")
    # then the superseded run is cancelled and its call closed before the new user message was appended
    old = _run_done(first.run_id)
    assert old is not None and old.termination_reason is not None
    assert old.termination_reason.type == "cancelled"
    assert store.load_dispatch(first.dispatch_id).status is DispatchStatus.SUPERSEDED  # type: ignore[union-attr]
    seen = SEEN["t-hr-fg"]
    assert [m.role for m in seen] == [Role.USER, Role.ASSISTANT, Role.TOOL, Role.USER]
    _assert_closed(seen, first.run_id, "call-1", "superseded")


def test_interrupt_through_the_api_closes_the_call_and_the_api_shows_the_partial_output(agents: Any) -> None:
    # given a user's running run with an open tool call
    client = user_client("dangling")
    answer = post_json(
        client,
        "/api/v1/threads/t-hr-api/mailbox",
        {"messages": [{"role": "user", "content": "hang"}], "agent_id": "toolcall"},
    )
    assert answer.status_code == 201, answer.content
    run_id = answer.json()["run_id"]
    assert TOOL_STARTED.wait(10)
    # when the thread is interrupted over HTTP
    assert client.post("/api/v1/threads/t-hr-api/interrupt").status_code == 202
    wait_until(lambda: _run_done(run_id), what="interrupted run done")
    # then an API consumer sees the partial output, and only the model's view holds the internal result
    public = client.get("/api/v1/threads/t-hr-api/messages").json()["items"]
    assert [(m["role"], m["partial"]) for m in public] == [("user", False), ("assistant", True)]
    assert public[1]["content"] == "Let me look"
    assert [c["id"] for c in public[1]["tool_calls"]] == ["call-1"]
    everything = client.get("/api/v1/threads/t-hr-api/messages?visibility=all").json()["items"]
    result = everything[2]
    assert (result["role"], result["tool_call_id"], result["visibility"]) == ("tool", "call-1", "internal")
    assert json.loads(result["content"]) == {"status": "cancelled", "reason": "superseded"}
    _next_run_history("t-hr-api")


def test_dead_letter_closes_the_open_tool_call(agents: Any) -> None:
    submitted = mailbox.submit_background(_request("t-hr-dead", "crash", "toolcall"))
    run = wait_until(lambda: _run_done(submitted.run_id), what="dead-lettered run done")
    assert run.termination_reason is not None and run.termination_reason.type == "error"
    assert store.load_dispatch(submitted.dispatch_id).status is DispatchStatus.DEAD_LETTER  # type: ignore[union-attr]
    _assert_closed(_log("t-hr-dead"), submitted.run_id, "call-1", "dead letter: lookup backend gone")
    _next_run_history("t-hr-dead")


def test_a_timed_out_run_closes_its_open_tool_call_in_its_finish(agents: Any) -> None:
    submitted = mailbox.submit_background(_request("t-hr-timeout", "timeout", "toolcall"))
    run = wait_until(lambda: _run_done(submitted.run_id), what="timed-out run done")
    assert run.termination_reason is not None and run.termination_reason.type == "timeout"
    _assert_closed(_log("t-hr-timeout"), submitted.run_id, "call-1", "timeout")
    _next_run_history("t-hr-timeout")


def test_cancel_of_a_waiting_run_answers_its_suspended_call(agents: Any) -> None:
    # given a run suspended on a tool call (echo's `ask`), waiting durably for a decision
    submitted = mailbox.submit_background(_request("t-hr-wait", "ask may I?", "echo"))
    waiting = wait_until(
        lambda: (r := run_store.load_run(run_id=submitted.run_id)) and r.status is RunStatus.WAITING and r,
        what="run waiting",
    )
    call_id = waiting.waiting.tickets[0].tool_call_id  # type: ignore[union-attr]
    assert open_tool_calls(_log("t-hr-wait")) == []  # suspension writes no dangling call
    # when its owner cancels it
    assert mailbox.cancel(mailbox.RunTarget(submitted.run_id))
    # then the suspended call is in the history with a cancelled result, in the same transaction
    done = _run_done(submitted.run_id)
    assert done is not None and done.termination_reason is not None
    assert done.termination_reason.type == "cancelled"
    log = _log("t-hr-wait")
    _assert_closed(log, submitted.run_id, call_id, "cancelled")
    partial = next(m for m in log if m.tool_calls)
    assert partial.tool_calls == [ToolCall(id=call_id, name="approve", arguments={"question": "may I?"})]
    _next_run_history("t-hr-wait")


def test_a_waiting_run_ended_by_its_superseded_resume_closes_its_tickets(agents: Any) -> None:
    """The terminalize path of interrupt / sweep / reconcile, run by a process that never ran the agent:
    what it can know is the waiting run's tickets, and it closes those in the statement that ends it."""
    submitted = mailbox.submit_background(_request("t-hr-resume", "ask go?", "echo"))
    waiting = wait_until(
        lambda: (r := run_store.load_run(run_id=submitted.run_id)) and r.status is RunStatus.WAITING and r,
        what="run waiting",
    )
    now = now_ms()
    resume = DispatchRecord(
        dispatch_id="resume-superseded",
        thread_id="t-hr-resume",
        run_id=submitted.run_id,
        status=DispatchStatus.SUPERSEDED,
        created_at=now,
        updated_at=now,
        completed_at=now,
    )
    ended = terminalize_run_for_dispatch(resume, now=now)
    assert ended is not None and ended.status is RunStatus.DONE
    call_id = waiting.waiting.tickets[0].tool_call_id  # type: ignore[union-attr]
    _assert_closed(_log("t-hr-resume"), submitted.run_id, call_id, "superseded")
    assert terminalize_run_for_dispatch(resume, now=now) is None  # a second end writes nothing more
    assert len(_log("t-hr-resume")) == 3
    _next_run_history("t-hr-resume")


def test_a_run_that_completes_naturally_is_left_as_it_wrote_itself(agents: Any) -> None:
    submitted = mailbox.submit_background(_request("t-hr-natural", "hello", "echo"))
    wait_until(lambda: _run_done(submitted.run_id), what="run done")
    log = _log("t-hr-natural")
    assert [m.text for m in log] == ["hello", "echo: hello"]
    assert not any(history.is_partial(m) for m in log)


# --- closing_messages (pure) ------------------------------------------------------------------------


def _transcript(*events: tuple[str, dict[str, Any]]) -> RunTranscript:
    transcript = RunTranscript()
    for event_type, data in events:
        transcript.record(event_type, data)
    return transcript


def test_closing_keeps_finished_results_and_cancels_open_and_suspended_calls() -> None:
    transcript = _transcript(
        ("text_delta", {"delta": "checking"}),
        ("tool_call_start", {"tool_call_id": "a", "name": "search", "arguments": {"q": "x"}}),
        ("tool_call_done", {"tool_call_id": "a", "status": "ok", "result": {"hits": 2}}),
        ("tool_call_start", {"tool_call_id": "b", "name": "approve", "question": "ok?"}),
        ("tool_call_done", {"tool_call_id": "b", "status": "suspended"}),
        ("tool_call_start", {"tool_call_id": "c", "name": "fetch"}),
    )
    closing = closing_messages(run_id="r1", reason="timeout", transcript=transcript)
    partial, *results = closing
    assert partial.text == "checking" and history.is_partial(partial)
    assert [(c.id, c.name, c.arguments) for c in partial.tool_calls or []] == [
        ("a", "search", {"q": "x"}),
        ("b", "approve", {"question": "ok?"}),
        ("c", "fetch", {}),
    ]
    assert [(m.tool_call_id, json.loads(m.text), m.visibility) for m in results] == [
        ("a", {"hits": 2}, Visibility.ALL),
        ("b", {"status": "cancelled", "reason": "timeout"}, Visibility.INTERNAL),
        ("c", {"status": "cancelled", "reason": "timeout"}, Visibility.INTERNAL),
    ]
    assert open_tool_calls(closing) == []


def test_closing_respects_what_the_run_wrote_itself() -> None:
    transcript = _transcript(
        ("text_delta", {"delta": "partial words"}),
        ("tool_call_start", {"tool_call_id": "a", "name": "search"}),
        ("tool_call_start", {"tool_call_id": "b", "name": "fetch"}),
    )
    produced = [
        ChatMessage.assistant("my own words", tool_calls=[ToolCall(id="a", name="search")]),
        ChatMessage(role=Role.TOOL, content="found", tool_call_id="a"),
        ChatMessage.assistant("more", tool_calls=[ToolCall(id="z", name="other")]),
    ]
    closing = closing_messages(run_id="r1", reason="cancelled", transcript=transcript, produced=produced)
    partial, *results = closing
    assert partial.text == "" and [c.id for c in partial.tool_calls or []] == ["b"]
    assert [m.tool_call_id for m in results] == ["b", "z"]
    assert open_tool_calls([*produced, *closing]) == []


def test_closing_a_waiting_run_uses_its_tickets_and_nothing_open_means_nothing() -> None:
    ticket = WaitingTicket(ticket_id="t", tool_call_id="call-9", tool_name="approve", arguments={"q": 1})
    run = RunRecord(
        run_id="r9",
        thread_id="th",
        status=RunStatus.WAITING,
        waiting=RunWaitingState(reason="tool_permission", ticket_ids=["t"], tickets=[ticket]),
    )
    closing = history.closer("cancelled")(run)
    assert [c.id for c in closing[0].tool_calls or []] == ["call-9"]
    assert closing[1].tool_call_id == "call-9"
    assert closing_messages(run_id="r", reason="cancelled", transcript=RunTranscript()) == []
    assert history.closer("cancelled")(run.model_copy(update={"waiting": None})) == []
