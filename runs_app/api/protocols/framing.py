"""What the front-end protocol adapters share: stream positions, `data:` framing, and the driver that
turns a run's event iterator into one protocol's server-sent events.

An adapter is a pure transform: it sees the run's events in stream order and answers each with the
protocol's chunks. To resume after `Last-Event-ID` the driver replays the stream from its start through
the adapter without sending anything (so the adapter knows which message, text part and tool calls are
open), and sends from the first event after the resume point on. Every frame an event produces is sent
together, and only the last carries the event's id: a client that reconnects with the last id it saw
has received the whole group for it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Protocol

from mailbox_app.realtime.events import EventsNotRetained, RunEvent

Chunk = dict[str, Any]
KEEPALIVE = ": keep-alive\n\n"
START = "0-0"


class Encoder(Protocol):
    def encode(self, event: RunEvent, *, live: bool) -> list[Chunk]:
        """The chunks for `event` (also called, `live=False`, for events replayed before a resume point)."""
        ...

    def trailer(self) -> list[str]:
        """Raw text sent after the last event (e.g. the AI SDK's `data: [DONE]`)."""
        ...

    def stream_error(self, message: str) -> list[Chunk]:
        """The chunks that end a stream which cannot go on without a gap (events no longer retained)."""
        ...


def stream_position(event_id: str) -> tuple[int, int]:
    """A Redis stream id (`<ms>-<seq>`) as a comparable pair."""
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


def frames(chunks: list[Chunk], event_id: str) -> str:
    parts = [f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n" for chunk in chunks]
    parts[-1] = f"id: {event_id}\n{parts[-1]}"
    return "".join(parts)


def tool_arguments(data: dict[str, Any]) -> Any:
    """A tool call's input: its `arguments` when the event names them, else the event's other fields."""
    if "arguments" in data:
        return data["arguments"]
    return {k: v for k, v in data.items() if k not in ("tool_call_id", "name")}


class EventEncoder:
    """Base of the adapters: dispatches each run event to `on_<type>` (`on_other` when there is none)
    and tracks the state both protocols need. `resync` answers what a client that joins mid-run must be
    told first (the open message and text part); `declared` the tool calls announced in this response."""

    def __init__(self, *, run_id: str, thread_id: str) -> None:
        self.run_id = run_id
        self.thread_id = thread_id
        self.is_open = False  # between a run_start and its run_finish
        self.text_id: str | None = None
        self.tools: dict[str, tuple[str, Any]] = {}  # tool call id -> (name, input)
        self.suspended: list[str] = []
        self.declared: set[str] = set()
        self.live = False

    def encode(self, event: RunEvent, *, live: bool) -> list[Chunk]:
        out: list[Chunk] = []
        if live and not self.live:
            self.live = True
            out += self.resync()
        handler = getattr(self, "on_" + event.type, None) if event.type.isidentifier() else None
        out += handler(event) if handler is not None else self.on_other(event)
        return out if live else []

    def trailer(self) -> list[str]:
        return []

    def stream_error(self, message: str) -> list[Chunk]:
        return []

    def resync(self) -> list[Chunk]:
        return []

    def on_other(self, event: RunEvent) -> list[Chunk]:
        return []

    def remember_tool(self, data: dict[str, Any]) -> str:
        call_id = str(data.get("tool_call_id") or "")
        self.tools[call_id] = (str(data.get("name") or "tool"), tool_arguments(data))
        if self.live:
            self.declared.add(call_id)
        return call_id

    def resumed_call(self, data: dict[str, Any]) -> str | None:
        """The tool call a decision resumed: the event's id, else the one suspended call (the echo agent
        resuming from a queued decision names none)."""
        call_id = str(data.get("tool_call_id") or "")
        if not call_id and len(self.suspended) == 1:
            call_id = self.suspended[0]
        if call_id not in self.tools:
            return None
        if call_id in self.suspended:
            self.suspended.remove(call_id)
        return call_id


def finish_kind(data: dict[str, Any]) -> str:
    """`error`, `suspended` (waiting for a decision), `cancelled` or `done`, from a run_finish payload."""
    termination = data.get("termination") or {}
    kind = termination.get("type") if isinstance(termination, dict) else None
    if kind == "error":
        return "error"
    if data.get("status") == "waiting" or kind == "suspended":
        return "suspended"
    if kind == "cancelled":
        return "cancelled"
    return "done"


def error_text(data: dict[str, Any]) -> str:
    termination = data.get("termination") or {}
    value = termination.get("value") if isinstance(termination, dict) else None
    return str(value) if value else "run failed"


def new_user_messages(messages: list[Any], text_of: Any) -> list[dict[str, str]]:
    """The user messages after the last non-user one, as this API's messages: a front end sends its whole
    history, and the thread already holds everything before them."""
    trailing: list[dict[str, str]] = []
    for message in reversed(messages):
        if not isinstance(message, dict) or message.get("role") != "user":
            break
        trailing.append({"role": "user", "content": text_of(message)})
    return trailing[::-1]


def translated(body: Any, messages: list[dict[str, str]], thread_id: Any) -> dict[str, Any]:
    """`body` with its front end's messages (and thread id, when the body names one) in this API's terms."""
    out = {k: v for k, v in body.items() if k in KEPT_FIELDS}
    out["messages"] = messages
    if "thread_id" not in out and isinstance(thread_id, str) and thread_id:
        out["thread_id"] = thread_id
    return out


KEPT_FIELDS = frozenset({"agent_id", "thread_id", "stream", "idempotency_key", "webhook"})
TOOL_SUCCESS = frozenset({"succeeded", "success", "ok", "done", "completed"})


async def encode_stream(
    events: AsyncIterator[RunEvent | None], encoder: Encoder, *, resume_after: str = START
) -> AsyncIterator[str]:
    """`events` (None: a keep-alive is due) as one protocol's frames, sent after `resume_after`."""
    cursor = stream_position(resume_after)
    try:
        async for event in events:
            if event is None:
                yield KEEPALIVE
                continue
            live = stream_position(event.id) > cursor
            chunks = encoder.encode(event, live=live)
            if live and chunks:
                yield frames(chunks, event.id)
    except EventsNotRetained as exc:  # no id: a client resuming goes on from the last event it had
        for chunk in encoder.stream_error(str(exc)):
            yield f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n"
    for text in encoder.trailer():
        yield text
