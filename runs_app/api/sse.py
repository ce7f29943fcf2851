"""Server-sent events from a run's Redis stream: replay after an id, then follow live until run finish.

Async end to end: the views stay sync DRF views and return a `StreamingHttpResponse` over an async
iterator, which Django's ASGI handler consumes on the event loop. An open stream is one coroutine and
one Redis connection blocked in `XREAD` (from `redis.asyncio`, one pool per event loop), not a server
thread, so one web process holds thousands. When the client goes away Django cancels the response task:
the cancellation reaches the pending `XREAD`, redis-py disconnects that connection (a cancelled
command leaves it in an unknown state) and returns it to the pool, and the generator's `finally` runs.

Under WSGI (or Django's sync test client) Django consumes an async iterator by running it to the end
in `async_to_sync` with a warning: it still works for streams that finish, it just does not stream.
"""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from django import db
from django.conf import settings
from django.http import StreamingHttpResponse
from rest_framework.renderers import BaseRenderer

from mailbox_app import events
from runs_app.api.protocols import selection as protocols
from runs_app.api.protocols.framing import KEEPALIVE, stream_position

MAX_STREAM_S = 3600.0
READ_COUNT = 1000
MAX_REDIS_CONNECTIONS = 20_000  # one per open stream (redis-py's default pool stops at 100)
SOCKET_TIMEOUT_MARGIN_S = 10.0
CLIENT_NAME = "awaken-sse"  # CLIENT LIST shows the stream readers by this name
TERMINAL_EVENTS = frozenset({events.RUN_FINISH})  # run_finish: the run is done (any outcome) or waiting

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis] = weakref.WeakKeyDictionary()


class EventStreamRenderer(BaseRenderer):
    """Lets DRF's content negotiation accept `Accept: text/event-stream`."""

    media_type = "text/event-stream"
    format = "sse"
    charset = "utf-8"

    def render(
        self, data: object, accepted_media_type: str | None = None, renderer_context: object = None
    ) -> bytes:
        return json.dumps(data).encode()


def async_redis() -> aioredis.Redis:
    """The asyncio Redis client of the running event loop (its own pool; uvicorn runs one loop)."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        client = aioredis.Redis.from_url(
            settings.REDIS_URL,
            health_check_interval=30,
            # an idle stream blocks in XREAD up to a keep-alive interval (redis-py's default is 5 s)
            socket_timeout=settings.AWAKEN_SSE_KEEPALIVE_MS / 1000 + SOCKET_TIMEOUT_MARGIN_S,
            client_name=CLIENT_NAME,
            max_connections=MAX_REDIS_CONNECTIONS,
        )
        _clients[loop] = client
    return client


def frame(event: events.RunEvent) -> str:
    return f"id: {event.id}\nevent: {event.type}\ndata: {json.dumps(event.data)}\n\n"


async def read_after(run_id: str, after: str, *, block_ms: int) -> list[events.RunEvent]:
    """Events strictly after `after`, oldest first; a blocking `XREAD` of up to `block_ms` when none."""
    result: Any = await async_redis().xread(
        {events.stream_key(run_id): after}, count=READ_COUNT, block=max(block_ms, 1)
    )
    entries = result[0][1] if result else []
    return [_decode(event_id, fields) for event_id, fields in entries]


async def run_events(
    run_id: str, *, after: str = "0-0", end_after: str | None = None
) -> AsyncIterator[events.RunEvent | None]:
    """The run's events after `after` (exclusive) until a terminal event past `end_after` (default
    `after`); None whenever a keep-alive is due.

    An idle stream sleeps in one `XREAD` until its next keep-alive is due (no polling)."""
    cursor = after
    end = stream_position(end_after or after)
    keepalive_s = settings.AWAKEN_SSE_KEEPALIVE_MS / 1000
    started = last_sent = time.monotonic()
    while (now := time.monotonic()) - started < MAX_STREAM_S:
        wait_s = min(keepalive_s - (now - last_sent), MAX_STREAM_S - (now - started))
        batch = await read_after(run_id, cursor, block_ms=int(wait_s * 1000))
        for event in batch:
            cursor = event.id
            yield event
            if event.type in TERMINAL_EVENTS and stream_position(event.id) > end:
                return
        if batch:
            last_sent = time.monotonic()
        elif time.monotonic() - last_sent >= keepalive_s - 0.01:
            yield None
            last_sent = time.monotonic()


async def follow(run_id: str, *, after: str = "0-0") -> AsyncIterator[str]:
    """Frames in this project's own event names after `after` (exclusive) until a terminal event;
    keep-alive comments while idle."""
    async for event in run_events(run_id, after=after):
        yield KEEPALIVE if event is None else frame(event)


def _body(run_id: str, after: str, protocol: str, thread_id: str) -> AsyncIterator[str]:
    if protocol == protocols.NATIVE:
        return follow(run_id, after=after)
    # an adapter replays the run from its start (without sending it) to know what is open at `after`
    replay = run_events(run_id, after="0-0", end_after=after)
    return protocols.encode(protocol, replay, run_id=run_id, thread_id=thread_id, resume_after=after)


def stream_response(
    run_id: str,
    *,
    after: str = "0-0",
    headers: dict[str, str] | None = None,
    protocol: str = protocols.NATIVE,
    thread_id: str = "",
) -> StreamingHttpResponse:
    # The view's work is done (its transactions committed): give back this request's DB connection now
    # rather than when the stream ends. Under ASGI each request's sync code has a thread (and so a
    # connection) of its own, and 1,000 open streams would otherwise hold 1,000 idle connections.
    for conn in db.connections.all(initialized_only=True):
        if not conn.in_atomic_block:  # (a test's wrapping transaction stays)
            conn.close()
    body = _body(run_id, after, protocol, thread_id)
    response = StreamingHttpResponse(body, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    for name, value in (protocols.response_headers(protocol) | (headers or {})).items():
        response[name] = value
    return response


def _decode(event_id: Any, fields: dict[Any, Any]) -> events.RunEvent:
    def s(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    raw = {s(k): s(v) for k, v in fields.items()}
    return events.RunEvent(id=s(event_id), type=raw.get("type", ""), data=json.loads(raw.get("data", "{}")))
