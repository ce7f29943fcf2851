"""One tool call takes one decision (issue 18 item 7): a double-clicked Approve runs the agent's turn once.

Ten decisions for one waiting tool call are posted at once through the HTTP API, from ten threads: one
is answered 202 and nine 409 `already_decided`, the agent resumes once (one activation, one
`tool_call_resumed`), and the log holds one "approved" reply. Once for a run waiting durably (no worker
holds it: the decisions race to queue its resume), once for a run suspended live in a worker (they race
to be delivered to it). And the run store's half of it: a finished run is never started again, by
either start statement.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.db import connection
from rest_framework.test import APIClient

from mailbox_app import store
from mailbox_app.contract.ids import consumer_id, now_ms
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchStatus
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import RunRequest
from mailbox_app.contract.storage import RunRecord
from mailbox_app.realtime import events
from mailbox_app.services import mailbox
from mailbox_app.store.runs_tables import attempt as fused
from mailbox_app.worker import attempt, execution
from runs_app import store as run_store
from runs_app.models import RunDecision
from tests.support.api import new_user, post_json, token_client
from tests.support.dispatches import FAST, make_dispatch
from tests.support.waiting import wait_until

SENDERS = 10
LIVE = [DispatchStatus.QUEUED, DispatchStatus.CLAIMED]


def _run(run_id: str) -> RunRecord:
    run = run_store.load_run(run_id=run_id)
    assert run is not None
    return run


def _waiting(run_id: str) -> RunRecord | None:
    run = _run(run_id)
    return run if run.status is RunStatus.WAITING and run.waiting is not None else None


def _tool_call_started(run_id: str) -> str:
    """The id of the tool call the run asked, "" until it has."""
    start = next((e for e in events.read_events(run_id) if e.type == "tool_call_start"), None)
    return "" if start is None else str(start.data["tool_call_id"])


def _hang_up(response: Any) -> None:
    """Close a streaming response unread, as a client that goes away (its body is an async iterator)."""

    async def close() -> None:
        await response.streaming_content.aclose()

    async_to_sync(close)()


def _all_at_once(count: int, send: Callable[[int], Any]) -> list[Any]:
    """`send(k)` for k in 0..count-1, each in its own thread, released together by a barrier."""
    barrier = threading.Barrier(count)
    answers: list[Any] = [None] * count

    def body(k: int) -> None:
        try:
            barrier.wait(10)
            answers[k] = send(k)
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            answers[k] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=body, args=(k,)) for k in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return answers


def _decide_ten_times(client: APIClient, path: str, call_id: str) -> list[Any]:
    def send(k: int) -> Any:
        body = {"tool_call_id": call_id, "action": "resume", "payload": {"click": k}}
        return post_json(client, path, body)

    answers = _all_at_once(SENDERS, send)
    bad = [a for a in answers if isinstance(a, BaseException)]
    assert not bad, bad
    return answers


def _assert_one_accepted(answers: list[Any], call_id: str) -> int:
    """Exactly one 202 and nine 409 already_decided; the accepted click's number."""
    codes = sorted(a.status_code for a in answers)
    assert codes == [202] + [409] * (SENDERS - 1), [(a.status_code, a.content) for a in answers]
    for refused in (a for a in answers if a.status_code == 409):
        body = refused.json()
        assert body["code"] == "already_decided" and body["field"] == "tool_call_id", body
        assert call_id in body["error"]
    (accepted,) = [k for k, a in enumerate(answers) if a.status_code == 202]
    return accepted


def _assert_resumed_once(thread_id: str, run_id: str, click: int, *, activations: int) -> None:
    run = wait_until(
        lambda: (r := _run(run_id)).status is RunStatus.DONE and r, timeout=30, what="the decided run done"
    )
    assert run.final_output == f'approved: {{"click": {click}}}'
    wait_until(lambda: store.list_dispatches(thread_id, LIVE) == [], timeout=30, what="the thread idle")
    kinds = [e.type for e in events.read_events(run_id)]
    assert kinds.count(events.RUN_START) == activations, kinds  # the agent's turns
    assert kinds.count("tool_call_resumed") == 1, kinds
    assert kinds.count(events.RUN_FINISH) == activations, kinds
    replies = [m.text for m in run_store.load_messages(thread_id=thread_id) or [] if "approved" in m.text]
    assert replies == [f'approved: {{"click": {click}}}'], replies
    assert len(store.list_dispatches(thread_id)) == activations
    assert RunDecision.objects.filter(run_id=run_id).count() == 1


