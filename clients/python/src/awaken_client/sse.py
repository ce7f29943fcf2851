"""Server-sent events: a line-by-line decoder (the text/event-stream format) shared by both clients."""

from __future__ import annotations

from awaken_client.models import Event, parse_event


class SseDecoder:
    """Feed it the body's lines (without their line ending); it answers an `Event` at each blank line
    that ends one. Comments (`: keep-alive`) are counted and dropped; a frame cut off by a dropped
    connection is never answered (the resume asks for it again)."""

    def __init__(self) -> None:
        self._fields: dict[str, str] = {}
        self._data: list[str] = []
        self.keepalives = 0

    def feed(self, line: str) -> Event | None:
        line = line.rstrip("\r\n")
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            self.keepalives += 1
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name in ("id", "event", "retry"):
            self._fields[name] = value
        return None

    def reset(self) -> None:
        """Forget a partly read frame (the connection dropped)."""
        self._fields, self._data = {}, []

    def _dispatch(self) -> Event | None:
        if not self._data and not self._fields:
            return None
        fields = dict(self._fields)
        fields["data"] = "\n".join(self._data)
        self.reset()
        return parse_event(fields)
