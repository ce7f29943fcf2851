"""Python counterparts of awaken-stores' `mailbox_conformance.rs` (34 tests), run on PostgreSQL.

Each test ports one Rust conformance function: same scenario, same times, same assertions. Where the
Rust test only checks `is_err()`, the port also pins the error type the contract names (§3.4-§3.8).
"""

from __future__ import annotations

import pytest

from mailbox_app import store
from mailbox_app.contract.ids import uuid7
from mailbox_app.contract.mailbox import DispatchRecord, DispatchStatus, RunDispatchResult
from mailbox_app.contract.storage import AlreadyExists, NotFound, VersionConflict
from mailbox_app.models import Dispatch
from mailbox_app.store import conformance
from tests.support.dispatches import make_dispatch

pytestmark = pytest.mark.django_db


def _dispatch(
    dispatch_id: str,
    thread_id: str,
    run_id: str,
    priority: int,
    available_at: int,
    *,
    created_at: int | None = None,
    max_attempts: int = 5,
    dedupe_key: str | None = None,
) -> DispatchRecord:
    """The Rust helper `make_dispatch(id, thread, run, priority, available_at)`.

    `RunDispatch::queued(.., available_at)` stamps `created_at` with the same time; `with_created_at`
    overrides it.
    """
    return make_dispatch(
        dispatch_id,
        thread_id,
        run_id,
        priority=priority,
        available_at=available_at,
        created_at=available_at if created_at is None else created_at,
        max_attempts=max_attempts,
        dedupe_key=dedupe_key,
    )


def _assert_claim_fields_clear(dispatch: DispatchRecord) -> None:
    assert dispatch.claim_token is None
    assert dispatch.claimed_by is None
    assert dispatch.lease_until is None


def _load(dispatch_id: str) -> DispatchRecord:
    loaded = store.load_dispatch(dispatch_id)
    assert loaded is not None, f"dispatch {dispatch_id} should exist"
    return loaded


def _token(dispatch: DispatchRecord) -> str:
    assert dispatch.claim_token is not None
    return dispatch.claim_token


# --- enqueue / claim ------------------------------------------------------------------------


def test_enqueue_and_list() -> None:
    """Enqueue one dispatch; `list_dispatches` returns it as queued.

    seed: enqueue_and_list
    """
    store.enqueue(_dispatch("d1", "t-enqueue", "r1", 128, 1000))

    listed = store.list_dispatches("t-enqueue", None, 100, 0)
    assert len(listed) == 1
    assert listed[0].dispatch_id == "d1"
    assert listed[0].status is DispatchStatus.QUEUED


def test_claim_returns_queued_dispatch() -> None:
    """`claim` returns the queued dispatch as claimed, with a token and the consumer id.

    The Rust test passes limit 10; only one dispatch exists, so our one-row cap changes nothing.

    seed: claim_returns_queued_dispatch
    """
    store.enqueue(_dispatch("d1", "t-claim", "r1", 128, 1000))

    claimed = store.claim("t-claim", "consumer-1", 30_000, 1000, 10)
    assert len(claimed) == 1
    assert claimed[0].dispatch_id == "d1"
    assert claimed[0].status is DispatchStatus.CLAIMED
    assert claimed[0].claim_token is not None
    assert claimed[0].claimed_by == "consumer-1"


def test_claim_respects_available_at() -> None:
    """`claim` skips a dispatch whose `available_at` is in the future, then takes it once due.

    seed: claim_respects_available_at
    """
    store.enqueue(_dispatch("d1", "t-avail", "r1", 128, 5000))

    assert store.claim("t-avail", "consumer-1", 30_000, 1000, 10) == []

    claimed = store.claim("t-avail", "consumer-1", 30_000, 5000, 10)
    assert len(claimed) == 1
    assert claimed[0].dispatch_id == "d1"


def test_claim_respects_priority_before_created_at() -> None:
    """A lower priority number wins over an older `created_at`.

    seed: claim_respects_priority_before_created_at
    """
    store.enqueue(_dispatch("d-low", "t-priority", "r-low", 200, 1000, created_at=10))
    store.enqueue(_dispatch("d-high", "t-priority", "r-high", 10, 1000, created_at=20))

    claimed = store.claim("t-priority", "consumer-1", 30_000, 1000, 1)
    assert len(claimed) == 1
    assert claimed[0].dispatch_id == "d-high"
    assert claimed[0].priority == 10


