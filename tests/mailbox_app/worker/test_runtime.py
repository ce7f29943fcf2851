"""The run context an agent gets (mailbox_app/worker/runtime.py): its emits are fenced and forwarded, a
suspended tool call sets the attempt's flag, and it reads the thread's messages from the store.
"""

from __future__ import annotations

from typing import Any

import pytest

from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import RunRequest
from mailbox_app.realtime import events
from mailbox_app.realtime.locks import ThreadLock
from mailbox_app.worker.runtime import ActiveRun, AttemptContext
from runs_app import store as run_store
from tests.support.runs import seed_run


def test_context_emit_tracks_suspension_and_forwards_events(clean_redis: Any) -> None:
    """seed: suspension_aware_sink_sets_flag_on_suspended_tool_call"""
    # the attempt holds the thread (its emits are fenced by the thread lock's claim token)
    assert ThreadLock("thread-susp", "token-susp", 30_000).acquire()
    active = ActiveRun(
        thread_id="thread-susp", run_id="run-susp", dispatch_id="dispatch-susp", claim_token="token-susp"
    )
    context = AttemptContext(active, RunRequest(thread_id="thread-susp"))

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


@pytest.mark.django_db
def test_run_context_reads_thread_messages_from_the_store() -> None:
    """seed: thread_context_load_populates_run_cache"""
    seed_run("r1", "thread-load-test", RunStatus.DONE, messages=(ChatMessage.user("msg"),))
    context = AttemptContext(
        ActiveRun(thread_id="thread-load-test", run_id="r1", dispatch_id="d1"),
        RunRequest(thread_id="thread-load-test"),
    )
    assert [m.text for m in context.thread_messages()] == ["msg"]
    run_store.append_messages(thread_id="thread-load-test", messages=[ChatMessage.user("later")])
    assert [m.text for m in context.thread_messages()] == ["msg", "later"], "never a stale snapshot"
    assert run_store.latest_run(thread_id="thread-load-test").run_id == "r1"  # type: ignore[union-attr]
    assert run_store.load_run(run_id="unknown") is None
