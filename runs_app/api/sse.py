"""Server-sent events from a run's Redis stream: replay after an id, then follow live until run finish.

Served as a WSGI streaming response: each open stream holds one server thread (gunicorn's `--threads`),
so `make run` (2 workers x 8 threads) serves up to 16 concurrent streams; see README.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

from django.http import StreamingHttpResponse
from rest_framework.renderers import BaseRenderer

from mailbox_app import events

BLOCK_MS = 1000
KEEPALIVE_S = 15.0
MAX_STREAM_S = 3600.0


class EventStreamRenderer(BaseRenderer):
    """Lets DRF's content negotiation accept `Accept: text/event-stream`."""

    media_type = "text/event-stream"
    format = "sse"
    charset = "utf-8"

    def render(
        self, data: object, accepted_media_type: str | None = None, renderer_context: object = None
    ) -> bytes:
        return json.dumps(data).encode()


def frame(event: events.RunEvent) -> str:
    return f"id: {event.id}\nevent: {event.type}\ndata: {json.dumps(event.data)}\n\n"


def follow(run_id: str, *, after: str = "0-0") -> Iterator[str]:
    """Frames after `after` (exclusive) until a run_finish event; keep-alive comments while idle."""
    cursor = after
    started = last_sent = time.monotonic()
    while time.monotonic() - started < MAX_STREAM_S:
        batch = events.read_events(run_id, after=cursor, block_ms=BLOCK_MS)
        for event in batch:
            cursor = event.id
            yield frame(event)
            last_sent = time.monotonic()
            if event.type == events.RUN_FINISH:
                return
        if not batch and time.monotonic() - last_sent > KEEPALIVE_S:
            yield ": keep-alive\n\n"
            last_sent = time.monotonic()


def stream_response(
    run_id: str, *, after: str = "0-0", headers: dict[str, str] | None = None
) -> StreamingHttpResponse:
    response = StreamingHttpResponse(follow(run_id, after=after), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    for name, value in (headers or {}).items():
        response[name] = value
    return response