def test_claim_limit_preserves_thread_exclusivity() -> None:
    """While one dispatch of a thread is claimed, a second claim (even with limit 10) gets nothing.

    seed: claim_limit_preserves_thread_exclusivity
    """
    store.enqueue(_dispatch("d-one", "t-claim-limit", "r-one", 10, 1000))
    store.enqueue(_dispatch("d-two", "t-claim-limit", "r-two", 10, 1000, created_at=2000))

    claimed = store.claim("t-claim-limit", "consumer-1", 30_000, 1000, 1)
    assert len(claimed) == 1
    assert claimed[0].dispatch_id == "d-one"

    blocked = store.claim("t-claim-limit", "consumer-2", 30_000, 1100, 10)
    assert blocked == [], "same thread must not claim a second dispatch while one is active"

    conformance.ack("d-one", _token(claimed[0]), 1200)

    following = store.claim("t-claim-limit", "consumer-2", 30_000, 1300, 1)
    assert len(following) == 1
    assert following[0].dispatch_id == "d-two"


def test_list_dispatches_orders_by_priority_then_created_at() -> None:
    """`list_dispatches` uses claim order: priority ascending, then `created_at` ascending.

    seed: list_dispatches_orders_by_priority_then_created_at
    """
    store.enqueue(_dispatch("d-low", "t-list-order", "r-low", 200, 1000, created_at=10))
    store.enqueue(_dispatch("d-high-newer", "t-list-order", "r-high-newer", 10, 1000, created_at=30))
    store.enqueue(_dispatch("d-high-older", "t-list-order", "r-high-older", 10, 1000, created_at=20))

    listed = store.list_dispatches("t-list-order", None, 10, 0)
    assert [d.dispatch_id for d in listed] == ["d-high-older", "d-high-newer", "d-low"]


# --- ack / nack -----------------------------------------------------------------------------


def test_ack_transitions_to_acked() -> None:
    """`ack` moves a claimed dispatch to acked and clears the claim fields.

    seed: ack_transitions_to_acked
    """
    store.enqueue(_dispatch("d1", "t-ack", "r1", 128, 1000))
    claimed = store.claim("t-ack", "consumer-1", 30_000, 1000, 1)

    conformance.ack("d1", _token(claimed[0]), 2000)

    loaded = _load("d1")
    assert loaded.status is DispatchStatus.ACKED
    _assert_claim_fields_clear(loaded)


def test_ack_rejects_wrong_claim_token() -> None:
    """`ack` with a token that is not the active claim's fails; the dispatch stays claimed.

    seed: ack_rejects_wrong_claim_token
    """
    store.enqueue(_dispatch("d1", "t-ack-wrong", "r1", 128, 1000))
    claimed = store.claim("t-ack-wrong", "consumer-1", 30_000, 1000, 1)

    with pytest.raises(VersionConflict):
        conformance.ack("d1", "wrong-token", 2000)

    loaded = _load("d1")
    assert loaded.status is DispatchStatus.CLAIMED
    assert loaded.claim_token == claimed[0].claim_token


def test_nack_returns_to_queued() -> None:
    """`nack` with attempts left requeues at `retry_at`, counts the attempt, records the error, and
    drops the abandoned attempt's runtime projection.

    seed: nack_returns_to_queued
    """
    store.enqueue(_dispatch("d1", "t-nack", "r1", 128, 1000))
    claimed = store.claim("t-nack", "consumer-1", 30_000, 1000, 1)
    token = _token(claimed[0])

    # An in-flight runtime projection that the requeue must drop.
    conformance.record_dispatch_start("d1", token, "attempt-1", 1500)

    store.nack("d1", token, 3000, "transient error", 2000)

    loaded = _load("d1")
    assert loaded.status is DispatchStatus.QUEUED
    assert loaded.attempt_count == 1
    assert loaded.available_at == 3000
    assert loaded.claim_token is None
    assert loaded.claimed_by is None
    assert loaded.lease_until is None
    assert loaded.last_error == "transient error"
    # A requeued dispatch must not carry the abandoned attempt's projection.
    assert loaded.run_status is None
    assert loaded.dispatch_instance_id is None


