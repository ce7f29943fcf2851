"""Resuming a run's event stream on the real ASGI server (gunicorn + uvicorn, as `make run` starts it):
a resume at or after a done run's finish ends at once in every protocol, a resume at a waiting run's
finish waits for the continuation, and a read whose start the stream no longer keeps is refused (410
before the stream starts, a `stream_error` event when a stream falls behind) instead of a silent gap."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django import db
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

from mailbox_app.contract.ids import now_ms
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.realtime import events
from mailbox_app.services import maintenance
from runs_app import store as run_store
from runs_app.api.sse import CLIENT_NAME, STREAM_ERROR
from tests.support.http_sse import HttpConnection, Response, SseStream, _chunks, open_stream
from tests.support.servers import WebServer, asgi_server
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

HOST = "127.0.0.1"
KEEPALIVE_MS = 300
ANSWER_S = 10.0  # a resume that ends at once answers well within this (it used to stay open for an hour)
MAX_EVENTS = 40


@pytest.fixture
def token(transactional_db: None) -> str:
    user = get_user_model().objects.create_user(username="resume-user", password="pw")
    return str(Token.objects.create(user=user).key)


@pytest.fixture
def server(transactional_db: None, tmp_path: Path) -> Iterator[WebServer]:
    with asgi_server(tmp_path, env={"AWAKEN_SSE_KEEPALIVE_MS": str(KEEPALIVE_MS)}) as web:
        yield web
        log = web.log_tail()
    assert "Traceback" not in log, log


def _auth(token: str, last_event_id: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Token {token}"}
    return headers | ({"Last-Event-ID": last_event_id} if last_event_id else {})


def _submit(server: WebServer, token: str, thread_id: str, text: str) -> str:
    async def go() -> Response:
        conn = HttpConnection(HOST, server.port)
        body = json.dumps({"messages": [{"role": "user", "content": text}]}).encode()
        headers = _auth(token) | {"Content-Type": "application/json"}
        try:
            return await conn.request("POST", f"/api/v1/threads/{thread_id}/mailbox", headers, body)
        finally:
            await conn.close()

    response = asyncio.run(go())
    assert response.status == 201, response.body
    return str(response.json()["run_id"])


def _get_events(
    server: WebServer, token: str, run_id: str, last_event_id: str | None = None, protocol: str = ""
) -> Response:
    """GET runs/{id}/events to the end of its body (which must come within ANSWER_S)."""

    async def go() -> Response:
        conn = HttpConnection(HOST, server.port)
        query = f"?protocol={protocol}" if protocol else ""
        headers = _auth(token, last_event_id) | {"Accept": "text/event-stream", "Connection": "close"}
        try:
            return await asyncio.wait_for(
                conn.request("GET", f"/api/v1/runs/{run_id}/events{query}", headers), ANSWER_S
            )
        finally:
            await conn.close()

    return asyncio.run(go())


def _frames(body: bytes) -> list[dict[str, str]]:
    """The body's server-sent events as {field: value} (comments dropped)."""
    out = []
    for raw in body.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in raw.splitlines() if line and not line.startswith(":"))
        if fields:
            out.append(fields)
    return out


def _queued_run(server: WebServer, token: str, thread_id: str) -> str:
    """A run no worker takes (none runs): its stream is written by the test through events.py."""
    return _submit(server, token, thread_id, "sleep 1")


def _done_run(server: WebServer, token: str, thread_id: str, text: str) -> tuple[str, list[events.RunEvent]]:
    run_id = _submit(server, token, thread_id, text)
    wait_until(lambda: (r := run_store.load_run(run_id=run_id)) and r.status is RunStatus.DONE, timeout=30)
    wait_until(lambda: events.read_events(run_id)[-1].type == events.RUN_FINISH, what="run_finish appended")
    return run_id, events.read_events(run_id)


# --- issue 18 item 5: a resume at the finish of a finished run ends at once ------------------------------


