"""ASGI entry point (the web server: gunicorn with uvicorn workers, see scripts/run.sh)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "awaken_project.settings")
# Django runs each ASGI request's sync code (every DRF view here) in a thread of its own, so a
# persistent connection would never be reused by a later request: it would only linger until its
# thread is collected. Close each request's connection when it finishes instead (set DB_CONN_MAX_AGE to
# override, e.g. behind a pooler).
os.environ.setdefault("DB_CONN_MAX_AGE", "0")
# ... and share a pool of warm connections between those threads (sized to the bounded view phase).
os.environ.setdefault("DB_POOL_MAX_SIZE", os.environ.get("AWAKEN_WEB_MAX_CONCURRENT_VIEWS", "16"))

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]
App = Callable[[Message, Receive, Send], Awaitable[None]]
PERMIT_SCOPE_KEY = "awaken.view_permit"


class BoundedViews:
    """At most `limit` requests of this process inside Django's (sync) view phase at once.

    Each admitted request runs its view in its own thread with its own DB connection, so without a
    bound a burst of 1,000 stream opens would open 1,000 PostgreSQL connections. A request holds its
    permit until its response starts: an open SSE stream (which already gave back its connection,
    runs_app/api/sse.py) holds none. A view that waits on the event loop before it answers (a run wait,
    runs_app/api/run_wait.py) gives its permit back while it waits and takes one again to finish, through
    the `(release, reacquire)` pair in `scope[PERMIT_SCOPE_KEY]`."""

    def __init__(self, app: App, limit: int) -> None:
        self.app, self.limit = app, limit
        self._permits: asyncio.Semaphore | None = None

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._permits is None:
            self._permits = asyncio.Semaphore(self.limit)
        permits = self._permits
        await permits.acquire()
        held = True

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

        scope = {**scope, PERMIT_SCOPE_KEY: (release, reacquire)}

        async def send_and_release(message: Mapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                release()
            await send(message)

        try:
            await self.app(scope, receive, send_and_release)
        finally:
            release()


django_application = get_asgi_application()
from django.conf import settings  # noqa: E402  (configured by get_asgi_application)

application = BoundedViews(django_application, settings.AWAKEN_WEB_MAX_CONCURRENT_VIEWS)