def test_nack_dead_letters_after_max_attempts() -> None:
    """With max_attempts 2, the first nack requeues (attempts 1), the second dead-letters (attempts 2).

    seed: nack_dead_letters_after_max_attempts
    """
    store.enqueue(_dispatch("d1", "t-dead", "r1", 128, 1000, max_attempts=2))

    claimed = store.claim("t-dead", "consumer-1", 30_000, 1000, 1)
    store.nack("d1", _token(claimed[0]), 1500, "retry", 1100)
    after_first = _load("d1")
    assert after_first.status is DispatchStatus.QUEUED
    assert after_first.attempt_count == 1

    claimed = store.claim("t-dead", "consumer-1", 30_000, 1500, 1)
    store.nack("d1", _token(claimed[0]), 2500, "final error", 2000)

    loaded = _load("d1")
    assert loaded.status is DispatchStatus.DEAD_LETTER
    assert loaded.attempt_count == 2
    _assert_claim_fields_clear(loaded)


# --- cancel / extend_lease ------------------------------------------------------------------


def test_cancel_queued_dispatch() -> None:
    """`cancel` moves a queued dispatch to cancelled and returns it.

    seed: cancel_queued_dispatch
    """
    store.enqueue(_dispatch("d1", "t-cancel", "r1", 128, 1000))

    cancelled = store.cancel("d1", 2000)
    assert cancelled is not None
    assert cancelled.status is DispatchStatus.CANCELLED

    loaded = _load("d1")
    assert loaded.status is DispatchStatus.CANCELLED
    _assert_claim_fields_clear(loaded)


def test_cancel_claimed_dispatch_returns_none() -> None:
    """`cancel` only applies to queued dispatches: a claimed one returns None and stays claimed.

    seed: cancel_claimed_dispatch_returns_none
    """
    store.enqueue(_dispatch("d1", "t-cancel-claimed", "r1", 128, 1000))
    claimed = store.claim("t-cancel-claimed", "consumer-1", 30_000, 1000, 1)
    assert len(claimed) == 1

    assert store.cancel("d1", 2000) is None

    assert _load("d1").status is DispatchStatus.CLAIMED


def test_extend_lease_success() -> None:
    """`extend_lease` with the right token sets `lease_until = now + extension` (15 000 + 60 000).

    seed: extend_lease_success
    """
    store.enqueue(_dispatch("d1", "t-extend", "r1", 128, 1000))
    claimed = store.claim("t-extend", "consumer-1", 30_000, 1000, 1)

    assert store.extend_lease("d1", _token(claimed[0]), 60_000, 15_000) is True

    assert _load("d1").lease_until == 75_000


def test_extend_lease_wrong_token() -> None:
    """`extend_lease` with a wrong token returns False and leaves the lease unchanged.

    seed: extend_lease_wrong_token
    """
    store.enqueue(_dispatch("d1", "t-extend-wrong", "r1", 128, 1000))
    claimed = store.claim("t-extend-wrong", "consumer-1", 30_000, 1000, 1)
    original_lease = claimed[0].lease_until

    assert store.extend_lease("d1", "wrong-token", 60_000, 15_000) is False

    loaded = _load("d1")
    assert loaded.lease_until == original_lease
    assert loaded.status is DispatchStatus.CLAIMED


# --- interrupt and epochs -------------------------------------------------------------------


def test_interrupt_supersedes_queued() -> None:
    """`interrupt_detailed` supersedes every queued dispatch of the thread and lists them.

    seed: interrupt_supersedes_queued
    """
    store.enqueue(_dispatch("d1", "t-interrupt", "r1", 128, 1000))
    store.enqueue(_dispatch("d2", "t-interrupt", "r2", 128, 1000))

    result = store.interrupt_detailed("t-interrupt", 2000)
    assert result.superseded_count == 2
    assert len(result.superseded_dispatches) == 2
    assert result.active_dispatch is None
    assert result.new_dispatch_epoch >= 1
    for dispatch in result.superseded_dispatches:
        assert dispatch.status is DispatchStatus.SUPERSEDED
    assert sorted(d.dispatch_id for d in result.superseded_dispatches) == ["d1", "d2"]

    listed = store.list_dispatches("t-interrupt", [DispatchStatus.SUPERSEDED], 100, 0)
    assert len(listed) == 2


