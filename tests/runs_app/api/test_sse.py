"""SSE on the real ASGI server (gunicorn + uvicorn worker, as `make run` starts it) against the test
database and the test Redis: many open streams do not starve plain reads, every stream gets the run's
events in order and ends at run_finish, a run_retry does not end a stream, a disconnect ends the read."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.realtime import events
from runs_app import store as run_store
from runs_app.api.sse import CLIENT_NAME
from tests.support.http_sse import Frame, HttpConnection, SseStream, open_stream
from tests.support.servers import WebServer, asgi_server
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

STREAMS = 64
READ_BUDGET_S = 2.0
HOST = "127.0.0.1"
KEEPALIVE_MS = 300


@pytest.fixture
def token(transactional_db: None) -> str:
    user = get_user_model().objects.create_user(username="sse-user", password="pw")
    return str(Token.objects.create(user=user).key)


@pytest.fixture
def server(transactional_db: None, tmp_path: Path) -> Iterator[WebServer]:
    with asgi_server(tmp_path, env={"AWAKEN_SSE_KEEPALIVE_MS": str(KEEPALIVE_MS)}) as web:
        yield web
        log = web.log_tail()
    assert "Traceback" not in log, log


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Token {token}"}


def _json_headers(token: str) -> dict[str, str]:
    return _auth(token) | {"Content-Type": "application/json"}


def _submit(server: WebServer, token: str, thread_id: str, text: str) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        conn = HttpConnection(HOST, server.port)
        body = json.dumps({"messages": [{"role": "user", "content": text}]}).encode()
        response = await conn.request(
            "POST", f"/api/v1/threads/{thread_id}/mailbox", _json_headers(token), body
        )
        await conn.close()
        assert response.status == 201, response.body
        result: dict[str, Any] = response.json()
        return result

    return asyncio.run(go())


def _event_ids(run_id: str) -> list[str]:
    return [event.id for event in events.read_events(run_id)]


async def _open_events(server: WebServer, token: str, run_id: str) -> SseStream:
    stream = await open_stream(HOST, server.port, f"/api/v1/runs/{run_id}/events", _auth(token))
    assert stream.status == 200, stream.status
    assert stream.headers["content-type"].startswith("text/event-stream")
    return stream


def _blocked_readers(client: redis.Redis) -> list[dict[str, Any]]:
    clients: list[dict[str, Any]] = client.client_list()
    return [c for c in clients if c.get("name") == CLIENT_NAME and "b" in str(c.get("flags", ""))]


def test_64_streams_on_a_running_run_while_plain_reads_answer(
    mailbox_worker: Any, server: WebServer, token: str
) -> None:
    run_id = _submit(server, token, "t-many", "sleep 4")["run_id"]
    wait_until(lambda: (r := run_store.load_run(run_id=run_id)) and r.status is RunStatus.RUNNING)
    wait_until(lambda: events.has_stream(run_id), what="run_start appended")

    async def scenario() -> tuple[list[list[Frame]], float, str]:
        streams = await asyncio.gather(*(_open_events(server, token, run_id) for _ in range(STREAMS)))
        readers = [asyncio.create_task(stream.read_all()) for stream in streams]
        await asyncio.sleep(0.2)  # every stream is open and reading
        conn = HttpConnection(HOST, server.port)
        began = time.monotonic()
        threads = await asyncio.wait_for(conn.request("GET", "/api/v1/threads", _auth(token)), 10)
        elapsed = time.monotonic() - began
        assert threads.status == 200, threads.body
        run = await conn.request("GET", f"/api/v1/runs/{run_id}", _auth(token))
        await conn.close()
        assert not any(reader.done() for reader in readers), "a stream ended while its run was running"
        frames = await asyncio.wait_for(asyncio.gather(*readers), 60)
        for stream in streams:
            await stream.close()
        return list(frames), elapsed, str(run.json()["status"])

    frames, elapsed, status_while_open = asyncio.run(scenario())
    assert status_while_open == "running"  # the read happened while all streams were live
    assert elapsed < READ_BUDGET_S, f"GET /api/v1/threads took {elapsed:.2f}s with {STREAMS} streams open"
    expected = _event_ids(run_id)
    assert expected[-1] and events.read_events(run_id)[-1].type == events.RUN_FINISH
    for received in frames:
        assert [f.id for f in received] == expected
        assert received[0].event == events.RUN_START and received[-1].event == events.RUN_FINISH


def test_foreground_submit_streams_until_run_finish(
    mailbox_worker: Any, server: WebServer, token: str
) -> None:
    async def scenario() -> tuple[SseStream, list[Frame]]:
        body = json.dumps({"messages": [{"role": "user", "content": "one two three"}], "stream": True})
        stream = await open_stream(
            HOST, server.port, "/api/v1/runs", _json_headers(token), method="POST", body=body.encode()
        )
        assert stream.status == 200
        frames = await asyncio.wait_for(stream.read_all(), 30)
        await stream.close()
        return stream, frames

    stream, frames = asyncio.run(scenario())
    run_id = stream.headers["x-run-id"]
    assert [f.id for f in frames] == _event_ids(run_id)
    assert frames[-1].event == events.RUN_FINISH and frames[-1].data["status"] == "done"
    text = "".join(f.data["delta"] for f in frames if f.event == "text_delta")
    assert text == "echo: one two three"


def test_run_retry_does_not_end_the_stream_and_idle_streams_get_keepalives(
    clean_redis: redis.Redis, server: WebServer, token: str
) -> None:
    run_id = _submit(server, token, "t-retry", "sleep 1")["run_id"]  # no worker: the run stays queued
    clean_redis.delete(events.stream_key(run_id))
    events.append_event(run_id, events.RUN_START, {"run_id": run_id})

    async def scenario() -> tuple[list[Frame], int]:
        stream = await _open_events(server, token, run_id)
        received: list[Frame] = []

        async def read() -> None:
            async for frame in stream.frames():
                received.append(frame)

        reader = asyncio.create_task(read())
        await asyncio.to_thread(
            events.append_event, run_id, events.RUN_RETRY, {"run_id": run_id, "attempt": 1}
        )
        await _until(lambda: len(received) == 2)
        await asyncio.sleep(3 * KEEPALIVE_MS / 1000)
        assert not reader.done(), "run_retry ended the stream"
        keepalives = stream.keepalives
        await asyncio.to_thread(events.append_event, run_id, "text_delta", {"delta": "again"})
        await asyncio.to_thread(events.append_event, run_id, events.RUN_FINISH, {"status": "done"})
        await asyncio.wait_for(reader, 10)
        await stream.close()
        return received, keepalives

    received, keepalives = asyncio.run(scenario())
    assert [f.event for f in received] == [
        events.RUN_START,
        events.RUN_RETRY,
        "text_delta",
        events.RUN_FINISH,
    ]
    assert [f.id for f in received] == _event_ids(run_id)
    assert keepalives >= 1


def test_client_disconnect_ends_the_read_and_resume_with_last_event_id(
    clean_redis: redis.Redis, server: WebServer, token: str
) -> None:
    run_id = _submit(server, token, "t-gone", "sleep 1")["run_id"]
    clean_redis.delete(events.stream_key(run_id))
    first = events.append_event(run_id, events.RUN_START, {"run_id": run_id})

    async def scenario() -> list[Frame]:
        streams = [await _open_events(server, token, run_id) for _ in range(3)]
        try:
            heads = [await anext(aiter(stream.frames())) for stream in streams]
            assert [h.id for h in heads] == [first] * 3
            # the three streams share the run's one reader: one XREAD, blocked
            await _until(lambda: len(_blocked_readers(clean_redis)) == 1)
            # watched over two keep-alive periods: the reader re-blocks after each timeout (a moment with
            # none blocked is that gap), and a second reader would show as two
            seen = []
            for _ in range(20):
                seen.append(len(_blocked_readers(clean_redis)))
                await asyncio.sleep(2 * KEEPALIVE_MS / 1000 / 20)
            assert max(seen) == 1, f"a stream of a run with a reader opened another: {seen}"
        finally:
            for stream in streams:
                await stream.close()  # the client goes away mid-stream
        await _until(lambda: not _blocked_readers(clean_redis), timeout=10)
        # the server is fine afterwards: a resume from the last id seen gets only what came after
        second = await asyncio.to_thread(events.append_event, run_id, events.RUN_FINISH, {"status": "done"})
        resumed = await open_stream(
            HOST, server.port, f"/api/v1/runs/{run_id}/events", _auth(token) | {"Last-Event-ID": first}
        )
        tail = await asyncio.wait_for(resumed.read_all(), 10)
        await resumed.close()
        assert [f.id for f in tail] == [second]
        return tail

    tail = asyncio.run(scenario())
    assert tail[0].event == events.RUN_FINISH


async def _until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")
        await asyncio.sleep(0.02)
