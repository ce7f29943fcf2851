"""No 5xx from any input (issue 8, item 3): each case below answered 500 before; now a 400 naming the
field, with nothing written. Real PostgreSQL and Redis; the store is not mocked."""

from __future__ import annotations

import json
from typing import Any

import pytest
from rest_framework.test import APIClient

from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.models import Dispatch
from mailbox_app.realtime import events
from runs_app import store as run_store
from runs_app.api.inputs import MAX_JSON_DEPTH, InputError, normalize_id
from runs_app.models import IdempotencyRecord, Message, Run, Thread
from tests.support.api import user_client
from tests.support.waiting import wait_until

MSG = [{"role": "user", "content": "hello"}]


def _counts() -> tuple[int, int, int, int, int]:
    return (
        Thread.objects.count(),
        Run.objects.count(),
        Message.objects.count(),
        Dispatch.objects.count(),
        IdempotencyRecord.objects.count(),
    )


def _post_raw(client: APIClient, path: str, text: str, **extra: Any) -> Any:
    return client.post(path, data=text.encode(), content_type="application/json", **extra)


def _post(client: APIClient, path: str, data: Any, **extra: Any) -> Any:
    # json.dumps escapes NUL and lone surrogates (\u0000, \ud800): the wire form a client would send
    return _post_raw(client, path, json.dumps(data), **extra)


def _assert_400(resp: Any, field: str | None, code: str = "invalid") -> dict[str, Any]:
    assert resp.status_code == 400, resp.content
    body: dict[str, Any] = resp.json()
    assert body["code"] == code and body["error"], body
    assert body.get("field") == field, body
    return body


# --- the normalizing function -------------------------------------------------------------------------


def test_normalize_id_trims_and_names_the_field() -> None:
    assert normalize_id("  t1\t", field="thread_id", max_length=128) == "t1"
    assert normalize_id("x" * 128, field="thread_id", max_length=128) == "x" * 128
    for bad in ("", "   ", "x" * 129, "a\x00b", "a\nb", "a\x7fb", "a\x85b", "a\ud800b"):
        with pytest.raises(InputError) as info:
            normalize_id(bad, field="thread_id", max_length=128)
        assert info.value.field == "thread_id" and info.value.status_code == 400


# --- headers ------------------------------------------------------------------------------------------


def test_idempotency_key_header_longer_than_255_is_400(alice: APIClient) -> None:
    before = _counts()
    for path in ("/api/v1/threads/t-key/mailbox", "/api/v1/threads/t-key/runs", "/api/v1/runs"):
        resp = _post(alice, path, {"messages": MSG}, HTTP_IDEMPOTENCY_KEY="k" * 256)
        body = _assert_400(resp, "Idempotency-Key")
        assert "255" in body["error"]
    resp = _post(alice, "/api/v1/threads/t-key/mailbox", {"messages": MSG}, HTTP_IDEMPOTENCY_KEY="k\x01")
    _assert_400(resp, "Idempotency-Key")
    assert _counts() == before
    ok = _post(alice, "/api/v1/threads/t-key/mailbox", {"messages": MSG}, HTTP_IDEMPOTENCY_KEY="k" * 255)
    assert ok.status_code == 201, ok.content
    assert IdempotencyRecord.objects.get().key == "k" * 255


def test_last_event_id_with_non_ascii_digits_is_400(alice: APIClient, redis_client: Any) -> None:
    run_id = _post(alice, "/api/v1/threads/t-ev/mailbox", {"messages": MSG}).json()["run_id"]
    events.append_event(run_id, "run_start", {})
    for value in ("١٢٣-0", "²-0", "1\x00-0"):
        resp = alice.get(f"/api/v1/runs/{run_id}/events", HTTP_LAST_EVENT_ID=value)
        _assert_400(resp, "Last-Event-ID")
    _assert_400(alice.get(f"/api/v1/runs/{run_id}/events?after=%C2%B2-0"), "Last-Event-ID")


# --- path parameters ----------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["mailbox", "runs"])
def test_thread_id_longer_than_column_is_400(alice: APIClient, route: str) -> None:
    before = _counts()
    resp = _post(alice, f"/api/v1/threads/{'x' * 129}/{route}", {"messages": MSG})
    body = _assert_400(resp, "thread_id")
    assert "128" in body["error"]
    assert _counts() == before
    resp = _post(alice, f"/api/v1/threads/{'y' * 128}/mailbox", {"messages": MSG})
    assert resp.status_code == 201, resp.content
    assert resp.json()["thread_id"] == "y" * 128


