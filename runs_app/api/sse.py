"""Server-sent events from a run's Redis stream: replay after an id, then follow live until run finish.

Async end to end: the views stay sync DRF views and return a `StreamingHttpResponse` over an async
iterator, which Django's ASGI handler consumes on the event loop. An open stream is one coroutine and
an asyncio queue, not a server thread: each run that has open streams in this process has one reader
(`RunFeed`, one Redis connection blocked in `XREAD`, from `redis.asyncio`, one pool per event loop) that
hands every batch to the queues of that run's streams. So one web process holds thousands of streams,
and a new event costs one `XREAD`, not one per stream. When the client goes away Django cancels the
response task: the cancellation reaches the stream's wait on its queue, the generator's `finally`
unsubscribes it, and the last stream to leave cancels the feed's pending `XREAD` (redis-py disconnects
that connection: a cancelled command leaves it in an unknown state).

What answers at once instead of a stream (`stream_response`): a resume at or after a done run's finish
(204, or the finish again for AG-UI), and a read whose start the run's stream no longer keeps (410). A
stream that falls behind what is kept ends with an error event instead of skipping: every event must
follow the one before it (`events.follows`). docs/streams.md says what each client gets and why.

Under WSGI (or Django's sync test client) Django consumes an async iterator by running it to the end
in `async_to_sync` with a warning: it still works for streams that finish, it just does not stream.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

import redis.asyncio as aioredis
from django import db
from django.http import HttpResponse, StreamingHttpResponse
from rest_framework.renderers import BaseRenderer

from mailbox_app.conf import awaken_settings
from mailbox_app.realtime import events
from runs_app.api.errors import ApiError
from runs_app.api.protocols import ag_ui
from runs_app.api.protocols import selection as protocols
from runs_app.api.protocols.framing import KEEPALIVE, finish_kind, stream_position

MAX_STREAM_S = 3600.0
READ_COUNT = 1000
MAX_REDIS_CONNECTIONS = 20_000  # one per open stream (redis-py's default pool stops at 100)
SOCKET_TIMEOUT_MARGIN_S = 10.0
STOP_RETRY_S = 0.05
T = TypeVar("T")
NOT_RETAINED = "events_not_retained"  # the code of the 410 answer and of a stream's `stream_error` event
STREAM_ERROR = "stream_error"  # the native event that ends a stream which cannot go on without a gap
CLIENT_NAME = "awaken-sse"  # CLIENT LIST shows the stream readers by this name
TERMINAL_EVENTS = frozenset({events.RUN_FINISH})  # run_finish: the run is done (any outcome) or waiting

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis] = weakref.WeakKeyDictionary()
_feeds: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, RunFeed]] = weakref.WeakKeyDictionary()


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
            awaken_settings.REDIS_URL,
            health_check_interval=30,
            # an idle stream blocks in XREAD up to a keep-alive interval (redis-py's default is 5 s)
            socket_timeout=awaken_settings.SSE_KEEPALIVE_MS / 1000 + SOCKET_TIMEOUT_MARGIN_S,
            client_name=CLIENT_NAME,
            max_connections=MAX_REDIS_CONNECTIONS,
        )
        _clients[loop] = client
    return client


def frame(event: events.RunEvent) -> str:
    return f"id: {event.id}\nevent: {event.type}\ndata: {json.dumps(event.data)}\n\n"


async def read_after(run_id: str, after: str, *, block_ms: int | None) -> list[events.RunEvent]:
    """Events strictly after `after`, oldest first (at most `READ_COUNT`); with `block_ms`, a blocking
    `XREAD` of up to that long when there are none yet."""
    block = None if block_ms is None else max(block_ms, 1)
    result: Any = await async_redis().xread({events.stream_key(run_id): after}, count=READ_COUNT, block=block)
    entries = result[0][1] if result else []
    return [events.decode(event_id, fields) for event_id, fields in entries]


class RunFeed:
    """The one reader of a run's stream in this event loop: a task blocked in `XREAD` that hands every
    batch it reads to each subscribed stream's queue.

    1,000 streams on one run are one Redis connection and one `XREAD` per batch, not 1,000 of each. The
    feed starts after the stream's last entry at the time it starts (`ready`); a subscriber that joins
    reads what came before from Redis itself (`run_events`). Its `XREAD` blocks for at most a keep-alive
    interval; one that returns nothing is handed out as an empty batch, which tells every subscriber
    that a keep-alive is due (one timer per run, not one per stream). It ends with its last subscriber;
    a Redis error ends it and is raised in every subscriber."""

    def __init__(self, run_id: str, registry: dict[str, RunFeed]) -> None:
        self.run_id, self._registry = run_id, registry
        self.queues: set[asyncio.Queue[Batch]] = set()
        self.ready = asyncio.Event()
        self.error: BaseException | None = None
        self._task = asyncio.get_running_loop().create_task(self._read(), name=f"sse-feed-{run_id}")

    def subscribe(self) -> asyncio.Queue[Batch]:
        queue: asyncio.Queue[Batch] = asyncio.Queue()
        self.queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Batch]) -> None:
        self.queues.discard(queue)
        if not self.queues:
            self._close()
            self._task.cancel()  # reaches the pending XREAD (its connection is dropped, not reused)

    async def wait_ready(self) -> None:
        await self.ready.wait()
        if self.error is not None:
            raise self.error

    def _close(self) -> None:
        if self._registry.get(self.run_id) is self:
            del self._registry[self.run_id]

    async def _read(self) -> None:
        block_ms = awaken_settings.SSE_KEEPALIVE_MS
        try:
            cursor = await _cancellable(last_event_id(self.run_id))
            self.ready.set()
            while self.queues:
                batch = await _cancellable(read_after(self.run_id, cursor, block_ms=block_ms))
                cursor = batch[-1].id if batch else cursor
                for queue in self.queues:  # an empty batch: nothing for a keep-alive interval
                    queue.put_nowait(batch)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - raised in every subscriber instead
            self._close()
            self.error = exc
            self.ready.set()
            for queue in self.queues:
                queue.put_nowait(exc)


Batch = list[events.RunEvent] | BaseException


async def _cancellable(command: Coroutine[Any, Any, T]) -> T:
    """`await command`, run as a task of its own that is cancelled again every `STOP_RETRY_S` until it
    has ended when the caller is cancelled. On Python 3.11 `asyncio.wait_for`, under which redis-py
    sends each command, loses a cancellation that arrives just as the send completes: the XREAD goes
    on, and `asyncio.run` (Django's sync test client) hung on exit waiting for it."""
    task = asyncio.get_running_loop().create_task(command)
    try:
        await asyncio.wait([task])
    except asyncio.CancelledError:
        while not task.done():
            task.cancel()
            try:
                await asyncio.wait([task], timeout=STOP_RETRY_S)
            except asyncio.CancelledError:
                continue
        raise
    return task.result()


def run_feed(run_id: str) -> RunFeed:
    """The running feed of `run_id` in this event loop (started on first use)."""
    loop = asyncio.get_running_loop()
    registry = _feeds.setdefault(loop, {})
    feed = registry.get(run_id)
    if feed is None:
        feed = registry[run_id] = RunFeed(run_id, registry)
    return feed


async def last_event_id(run_id: str) -> str:
    """The id of the run's newest event ("0-0" when there is none)."""
    last: Any = await async_redis().xrevrange(events.stream_key(run_id), count=1)
    return _text(last[0][0]) if last else "0-0"


async def run_events(
    run_id: str, *, after: str = "0-0", end_after: str | None = None
) -> AsyncIterator[events.RunEvent | None]:
    """The run's events after `after` (exclusive) until a terminal event past `end_after` (default
    `after`); None whenever a keep-alive is due. Raises `events.EventsNotRetained` instead of skipping:
    each event must follow the one before it (`events.follows`), else what came between was trimmed.

    Subscribes to the run's feed first, then reads the events already in the stream after `after`
    (non-blocking `XREAD`s) until it has caught up, then takes the feed's batches, skipping what it
    already has: the feed starts after an entry that existed before this catch-up read, so nothing
    falls between the two. Idle, it sleeps on its queue until the feed says a keep-alive is due."""
    last = after
    end = stream_position(end_after or after)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + MAX_STREAM_S
    feed = run_feed(run_id)
    queue = feed.subscribe()
    try:
        await feed.wait_ready()
        read_from = after
        while batch := await _cancellable(read_after(run_id, read_from, block_ms=None)):
            for event in batch:
                _check_follows(event, last)
                last = event.id
                yield event
                if event.type in TERMINAL_EVENTS and stream_position(event.id) > end:
                    return
            if len(batch) < READ_COUNT:
                break
            read_from = batch[-1].id
        while loop.time() < deadline:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            if not item:
                yield None
            for event in item:
                position = stream_position(event.id)
                if position <= stream_position(last):
                    continue
                _check_follows(event, last)
                last = event.id
                yield event
                if event.type in TERMINAL_EVENTS and position > end:
                    return
    finally:
        feed.unsubscribe(queue)


def _check_follows(event: events.RunEvent, last: str) -> None:
    if not events.follows(event, last):
        raise events.EventsNotRetained(last, event)


async def follow(run_id: str, *, after: str = "0-0") -> AsyncIterator[str]:
    """Frames in this project's own event names after `after` (exclusive) until a terminal event;
    keep-alive comments while idle. A gap ends the stream with a `stream_error` event (no id)."""
    try:
        async for event in run_events(run_id, after=after):
            yield KEEPALIVE if event is None else frame(event)
    except events.EventsNotRetained as exc:
        yield stream_error_frame(exc)


def stream_error_frame(exc: events.EventsNotRetained) -> str:
    data = {
        "error": str(exc),
        "code": NOT_RETAINED,
        "first_retained_id": exc.first_retained_id,
        "last_trimmed_id": exc.last_trimmed_id,
    }
    return f"event: {STREAM_ERROR}\ndata: {json.dumps(data)}\n\n"


def _body(run_id: str, after: str, protocol: str, thread_id: str) -> AsyncIterator[str]:
    if protocol == protocols.NATIVE:
        return follow(run_id, after=after)
    # an adapter replays the run from its start (without sending it) to know what is open at `after`
    replay = run_events(run_id, after="0-0", end_after=after)
    return protocols.encode(protocol, replay, run_id=run_id, thread_id=thread_id, resume_after=after)


async def _once(event: events.RunEvent) -> AsyncIterator[events.RunEvent | None]:
    yield event


def ended_by(newest: events.RunEvent | None, after: str) -> bool:
    """Whether a resume after `after` has nothing left to wait for: the stream's newest event is a
    finish that is not a waiting one (the run is done: a waiting run goes on after a decision, and a
    resume at its finish waits for the continuation) and `after` is at or past it."""
    return (
        newest is not None
        and newest.type in TERMINAL_EVENTS
        and finish_kind(newest.data) != "suspended"
        and stream_position(after) >= stream_position(newest.id)
    )


def stream_response(
    run_id: str,
    *,
    after: str = "0-0",
    headers: dict[str, str] | None = None,
    protocol: str = protocols.NATIVE,
    thread_id: str = "",
) -> HttpResponse | StreamingHttpResponse:
    """The run's event stream after `after` in `protocol`, or what answers at once instead.

    A resume at or after the finish of a run that is done has nothing to stream: 204 (which stops an
    `EventSource` from reconnecting and is the AI SDK's `reconnectToStream` "no active stream"), or for
    AG-UI the finish again as a run of its own (`RUN_STARTED` + `RUN_FINISHED`/`RUN_ERROR`: what
    `@ag-ui/client` accepts; it fails on a body-less 204). A read whose start is no longer retained is
    410 `events_not_retained`: a native resume needs the events after `after`, a front-end protocol the
    whole run (its adapter rebuilds from the first event what is open at the resume point)."""
    # The view's work is done (its transactions committed): give back this request's DB connection now
    # rather than when the stream ends. Under ASGI each request's sync code has a thread (and so a
    # connection) of its own, and 1,000 open streams would otherwise hold 1,000 idle connections.
    for conn in db.connections.all(initialized_only=True):
        if not conn.in_atomic_block:  # (a test's wrapping transaction stays)
            conn.close()
    needed_from = after if protocol == protocols.NATIVE else events.NO_EVENT
    newest, first = events.stream_ends(run_id, needed_from)
    if ended_by(newest, after):
        assert newest is not None
        if protocol != ag_ui.NAME:
            return HttpResponse(status=204)
        body = protocols.encode(protocol, _once(newest), run_id=run_id, thread_id=thread_id)
    elif first is not None and not events.follows(first, needed_from):
        field = "Last-Event-ID" if needed_from != events.NO_EVENT else None
        not_retained = events.EventsNotRetained(needed_from, first)
        raise ApiError(str(not_retained), code=NOT_RETAINED, status_code=410, field=field)
    else:
        body = _body(run_id, after, protocol, thread_id)
    response = StreamingHttpResponse(body, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    for name, value in (protocols.response_headers(protocol) | (headers or {})).items():
        response[name] = value
    return response


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
