"""UUID v7 identifiers (time-ordered), as the reference mints for dispatches, runs, tokens and messages."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def uuid7() -> str:
    """A UUID v7 string: 48-bit Unix ms, then a 12-bit counter (monotonic within one ms), then random bits."""
    global _last_ms, _counter
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            ms = _last_ms
            _counter += 1
            if _counter > 0xFFF:
                ms += 1
                _counter = 0
        else:
            _counter = int.from_bytes(os.urandom(2), "big") & 0x3FF
        _last_ms = ms
        counter = _counter
    rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | rand
    return str(uuid.UUID(int=value))


def now_ms() -> int:
    """The application clock, Unix milliseconds. Production passes this as `now` into every store call."""
    return time.time_ns() // 1_000_000


def consumer_id() -> str:
    """This process's name as a claimer (`host:pid`), written on the dispatches it claims."""
    return f"{socket.gethostname()}:{os.getpid()}"