def test_nul_in_path_parameters_is_400(alice: APIClient) -> None:
    _post(alice, "/api/v1/threads/t1/mailbox", {"messages": MSG})
    before = _counts()
    for path in (
        "/api/v1/threads/a%00b",
        "/api/v1/threads/a%00b/mailbox",
        "/api/v1/threads/a%00b/messages",
        "/api/v1/threads/a%00b/runs",
        "/api/v1/threads/a%00b/runs/active",
        "/api/v1/threads/a%00b/runs/latest",
    ):
        _assert_400(alice.get(path), "thread_id")
    _assert_400(alice.get("/api/v1/runs/a%00b"), "run_id")
    _assert_400(alice.get("/api/v1/runs/a%00b/events"), "run_id")
    _assert_400(alice.get("/api/v1/dispatches/a%00b"), "dispatch_id")
    for path in ("mailbox", "runs", "messages"):
        _assert_400(_post(alice, f"/api/v1/threads/a%00b/{path}", {"messages": MSG}), "thread_id")
    for path in ("interrupt", "cancel"):
        _assert_400(_post(alice, f"/api/v1/threads/a%00b/{path}", {}), "thread_id")
    decision = {"tool_call_id": "c", "action": "resume"}
    _assert_400(_post(alice, "/api/v1/threads/a%00b/decision", decision), "thread_id")
    _assert_400(_post(alice, "/api/v1/runs/a%00b/decision", decision), "run_id")
    _assert_400(_post(alice, "/api/v1/runs/a%00b/cancel", {}), "run_id")
    _assert_400(_post(alice, "/api/v1/runs/a%00b/inputs", {"messages": MSG}), "run_id")
    _assert_400(_post(alice, "/api/v1/dispatches/a%00b/cancel", {}), "dispatch_id")
    _assert_400(alice.get("/api/v1/threads/t%0A1/messages"), "thread_id")  # other control characters
    _assert_400(_post(alice, "/api/v1/threads/%20%20/mailbox", {"messages": MSG}), "thread_id")  # blank
    assert _counts() == before


def test_path_ids_are_trimmed_before_the_ownership_check(alice: APIClient, bob: APIClient) -> None:
    """`%20t1` is `t1`: Bob cannot append to Alice's thread through a padded id (issue 8's first bullet)."""
    body = _post(alice, "/api/v1/threads/t1/mailbox", {"messages": MSG}).json()
    before = _counts()
    for route in ("mailbox", "runs", "messages"):
        assert _post(bob, f"/api/v1/threads/%20t1/{route}", {"messages": MSG}).status_code == 404
        assert _post(bob, f"/api/v1/threads/t1%20/{route}", {"messages": MSG}).status_code == 404
    assert _counts() == before
    assert alice.get("/api/v1/threads/%20t1%20").json()["open_run"]["run_id"] == body["run_id"]


def test_unauthenticated_bad_path_is_still_401(db: None) -> None:
    assert APIClient().get("/api/v1/threads/a%00b").status_code == 401


# --- query parameters ---------------------------------------------------------------------------------


def test_nul_in_query_parameters_is_400(alice: APIClient) -> None:
    _post(alice, "/api/v1/threads/t1/mailbox", {"messages": MSG})
    _assert_400(alice.get("/api/v1/runs?thread_id=a%00b"), "thread_id")
    _assert_400(alice.get(f"/api/v1/runs?thread_id={'x' * 129}"), "thread_id")
    _assert_400(alice.get("/api/v1/runs?status=a%00b"), "status")
    _assert_400(alice.get("/api/v1/threads?limit=1%00"), "limit")
    _assert_400(alice.get("/api/v1/threads/t1/mailbox?status=queued%00"), "status")
    _assert_400(alice.get("/api/v1/threads/t1/messages?visibility=all%00"), "visibility")
    _assert_400(alice.get("/api/v1/threads/t1/messages?x%00y=1"), "x\\u0000y")
    # the thread filter is trimmed like the path parameter
    assert alice.get("/api/v1/runs?thread_id=%20t1%20").json()["total"] == 1


# --- JSON depth ---------------------------------------------------------------------------------------


def test_deeply_nested_json_inside_the_body_limit_is_400(alice: APIClient) -> None:
    _post(alice, "/api/v1/threads/t1/mailbox", {"messages": MSG})
    before = _counts()
    deep = 200_000  # ~400 KB: under AWAKEN_API_MAX_BODY_BYTES, far past Python's recursion limit
    text = '{"tool_call_id": "c", "action": "resume", "payload": ' + "[" * deep + "]" * deep + "}"
    _assert_400(_post_raw(alice, "/api/v1/threads/t1/decision", text), "payload", "json_too_deep")
    text = '{"messages": ' + "[" * deep + "]" * deep + "}"
    _assert_400(_post_raw(alice, "/api/v1/threads/t1/mailbox", text), "messages", "json_too_deep")
    _assert_400(_post_raw(alice, "/api/v1/runs", "[" * deep + "]" * deep), None, "json_too_deep")
    # just past the limit, where the decoder itself copes: the same answer
    nested: Any = "leaf"
    for _ in range(MAX_JSON_DEPTH):
        nested = {"k": nested}
    decision = {"tool_call_id": "c", "action": "resume", "payload": nested}
    _assert_400(_post(alice, "/api/v1/threads/t1/decision", decision), "payload", "json_too_deep")
    assert _counts() == before
    # within the limit the request goes through (no suspended call here: 404)
    decision["payload"] = nested["k"]["k"]
    assert _post(alice, "/api/v1/threads/t1/decision", decision).status_code == 404


