"""Delayed starts longer than a safe Celery countdown are parked in PostgreSQL and rung by the sweep ahead
of their time (mailbox_app/realtime/doorbells.py, mailbox_app/services/maintenance.py): no message waits
in the broker or a worker's memory for days, and the run still starts on time."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest
from celery.signals import before_task_publish
from django.db import connection

from mailbox_app import store
from mailbox_app.contract.ids import now_ms
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchStatus
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import RunRequest
from mailbox_app.realtime import doorbells
from mailbox_app.services import mailbox, maintenance
from mailbox_app.store import upkeep
from mailbox_app.worker.dispatch_signals import SignalAction, handle_dispatch_signal
from runs_app import store as run_store
from tests.mailbox_app.scenarios import test_races as races
from tests.support.dispatches import FAST
from tests.support.waiting import wait_until

DAY_MS = 86_400_000


@dataclass(frozen=True)
class Sent:
    task: str
    args: list[Any]
    eta_ms: int | None  # when the message asks to run (None: at once)


@pytest.fixture
def sent() -> Iterator[list[Sent]]:
    """Every Celery message this process publishes, as it goes to the broker."""
    published: list[Sent] = []
    lock = threading.Lock()

    def record(sender: str, body: Any, headers: dict[str, Any], **_: Any) -> None:
        eta = headers.get("eta")
        eta_ms = int(datetime.fromisoformat(eta).timestamp() * 1000) if eta else None
        with lock:
            published.append(Sent(sender, list(body[0]), eta_ms))

    before_task_publish.connect(record, weak=False)
    yield published
    before_task_publish.disconnect(record)


def doorbells_for(sent: list[Sent], dispatch_id: str) -> list[Sent]:
    return [s for s in sent if s.task == doorbells.DISPATCH_TASK and dispatch_id in s.args]


def submit_later(thread_id: str, delay_ms: int) -> str:
    request = RunRequest(thread_id=thread_id, messages=[ChatMessage.user("hi")], start_after_ms=delay_ms)
    return mailbox.submit_background(request).dispatch_id


def test_a_start_beyond_the_longest_countdown_sends_nothing_until_the_sweep_rings_it(
    engine: Any, sent: list[Sent]
) -> None:
    engine.AWAKEN_DOORBELL_MAX_COUNTDOWN_MS = 60_000
    # a start within the bound is a countdown to its time
    near = submit_later("t-near", 30_000)
    [bell] = doorbells_for(sent, near)
    assert bell.eta_ms is not None and abs(bell.eta_ms - store.load_dispatch(near).available_at) < 1_000
    # a start 30 days off sends nothing at all: the queued row is the record
    far = submit_later("t-far", 30 * DAY_MS)
    assert doorbells_for(sent, far) == []
    parked = store.load_dispatch(far)
    assert parked.status is DispatchStatus.QUEUED and parked.available_at >= now_ms() + 30 * DAY_MS - 60_000
    # the sweep leaves it alone while it is not due within its horizon (two sweep intervals) ...
    assert maintenance.sweep().rung_ahead == 1  # (t-near, due in 30 s)
    assert doorbells_for(sent, far) == []
    # ... and once it is (30 days on: its time moved to 20 s from now), rings it with a countdown to it
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE mailbox_dispatch SET available_at = %s WHERE dispatch_id = %s", [now_ms() + 20_000, far]
        )
    assert maintenance.sweep().rung_ahead == 2
    [rung] = doorbells_for(sent, far)
    assert rung.eta_ms is not None and abs(rung.eta_ms - store.load_dispatch(far).available_at) < 1_000
    assert all(s.eta_ms is None or s.eta_ms - now_ms() <= 60_000 for s in sent)


def test_a_doorbell_for_a_far_off_dispatch_is_acked_not_retried_for_days(engine: Any) -> None:
    engine.AWAKEN_DOORBELL_MAX_COUNTDOWN_MS = 60_000
    far = submit_later("t-early-bell", 30 * DAY_MS)
    decision = handle_dispatch_signal("t-early-bell", far, deliveries=1)
    assert decision.action is SignalAction.ACK  # not a retry with a 30-day countdown
    near = submit_later("t-near-bell", 10_000)
    retry = handle_dispatch_signal("t-near-bell", near, deliveries=1)
    assert retry.action is SignalAction.RETRY and 9_000 < retry.retry_after_ms <= 10_000


@pytest.mark.slow
def test_a_parked_start_runs_on_time_when_the_beat_sweeps(
    mailbox_worker: Any, engine_settings: Any, sent: list[Sent]
) -> None:
    # given sweeps every 2 s and countdowns of at most 3 s
    interval_s = 2.0
    engine_settings.AWAKEN_MAILBOX = FAST.model_copy(update={"sweep_interval_ms": int(interval_s * 1000)})
    engine_settings.AWAKEN_DOORBELL_MAX_COUNTDOWN_MS = 3_000
    # when a start is delayed 4.1 s: beyond the bound, and due just after the sweep at 4 s
    began = time.monotonic()
    dispatch_id = submit_later("t-parked", 4_100)
    available_at = store.load_dispatch(dispatch_id).available_at
    assert doorbells_for(sent, dispatch_id) == []
    # then the beat's sweeps (at 0, 2, 4, ... s) ring it ahead of time and it runs at its time, not at
    # the first sweep after it (6 s: 1.9 s late)
    tick = 0
    while not _settled(dispatch_id):
        assert tick < 6, "not run after six sweeps"
        maintenance.sweep()
        tick += 1
        next_tick = began + tick * interval_s
        wait_until(
            lambda: time.monotonic() >= next_tick or _settled(dispatch_id),  # noqa: B023
            timeout=interval_s + 5,
            interval=0.01,
        )
    done = store.load_dispatch(dispatch_id)
    assert done is not None and done.completed_at is not None
    lateness_ms = done.completed_at - available_at
    rings = doorbells_for(sent, dispatch_id)
    assert rings and all(r.eta_ms is not None for r in rings), rings
    assert 0 <= lateness_ms < 1_000, f"finished {lateness_ms} ms after its time"
    run = run_store.load_run(run_id=done.run_id)
    assert run is not None and run.started_at is not None and run.status is RunStatus.DONE
    assert run.started_at * 1000 >= available_at - 999  # (seconds)


def _settled(dispatch_id: str) -> bool:
    return store.load_dispatch(dispatch_id).status is DispatchStatus.ACKED


@pytest.mark.django_db
def test_the_ring_ahead_query_reads_through_indexes_at_scale() -> None:
    with connection.cursor() as cursor:
        cursor.execute(races._BULK_INSERT)  # 100,000 dispatches: 8,000 queued, 500 claimed
        cursor.execute("ANALYZE mailbox_dispatch")
    plan = races._explain(upkeep.THREADS_COMING_DUE, {"now": 1_500, "until": 4_000, "limit": 1_000})
    scans = races._assert_index_only_access(plan)
    assert "dispatch_available_idx" in {n.get("Index Name") for n in scans}, scans
    assert len(store.threads_coming_due(1_500, 4_000)) == 1_000 - 500  # (every unclaimed bulk thread)
