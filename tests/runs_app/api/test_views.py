"""The HTTP API: every route's success path, bad input (and nothing written), ownership, auth."""

from __future__ import annotations

import json
from typing import Any

import pytest
from rest_framework.test import APIClient

from mailbox_app import store
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchStatus
from mailbox_app.models import Dispatch
from runs_app import store as run_store
from runs_app.models import Message, Run, Thread
from tests.support.api import post_json

MSG = [{"role": "user", "content": "hello"}]


def _counts() -> tuple[int, int, int, int]:
    return Thread.objects.count(), Run.objects.count(), Message.objects.count(), Dispatch.objects.count()


def _post(client: APIClient, path: str, data: Any) -> Any:
    return post_json(client, path, data)


# --- background submit and reads (no worker needed: the dispatch stays queued) -------------------------


def test_background_submit_creates_run_and_dispatch(alice: APIClient) -> None:
    resp = _post(alice, "/api/v1/threads/t1/mailbox", {"messages": MSG, "agent_id": "echo"})
    assert resp.status_code == 201, resp.content
    body = resp.json()
    assert body["thread_id"] == "t1" and body["status"] == "running", "an idle thread is claimed inline"
    dispatch = alice.get(f"/api/v1/dispatches/{body['dispatch_id']}").json()
    assert dispatch["run_id"] == body["run_id"] and "claim_token" not in dispatch
    listing = alice.get("/api/v1/threads/t1/mailbox").json()
    assert listing["total"] == 1 and listing["items"][0]["dispatch_id"] == body["dispatch_id"]
    run = alice.get(f"/api/v1/runs/{body['run_id']}").json()
    assert run["status"] == "created" and run["created_at"].endswith("Z") and "." in run["created_at"]
    messages = alice.get("/api/v1/threads/t1/messages").json()
    assert [m["content"] for m in messages["items"]] == ["hello"] and messages["items"][0]["seq"] == 1
    thread = alice.get("/api/v1/threads/t1").json()
    assert thread["open_run"]["run_id"] == body["run_id"]
    assert alice.get("/api/v1/threads").json()["total"] == 1
    assert alice.get("/api/v1/runs?status=created").json()["total"] == 1
    assert alice.get("/api/v1/threads/t1/runs/latest").json()["run_id"] == body["run_id"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": ""}]}, "messages[0].content"),
        ({"messages": MSG, "agent_id": "   "}, "agent_id"),
        ({"messages": "hello"}, "messages"),
    ],
)
def test_bad_submissions_are_400_and_write_nothing(
    alice: APIClient, body: dict[str, Any], field: str
) -> None:
    before = _counts()
    for path in ("/api/v1/runs", "/api/v1/threads/t-bad/mailbox"):
        resp = _post(alice, path, body)
        assert resp.status_code == 400, resp.content
        assert resp.json()["field"] == field and resp.json()["error"]
    assert _counts() == before


def test_malformed_json_and_wrong_content_type_are_400(alice: APIClient) -> None:
    before = _counts()
    resp = alice.post("/api/v1/threads/t/mailbox", data="{not json", content_type="application/json")
    assert resp.status_code == 400 and resp.json()["code"] == "malformed_json"
    resp = alice.post("/api/v1/threads/t/mailbox", data="messages=x", content_type="text/plain")
    assert resp.status_code == 400 and resp.json()["code"] == "unsupported_media_type"
    resp = _post(alice, "/api/v1/threads/t/mailbox", ["not", "an", "object"])
    assert resp.status_code == 400
    assert _counts() == before