# --- strings PostgreSQL cannot store ------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["a\x00b", "a\ud800b", "\udfff"])
def test_nul_and_lone_surrogates_in_body_strings_are_400(alice: APIClient, bad: str) -> None:
    _post(alice, "/api/v1/threads/t1/mailbox", {"messages": MSG})
    before = _counts()
    content = [{"role": "user", "content": bad}]
    for path in ("/api/v1/threads/t1/mailbox", "/api/v1/threads/t1/runs", "/api/v1/threads/t1/messages"):
        _assert_400(_post(alice, path, {"messages": content}), "messages[0].content")
    _assert_400(_post(alice, "/api/v1/runs", {"messages": MSG, "metadata": {"note": bad}}), "metadata.note")
    _assert_400(_post(alice, "/api/v1/runs", {"messages": MSG, "thread_id": bad}), "thread_id")
    _assert_400(_post(alice, "/api/v1/threads/t1/mailbox", {"messages": MSG, "agent_id": bad}), "agent_id")
    resp = _post(alice, "/api/v1/threads/t1/mailbox", {"messages": MSG, "idempotency_key": bad})
    _assert_400(resp, "idempotency_key")
    decision = {"tool_call_id": "c", "action": "resume", "payload": {"answer": ["ok", bad]}}
    _assert_400(_post(alice, "/api/v1/threads/t1/decision", decision), "payload.answer[1]")
    resp = _post(
        alice, "/api/v1/threads/t1/decision", {"tool_call_id": "c", "action": "resume", "payload": {bad: 1}}
    )
    assert resp.status_code == 400 and resp.json()["field"].startswith("payload.")  # the key, escaped
    assert "\\u" in resp.json()["field"]
    _assert_400(
        _post(alice, "/api/v1/threads/t1/decision", {"tool_call_id": bad, "action": "x"}), "tool_call_id"
    )
    assert _counts() == before


def test_control_characters_in_body_ids_are_400(alice: APIClient) -> None:
    before = _counts()
    _assert_400(_post(alice, "/api/v1/runs", {"messages": MSG, "thread_id": "a\nb"}), "thread_id")
    _assert_400(
        _post(alice, "/api/v1/threads/t/mailbox", {"messages": MSG, "agent_id": "e\tcho"}), "agent_id"
    )
    assert _counts() == before
    # ordinary control characters inside message text are content, not an error
    text = [{"role": "user", "content": "line 1\nline 2\ttab"}]
    resp = _post(alice, "/api/v1/threads/t-text/mailbox", {"messages": text})
    assert resp.status_code == 201, resp.content
    assert alice.get("/api/v1/threads/t-text/messages").json()["items"][0]["content"] == "line 1\nline 2\ttab"


def test_numbers_out_of_range_are_400(alice: APIClient) -> None:
    _post(alice, "/api/v1/threads/t1/mailbox", {"messages": MSG})
    text = '{"tool_call_id": "c", "action": "resume", "payload": {"n": 1e999}}'
    _assert_400(_post_raw(alice, "/api/v1/threads/t1/decision", text), "payload.n")
    text = '{"tool_call_id": "c", "action": "resume", "payload": NaN}'
    _assert_400(_post_raw(alice, "/api/v1/threads/t1/decision", text), None, "malformed_json")


def test_invalid_utf8_body_is_400(alice: APIClient) -> None:
    resp = alice.post(
        "/api/v1/threads/t1/mailbox", data=b'{"messages": "\xff"}', content_type="application/json"
    )
    _assert_400(resp, None, "malformed_json")


@pytest.mark.slow
def test_nul_in_a_decision_payload_on_the_durable_path_is_400(mailbox_worker: Any) -> None:
    """A run suspended on a tool call, its claim released (the durable path): a NUL in the decision is a
    400, the run stays waiting, and a clean decision afterwards still completes it."""
    client = user_client("dora")
    body = _post(
        client, "/api/v1/threads/t-h/mailbox", {"messages": [{"role": "user", "content": "ask ok?"}]}
    )
    run_id = body.json()["run_id"]
    run = wait_until(lambda: (r := run_store.load_run(run_id=run_id)) and r.status is RunStatus.WAITING and r)
    call_id = run.waiting.tickets[0].tool_call_id
    for route in (f"/api/v1/runs/{run_id}/decision", "/api/v1/threads/t-h/decision"):
        bad = {"tool_call_id": call_id, "action": "resume", "payload": {"v": "a\x00b"}}
        _assert_400(_post(client, route, bad), "payload.v")
        bad = {"tool_call_id": call_id, "action": "resume", "payload": "\ud83d"}  # half an emoji
        _assert_400(_post(client, route, bad), "payload")
    assert run_store.load_run(run_id=run_id).status is RunStatus.WAITING
    ok = _post(
        client,
        f"/api/v1/runs/{run_id}/decision",
        {"tool_call_id": call_id, "action": "resume", "payload": "ok"},
    )
    assert ok.status_code == 202, ok.content
    done = wait_until(lambda: (r := run_store.load_run(run_id=run_id)) and r.status is RunStatus.DONE and r)
    assert done.final_output == 'approved: "ok"'