def test_ten_decisions_for_a_durably_waiting_run_resume_it_once(mailbox_worker: Any) -> None:
    client = token_client(new_user("clicker"))
    thread_id = "t-once-durable"
    asked = post_json(
        client,
        f"/api/v1/threads/{thread_id}/mailbox",
        {"messages": [{"role": "user", "content": "ask ship?"}]},
    )
    assert asked.status_code == 201, asked.content
    run_id = asked.json()["run_id"]
    waiting = wait_until(lambda: _waiting(run_id), timeout=30, what="the run waiting durably")
    assert waiting.waiting is not None
    call_id = waiting.waiting.tickets[0].tool_call_id
    assert store.list_dispatches(thread_id, LIVE) == []  # no worker holds it

    answers = _decide_ten_times(client, f"/api/v1/threads/{thread_id}/decision", call_id)

    click = _assert_one_accepted(answers, call_id)
    # the ask's activation, then one resume
    _assert_resumed_once(thread_id, run_id, click, activations=2)
    decision = RunDecision.objects.get(run_id=run_id)
    assert decision.via == "queued" and decision.dispatch_id is not None
    # a later decision of the same call, either action, on either route: still refused, nothing queued
    for path in (f"/api/v1/runs/{run_id}/decision", f"/api/v1/threads/{thread_id}/decision"):
        late = post_json(client, path, {"tool_call_id": call_id, "action": "cancel"})
        assert late.status_code == 409 and late.json()["code"] == "already_decided", late.content
    assert len(store.list_dispatches(thread_id)) == 2
    # the decision goes with its run: a thread's delete takes both
    assert client.delete(f"/api/v1/threads/{thread_id}").status_code == 200
    assert not RunDecision.objects.filter(run_id=run_id).exists()


def test_ten_decisions_for_a_run_suspended_live_are_delivered_once(
    mailbox_worker: Any, engine_settings: Any
) -> None:
    engine_settings.AWAKEN_LIVE_SUSPEND_HOLD_MS = 30_000  # echo's `ask` waits in the worker
    client = token_client(new_user("live-clicker"))
    thread_id = "t-once-live"
    asked = post_json(
        client,
        f"/api/v1/threads/{thread_id}/mailbox",
        {"messages": [{"role": "user", "content": "ask deploy?"}]},
    )
    assert asked.status_code == 201, asked.content
    run_id = asked.json()["run_id"]
    call_id = wait_until(lambda: _tool_call_started(run_id), timeout=30, what="the tool call asked")
    assert _run(run_id).status is RunStatus.RUNNING  # held live by the worker, not waiting durably

    answers = _decide_ten_times(client, f"/api/v1/runs/{run_id}/decision", call_id)

    click = _assert_one_accepted(answers, call_id)
    # one activation: the decision reached the suspended run live; no resume was queued
    _assert_resumed_once(thread_id, run_id, click, activations=1)
    assert RunDecision.objects.get(run_id=run_id).via == "live"


