"""Waiting on dispatches and runs, a fast-polling in-process Celery worker, concurrent calls on their own
connections, and PostgreSQL locks held by another connection (how engine tests inject claim errors)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from celery.contrib.testing.worker import start_worker
from django.db import connection, transaction

from awaken_project.celery import app
from mailbox_app import store
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchRecord, DispatchStatus
from mailbox_app.contract.storage import RunRecord
from runs_app import store as run_store
from tests.support.agents import RECORDER
from tests.support.dispatches import FAST
from tests.support.waiting import wait_until

LONG_LEASE = FAST.model_copy(update={"lease_ms": 30_000, "lease_renewal_interval_ms": 10_000})
LOCK_TIMEOUT_MS = 150  # a connection in `lock_timeout()` gives up waiting for a lock after this


@contextmanager
def fast_polling_worker() -> Iterator[Any]:
    """Like the shared `mailbox_worker`, but polling the broker every 100 ms so it also stops quickly."""
    saved = app.conf.broker_transport_options
    app.conf.broker_transport_options = {**saved, "polling_interval": 0.1}
    try:
        with start_worker(
            app,
            pool="threads",
            concurrency=4,
            perform_ping_check=False,
            loglevel="WARNING",
            shutdown_timeout=15,
        ) as running:
            yield running
    finally:
        app.conf.broker_transport_options = saved
        RECORDER.release.set()


def dispatch_when(dispatch_id: str, predicate: Callable[[DispatchRecord], bool], what: str) -> DispatchRecord:
    found = wait_until(
        lambda: (d := store.load_dispatch(dispatch_id)) is not None and predicate(d) and d, what=what
    )
    assert isinstance(found, DispatchRecord)
    return found


def dispatch_in(dispatch_id: str, status: DispatchStatus) -> DispatchRecord:
    return dispatch_when(dispatch_id, lambda d: d.status is status, f"{dispatch_id} {status.value}")


def run_in(run_id: str, status: RunStatus) -> RunRecord:
    found = wait_until(
        lambda: (r := run_store.load_run(run_id=run_id)) is not None and r.status is status and r,
        what=f"run {run_id} {status.value}",
    )
    assert isinstance(found, RunRecord)
    return found


def calls_for(dispatch_id: str) -> int:
    with RECORDER.lock:
        return sum(1 for call in RECORDER.calls if call.dispatch_id == dispatch_id)


def concurrently(calls: Sequence[Callable[[], Any]]) -> list[Any]:
    """Run each call in its own thread (own DB connection), released together; results or exceptions."""
    barrier = threading.Barrier(len(calls), timeout=15)
    results: list[Any] = [None] * len(calls)

    def work(index: int, call: Callable[[], Any]) -> None:
        try:
            connection.ensure_connection()
            barrier.wait()
            results[index] = call()
        except BaseException as exc:  # noqa: BLE001
            results[index] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(i, c), daemon=True) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(t.is_alive() for t in threads), "concurrent calls did not finish"
    return results


class HeldLock:
    """A PostgreSQL lock held by another connection until `release()` (which waits for its commit)."""

    def __init__(self, statement: str, params: Sequence[Any] = ()) -> None:
        self._locked = threading.Event()
        self._release = threading.Event()
        self._done = threading.Event()
        self._statement, self._params = statement, params
        self._thread = threading.Thread(target=self._hold, daemon=True)

    def _hold(self) -> None:
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(self._statement, self._params)
                self._locked.set()
                self._release.wait(30)
        finally:
            connection.close()
            self._done.set()

    def __enter__(self) -> HeldLock:
        self._thread.start()
        assert self._locked.wait(10), "could not take the lock"
        return self

    def release(self) -> None:
        self._release.set()
        assert self._done.wait(10)

    def __exit__(self, *exc: object) -> None:
        self.release()
        self._thread.join(10)


@contextmanager
def lock_timeout() -> Iterator[None]:
    """This connection gives up waiting for a lock after LOCK_TIMEOUT_MS (a genuine database error)."""
    with connection.cursor() as cursor:
        cursor.execute(f"SET lock_timeout = '{LOCK_TIMEOUT_MS}ms'")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET lock_timeout")