def test_interrupt_returns_active_claimed() -> None:
    """`interrupt_detailed` reports the claimed dispatch as active and supersedes only the queued one.

    seed: interrupt_returns_active_claimed
    """
    store.enqueue(_dispatch("d1", "t-interrupt-active", "r1", 128, 1000))
    claimed = store.claim("t-interrupt-active", "consumer-1", 30_000, 1000, 1)
    assert len(claimed) == 1
    claimed_id = claimed[0].dispatch_id

    store.enqueue(_dispatch("d2", "t-interrupt-active", "r2", 128, 1000))

    result = store.interrupt_detailed("t-interrupt-active", 2000)
    active = result.active_dispatch
    assert active is not None, "interrupt must return active claimed dispatch"
    assert active.dispatch_id == claimed_id
    assert active.status is DispatchStatus.CLAIMED
    assert result.superseded_count == 1
    assert len(result.superseded_dispatches) == 1
    assert result.superseded_dispatches[0].dispatch_id == "d2"
    assert result.superseded_dispatches[0].status is DispatchStatus.SUPERSEDED


def test_current_dispatch_epoch_tracks_interrupt() -> None:
    """The thread epoch starts at 0 and equals the interrupt's `new_dispatch_epoch` afterwards.

    seed: current_dispatch_epoch_tracks_interrupt
    """
    initial = conformance.current_dispatch_epoch("t-epoch")
    assert initial == 0

    interrupted = conformance.interrupt("t-epoch", 2000)
    current = conformance.current_dispatch_epoch("t-epoch")

    assert current == interrupted.new_dispatch_epoch
    assert current > initial, "interrupt should advance the authoritative thread epoch"


def test_supersede_claimed_terminalizes_active_dispatch() -> None:
    """`supersede_claimed` terminalizes a claimed dispatch, clearing claim fields, `completed_at = now`.

    seed: supersede_claimed_terminalizes_active_dispatch
    """
    store.enqueue(_dispatch("d1", "t-supersede-claimed", "r1", 128, 1000))
    claimed = store.claim("t-supersede-claimed", "consumer-1", 30_000, 1000, 1)

    superseded = conformance.supersede_claimed("d1", _token(claimed[0]), 2000, "test supersede")
    assert superseded is not None, "claimed dispatch should be superseded"

    assert superseded.status is DispatchStatus.SUPERSEDED
    assert superseded.claim_token is None
    assert superseded.claimed_by is None
    assert superseded.lease_until is None
    assert superseded.completed_at == 2000

    loaded = _load("d1")
    assert loaded.status is DispatchStatus.SUPERSEDED
    assert loaded.claim_token is None


def test_extend_lease_rejects_stale_claim_after_interrupt() -> None:
    """After an interrupt bumps the epoch, renewing the stale claim fails and supersedes it.

    seed: extend_lease_rejects_stale_claim_after_interrupt
    """
    store.enqueue(_dispatch("d1", "t-stale-lease", "r1", 128, 1000))
    claimed = store.claim("t-stale-lease", "consumer-1", 30_000, 1000, 1)
    token = _token(claimed[0])

    conformance.interrupt("t-stale-lease", 1500)

    assert store.extend_lease("d1", token, 30_000, 2000) is False, (
        "stale claimed dispatch must not renew lease"
    )

    loaded = _load("d1")
    assert loaded.status is DispatchStatus.SUPERSEDED
    assert loaded.claim_token is None
    assert loaded.last_error == "claimed dispatch superseded during lease renewal"


def test_record_dispatch_start_rejects_stale_claim_after_interrupt() -> None:
    """Recording a runtime start on a claim made stale by an interrupt fails and writes nothing.

    seed: record_dispatch_start_rejects_stale_claim_after_interrupt
    """
    store.enqueue(_dispatch("d1", "t-stale-start", "r1", 128, 1000))
    claimed = store.claim("t-stale-start", "consumer-1", 30_000, 1000, 1)
    token = _token(claimed[0])

    conformance.interrupt("t-stale-start", 1500)

    with pytest.raises(VersionConflict):
        conformance.record_dispatch_start("d1", token, "attempt-1", 2000)

    loaded = _load("d1")
    assert loaded.status is DispatchStatus.SUPERSEDED
    assert loaded.dispatch_instance_id is None
    assert loaded.run_status is None
    assert loaded.last_error == "claimed dispatch superseded before runtime start"


