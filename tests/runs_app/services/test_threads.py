"""AWAKEN_THREAD_TTL_MS: the GC deletes threads whose last activity is older than the TTL and that have
nothing in flight or waiting (like DELETE threads/{id}), at most AWAKEN_GC_MAX_PER_TICK per tick."""

from __future__ import annotations

from typing import Any

import pytest

from mailbox_app import store
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.storage import RunRecord, TerminationReason
from mailbox_app.models import Dispatch, ThreadEpoch
from mailbox_app.services import maintenance
from runs_app import store as run_store
from runs_app.models import Message, Run, Thread
from runs_app.store import threads
from tests.support.dispatches import make_dispatch

pytestmark = pytest.mark.django_db
NOW = 10_000_000
TTL = 60_000
OLD, RECENT = NOW - TTL - 1, NOW - TTL + 1


def _thread(
    thread_id: str, updated_at: int, status: RunStatus | None = None, end: str = "natural_end"
) -> None:
    run_store.ensure_thread(thread_id=thread_id, now=updated_at)
    if status is not None:
        run_store.checkpoint(
            thread_id=thread_id,
            messages=[ChatMessage.user("hi")],
            run=RunRecord(
                run_id=f"r-{thread_id}",
                thread_id=thread_id,
                status=status,
                termination_reason=TerminationReason(type=end) if status is RunStatus.DONE else None,
                created_at=updated_at,
                updated_at=updated_at,
            ),
            now=updated_at,
        )
    Thread.objects.filter(id=thread_id).update(updated_at=updated_at)


def _ids() -> set[str]:
    return set(Thread.objects.values_list("id", flat=True))


def test_the_ttl_is_off_by_default() -> None:
    _thread("t-old", 1)
    assert maintenance.gc_counts(now=NOW)["threads_expired"] == 0
    assert _ids() == {"t-old"}


def test_old_threads_with_nothing_in_flight_or_waiting_are_deleted(settings: Any) -> None:
    settings.AWAKEN_THREAD_TTL_MS = TTL
    _thread("t-idle", OLD, RunStatus.DONE)
    _thread("t-error", OLD, RunStatus.DONE, end="error")
    _thread("t-empty", OLD)
    _thread("t-waiting", OLD, RunStatus.WAITING)
    _thread("t-busy", OLD)
    store.enqueue(make_dispatch("d-busy", "t-busy", created_at=OLD, available_at=OLD))
    Thread.objects.filter(id="t-busy").update(updated_at=OLD)
    _thread("t-recent", RECENT, RunStatus.DONE)
    assert maintenance.gc_counts(now=NOW)["threads_expired"] == 3
    assert _ids() == {"t-waiting", "t-busy", "t-recent"}
    assert set(Run.objects.values_list("thread_id", flat=True)) == {"t-waiting", "t-recent"}
    assert set(Message.objects.values_list("thread_id", flat=True)) == {"t-waiting", "t-recent"}
    assert list(Dispatch.objects.values_list("thread_id", flat=True)) == ["t-busy"]
    assert set(ThreadEpoch.objects.values_list("thread_id", flat=True)) == {"t-busy"}


def test_expiry_is_bounded_per_tick(settings: Any) -> None:
    settings.AWAKEN_THREAD_TTL_MS = TTL
    settings.AWAKEN_GC_MAX_PER_TICK = 2
    for i in range(3):
        _thread(f"t-{i}", OLD - i)
    assert [maintenance.gc_counts(now=NOW)["threads_expired"] for _ in range(3)] == [2, 1, 0]
    assert _ids() == set()


def test_the_delete_rechecks_the_cutoff_and_status_under_the_lock() -> None:
    _thread("t-touched", RECENT)
    _thread("t-waiting", OLD, RunStatus.WAITING)
    cutoff = NOW - TTL
    for thread_id in ("t-touched", "t-waiting"):
        kept = threads.delete_thread(thread_id=thread_id, owner_id=None, expire_before=cutoff)
        assert kept.outcome is threads.DeleteOutcome.KEPT
    assert _ids() == {"t-touched", "t-waiting"}
