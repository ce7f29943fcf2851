"""GC of orphaned epoch rows (mailbox_app/store/upkeep.py): only threads with no dispatch rows left, bounded
per tick, and never a row an enqueue holds."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.db import connection, transaction

from mailbox_app import store
from mailbox_app.models import ThreadEpoch
from mailbox_app.services import maintenance
from mailbox_app.store import upkeep
from tests.support.dispatches import make_dispatch

FAR_FUTURE = 10**13  # past every GC TTL


def _epochs() -> set[str]:
    return set(ThreadEpoch.objects.values_list("thread_id", flat=True))


@pytest.mark.django_db
def test_only_epoch_rows_without_dispatches_are_purged_and_counted() -> None:
    # given t-a orphaned, t-b with a queued dispatch, t-c with a terminal one
    ThreadEpoch.objects.create(thread_id="t-a", current_epoch=4)
    store.enqueue(make_dispatch("d-b", "t-b"))
    store.enqueue(make_dispatch("d-c", "t-c"))
    store.cancel("d-c", 2000)
    # when / then: the terminal dispatch is too recent to purge, so only t-a goes
    counts = maintenance.gc_counts(now=3000)
    assert (counts["dispatches"], counts["epochs"]) == (0, 1)
    assert _epochs() == {"t-b", "t-c"}
    # once d-c is purged, t-c's row is orphaned in the same tick
    counts = maintenance.gc_counts(now=FAR_FUTURE)
    assert (counts["dispatches"], counts["epochs"]) == (1, 1)
    assert _epochs() == {"t-b"}


@pytest.mark.django_db
def test_a_purged_epoch_row_is_recreated_at_zero_by_the_next_enqueue_and_claims_work() -> None:
    ThreadEpoch.objects.create(thread_id="t-1", current_epoch=7)
    assert upkeep.purge_orphaned_epochs(limit=10) == 1
    store.enqueue(make_dispatch("d-1", "t-1"))
    assert ThreadEpoch.objects.get(thread_id="t-1").current_epoch == 0
    claimed = store.claim("t-1", "worker", 30_000, 5000)
    assert [d.dispatch_id for d in claimed] == ["d-1"]


@pytest.mark.django_db
def test_the_purge_is_bounded_per_tick(settings: Any) -> None:
    ThreadEpoch.objects.bulk_create([ThreadEpoch(thread_id=f"t-{i}") for i in range(5)])
    settings.AWAKEN_GC_MAX_PER_TICK = 2
    assert [maintenance.gc_counts(now=3000)["epochs"] for _ in range(4)] == [2, 2, 1, 0]
    ThreadEpoch.objects.bulk_create([ThreadEpoch(thread_id=f"u-{i}") for i in range(5)])
    assert upkeep.purge_orphaned_epochs(limit=4, batch=3) == 4  # two batches, stopped at the bound
    assert upkeep.purge_orphaned_epochs(limit=4, batch=3) == 1


@pytest.mark.django_db(transaction=True)
def test_an_epoch_row_held_by_an_enqueue_in_flight_is_skipped_and_kept() -> None:
    ThreadEpoch.objects.create(thread_id="t-1", current_epoch=2)
    enqueued, release = threading.Event(), threading.Event()

    def enqueue_and_hold() -> None:
        try:
            with transaction.atomic():
                store.enqueue(make_dispatch("d-1", "t-1"))  # locks the epoch row, then inserts
                enqueued.set()
                assert release.wait(15)
        finally:
            connection.close()

    holder = threading.Thread(target=enqueue_and_hold, daemon=True)
    holder.start()
    assert enqueued.wait(15)
    assert upkeep.purge_orphaned_epochs(limit=10) == 0  # SKIP LOCKED: not waited for, not deleted
    release.set()
    holder.join(15)
    assert upkeep.purge_orphaned_epochs(limit=10) == 0  # committed: it has a dispatch now
    row = ThreadEpoch.objects.get(thread_id="t-1")
    assert row.current_epoch == 2 and store.load_dispatch("d-1").dispatch_epoch == 2