def test_a_front_end_answering_twice_is_refused_the_second_time(mailbox_worker: Any) -> None:
    """AG-UI's `resume` for the same interrupt, sent twice: the second is 409 naming the body field."""
    client = token_client(new_user("ag-ui-clicker"))
    thread_id = "t-once-agui"
    asked = post_json(
        client, f"/api/v1/threads/{thread_id}/mailbox", {"messages": [{"role": "user", "content": "ask ok?"}]}
    )
    run_id = asked.json()["run_id"]
    waiting = wait_until(lambda: _waiting(run_id), timeout=30, what="the run waiting durably")
    assert waiting.waiting is not None
    call_id = waiting.waiting.tickets[0].tool_call_id
    entry = {"interruptId": call_id, "status": "resolved", "payload": {"ok": True}}
    body: dict[str, Any] = {"threadId": thread_id, "runId": "r", "messages": [], "resume": [entry]}

    def answer() -> Any:
        return client.post(
            f"/api/v1/threads/{thread_id}/runs?protocol=ag-ui",
            data=json.dumps(body),
            content_type="application/json",
        )

    twice = {**body, "resume": [entry, entry]}  # one interrupt answered twice in one body
    doubled = client.post(
        f"/api/v1/threads/{thread_id}/runs?protocol=ag-ui",
        data=json.dumps(twice),
        content_type="application/json",
    )
    assert doubled.status_code == 400 and doubled.json()["field"] == "resume", doubled.content
    assert (
        RunDecision.objects.filter(run_id=run_id).count() == 0 and len(store.list_dispatches(thread_id)) == 1
    )

    first = answer()
    assert first.status_code == 200, first.content
    _hang_up(first)  # the continuation's stream is not read here: its run is awaited below
    run = wait_until(lambda: (r := _run(run_id)).status is RunStatus.DONE and r, timeout=30, what="done")
    assert run.final_output == 'approved: {"ok": true}'
    second = answer()
    assert second.status_code == 409, second.content
    assert second.json()["code"] == "already_decided" and second.json()["field"] == "resume"
    assert len(store.list_dispatches(thread_id)) == 2


# --- the run store never moves a finished run back to running ----------------------------------------


@pytest.fixture
def done_run(transactional_db: None, engine_settings: Any, clean_redis: Any) -> tuple[str, str]:
    """A run that finished (natural end) through its own dispatch, and a second dispatch for it claimed."""
    thread_id = "t-done-run"
    first = mailbox.submit_background(
        RunRequest(thread_id=thread_id, messages=[ChatMessage.user("hello")], agent_id="echo")
    )
    (claimed,) = store.list_dispatches(thread_id, [DispatchStatus.CLAIMED])
    execution.drain_thread(thread_id, first=claimed)
    run = _run(first.run_id)
    assert run.status is RunStatus.DONE and run.termination_reason is not None
    assert run.termination_reason.type == "natural_end"
    store.enqueue(make_dispatch("d-second", thread_id, first.run_id, created_at=now_ms()))
    (second,) = store.claim(thread_id, consumer_id(), FAST.lease_ms, now_ms())
    assert second.dispatch_id == "d-second"
    return thread_id, first.run_id


def test_the_port_start_statement_never_starts_a_done_run(done_run: tuple[str, str]) -> None:
    thread_id, run_id = done_run
    before = _run(run_id)
    started = run_store.start_run(
        run_id=run_id, thread_id=thread_id, dispatch_id="d-second", session_id="s-2", now=now_ms()
    )
    assert started is None
    assert _run(run_id) == before


def test_the_fused_start_never_starts_a_done_run_and_the_worker_settles_it(done_run: tuple[str, str]) -> None:
    thread_id, run_id = done_run
    before = _run(run_id)
    second = store.load_dispatch("d-second")
    assert second is not None
    outcome = attempt.start(second, "instance-2", consumer_id())
    assert isinstance(outcome, attempt.AlreadyDone), outcome
    assert _run(run_id) == before  # status, output, termination: as the first dispatch left them
    settled = attempt.settle_already_done(outcome, "instance-2")
    assert isinstance(settled, attempt.Finished) and settled.dispatch.status is DispatchStatus.ACKED
    assert _run(run_id) == before
    assert [e.type for e in events.read_events(run_id)].count(events.RUN_START) == 1
    # and the statement alone (no worker around it) refuses too
    store.enqueue(make_dispatch("d-third", thread_id, run_id, created_at=now_ms()))
    (third,) = store.claim(thread_id, consumer_id(), FAST.lease_ms, now_ms())
    answer = fused.start(
        third.dispatch_id, third.claim_token or "", "i-3", "c-3", now_ms(), lease_ms=FAST.lease_ms
    )
    assert isinstance(answer, fused.NotStartable) and answer.run is not None
    assert answer.run.status is RunStatus.DONE
    assert _run(run_id) == before