def test_a_resume_at_or_after_a_done_runs_finish_ends_at_once_in_every_protocol(
    mailbox_worker: Any, server: WebServer, token: str
) -> None:
    run_id, stream = _done_run(server, token, "t-resume-done", "one two three")
    finish = stream[-1]
    later = f"{events.position(finish.id)[0] + 5_000}-0"
    for after in (finish.id, later):
        assert _get_events(server, token, run_id, after).status == 204  # EventSource stops reconnecting
        # the AI SDK's reconnectToStream reads 204 as "no active stream"
        assert _get_events(server, token, run_id, after, protocol="ai-sdk").status == 204
    # @ag-ui/client fails on a body-less 204: it gets the finish again, as a run of its own
    ag_ui = _get_events(server, token, run_id, finish.id, protocol="ag-ui")
    assert ag_ui.status == 200
    frames = _frames(ag_ui.body)
    chunks = [json.loads(f["data"]) for f in frames]
    assert [c["type"] for c in chunks] == ["RUN_STARTED", "RUN_FINISHED"]
    assert chunks[1]["outcome"] == {"type": "success"} and chunks[1]["result"] == "echo: one two three"
    assert frames[-1]["id"] == finish.id
    # a resume before the finish still gets what came after it, and ends at the finish
    tail = _frames(_get_events(server, token, run_id, stream[-2].id).body)
    assert [(f["id"], f["event"]) for f in tail] == [(finish.id, events.RUN_FINISH)]


def test_a_resume_at_a_waiting_runs_finish_waits_for_the_continuation(
    clean_redis: redis.Redis, server: WebServer, token: str
) -> None:
    run_id = _queued_run(server, token, "t-resume-waiting")
    clean_redis.delete(events.stream_key(run_id))
    events.append_event(run_id, events.RUN_START, {"run_id": run_id})
    waiting = events.append_finish(
        run_id,
        {"run_id": run_id, "status": "waiting", "termination": {"type": "suspended"}},
        fingerprint="d|waiting|",
    )
    assert waiting is not None

    async def scenario() -> tuple[list[str], list[str], int]:
        native = await open_stream(HOST, server.port, f"/api/v1/runs/{run_id}/events", _auth(token, waiting))
        ai_sdk = await open_stream(
            HOST, server.port, f"/api/v1/runs/{run_id}/events?protocol=ai-sdk", _auth(token, waiting)
        )
        assert (native.status, ai_sdk.status) == (200, 200)
        try:
            native_reader = asyncio.create_task(native.read_all())
            ai_sdk_reader = asyncio.create_task(_raw_body(ai_sdk))
            await _until(lambda: native.keepalives >= 3)  # the stream waits, on keep-alives
            assert not native_reader.done() and not ai_sdk_reader.done()
            for event_type, data in (
                (events.RUN_START, {"run_id": run_id}),
                ("text_delta", {"delta": "approved"}),
                (events.RUN_FINISH, {"run_id": run_id, "status": "done"}),
            ):
                await asyncio.to_thread(events.append_event, run_id, event_type, data)
            frames = await asyncio.wait_for(native_reader, ANSWER_S)
            body = await asyncio.wait_for(ai_sdk_reader, ANSWER_S)
        finally:
            await native.close()
            await ai_sdk.close()
        ai_types = [json.loads(f["data"])["type"] for f in _frames(body) if f["data"] != "[DONE]"]
        return [f.event for f in frames], ai_types, native.keepalives

    native_events, ai_types, keepalives = asyncio.run(scenario())
    assert native_events == [events.RUN_START, "text_delta", events.RUN_FINISH]
    assert ai_types[-1] == "finish" and "text-delta" in ai_types
    assert keepalives >= 3


# --- issue 18 item 6: a replay or resume whose start is no longer retained is refused -------------------


