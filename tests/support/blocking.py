"""Races provoked on purpose: a transaction held open on its own connection (a thread), and a wait until
another backend is blocked on a lock (read from pg_stat_activity, never guessed by sleeping)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from django.db import connection, connections, transaction

from tests.support.waiting import wait_until

BLOCKED = """
SELECT wait_event_type FROM pg_stat_activity WHERE pid = %(pid)s AND wait_event_type = 'Lock'
"""


def backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])  # type: ignore[index]


def wait_blocked(pid: int, *, what: str, timeout: float = 15.0) -> None:
    """Until the backend `pid` waits for a lock (of a row, a transaction or an advisory lock)."""

    def blocked() -> bool:
        with connection.cursor() as cursor:
            cursor.execute(BLOCKED, {"pid": pid})
            return cursor.fetchone() is not None

    wait_until(blocked, timeout=timeout, interval=0.01, what=what)


@dataclass
class Held:
    """A transaction running `body` on its own connection, held open until `release()`."""

    ready: threading.Event = field(default_factory=threading.Event)
    go: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None
    pid: int = 0

    def release(self, timeout: float = 15.0) -> Any:
        self.go.set()
        assert self.done.wait(timeout), "the held transaction did not finish"
        if self.error is not None:
            raise self.error
        return self.result


@contextmanager
def held_transaction(body: Callable[[], Any]) -> Iterator[Held]:
    """Run `body` in a transaction on another thread and keep it open (its locks held) until the
    caller calls `release()` (or leaves the block): then it commits."""
    held = Held()

    def run() -> None:
        try:
            held.pid = backend_pid()
            with transaction.atomic():
                held.result = body()
                held.ready.set()
                held.go.wait(30)
        except BaseException as exc:  # noqa: BLE001 - reported by release()
            held.error = exc
            held.ready.set()
        finally:
            connections.close_all()
            held.done.set()

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    assert held.ready.wait(30), "the held transaction did not start"
    if held.error is not None:
        raise held.error
    try:
        yield held
    finally:
        held.go.set()
        worker.join(30)


@dataclass
class Background:
    """A call running on another thread (its own connection): `wait()` for its result."""

    thread: threading.Thread
    pid_ready: threading.Event
    box: dict[str, Any]

    @property
    def pid(self) -> int:
        assert self.pid_ready.wait(15), "the call did not start"
        return int(self.box["pid"])

    def finished(self) -> bool:
        return not self.thread.is_alive()

    def wait(self, timeout: float = 30.0) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the call did not return"
        if "error" in self.box:
            raise self.box["error"]
        return self.box.get("result")


def in_background(call: Callable[[], Any]) -> Background:
    box: dict[str, Any] = {}
    pid_ready = threading.Event()

    def run() -> None:
        try:
            box["pid"] = backend_pid()
            pid_ready.set()
            box["result"] = call()
        except BaseException as exc:  # noqa: BLE001 - reported by wait()
            box["error"] = exc
        finally:
            pid_ready.set()
            connections.close_all()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return Background(thread, pid_ready, box)