def test_oversized_body_is_413(alice: APIClient, settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048
    resp = _post(alice, "/api/v1/threads/t/mailbox", {"messages": [{"role": "user", "content": "x" * 5000}]})
    assert resp.status_code == 413 and resp.json()["code"] == "body_too_large"


def test_bad_query_parameters_are_400(alice: APIClient) -> None:
    _post(alice, "/api/v1/threads/t1/mailbox", {"messages": MSG})
    assert alice.get("/api/v1/runs?status=bogus").json()["field"] == "status"
    assert alice.get("/api/v1/runs?limit=abc").status_code == 400
    assert alice.get("/api/v1/runs?offset=-1").status_code == 400
    assert alice.get("/api/v1/threads/t1/mailbox?status=queued,nope").status_code == 400
    assert alice.get("/api/v1/threads/t1/messages?visibility=secret").status_code == 400
    ok = alice.get("/api/v1/threads/t1/mailbox?status=queued,claimed&limit=1")
    assert ok.status_code == 200


def test_unauthenticated_is_401(db: None) -> None:
    anon = APIClient()
    for path in ("/api/v1/runs", "/api/v1/threads", "/api/v1/threads/x/mailbox", "/api/v1/schema/"):
        assert anon.get(path).status_code == 401
    assert anon.post("/api/v1/runs", data="{}", content_type="application/json").status_code == 401
    assert APIClient().get("/healthz").status_code == 200


def test_other_users_thread_is_404_everywhere(alice: APIClient, bob: APIClient) -> None:
    body = _post(alice, "/api/v1/threads/private/mailbox", {"messages": MSG}).json()
    before = _counts()
    gets = [
        "/api/v1/threads/private",
        "/api/v1/threads/private/mailbox",
        "/api/v1/threads/private/messages",
        "/api/v1/threads/private/runs",
        "/api/v1/threads/private/runs/active",
        "/api/v1/threads/private/runs/latest",
        f"/api/v1/runs/{body['run_id']}",
        f"/api/v1/runs/{body['run_id']}/events",
        f"/api/v1/dispatches/{body['dispatch_id']}",
    ]
    for path in gets:
        assert bob.get(path).status_code == 404, path
    posts = [
        ("/api/v1/threads/private/mailbox", {"messages": MSG}),
        ("/api/v1/threads/private/runs", {"messages": MSG}),
        ("/api/v1/runs", {"messages": MSG, "thread_id": "private"}),
        ("/api/v1/threads/private/messages", {"messages": MSG}),
        ("/api/v1/threads/private/interrupt", {}),
        ("/api/v1/threads/private/cancel", {}),
        ("/api/v1/threads/private/decision", {"tool_call_id": "c", "action": "resume"}),
        (f"/api/v1/runs/{body['run_id']}/cancel", {}),
        (f"/api/v1/runs/{body['run_id']}/decision", {"tool_call_id": "c", "action": "resume"}),
        (f"/api/v1/runs/{body['run_id']}/inputs", {"messages": MSG}),
        (f"/api/v1/dispatches/{body['dispatch_id']}/cancel", {}),
    ]
    for path, data in posts:
        assert _post(bob, path, data).status_code == 404, path
    assert _counts() == before
    assert bob.get("/api/v1/threads").json()["total"] == 0
    assert bob.get("/api/v1/runs").json()["total"] == 0
    assert store.load_dispatch(body["dispatch_id"]).status is not DispatchStatus.CANCELLED


def test_unknown_ids_are_404(alice: APIClient) -> None:
    assert alice.get("/api/v1/runs/nope").status_code == 404
    assert alice.get("/api/v1/threads/nope").status_code == 404
    assert alice.get("/api/v1/dispatches/nope").status_code == 404
    assert _post(alice, "/api/v1/runs/nope/cancel", {}).status_code == 404
    assert _post(alice, "/api/v1/threads/nope/interrupt", {}).status_code == 404


def test_decision_validation(alice: APIClient) -> None:
    _post(alice, "/api/v1/threads/t1/mailbox", {"messages": MSG})
    resp = _post(alice, "/api/v1/threads/t1/decision", {"tool_call_id": "c1", "action": "maybe"})
    assert resp.status_code == 400 and resp.json()["error"].endswith(
        "invalid action: maybe, expected 'resume' or 'cancel'"
    )
    resp = _post(alice, "/api/v1/threads/t1/decision", {"tool_call_id": "c1", "action": "resume"})
    assert resp.status_code == 404 and resp.json()["code"] == "decision_target_not_found"


def test_idempotency_key_replays_first_answer(alice: APIClient) -> None:
    first = _post(alice, "/api/v1/threads/t-idem/mailbox", {"messages": MSG, "idempotency_key": "k1"})
    again = _post(alice, "/api/v1/threads/t-idem/mailbox", {"messages": MSG, "idempotency_key": "k1"})
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    assert Dispatch.objects.filter(thread_id="t-idem").count() == 1
    assert Message.objects.filter(thread_id="t-idem").count() == 1
    other = _post(
        alice,
        "/api/v1/threads/t-idem/mailbox",
        {"messages": [{"role": "user", "content": "different"}], "idempotency_key": "k1"},
    )
    assert other.status_code == 409 and other.json()["field"] == "idempotency_key"
    header = alice.post(
        "/api/v1/threads/t-idem/mailbox",
        data=json.dumps({"messages": MSG}),
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY="k2",
    )
    header_again = alice.post(
        "/api/v1/threads/t-idem/mailbox",
        data=json.dumps({"messages": MSG}),
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY="k2",
    )
    assert header.json() == header_again.json()
    assert Dispatch.objects.filter(thread_id="t-idem").count() == 2


def test_cancel_queued_dispatch_by_id(alice: APIClient) -> None:
    first = _post(alice, "/api/v1/threads/t-cx/mailbox", {"messages": MSG}).json()
    assert first["status"] == "running"  # claimed inline: the idle thread's first dispatch
    body = _post(alice, "/api/v1/threads/t-cx/mailbox", {"messages": MSG}).json()
    assert body["status"] == "queued"
    resp = _post(alice, f"/api/v1/dispatches/{body['dispatch_id']}/cancel", {})
    assert resp.status_code == 202 and resp.json()["status"] == "cancel_requested"
    assert store.load_dispatch(body["dispatch_id"]).status is DispatchStatus.CANCELLED
    assert run_store.load_run(run_id=body["run_id"]).status is RunStatus.DONE


def test_interrupt_supersedes_queued(alice: APIClient) -> None:
    first = _post(alice, "/api/v1/threads/t-i/mailbox", {"messages": MSG}).json()
    second = _post(alice, "/api/v1/threads/t-i/mailbox", {"messages": MSG}).json()
    resp = _post(alice, "/api/v1/threads/t-i/interrupt", {})
    assert resp.status_code == 202
    data = resp.json()
    assert data["status"] == "interrupt_requested"
    # the first was claimed inline (idle thread): it is the active one, reported and not superseded
    assert data["superseded_dispatches"] == 1 and data["active_dispatch_id"] == first["dispatch_id"]
    assert store.load_dispatch(second["dispatch_id"]).status is DispatchStatus.SUPERSEDED
    assert store.load_dispatch(first["dispatch_id"]).status is DispatchStatus.CLAIMED


def test_schema_is_served(alice: APIClient) -> None:
    resp = alice.get("/api/v1/schema/", HTTP_ACCEPT="application/json")
    assert resp.status_code == 200
    assert "/api/v1/threads/{thread_id}/mailbox" in resp.content.decode()


def test_huge_offset_is_an_empty_page_not_a_500(alice: APIClient) -> None:
    """Found by the schemathesis run: an offset past bigint used to raise DataError (500)."""
    resp = alice.get("/api/v1/threads?offset=99999999999999999999999")
    assert resp.status_code == 200 and resp.json()["items"] == []