def test_reclaim_expired_stale_claim_supersedes() -> None:
    """An expired claim made stale by an interrupt is superseded by reclaim and not returned.

    seed: reclaim_expired_stale_claim_supersedes
    """
    store.enqueue(_dispatch("d1", "t-stale-reclaim", "r1", 128, 1000))
    store.claim("t-stale-reclaim", "consumer-1", 100, 1000, 1)

    conformance.interrupt("t-stale-reclaim", 1050)

    reclaimed = store.reclaim_expired_leases(2000, 10)
    assert reclaimed == [], "stale claimed dispatches should not be returned for execution"

    loaded = _load("d1")
    assert loaded.status is DispatchStatus.SUPERSEDED
    assert loaded.claim_token is None
    assert loaded.lease_until is None


# --- dedupe, reclaim, purge -----------------------------------------------------------------


def test_dedupe_key_rejects_duplicate() -> None:
    """A second enqueue reusing an active dispatch's dedupe key on the same thread is rejected.

    seed: dedupe_key_rejects_duplicate
    """
    store.enqueue(_dispatch("d1", "t-dedupe", "r1", 128, 1000, dedupe_key="unique-key"))

    with pytest.raises(AlreadyExists):
        store.enqueue(_dispatch("d2", "t-dedupe", "r2", 128, 1000, dedupe_key="unique-key"))

    assert store.load_dispatch("d2") is None


def test_reclaim_expired_leases_requeues() -> None:
    """An expired claim is requeued with the attempt counted and the claim cleared.

    seed: reclaim_expired_leases_requeues
    """
    store.enqueue(_dispatch("d1", "t-reclaim", "r1", 128, 1000))
    # A short lease ending at 1100.
    store.claim("t-reclaim", "consumer-1", 100, 1000, 1)

    reclaimed = store.reclaim_expired_leases(2000, 10)
    assert len(reclaimed) == 1
    assert reclaimed[0].dispatch_id == "d1"
    assert reclaimed[0].status is DispatchStatus.QUEUED
    assert reclaimed[0].attempt_count == 1

    loaded = _load("d1")
    assert loaded.status is DispatchStatus.QUEUED
    assert loaded.claim_token is None


def test_reclaim_expired_leases_dead_letters_at_max_attempts() -> None:
    """With max_attempts 1, an expired claim dead-letters, dropping the abandoned Running projection.

    seed: reclaim_expired_leases_dead_letters_at_max_attempts
    """
    store.enqueue(_dispatch("d1", "t-reclaim-max", "r1", 128, 1000, max_attempts=1))
    claimed = store.claim("t-reclaim-max", "consumer-1", 100, 1000, 1)

    # The attempt records a Running projection before the lease lapses.
    conformance.record_dispatch_start("d1", _token(claimed[0]), "attempt-1", 1050)

    reclaimed = store.reclaim_expired_leases(2000, 10)
    assert len(reclaimed) == 1
    assert reclaimed[0].dispatch_id == "d1"
    assert reclaimed[0].status is DispatchStatus.DEAD_LETTER
    assert reclaimed[0].attempt_count == 1

    loaded = _load("d1")
    assert loaded.status is DispatchStatus.DEAD_LETTER
    assert loaded.attempt_count == 1
    _assert_claim_fields_clear(loaded)
    assert loaded.run_status is None, "dead-lettered dispatch must not retain a Running runtime projection"
    assert loaded.dispatch_instance_id is None, (
        "dead-lettered dispatch must not retain a stale dispatch_instance_id"
    )


def test_purge_terminal_removes_old() -> None:
    """A dispatch cancelled at 1500 is purged by `purge_terminal(2000)` and can no longer be loaded.

    seed: purge_terminal_removes_old
    """
    store.enqueue(_dispatch("d1", "t-purge", "r1", 128, 1000))

    store.cancel("d1", 1500)
    assert _load("d1").status is DispatchStatus.CANCELLED

    assert store.purge_terminal(2000) == 1

    assert store.load_dispatch("d1") is None, "purged dispatch must be removed"


