"""A minimal asyncio HTTP/1.1 client for the SSE tests and bench/stream_bench.py (no dependency).

`HttpConnection.request` answers a whole response on a keep-alive connection; `open_stream` sends one
request and leaves the (chunked) body to `SseStream.frames`, parsed as server-sent events.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Frame:
    id: str
    event: str
    data: Any


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


def parse_frames(buffer: str) -> tuple[list[Frame | None], str]:
    """Complete frames in `buffer` (None for a comment, i.e. a keep-alive) and the incomplete rest."""
    frames: list[Frame | None] = []
    while "\n\n" in buffer:
        raw, buffer = buffer.split("\n\n", 1)
        if raw.startswith(":"):
            frames.append(None)
            continue
        fields = dict(line.split(": ", 1) for line in raw.splitlines())
        frames.append(Frame(id=fields["id"], event=fields["event"], data=json.loads(fields["data"])))
    return frames, buffer


def _request_bytes(method: str, path: str, host: str, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return int(status_line.split(" ", 2)[1]), headers


async def _chunks(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """The decoded chunks of a `Transfer-Encoding: chunked` body, until the last (empty) chunk."""
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        data = await reader.readexactly(size + 2)
        if size == 0:
            return
        yield data[:-2]


async def _body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        return b"".join([chunk async for chunk in _chunks(reader)])
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    return await reader.read()


@dataclass
class HttpConnection:
    host: str
    port: int
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> Response:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(_request_bytes(method, path, self.host, headers or {}, body))
        await self.writer.drain()
        status, response_headers = await _read_head(self.reader)
        response = Response(status, response_headers, await _body(self.reader, response_headers))
        if response_headers.get("connection", "").lower() == "close":
            await self.close()
        return response

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
        self.reader = self.writer = None


@dataclass
class SseStream:
    status: int
    headers: dict[str, str]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    keepalives: int = 0
    _buffer: str = field(default="", repr=False)

    async def frames(self) -> AsyncIterator[Frame]:
        """Event frames until the server ends the body (keep-alive comments are counted, not given)."""
        async for chunk in _chunks(self.reader):
            parsed, self._buffer = parse_frames(self._buffer + chunk.decode())
            for frame in parsed:
                if frame is None:
                    self.keepalives += 1
                else:
                    yield frame

    async def read_all(self) -> list[Frame]:
        return [frame async for frame in self.frames()]

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


async def open_stream(
    host: str,
    port: int,
    path: str,
    headers: dict[str, str] | None = None,
    *,
    method: str = "GET",
    body: bytes = b"",
) -> SseStream:
    """Send the request and read the response head; the body is left to `SseStream.frames`."""
    reader, writer = await asyncio.open_connection(host, port)
    all_headers = {"Accept": "text/event-stream", "Connection": "close"} | (headers or {})
    writer.write(_request_bytes(method, path, host, all_headers, body))
    await writer.drain()
    status, response_headers = await _read_head(reader)
    return SseStream(status, response_headers, reader, writer)
