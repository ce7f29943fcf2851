"""API flows against a real Celery worker: SSE streaming and resume, steering, HITL, cancel, 409."""

from __future__ import annotations

import json
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from mailbox_app import store
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchStatus
from mailbox_app.realtime import events
from mailbox_app.realtime.redis_client import get_redis
from runs_app import store as run_store
from runs_app.models import Message, Run
from tests.support.dispatches import make_dispatch
from tests.support.http_sse import parse_frames
from tests.support.waiting import wait_until


@pytest.fixture
def client(mailbox_worker: Any) -> APIClient:
    user = get_user_model().objects.create_user(username="carol", password="pw")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return api


def _post(client: APIClient, path: str, data: Any, **extra: Any) -> Any:
    return client.post(path, data=json.dumps(data), content_type="application/json", **extra)


def _frames(response: Any, limit: int | None = None) -> list[dict[str, Any]]:
    """SSE frames of a streaming response; stop after `limit` frames (a client disconnect).

    The SSE body is an async iterator (runs_app/api/sse.py): the sync test client hands it over as
    `streaming_content` unconsumed, so it is read here on an event loop and closed like a client going
    away closes it (`aclose`, which ends the pending XREAD)."""

    async def collect() -> list[dict[str, Any]]:
        frames: list[dict[str, Any]] = []
        buffer = ""
        content = response.streaming_content
        try:
            async for chunk in content:
                parsed, buffer = parse_frames(buffer + chunk.decode())
                for frame in parsed:
                    if frame is not None:
                        frames.append({"id": frame.id, "event": frame.event, "data": frame.data})
                    if limit is not None and len(frames) >= limit:
                        return frames
        finally:
            await content.aclose()
        return frames

    return async_to_sync(collect)()


def test_foreground_stream_then_resume_with_last_event_id(client: APIClient) -> None:
    resp = _post(
        client,
        "/api/v1/runs",
        {"messages": [{"role": "user", "content": "one two three four five"}], "stream": True},
    )
    assert resp.status_code == 200 and resp["Content-Type"].startswith("text/event-stream")
    run_id = resp["X-Run-Id"]
    head = _frames(resp, limit=3)  # then the client goes away
    assert head[0]["event"] == "run_start"
    wait_until(lambda: (r := run_store.load_run(run_id=run_id)) and r.status is RunStatus.DONE)
    resumed = client.get(f"/api/v1/runs/{run_id}/events", HTTP_LAST_EVENT_ID=head[-1]["id"])
    assert resumed.status_code == 200
    tail = _frames(resumed)
    all_ids = [e.id for e in events.read_events(run_id)]
    assert [f["id"] for f in head + tail] == all_ids  # nothing lost, nothing repeated
    assert tail[-1]["event"] == "run_finish"
    text = "".join(f["data"]["delta"] for f in head + tail if f["event"] == "text_delta")
    assert text == "echo: one two three four five"
    ids = [int(i.split("-")[0]) * 10_000 + int(i.split("-")[1]) for i in all_ids]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_events_204_when_no_stream(client: APIClient) -> None:
    user = get_user_model().objects.get(username="carol")
    run_store.ensure_thread(thread_id="t-quiet", owner_id=user.pk)
    body = _post(
        client, "/api/v1/threads/t-quiet/mailbox", {"messages": [{"role": "user", "content": "sleep 0.2"}]}
    ).json()
    wait_until(lambda: (r := run_store.load_run(run_id=body["run_id"])) and r.status is RunStatus.DONE)
    # run_finish is appended when the finish commits, just after the run reads as done: wait for it,
    # so the stream is not re-created after it is deleted
    wait_until(lambda: any(e.type == "run_finish" for e in events.read_events(body["run_id"])))
    get_redis().delete(events.stream_key(body["run_id"]))
    assert client.get(f"/api/v1/runs/{body['run_id']}/events").status_code == 204