# --- reads ----------------------------------------------------------------------------------


def test_queued_thread_ids_returns_active_threads() -> None:
    """`queued_thread_ids` lists every thread holding at least one queued dispatch.

    seed: queued_thread_ids_returns_active_threads
    """
    store.enqueue(_dispatch("d1", "thread-a", "r1", 128, 1000))
    store.enqueue(_dispatch("d2", "thread-b", "r2", 128, 1000))

    ids = store.queued_thread_ids()
    assert "thread-a" in ids
    assert "thread-b" in ids
    assert len(ids) == 2


def test_count_dispatches_by_status_tracks_lifecycle() -> None:
    """`count_dispatches_by_status` follows queued -> claimed -> acked / cancelled.

    seed: count_dispatches_by_status_tracks_lifecycle
    """
    store.enqueue(_dispatch("d1", "t-count-a", "r1", 128, 1000))
    store.enqueue(_dispatch("d2", "t-count-b", "r2", 128, 1000))

    assert conformance.count_dispatches_by_status(DispatchStatus.QUEUED) == 2
    assert conformance.count_dispatches_by_status(DispatchStatus.CLAIMED) == 0

    claimed = store.claim("t-count-a", "consumer-1", 30_000, 1000, 1)

    assert conformance.count_dispatches_by_status(DispatchStatus.QUEUED) == 1
    assert conformance.count_dispatches_by_status(DispatchStatus.CLAIMED) == 1

    conformance.ack("d1", _token(claimed[0]), 1100)
    store.cancel("d2", 1200)

    assert conformance.count_dispatches_by_status(DispatchStatus.QUEUED) == 0
    assert conformance.count_dispatches_by_status(DispatchStatus.ACKED) == 1
    assert conformance.count_dispatches_by_status(DispatchStatus.CANCELLED) == 1


def test_list_terminal_dispatches_returns_all_terminal() -> None:
    """`list_terminal_dispatches` spans threads, returns only terminal dispatches, and pages.

    seed: list_terminal_dispatches_returns_all_terminal
    """
    store.enqueue(_dispatch("d-cancel", "t-terminal-a", "r1", 128, 1000))
    store.enqueue(_dispatch("d-supersede", "t-terminal-b", "r2", 128, 1001))
    store.enqueue(_dispatch("d-queued", "t-terminal-c", "r3", 128, 1002))

    store.cancel("d-cancel", 2000)
    conformance.interrupt("t-terminal-b", 3000)

    listed = conformance.list_terminal_dispatches(10, 0)
    terminal = sorted((d.dispatch_id, d.status) for d in listed)
    assert terminal == [
        ("d-cancel", DispatchStatus.CANCELLED),
        ("d-supersede", DispatchStatus.SUPERSEDED),
    ]

    paged = conformance.list_terminal_dispatches(1, 1)
    assert len(paged) == 1
    assert paged[0].status.is_terminal


# --- claim by id ----------------------------------------------------------------------------


def test_claim_dispatch_by_id() -> None:
    """`claim_dispatch` claims the named dispatch.

    seed: claim_dispatch_by_id
    """
    store.enqueue(_dispatch("d1", "t-claim-id", "r1", 128, 1000))

    claimed = store.claim_dispatch("d1", "consumer-1", 30_000, 1000)
    assert claimed is not None, "claim_dispatch should return the dispatch"
    assert claimed.dispatch_id == "d1"
    assert claimed.status is DispatchStatus.CLAIMED
    assert claimed.claim_token is not None


def test_claim_dispatch_ignores_available_at() -> None:
    """The by-id claim ignores a future `available_at`; the queue scan (`claim`) still respects it.

    seed: claim_dispatch_ignores_available_at
    """
    dispatch = _dispatch("d-guarded", "t-guarded", "r1", 128, 1000).replace(available_at=1_000_000)
    store.enqueue(dispatch)

    scanned = store.claim("t-guarded", "consumer-1", 30_000, 1000, 10)
    assert scanned == [], "claim() by thread must respect available_at"

    claimed = store.claim_dispatch("d-guarded", "consumer-1", 30_000, 1000)
    assert claimed is not None, "claim_dispatch must ignore available_at"
    assert claimed.dispatch_id == "d-guarded"
    assert claimed.status is DispatchStatus.CLAIMED