def test_a_run_longer_than_the_retention_refuses_a_replay_with_a_gap_and_resumes_inside_it(
    clean_redis: redis.Redis, server: WebServer, token: str, settings: Any
) -> None:
    settings.AWAKEN_EVENTS_MAX_PER_RUN = MAX_EVENTS
    run_id = _queued_run(server, token, "t-retention")
    clean_redis.delete(events.stream_key(run_id))
    ids = [events.append_event(run_id, events.RUN_START, {"run_id": run_id})]
    ids += [events.append_event(run_id, "text_delta", {"delta": f" w{i}"}) for i in range(250)]
    ids.append(events.append_event(run_id, events.RUN_FINISH, {"run_id": run_id, "status": "done"}))
    kept = events.read_events(run_id, count=1000)
    assert MAX_EVENTS <= len(kept) < len(ids)
    first_kept, last_trimmed = kept[0].id, ids[len(ids) - len(kept) - 1]

    replay = _get_events(server, token, run_id)  # a full replay used to start mid-text, silently
    assert replay.status == 410
    assert replay.json()["code"] == "events_not_retained" and "field" not in replay.json()
    assert first_kept in replay.json()["error"] and last_trimmed in replay.json()["error"]
    trimmed = _get_events(server, token, run_id, ids[3])
    assert trimmed.status == 410
    assert trimmed.json()["field"] == "Last-Event-ID"

    inside = _get_events(server, token, run_id, ids[-20])
    assert inside.status == 200
    assert [f["id"] for f in _frames(inside.body)] == ids[-19:]
    # resuming after the last trimmed event (named by the refusal) accepts the gap: from the first kept on
    accepted = _get_events(server, token, run_id, last_trimmed)
    assert [f["id"] for f in _frames(accepted.body)] == [e.id for e in kept]

    # a front-end protocol rebuilds what is open from the run's first event: it needs the whole run
    for protocol in ("ai-sdk", "ag-ui"):
        assert _get_events(server, token, run_id, protocol=protocol).status == 410
        assert _get_events(server, token, run_id, ids[-20], protocol=protocol).status == 410


def test_a_stream_that_falls_behind_the_retention_ends_with_a_stream_error(
    clean_redis: redis.Redis, server: WebServer, token: str, settings: Any
) -> None:
    settings.AWAKEN_EVENTS_MAX_PER_RUN = MAX_EVENTS
    run_id = _queued_run(server, token, "t-behind")
    clean_redis.delete(events.stream_key(run_id))
    start = events.append_event(run_id, events.RUN_START, {"run_id": run_id})

    async def scenario() -> tuple[list[dict[str, str]], bytes]:
        native = await open_stream(HOST, server.port, f"/api/v1/runs/{run_id}/events", _auth(token))
        ai_sdk = await open_stream(
            HOST, server.port, f"/api/v1/runs/{run_id}/events?protocol=ai-sdk", _auth(token)
        )
        try:
            native_reader = asyncio.create_task(_raw_body(native))
            ai_sdk_reader = asyncio.create_task(_raw_body(ai_sdk))
            await _until(lambda: _blocked_readers(clean_redis) == 1)  # both streams follow live
            # five times the retention in one transaction: the run's reader sees them only after the trim
            await asyncio.to_thread(_append_in_one_transaction, clean_redis, run_id, 5 * MAX_EVENTS)
            native_body = await asyncio.wait_for(native_reader, ANSWER_S)
            ai_body = await asyncio.wait_for(ai_sdk_reader, ANSWER_S)
        finally:
            await native.close()
            await ai_sdk.close()
        return _frames(native_body), ai_body

    native_frames, ai_body = asyncio.run(scenario())
    first_kept = events.read_events(run_id, count=1000)[0]
    assert [f.get("id") for f in native_frames[:-1]] == [start]
    error = native_frames[-1]
    assert error["event"] == STREAM_ERROR and "id" not in error  # a resume goes on from the last id seen
    data = json.loads(error["data"])
    assert data["code"] == "events_not_retained"
    assert (data["first_retained_id"], data["last_trimmed_id"]) == (first_kept.id, first_kept.prev)
    chunks = [f["data"] for f in _frames(ai_body)]
    assert json.loads(chunks[-2])["type"] == "error" and chunks[-1] == "[DONE]"
    # the client's reconnect with the last id it saw is refused, not served with the hole
    assert _get_events(server, token, run_id, start).status == 410


