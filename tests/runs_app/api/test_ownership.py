"""Ownership is decided where the work is done: under the thread's row lock in the transaction that writes
(issue 8 item 2), and for every id a route takes — thread, run, dispatch, tool call, in the path, the
body or a header — another user's is answered as an id that does not exist and changes nothing of
theirs (issue 18 item 1)."""

from __future__ import annotations

import http.client
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.db import connection
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchStatus, LiveRunTarget
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import RunRequest
from mailbox_app.contract.storage import NotFound
from mailbox_app.contract.suspension import ToolCallResume
from mailbox_app.models import Dispatch
from mailbox_app.realtime import events
from mailbox_app.services import mailbox
from runs_app import store as run_store
from runs_app.models import Message, Run, RunDecision, Thread
from tests.support.api import new_user, token_client
from tests.support.http_sse import parse_frames
from tests.support.servers import asgi_server
from tests.support.victims import release, victim
from tests.support.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_submit_into_another_users_thread_writes_nothing_even_past_the_views_check(
    clean_redis: Any,
) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    mailbox.submit_background(
        RunRequest(thread_id="t-owned", messages=[ChatMessage.user("mine")]), owner_id=alice.id
    )
    counts = (Run.objects.count(), Message.objects.count(), Dispatch.objects.count())
    with pytest.raises(NotFound):
        mailbox.submit_background(
            RunRequest(thread_id="t-owned", messages=[ChatMessage.user("intruder")]), owner_id=bob.id
        )
    assert (Run.objects.count(), Message.objects.count(), Dispatch.objects.count()) == counts
    assert [m.text for m in run_store.load_messages(thread_id="t-owned") or []] == ["mine"]
    assert Thread.objects.get(id="t-owned").owner_id == alice.id