# --- runtime-trace projection ---------------------------------------------------------------


def test_record_dispatch_start_marks_running() -> None:
    """`record_dispatch_start` sets the instance id and `running`, and clears the result fields.

    seed: record_dispatch_start_marks_running
    """
    store.enqueue(_dispatch("d1", "t-start", "r1", 128, 1000))
    claimed = store.claim("t-start", "consumer-1", 30_000, 1000, 1)

    conformance.record_dispatch_start("d1", _token(claimed[0]), "attempt-1", 1500)

    loaded = _load("d1")
    assert loaded.dispatch_instance_id == "attempt-1"
    assert loaded.run_status == "running"
    assert loaded.termination is None
    assert loaded.run_response is None
    assert loaded.run_error is None
    assert loaded.completed_at is None
    assert loaded.status is DispatchStatus.CLAIMED


def test_record_run_result_sets_terminal_projection() -> None:
    """`record_run_result` on the active claim persists the whole result projection.

    seed: record_run_result_sets_terminal_projection
    """
    store.enqueue(_dispatch("d1", "t-result", "r1", 128, 1000))
    claimed = store.claim("t-result", "consumer-1", 30_000, 1000, 1)
    result = RunDispatchResult(
        run_id="r1",
        dispatch_instance_id="attempt-1",
        status="done",
        termination={"type": "natural_end"},
        response="ok",
        error=None,
    )

    conformance.record_run_result("d1", _token(claimed[0]), result, 2000)

    loaded = _load("d1")
    assert loaded.dispatch_instance_id == "attempt-1"
    assert loaded.run_status == "done"
    assert loaded.termination == {"type": "natural_end"}
    assert loaded.run_response == "ok"
    assert loaded.run_error is None
    assert loaded.completed_at == 2000
    assert loaded.status is DispatchStatus.CLAIMED
    # Stored as a JSON object, not as a JSON-encoded string.
    assert Dispatch.objects.get(pk="d1").termination == {"type": "natural_end"}


def test_record_projection_rejects_missing_or_unclaimed_dispatch() -> None:
    """Runtime projection writes fail for a missing dispatch and for a queued (unclaimed) one.

    seed: record_projection_rejects_missing_or_unclaimed_dispatch
    """
    result = RunDispatchResult(
        run_id="r-missing",
        dispatch_instance_id="attempt-missing",
        status="done",
        termination=None,
        response=None,
        error=None,
    )

    with pytest.raises(NotFound):
        conformance.record_dispatch_start("missing", "token", "attempt-missing", 1000)
    with pytest.raises(NotFound):
        conformance.record_run_result("missing", "token", result, 1000)

    store.enqueue(_dispatch("d1", "t-projection-reject", "r1", 128, 1000))

    with pytest.raises(VersionConflict):
        conformance.record_dispatch_start("d1", "token", "attempt-1", 1100)
    with pytest.raises(VersionConflict):
        conformance.record_run_result("d1", "token", result, 1100)

    loaded = _load("d1")
    assert loaded.status is DispatchStatus.QUEUED
    assert loaded.run_status is None
    assert loaded.dispatch_instance_id is None


def test_fifo_ordering_within_same_priority() -> None:
    """Within one priority, `claim` hands dispatches out oldest `created_at` first.

    seed: fifo_ordering_within_same_priority
    """
    older_id = f"older-{uuid7()}"
    newer_id = f"newer-{uuid7()}"
    store.enqueue(_dispatch(older_id, "t-fifo", "r1", 128, 1000, created_at=100))
    store.enqueue(_dispatch(newer_id, "t-fifo", "r2", 128, 1000, created_at=200))

    first = store.claim("t-fifo", "consumer-1", 30_000, 1000, 1)
    assert len(first) == 1
    assert first[0].dispatch_id == older_id

    conformance.ack(first[0].dispatch_id, _token(first[0]), 1100)

    second = store.claim("t-fifo", "consumer-1", 30_000, 1100, 1)
    assert len(second) == 1
    assert second[0].dispatch_id == newer_id
