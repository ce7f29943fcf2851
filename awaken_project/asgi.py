"""ASGI entry point (the web server: gunicorn with uvicorn workers, the Procfile's `web` line)."""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import django
from asgiref.sync import ThreadSensitiveContext
from django.urls import get_resolver

from awaken_project import telemetry

AUTH_LOOKUP_THREADS = 2  # threads checking unknown tokens for the intake, each with a pooled connection

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "awaken_project.settings")
# Django runs each ASGI request's sync code (every DRF view here) in a thread of its own, so a
# persistent connection would never be reused by a later request: it would only linger until its
# thread is collected. Close each request's connection when it finishes instead (set DB_CONN_MAX_AGE to
# override, e.g. behind a pooler).
os.environ.setdefault("DB_CONN_MAX_AGE", "0")
# ... and share a pool of warm connections between those threads: one per view permit, and one per thread
# that checks an unknown token before a request is admitted (awaken_project/intake.py).
_POOL_SIZE = int(os.environ.get("AWAKEN_WEB_MAX_CONCURRENT_VIEWS") or "16") + AUTH_LOOKUP_THREADS
os.environ.setdefault("DB_POOL_MAX_SIZE", str(_POOL_SIZE))

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]
App = Callable[[Message, Receive, Send], Awaitable[None]]
PERMIT_SCOPE_KEY = "awaken.view_permit"
GC_THRESHOLDS = (50_000, 20, 100)  # CPython's default is (700, 10, 10)


class BoundedViews:
    """At most `limit` requests of this process inside Django's (sync) view phase at once.

    Each admitted request runs its view in its own thread with its own DB connection, so without a
    bound a burst of 1,000 stream opens would open 1,000 PostgreSQL connections. A request holds its
    permit until its response starts: an open SSE stream (which already gave back its connection,
    runs_app/api/sse.py) holds none. A view that waits on the event loop before it answers (a run wait,
    runs_app/api/run_wait.py) gives its permit back while it waits and takes one again to finish, through
    the `(release, reacquire)` pair in `scope[PERMIT_SCOPE_KEY]`.

    Every request's sync code runs on one thread. Django would give each request a thread of its own
    for its whole life (its `ThreadSensitiveContext`), so 1,000 open streams were 1,000 idle threads,
    each with its own DB wrapper objects (bench/stream_bench.py: 97 KiB of RSS a stream with them, 42
    KiB without). Here the outermost context hands the request a single-thread executor
    from an idle list, which it gives back when its response starts (a run wait's thread stays busy
    while it waits, so releasing the permit alone does not give it back). A request's sync calls still
    all run on its one thread; the few it makes after its response started (closing the response,
    `request_finished`) queue there between the calls of the request that holds the thread now, as a
    WSGI server's threads serve request after request. At most `limit` executors are kept idle; one
    beyond that is dropped, and its thread ends once its last request has."""

    def __init__(self, app: App, limit: int) -> None:
        self.app, self.limit = app, limit
        self._permits: asyncio.Semaphore | None = None
        self._idle: list[ThreadPoolExecutor] = []

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._permits is None:
            self._permits = asyncio.Semaphore(self.limit)
        permits = self._permits
        await permits.acquire()
        held = True
        executor: ThreadPoolExecutor | None = self._idle.pop() if self._idle else self._new_executor()
        context = ThreadSensitiveContext(executor=executor)

        def release() -> None:
            nonlocal held
            if held:
                held = False
                permits.release()

        async def reacquire() -> None:
            nonlocal held
            if not held:
                await permits.acquire()
                held = True

        def give_back_thread() -> None:
            nonlocal executor
            if executor is not None and len(self._idle) < self.limit:
                self._idle.append(executor)
            executor = None

        scope = {**scope, PERMIT_SCOPE_KEY: (release, reacquire)}

        async def send_and_release(message: Mapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                give_back_thread()
                release()
            await send(message)

        try:
            async with context:
                await self.app(scope, receive, send_and_release)
        finally:
            give_back_thread()
            release()

    def _new_executor(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="awaken-view")


# OpenTelemetry when an exporter is configured (awaken_project/telemetry.py): before the application is
# built, so Django's instrumentation middleware is in its chain; off, it imports nothing.
telemetry.configure("web")
django.setup(set_prefix=False)  # as django.core.asgi.get_asgi_application
from django.conf import settings  # noqa: E402

from awaken_project.handler import OneHopASGIHandler  # noqa: E402

# Django's handler, but a synchronous view runs with its middleware in one thread hop (handler.py)
django_application = OneHopASGIHandler()
from django.db import connections  # noqa: E402

from awaken_project import intake, probes  # noqa: E402  (imports the API's token cache: after setup)

# Every request passes the intake first (awaken_project/intake.py): probes answered, oversized and
# anonymous API requests refused, the body read under a deadline, all before a view permit is taken.
application = intake.Intake(
    BoundedViews(django_application, settings.AWAKEN_WEB_MAX_CONCURRENT_VIEWS),
    intake.IntakePolicy(
        max_body_bytes=settings.DATA_UPLOAD_MAX_MEMORY_SIZE,  # AWAKEN_API_MAX_BODY_BYTES
        body_timeout_s=getattr(settings, "AWAKEN_BODY_READ_TIMEOUT_MS", 5_000) / 1000,
        max_buffered_bytes=getattr(settings, "AWAKEN_BODY_BUFFER_MAX_BYTES", 64 << 20),
        session_cookie=settings.SESSION_COOKIE_NAME,
    ),
    probes.Probes(
        probes.libpq_params(connections["default"].get_connection_params()),
        getattr(settings, "REDIS_URL", "redis://127.0.0.1:6379/0"),
    ),
    lookup_threads=AUTH_LOOKUP_THREADS,
)

# Garbage collection pauses the event loop. Load the URLconf (and so every view module) now, then move
# everything start-up created into the collector's permanent generation, so that a full collection
# scans only what requests create; and collect less often (the young generation after 50,000 net
# allocations instead of 700, the older ones after 20 and 100 younger collections instead of 10 and
# 10), so that full collections, which each open stream makes longer (~200 objects a stream), are
# rare. bench/stream_bench.py, 1,000 streams: a full collection stopped the loop ~300 ms, after the
# freeze ~150-200 ms, and the slowest plain reads were the ones that met one; with the thresholds the
# slowest read went from 287-359 ms to 111-123 ms.
get_resolver().url_patterns  # noqa: B018
gc.collect()
gc.freeze()
gc.set_threshold(*GC_THRESHOLDS)
