"""A thread named after someone else's id reaches only its own runs (issue 18 item 1).

Thread ids are chosen by the caller, and run, dispatch and tool-call ids are not secrets. Alice creates
her own threads named after each of Bob's ids — his running run and its dispatch, his queued dispatch
and its run, his run suspended live on a tool call and that call, his run waiting durably and its call
— and sends every route of `threads/{id}/...` to each (reads, cancel, interrupt, decisions naming Bob's
tool calls, a front end's answer, input, submits, delete). Every answer is the one the same request gets
on a thread of hers named after nothing of Bob's, and Bob's runs, messages, dispatches, events and
decisions are exactly as they were. Before the fix, the cancel ended Bob's run or dispatch and the
decision approved Bob's waiting runs.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from mailbox_app import store
from mailbox_app.contract.mailbox import DispatchStatus
from runs_app import store as run_store
from tests.support.api import new_user
from tests.support.victims import Victim, release, victim
from tests.support.waiting import wait_until

CONTROL = "alice-own-thread"
SAY = {"messages": [{"role": "user", "content": "hello"}]}


def _api(token: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    call = getattr(client, method.lower())
    if body is None:
        response = call(path)
    else:
        response = call(path, data=json.dumps(body), content_type="application/json")
    if response.streaming:  # a front end's stream: not read here
        return response.status_code, None
    return response.status_code, response.json() if response.content else None


def _post(token: str, path: str, body: Any) -> tuple[int, Any]:
    return _api(token, "POST", path, body)


READ, REFUSED, WRITE = "read", "refused", "write"


def _requests(bob: Victim) -> list[tuple[str, str, str, Any]]:
    """Every route under threads/{id}/, as (what it should be for Alice's idle thread, method, path with
    {t}, body): the reads and refusals first, then the writes (which give the thread runs of its own)."""
    decide = [{"tool_call_id": i, "action": "resume", "payload": {"by": "alice"}} for i in bob.ids().values()]
    ag_ui = {
        "threadId": "{t}",
        "messages": [],
        "resume": [{"interruptId": bob.live_call, "status": "resolved", "payload": {}}],
    }
    approval = {"id": bob.waiting_call, "approved": True}
    part = {
        "type": "tool-approve",
        "toolCallId": bob.waiting_call,
        "state": "approval-responded",
        "approval": approval,
    }
    ai_sdk = {"id": "{t}", "messages": [{"id": "m1", "role": "assistant", "parts": [part]}]}
    return [
        (READ, "GET", "/api/v1/threads/{t}", None),
        (READ, "GET", "/api/v1/threads/{t}/runs", None),
        (READ, "GET", "/api/v1/threads/{t}/runs/active", None),
        (REFUSED, "GET", "/api/v1/threads/{t}/runs/latest", None),
        (READ, "GET", "/api/v1/threads/{t}/mailbox", None),
        (READ, "GET", "/api/v1/threads/{t}/messages?visibility=all", None),
        (REFUSED, "POST", "/api/v1/threads/{t}/cancel", {}),
        (REFUSED, "POST", "/api/v1/threads/{t}/interrupt", {}),
        *[(REFUSED, "POST", "/api/v1/threads/{t}/decision", body) for body in decide],
        *[(REFUSED, "POST", "/api/v1/threads/{t}/decision", {**body, "action": "cancel"}) for body in decide],
        (REFUSED, "POST", "/api/v1/threads/{t}/runs?protocol=ag-ui", ag_ui),
        (REFUSED, "POST", "/api/v1/threads/{t}/runs?protocol=ai-sdk", ai_sdk),
        (REFUSED, "POST", "/api/v1/threads/{t}/messages", {**SAY, "mode": "resume_open_run"}),
        (WRITE, "PATCH", "/api/v1/threads/{t}", {"metadata": {"owner": "alice"}}),
        (WRITE, "POST", "/api/v1/threads/{t}/messages", {**SAY, "mode": "live_then_queue"}),
        (WRITE, "POST", "/api/v1/threads/{t}/messages", {**SAY, "mode": "interrupt_then_queue"}),
        (WRITE, "POST", "/api/v1/threads/{t}/mailbox", SAY),
        (WRITE, "POST", "/api/v1/threads/{t}/runs", SAY),
        (WRITE, "POST", "/api/v1/threads/{t}/runs/wait", SAY),
        (READ, "GET", "/api/v1/threads/{t}/runs/latest", None),
        (READ, "GET", "/api/v1/threads/{t}/messages", None),
        (REFUSED, "POST", "/api/v1/threads/{t}/cancel", {}),
        (REFUSED, "POST", "/api/v1/threads/{t}/interrupt", {}),
        (WRITE, "DELETE", "/api/v1/threads/{t}", None),
    ]


def _shape(status: int, body: Any, thread_id: str) -> tuple[int, Any]:
    """What an answer says, with the thread's own name written {t}: a refusal whole; a success by its
    fields, less the ids and times of what it created (lists by their length, objects by their keys)."""
    if not isinstance(body, dict):
        return status, body
    # the thread's name where it names the thread: a value of its own, or the thread in a message
    text = json.dumps(body).replace(f'"{thread_id}"', '"{t}"')
    for said in ("thread {}", "thread not found: {}", "run not found: open run for thread {}"):
        text = text.replace(said.format(thread_id), said.format("{t}"))
    body = json.loads(text)
    if status >= 400:
        return status, body
    kept = {k: v for k, v in body.items() if k == "thread_id" or not k.endswith(("_at", "_id"))}
    return status, {
        k: len(v) if isinstance(v, list) else sorted(v) if isinstance(v, dict) else v for k, v in kept.items()
    }


def _idle(thread_id: str) -> bool:
    return store.list_dispatches(thread_id, [DispatchStatus.QUEUED, DispatchStatus.CLAIMED]) == []


@pytest.mark.slow
def test_threads_named_after_another_users_ids_reach_only_their_own_runs(
    mailbox_worker: Any, engine_settings: Any
) -> None:
    bob = victim(engine_settings, _post)
    token = Token.objects.create(user=new_user("alice")).key
    before = bob.snapshot()
    names = [CONTROL, *bob.ids().values()]
    for name in names:
        status, body = _post(token, "/api/v1/threads", {"thread_id": name})
        assert status == 201, (name, body)

    requests = _requests(bob)
    answers: dict[str, list[tuple[int, Any]]] = {name: [] for name in names}
    try:
        for _, method, path, body in requests:
            for name in names:
                sent = None if body is None else json.loads(json.dumps(body).replace("{t}", name))
                status, answer = _api(token, method, path.replace("{t}", name), sent)
                answers[name].append(_shape(status, answer, name))
                wait_until(lambda n=name: _idle(n), timeout=30, what=f"alice's thread {name} idle")

        # every thread named after one of Bob's ids was answered as her thread named after nothing
        for name in names[1:]:
            for (_, method, path, _), control, got in zip(
                requests, answers[CONTROL], answers[name], strict=True
            ):
                assert got == control, (name, method, path, got, control)
        # and those answers are what they should be: refusals 404/409, reads and writes 2xx
        for (kind, method, path, _), (status, answer) in zip(requests, answers[CONTROL], strict=True):
            expected = range(400, 410) if kind == REFUSED else range(200, 300)
            assert status in expected, (kind, method, path, status, answer)
        bob.assert_untouched(before)
        for name in names:
            assert run_store.load_thread(thread_id=name) is None  # Alice deleted her own threads
    finally:
        release(bob, _post)
