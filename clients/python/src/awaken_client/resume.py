"""What a run's event stream remembers to resume after a dropped connection (shared by both clients).

The server keeps a run's events in a Redis stream (24 h, at least 100,000 events per run) and
`GET runs/{id}/events` with `Last-Event-ID` replays what came after that id, then follows live, and ends
after the next `run_finish`. So a client that lost its connection reconnects with the id of the last
event it handed out and gets each event exactly once, in order. A frame cut off mid-way is never handed
out (the replay sends it again). When the events after that id are no longer kept, the server refuses
(410 `events_not_retained`, or a `stream_error` event on a stream that fell behind): that raises
`ApiError` rather than handing out a stream with a hole in it.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from awaken_client import calls
from awaken_client.errors import ApiError
from awaken_client.models import Event
from awaken_client.sse import SseDecoder

# A dropped or stalled connection (the read timeout outlasts the server's keep-alive comments), a
# connection that cannot be made, or the server cut off mid-body: reconnect and resume.
DROPS: tuple[type[Exception], ...] = (httpx.TransportError,)
CAUGHT: tuple[type[Exception], ...] = (httpx.TransportError, ApiError)  # `is_drop` tells which to cure
SERVER_ERROR = 500
STREAM_ERROR = "stream_error"  # the server's last event on a stream that cannot go on without a gap
GONE = 410


@dataclass(frozen=True, slots=True)
class StreamPolicy:
    """How a stream reconnects: up to `max_reconnects` drops in a row without an event in between,
    waiting `retry_delay_s` doubled each time (at most `max_retry_delay_s`); while the run has no events
    yet (queued, 204) it looks again every `not_started_poll_s`."""

    max_reconnects: int = 5
    retry_delay_s: float = 0.2
    max_retry_delay_s: float = 5.0
    not_started_poll_s: float = 0.25


class StreamState:
    def __init__(self, run_id: str | None, last_event_id: str | None, policy: StreamPolicy) -> None:
        self.run_id = run_id
        self.last_event_id = last_event_id
        self.policy = policy
        self.decoder = SseDecoder()
        self.finished = False
        self.reconnects = 0  # every reconnect after a drop, over the stream's life
        self._failures = 0  # drops since the last event

    def on_event(self, event: Event) -> None:
        """Remember `event`; a `stream_error` raises what a reconnect would answer (410)."""
        if event.type == STREAM_ERROR:
            raise stream_error(event)
        if event.id:
            self.last_event_id = event.id
        self._failures = 0
        if event.is_terminal:
            self.finished = True

    def on_drop(self, exc: Exception) -> float:
        """Count a drop; the delay before the reconnect, or `exc` again once the budget is spent."""
        self.decoder.reset()
        self._failures += 1
        if self._failures > self.policy.max_reconnects or self.run_id is None:
            raise exc
        self.reconnects += 1
        delay = self.policy.retry_delay_s * 2 ** (self._failures - 1)
        return float(min(delay, self.policy.max_retry_delay_s))

    def resume_call(self) -> calls.Call[httpx.Response]:
        assert self.run_id is not None
        return calls.run_events(self.run_id, self.last_event_id)


def stream_error(event: Event) -> ApiError:
    data = event.data if isinstance(event.data, dict) else {}
    message = str(data.get("error") or "the event stream cannot go on")
    return ApiError(GONE, message, code=data.get("code"), body=data)


def is_drop(exc: Exception) -> bool:
    """A failure a reconnect may cure: the transport's, or the server (or a proxy) answering 5xx."""
    return isinstance(exc, DROPS) or (isinstance(exc, ApiError) and exc.status_code >= SERVER_ERROR)


def header(response: httpx.Response | None, name: str) -> str | None:
    return None if response is None else response.headers.get(name)