def test_steering_message_and_background_run(client: APIClient) -> None:
    body = _post(
        client, "/api/v1/threads/t-s/mailbox", {"messages": [{"role": "user", "content": "sleep 1"}]}
    ).json()
    wait_until(lambda: (r := run_store.load_run(run_id=body["run_id"])) and r.status is RunStatus.RUNNING)
    steer = _post(
        client,
        "/api/v1/threads/t-s/messages",
        {"messages": [{"role": "user", "content": "go faster"}], "mode": "live_then_queue"},
    )
    assert (
        steer.status_code == 202
        and steer.json()["status"] == "running"
        and steer.json()["run_id"] == body["run_id"]
    )
    run = wait_until(
        lambda: (r := run_store.load_run(run_id=body["run_id"])) and r.status is RunStatus.DONE and r
    )
    assert run.final_output == "slept 1 | steered: go faster"
    listed = client.get("/api/v1/threads/t-s/messages").json()
    assert [m["content"] for m in listed["items"]] == ["sleep 1", "go faster", "slept 1 | steered: go faster"]


def test_hitl_ask_decision_approved(client: APIClient) -> None:
    body = _post(
        client, "/api/v1/threads/t-h/mailbox", {"messages": [{"role": "user", "content": "ask release?"}]}
    ).json()
    run = wait_until(
        lambda: (r := run_store.load_run(run_id=body["run_id"])) and r.status is RunStatus.WAITING and r
    )
    active = client.get("/api/v1/threads/t-h/runs/active").json()["active_run"]
    assert active["run_id"] == body["run_id"] and active["status"] == "waiting"
    call_id = run.waiting.tickets[0].tool_call_id
    bad = _post(
        client, f"/api/v1/runs/{body['run_id']}/decision", {"tool_call_id": "other", "action": "resume"}
    )
    assert bad.status_code == 404
    ok = _post(
        client,
        f"/api/v1/runs/{body['run_id']}/decision",
        {"tool_call_id": call_id, "action": "resume", "payload": {"v": 2}},
    )
    assert ok.status_code == 202
    done = wait_until(
        lambda: (r := run_store.load_run(run_id=body["run_id"])) and r.status is RunStatus.DONE and r
    )
    assert done.final_output == 'approved: {"v": 2}'


def test_cancel_running_run_via_api(client: APIClient) -> None:
    body = _post(
        client, "/api/v1/threads/t-c/mailbox", {"messages": [{"role": "user", "content": "sleep 10"}]}
    ).json()
    wait_until(lambda: (r := run_store.load_run(run_id=body["run_id"])) and r.status is RunStatus.RUNNING)
    resp = _post(client, f"/api/v1/runs/{body['run_id']}/cancel", {})
    assert resp.status_code == 202
    run = wait_until(
        lambda: (r := run_store.load_run(run_id=body["run_id"])) and r.status is RunStatus.DONE and r
    )
    assert run.termination_reason.type == "cancelled"


def test_foreground_409_when_active_run_cannot_be_released(client: APIClient, engine_settings: Any) -> None:
    engine_settings.AWAKEN_REMOTE_CANCEL_WAIT_MS = 200
    user = get_user_model().objects.get(username="carol")
    run_store.ensure_thread(thread_id="t-409", owner_id=user.pk)
    store.enqueue(make_dispatch("held", "t-409", available_at=0, created_at=0))
    [held] = store.claim("t-409", "a-dead-worker", 60_000, 1)
    runs, messages = Run.objects.count(), Message.objects.count()
    resp = _post(client, "/api/v1/threads/t-409/runs", {"messages": [{"role": "user", "content": "now"}]})
    assert resp.status_code == 409
    assert resp.json() == {
        "error": "thread has an active run; cannot claim inline",
        "code": "active_run_conflict",
    }
    assert (Run.objects.count(), Message.objects.count()) == (runs, messages)
    assert store.load_dispatch("held").status is DispatchStatus.CLAIMED
    assert held.claim_token
