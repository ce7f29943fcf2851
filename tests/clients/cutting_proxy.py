"""A loopback TCP proxy that drops a streamed response's connection right after its first SSE frame.

Everything else passes through untouched. The drop is real (both sockets are closed mid-body, the
chunked body never completes), so the client sees what it would see when a network path dies."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Iterator

MARKER = b"text/event-stream"
LAST_EVENT_ID = re.compile(rb"\r\nlast-event-id: *([^\r]*)\r\n", re.IGNORECASE)
RECV = 65536


class CuttingProxy:
    def __init__(self, target_port: int, *, cuts: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._cuts_left = cuts
        self.cuts = 0  # streamed responses cut so far
        self.connections = 0
        self.last_event_ids: list[str] = []  # the Last-Event-ID of every request passed on
        self._sockets: list[socket.socket] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for sock in self._sockets:
                _close(sock)

    def _take_cut(self) -> bool:
        with self._lock:
            if self._cuts_left <= 0:
                return False
            self._cuts_left -= 1
            self.cuts += 1
            return True

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self.connections += 1
                self._sockets += [downstream, upstream]
            threading.Thread(target=self._pump_requests, args=(downstream, upstream), daemon=True).start()
            threading.Thread(target=self._pump_back, args=(upstream, downstream), daemon=True).start()

    def _pump_back(self, upstream: socket.socket, downstream: socket.socket) -> None:
        """Server to client; the first streamed response (while cuts are left) is cut after one frame."""
        tail = b""  # the last bytes already forwarded: a marker split across two reads is still found
        pending: bytes | None = None  # once armed: the bytes held back since the marker
        try:
            while data := upstream.recv(RECV):
                if pending is None:
                    window = tail + data
                    found = window.lower().find(MARKER)
                    if found < 0 or not self._take_cut():
                        downstream.sendall(data)
                        tail = window[-(len(MARKER) - 1) :]
                        continue
                    pending = data
                else:
                    pending += data
                head_end = pending.find(b"\r\n\r\n")
                frame_end = -1 if head_end < 0 else pending.find(b"\n\n", head_end + 4)
                if frame_end >= 0:
                    downstream.sendall(pending[: frame_end + 2])
                    return  # the drop: both sockets close with the chunked body unfinished
        except OSError:
            pass
        finally:
            _close(upstream)
            _close(downstream)

    def _pump_requests(self, downstream: socket.socket, upstream: socket.socket) -> None:
        """Client to server, untouched; the requests' Last-Event-ID headers are noted."""
        try:
            while data := downstream.recv(RECV):
                found = [m.decode() for m in LAST_EVENT_ID.findall(data)]
                with self._lock:
                    self.last_event_ids += found
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            _close(downstream)
            _close(upstream)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


@contextlib.contextmanager
def cutting_proxy(target_port: int, *, cuts: int = 1) -> Iterator[CuttingProxy]:
    proxy = CuttingProxy(target_port, cuts=cuts)
    try:
        yield proxy
    finally:
        proxy.close()