@pytest.mark.parametrize("round_", range(5))
def test_two_users_racing_to_create_one_thread_id_one_wins_and_the_loser_writes_nothing(
    clean_redis: Any, round_: int
) -> None:
    users = [new_user(f"alice-{round_}"), new_user(f"bob-{round_}")]
    clients = [token_client(u) for u in users]
    thread_id = f"t-race-{round_}"
    barrier = threading.Barrier(2)
    answers: dict[int, Any] = {}

    def post(k: int) -> None:
        try:
            barrier.wait(5)
            body = {"messages": [{"role": "user", "content": f"from {k}"}]}
            answers[k] = clients[k].post(
                f"/api/v1/threads/{thread_id}/mailbox", data=json.dumps(body), content_type="application/json"
            )
        finally:
            connection.close()

    workers = [threading.Thread(target=post, args=(k,)) for k in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    codes = sorted(a.status_code for a in answers.values())
    assert codes == [201, 404], [(a.status_code, a.content) for a in answers.values()]
    winner = next(k for k, a in answers.items() if a.status_code == 201)
    assert Thread.objects.get(id=thread_id).owner_id == users[winner].id
    assert [m.text for m in run_store.load_messages(thread_id=thread_id) or []] == [f"from {winner}"]
    assert Run.objects.filter(thread_id=thread_id).count() == 1
    assert Dispatch.objects.filter(thread_id=thread_id).count() == 1


# --- another user's ids in every position (issue 18 item 1) -------------------------------------------


def _api(token: str, method: str, path: str, body: Any = None, **headers: Any) -> tuple[int, Any]:
    """One request through the HTTP API (Django's test client): its status and JSON (None for a stream)."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    call = getattr(client, method.lower())
    if body is None:
        response = call(path, **headers)
    else:
        response = call(path, data=json.dumps(body), content_type="application/json", **headers)
    if response.streaming:
        return response.status_code, None
    return response.status_code, response.json() if response.content else None


def _post(token: str, path: str, body: Any) -> tuple[int, Any]:
    return _api(token, "POST", path, body)


def _as_unknown(answer: tuple[int, Any], identifier: str) -> tuple[int, Any]:
    """An answer with `identifier` written {id}: the answer for another user's id must equal the
    answer for an id that names nothing."""
    status, body = answer
    return status, json.loads(json.dumps(body).replace(identifier, "{id}"))


def _routes_by_id() -> list[tuple[str, str, str, Any]]:
    """Every route that takes an id in its path (runs_app/api/urls.py), as (kind of id, method, path,
    body); {id} is the id. A submit to an unknown thread creates it: those routes are compared with a
    read of an unknown thread ("thread not found")."""
    decide = {"tool_call_id": "c", "action": "resume"}
    return [
        ("run", "GET", "/api/v1/runs/{id}", None),
        ("run", "POST", "/api/v1/runs/{id}/cancel", {}),
        ("run", "POST", "/api/v1/runs/{id}/decision", decide),
        ("run", "POST", "/api/v1/runs/{id}/inputs", {"messages": [{"role": "user", "content": "x"}]}),
        ("run", "GET", "/api/v1/runs/{id}/events", None),
        ("run", "GET", "/api/v1/runs/{id}/join", None),
        ("dispatch", "GET", "/api/v1/dispatches/{id}", None),
        ("dispatch", "POST", "/api/v1/dispatches/{id}/cancel", {}),
        *[
            ("thread", method, f"/api/v1/threads/{{id}}{tail}", body)
            for method, tail, body in [
                ("GET", "", None),
                ("PATCH", "", {"metadata": {"x": 1}}),
                ("DELETE", "", None),
                ("GET", "/runs", None),
                ("POST", "/runs", {"messages": [{"role": "user", "content": "x"}]}),
                ("GET", "/runs/active", None),
                ("GET", "/runs/latest", None),
                ("POST", "/runs/wait", {"messages": [{"role": "user", "content": "x"}]}),
                ("GET", "/mailbox", None),
                ("POST", "/mailbox", {"messages": [{"role": "user", "content": "x"}]}),
                ("GET", "/messages", None),
                ("POST", "/messages", {"messages": [{"role": "user", "content": "x"}]}),
                ("POST", "/interrupt", {}),
                ("POST", "/cancel", {}),
                ("POST", "/decision", decide),
            ]
        ],
    ]


@pytest.mark.slow
def test_another_users_ids_in_every_path_are_404_as_unknown_ids_and_change_nothing(
    mailbox_worker: Any, engine_settings: Any
) -> None:
    bob = victim(engine_settings, _post)
    alice = Token.objects.create(user=new_user("alice")).key
    before = bob.snapshot()
    theirs = {
        "run": [bob.running_run, bob.queued_run, bob.live_run, bob.waiting_run],
        "dispatch": [bob.running_dispatch, bob.queued_dispatch, bob.live_dispatch, bob.waiting_dispatch],
        "thread": bob.threads,
    }
    creates = {"/api/v1/threads/{id}/runs", "/api/v1/threads/{id}/runs/wait", "/api/v1/threads/{id}/mailbox"}
    no_thread = _as_unknown(_api(alice, "GET", "/api/v1/threads/no-such-id"), "no-such-id")
    try:
        for kind, method, path, body in _routes_by_id():
            if method == "POST" and path in creates:
                unknown = no_thread
            else:
                unknown = _as_unknown(
                    _api(alice, method, path.replace("{id}", "no-such-id"), body), "no-such-id"
                )
            assert unknown[0] == 404, (method, path, unknown)
            for identifier in theirs[kind]:
                answer = _api(alice, method, path.replace("{id}", identifier), body)
                assert _as_unknown(answer, identifier) == unknown, (method, path, identifier, answer)
        bob.assert_untouched(before)
    finally:
        release(bob, _post)


def _alice_waiting_run(token: str, thread_id: str) -> tuple[str, str]:
    status, body = _post(
        token,
        f"/api/v1/threads/{thread_id}/mailbox",
        {"messages": [{"role": "user", "content": "ask mine?"}]},
    )
    assert status == 201, body
    run = wait_until(
        lambda: (r := run_store.load_run(run_id=body["run_id"])) and r.status is RunStatus.WAITING and r,
        timeout=30,
        what="alice's run waiting",
    )
    assert run.waiting is not None
    return run.run_id, run.waiting.tickets[0].tool_call_id


@pytest.mark.slow
def test_another_users_ids_in_bodies_and_headers_reach_nothing_of_theirs(
    mailbox_worker: Any, engine_settings: Any
) -> None:
    bob = victim(engine_settings, _post)
    bob_key = "bobs-key"
    status, bobs_answer = _api(
        bob.token, "POST", "/api/v1/threads/bob-notes/mailbox",
        {"messages": [{"role": "user", "content": "note"}]}, HTTP_IDEMPOTENCY_KEY=bob_key,
    )  # fmt: skip
    assert status == 201, bobs_answer
    wait_until(lambda: _idle("bob-notes"), timeout=30, what="bob's note answered")
    before = bob.snapshot()
    alice = Token.objects.create(user=new_user("alice")).key
    alice_run, _ = _alice_waiting_run(alice, "alice-t")
    say = [{"role": "user", "content": "x"}]
    try:
        # a body naming Bob's thread: the answer of a thread that does not exist
        answers = {
            "runs.thread_id": _post(
                alice, "/api/v1/runs", {"messages": say, "thread_id": bob.waiting_thread}
            ),
            "ag-ui.threadId": _post(
                alice, "/api/v1/runs?protocol=ag-ui",
                {"threadId": bob.live_thread, "messages": [],
                 "resume": [{"interruptId": bob.live_call, "status": "resolved", "payload": {}}]},
            ),
            "ai-sdk.id": _post(
                alice, "/api/v1/runs?protocol=ai-sdk",
                {"id": bob.waiting_thread, "messages": [{"id": "m", "role": "assistant", "parts": [
                    {"type": "tool-approve", "toolCallId": bob.waiting_call, "state": "approval-responded",
                     "approval": {"id": bob.waiting_call, "approved": True}}]}]},
            ),
        }  # fmt: skip
        for field, answer in answers.items():
            assert answer[0] == 404 and answer[1]["code"] == "thread_not_found", (field, answer)
        listed = _api(alice, "GET", f"/api/v1/runs?thread_id={bob.waiting_thread}")
        assert listed == (200, {**listed[1], "total": 0, "items": []})

        # Bob's tool-call id in a decision for Alice's own waiting run: the answer of an unknown call
        for path in (f"/api/v1/runs/{alice_run}/decision", "/api/v1/threads/alice-t/decision"):
            unknown = _as_unknown(
                _post(alice, path, {"tool_call_id": "no-such-call", "action": "resume"}), "no-such-call"
            )
            assert unknown[0] == 404 and unknown[1]["code"] == "decision_target_not_found", unknown
            for call in (bob.waiting_call, bob.live_call):
                answer = _post(alice, path, {"tool_call_id": call, "action": "resume"})
                assert _as_unknown(answer, call) == unknown, (path, call, answer)
        # ... and through a front end's answer on Alice's own thread
        agui = _post(
            alice, "/api/v1/threads/alice-t/runs?protocol=ag-ui",
            {"threadId": "alice-t", "messages": [],
             "resume": [{"interruptId": bob.waiting_call, "status": "resolved", "payload": {}}]},
        )  # fmt: skip
        assert (
            agui[0] == 404 and agui[1]["code"] == "decision_target_not_found" and agui[1]["field"] == "resume"
        )

        # Bob's idempotency key: Alice's request is hers, not a replay of Bob's answer
        mine = _api(
            alice, "POST", "/api/v1/threads/alice-t/messages", {"messages": say}, HTTP_IDEMPOTENCY_KEY=bob_key
        )
        assert mine[0] == 202 and mine[1]["thread_id"] == "alice-t", mine
        assert (
            mine[1]["run_id"] != bobs_answer["run_id"]
            and mine[1]["dispatch_id"] != bobs_answer["dispatch_id"]
        )

        # a position in Bob's stream as Last-Event-ID on Alice's run: Alice's events only (or none)
        bobs_last = events.last_event_id(bob.live_run)
        assert bobs_last is not None
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {alice}")
        wait_until(lambda: _idle("alice-t"), timeout=30, what="alice's thread idle")
        mine_done = client.get(f"/api/v1/runs/{alice_run}/events", HTTP_LAST_EVENT_ID=bobs_last)
        assert mine_done.status_code in (200, 204), mine_done
        if mine_done.status_code == 200:  # frames of Alice's own stream, none of Bob's
            frames = {(f["id"], f["event"]) for f in _frames(mine_done)}
            assert frames <= {(e.id, e.type) for e in events.read_events(alice_run)}, frames
            assert not frames & {(e.id, e.type) for e in events.read_events(bob.live_run)}, frames

        bob.assert_untouched(before)
    finally:
        release(bob, _post)


def _idle(thread_id: str) -> bool:
    return mailbox.list_dispatches(thread_id, [DispatchStatus.QUEUED, DispatchStatus.CLAIMED]) == []


def _frames(response: Any) -> list[dict[str, Any]]:
    """SSE frames of a stream that ends by itself (a finished run's): read on an event loop."""

    async def collect() -> list[dict[str, Any]]:
        frames: list[dict[str, Any]] = []
        buffer = ""
        content = response.streaming_content
        try:
            async for chunk in content:
                parsed, buffer = parse_frames(buffer + chunk.decode())
                frames.extend({"id": f.id, "event": f.event, "data": f.data} for f in parsed if f is not None)
        finally:
            await content.aclose()
        return frames

    return async_to_sync(collect)()


def test_the_store_checks_the_owner_where_it_acts_not_only_the_view(clean_redis: Any) -> None:
    """Past the views' checks: the mailbox's own operations, given another owner, act on nothing."""
    alice, bob = new_user("alice"), new_user("bob")
    asked = mailbox.submit_background(
        RunRequest(thread_id="t-bob-asks", messages=[ChatMessage.user("ask ok?")]), owner_id=bob.id
    )
    queued = mailbox.submit_background(
        RunRequest(thread_id="t-bob-asks", messages=[ChatMessage.user("later")]), owner_id=bob.id
    )
    assert queued.status is mailbox.SubmitStatus.QUEUED
    resume = ToolCallResume(decision_id="d", action="resume", result={})
    counts = (
        Run.objects.count(),
        Message.objects.count(),
        Dispatch.objects.count(),
        RunDecision.objects.count(),
    )
    for target in (
        mailbox.RunTarget(asked.run_id),
        mailbox.ThreadTarget("t-bob-asks"),
        mailbox.DispatchTarget(queued.dispatch_id),
        mailbox.DispatchTarget(asked.dispatch_id),
        mailbox.RunTarget(queued.run_id),
    ):
        assert mailbox.cancel(target, owner_id=alice.id) is False, target
    for decided in (mailbox.RunTarget(asked.run_id), mailbox.ThreadTarget("t-bob-asks")):
        assert mailbox.send_decision(decided, "call-x", resume, owner_id=alice.id) is None
    live = LiveRunTarget("t-bob-asks", asked.run_id, asked.dispatch_id)
    assert mailbox.send_decision_live(live, "call-x", resume, owner_id=alice.id) is False
    assert (
        Run.objects.count(),
        Message.objects.count(),
        Dispatch.objects.count(),
        RunDecision.objects.count(),
    ) == counts
    still = mailbox.load_dispatch(queued.dispatch_id)
    assert still is not None and still.status is DispatchStatus.QUEUED
    # the owner's own cancel of the same dispatch is carried out
    assert mailbox.cancel(mailbox.DispatchTarget(queued.dispatch_id), owner_id=bob.id) is True


# --- the two reported attacks, against the real server process ----------------------------------------


def _server_post(port: int) -> Any:
    def post(token: str, path: str, body: Any) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
            conn.request("POST", path, body=json.dumps(body), headers=headers)
            response = conn.getresponse()
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
        finally:
            conn.close()

    return post


@pytest.mark.slow
def test_the_reported_cancel_and_decision_attacks_fail_against_the_real_server(
    mailbox_worker: Any, engine_settings: Any, tmp_path: Path
) -> None:
    """Alice's own threads named after Bob's queued dispatch, running run and waiting runs: her cancel
    and her decision are 404 (used to be 202, and Bob's run ended cancelled / approved by Alice)."""
    with asgi_server(tmp_path) as web:
        post = _server_post(web.port)
        bob = victim(engine_settings, post)
        alice = Token.objects.create(user=new_user("alice")).key
        before = bob.snapshot()
        try:
            cancels = [
                bob.queued_dispatch,
                bob.running_run,
                bob.running_dispatch,
                bob.waiting_run,
                bob.live_run,
            ]
            decisions = [
                (bob.live_run, bob.live_call),
                (bob.live_dispatch, bob.live_call),
                (bob.waiting_run, bob.waiting_call),
                (bob.waiting_dispatch, bob.waiting_call),
            ]
            for name in {*cancels, *(n for n, _ in decisions)}:
                status, body = post(alice, "/api/v1/threads", {"thread_id": name})
                assert status == 201, body
            for name in cancels:
                status, body = post(alice, f"/api/v1/threads/{name}/cancel", {})
                assert (status, body) == (
                    404,
                    {"error": f"thread not found: {name}", "code": "thread_not_found"},
                )
            for name, call in decisions:
                status, body = post(
                    alice, f"/api/v1/threads/{name}/decision", {"tool_call_id": call, "action": "resume"}
                )
                assert status == 404 and body["code"] == "decision_target_not_found", body
            bob.assert_untouched(before)
            assert "Traceback" not in web.log_tail(), web.log_tail()

            # Bob's own decision is taken, once
            mine = {"tool_call_id": bob.live_call, "action": "resume", "payload": {"by": "bob"}}
            assert post(bob.token, f"/api/v1/runs/{bob.live_run}/decision", mine)[0] == 202
            again = post(bob.token, f"/api/v1/runs/{bob.live_run}/decision", mine)
            assert again[0] == 409 and again[1]["code"] == "already_decided", again
            done = wait_until(
                lambda: (r := run_store.load_run(run_id=bob.live_run)) and r.status is RunStatus.DONE and r,
                timeout=30,
                what="bob's run decided by bob",
            )
            assert done.final_output == 'approved: {"by": "bob"}'
        finally:
            release(bob, post)