# --- issue 18 item 6: a run_finish lost after its commit is re-emitted by reconcile -----------------------


def test_a_lost_run_finish_is_re_emitted_once_by_reconcile_and_the_waiting_stream_ends(
    mailbox_worker: Any,
    clean_redis: redis.Redis,
    server: WebServer,
    token: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    run_id = _submit(server, token, "t-lost-finish", "sleep 1")
    wait_until(lambda: events.has_stream(run_id), what="run_start appended")
    # Redis fails the finish's append (WRONGTYPE on its fingerprint set): the run ends in PostgreSQL only
    clean_redis.set(events.finishes_key(run_id), "not a set")

    async def scenario() -> list[str]:
        stream = await open_stream(HOST, server.port, f"/api/v1/runs/{run_id}/events", _auth(token))
        try:
            reader = asyncio.create_task(stream.read_all())
            await asyncio.to_thread(
                wait_until, lambda: "could not append run_finish" in caplog.text, timeout=30.0
            )
            assert (await _in_thread(run_store.load_run, run_id=run_id)).status is RunStatus.DONE
            await _until(lambda: stream.keepalives >= 2)
            assert not reader.done(), "the stream ended without its run's finish"
            await asyncio.to_thread(clean_redis.delete, events.finishes_key(run_id))  # Redis is back
            # the periodic reconcile (its run is due a look once OPEN_CHECK_AFTER_MS has passed)
            due = now_ms() + events.OPEN_CHECK_AFTER_MS + 1_000
            await _in_thread(maintenance.reconcile_terminal, now=due)
            frames = await asyncio.wait_for(reader, ANSWER_S)
        finally:
            await stream.close()
        return [f.event for f in frames]

    received = asyncio.run(scenario())
    assert received[0] == events.RUN_START and received[-1] == events.RUN_FINISH
    assert received.count(events.RUN_FINISH) == 1
    maintenance.reconcile_terminal(now=now_ms() + events.OPEN_CHECK_AFTER_MS + 1_000)  # again: nothing
    finishes = [e for e in events.read_events(run_id) if e.type == events.RUN_FINISH]
    assert len(finishes) == 1
    assert finishes[0].data["status"] == "done" and finishes[0].data["final_output"] == "slept 1"
    assert _get_events(server, token, run_id, finishes[0].id).status == 204


# --- helpers --------------------------------------------------------------------------------------------


def _append_in_one_transaction(client: redis.Redis, run_id: str, count: int) -> None:
    """`count` appends through events.py's own script, in one MULTI/EXEC: a reader blocked in XREAD is
    answered only after the last of them, when the first ones are trimmed already."""
    script = client.register_script(events._APPEND)
    pipe = client.pipeline(transaction=True)
    key = events.stream_key(run_id)
    for i in range(count):
        data = json.dumps({"delta": f" burst{i}"})
        args: list[str | int] = [
            "text_delta",
            data,
            MAX_EVENTS,
            60_000,
            run_id,
            "",
            "",
            "",
            "open",
            30_000,
            300_000,
            "",  # ARGV[12]: no lock to release
        ]
        script(keys=[key, events.OPEN_RUNS_KEY, events.finishes_key(run_id), key], args=args, client=pipe)
    pipe.execute()


async def _in_thread(function: Any, *args: Any, **kwargs: Any) -> Any:
    """`function` in a thread of its own whose DB connection is closed after (the test database is
    dropped at the end: a connection left open in an executor thread would hold it)."""

    def call() -> Any:
        try:
            return function(*args, **kwargs)
        finally:
            db.connections.close_all()

    return await asyncio.to_thread(call)


def _blocked_readers(client: redis.Redis) -> int:
    clients: list[dict[str, Any]] = client.client_list()
    return sum(1 for c in clients if c.get("name") == CLIENT_NAME and "b" in str(c.get("flags", "")))


async def _raw_body(stream: SseStream) -> bytes:
    return b"".join([chunk async for chunk in _chunks(stream.reader)])


async def _until(predicate: Any, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")
        await asyncio.sleep(0.02)
