"""Races against the real PostgreSQL database with real threads (spec §3, §2.1 guards, §7.1, §7.11).

Every worker thread uses its own Django connection (connections are thread-local) and closes it when
done. Workers connect first and then line up on a barrier so the interesting statements really overlap.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest
from django.db import IntegrityError, connection

from mailbox_app import store
from mailbox_app.contract.mailbox import DispatchRecord, DispatchStatus, MailboxInterrupt, RunDispatchResult
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.storage import AlreadyExists, VersionConflict
from mailbox_app.models import Dispatch
from mailbox_app.store import conformance, install, upkeep
from runs_app import store as run_store
from runs_app.models import Thread
from tests.support.dispatches import make_dispatch

LEASE_MS = 30_000
JOIN_TIMEOUT_S = 30.0
BARRIER_TIMEOUT_S = 15.0

race_db = pytest.mark.django_db(transaction=True)


@dataclass
class Outcome:
    value: Any = None
    error: Exception | None = None

    def get(self) -> Any:
        if self.error is not None:
            raise AssertionError(f"worker failed: {self.error!r}") from self.error
        return self.value


def run_concurrently(calls: Sequence[Callable[[], Any]]) -> list[Outcome]:
    """Run each call in its own thread, released together by a barrier; return their outcomes in order."""
    barrier = threading.Barrier(len(calls), timeout=BARRIER_TIMEOUT_S)
    outcomes = [Outcome() for _ in calls]

    def work(index: int, call: Callable[[], Any]) -> None:
        try:
            connection.ensure_connection()  # connect before the barrier so the calls overlap
            barrier.wait()
            outcomes[index].value = call()
        except Exception as exc:  # noqa: BLE001 - any failure is reported to the main thread
            outcomes[index].error = exc
        finally:
            connection.close()

    threads = [
        threading.Thread(target=work, args=(i, call), name=f"race-{i}", daemon=True)
        for i, call in enumerate(calls)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT_S)
    stuck = [t.name for t in threads if t.is_alive()]
    assert not stuck, f"threads did not finish within {JOIN_TIMEOUT_S}s: {stuck}"
    return outcomes


def statuses(thread_id: str) -> dict[str, DispatchStatus]:
    return {d.dispatch_id: d.status for d in store.list_dispatches(thread_id)}


def claimed_rows(thread_id: str) -> list[DispatchRecord]:
    return store.list_dispatches(thread_id, [DispatchStatus.CLAIMED])


def enqueue_three(thread_id: str) -> list[str]:
    ids = [f"{thread_id}-d{i}" for i in range(3)]
    for i, dispatch_id in enumerate(ids):
        store.enqueue(make_dispatch(dispatch_id, thread_id, created_at=1000 + i))
    return ids


# --- a. many claimers, one winner ---------------------------------------------------------------


@race_db
def test_eight_concurrent_claimers_yield_exactly_one_claim() -> None:
    for round_no in range(5):
        thread_id = f"claimers-{round_no}"
        ids = enqueue_three(thread_id)

        outcomes = run_concurrently(
            [partial(store.claim, thread_id, f"consumer-{consumer}", LEASE_MS, 2000) for consumer in range(8)]
        )

        claims = [d for o in outcomes for d in o.get()]
        assert len(claims) == 1, f"round {round_no}: {len(claims)} claims returned"
        [won] = claims
        # claim order is priority, created_at: the oldest dispatch wins
        assert won.dispatch_id == ids[0]
        in_db = claimed_rows(thread_id)
        assert [d.dispatch_id for d in in_db] == [won.dispatch_id]
        assert in_db[0].claim_token == won.claim_token
        assert in_db[0].claimed_by == won.claimed_by
        assert in_db[0].lease_until == 2000 + LEASE_MS
        assert statuses(thread_id) == {
            ids[0]: DispatchStatus.CLAIMED,
            ids[1]: DispatchStatus.QUEUED,
            ids[2]: DispatchStatus.QUEUED,
        }


@race_db
def test_claim_and_claim_dispatch_race_leaves_one_claim() -> None:
    """The worker's queue claim and the inline claim-by-id of another dispatch never both win."""
    for round_no in range(10):
        thread_id = f"mixed-claim-{round_no}"
        ids = enqueue_three(thread_id)

        outcomes = run_concurrently(
            [
                partial(store.claim, thread_id, "worker", LEASE_MS, 2000),
                partial(store.claim_dispatch, ids[2], "inline", LEASE_MS, 2000),
            ]
        )

        by_queue = outcomes[0].get()
        by_id = outcomes[1].get()
        assert len(by_queue) + (by_id is not None) == 1, (by_queue, by_id)
        assert len(claimed_rows(thread_id)) == 1


# --- b. interrupt racing claim ------------------------------------------------------------------


def _assert_interrupt_claim_invariants(
    thread_id: str, ids: list[str], won: DispatchRecord | None, interrupted: MailboxInterrupt
) -> None:
    epoch = conformance.current_dispatch_epoch(thread_id)
    assert epoch == 1
    assert interrupted.new_dispatch_epoch == 1
    if won is None:
        # the interrupt came first: every queued dispatch was superseded and nothing is active
        assert interrupted.active_dispatch is None
        assert interrupted.superseded_count == 3
        assert sorted(d.dispatch_id for d in interrupted.superseded_dispatches) == ids
        assert claimed_rows(thread_id) == []
    else:
        # the claim came first, with the old epoch; the interrupt saw it as the active dispatch
        assert won.dispatch_epoch == 0 < epoch
        assert interrupted.active_dispatch is not None
        assert interrupted.active_dispatch.dispatch_id == won.dispatch_id
        assert interrupted.active_dispatch.claim_token == won.claim_token
        assert interrupted.superseded_count == 2
        assert won.dispatch_id not in {d.dispatch_id for d in interrupted.superseded_dispatches}
        assert won.claim_token is not None
        with pytest.raises(VersionConflict) as conflict:
            conformance.ack(won.dispatch_id, won.claim_token, 3000)
        assert (conflict.value.expected, conflict.value.actual) == (0, 1)
        after = store.load_dispatch(won.dispatch_id)
        assert after is not None
        assert after.status is DispatchStatus.SUPERSEDED
        assert after.last_error == "claimed dispatch superseded before ack"
        assert after.claim_token is None and after.lease_until is None
        assert after.dispatch_epoch == epoch
    # nothing claimed with a stale epoch survives, and nothing is left to claim
    for row in store.list_dispatches(thread_id):
        assert row.status is not DispatchStatus.CLAIMED
    assert store.claim(thread_id, "later", LEASE_MS, 4000) == []


def _race_in_both_orders(
    round_no: int, first: Callable[[], Any], second: Callable[[], Any]
) -> tuple[Any, Any]:
    """Race two calls; alternate their thread order per round (the thread that trips the barrier
    usually runs first, so this exercises both interleavings)."""
    if round_no % 2 == 0:
        a, b = run_concurrently([first, second])
    else:
        b, a = run_concurrently([second, first])
    return a.get(), b.get()


@pytest.mark.django_db
@pytest.mark.parametrize("claim_first", [True, False])
def test_interrupt_and_claim_invariants_in_each_serial_order(claim_first: bool) -> None:
    """The two serial outcomes the race below may produce, each forced deterministically."""
    thread_id = "serial-int-claim"
    ids = enqueue_three(thread_id)
    if claim_first:
        claimed = store.claim(thread_id, "worker", LEASE_MS, 2000)
        interrupted = store.interrupt_detailed(thread_id, 2000)
        assert len(claimed) == 1
    else:
        interrupted = store.interrupt_detailed(thread_id, 2000)
        claimed = store.claim(thread_id, "worker", LEASE_MS, 2000)
        assert claimed == []
    _assert_interrupt_claim_invariants(thread_id, ids, claimed[0] if claimed else None, interrupted)


@race_db
def test_interrupt_racing_claim_never_leaves_an_ackable_stale_claim() -> None:
    for round_no in range(30):
        thread_id = f"int-claim-{round_no}"
        ids = enqueue_three(thread_id)

        claimed, interrupted = _race_in_both_orders(
            round_no,
            partial(store.claim, thread_id, "worker", LEASE_MS, 2000),
            partial(store.interrupt_detailed, thread_id, 2000),
        )

        assert len(claimed) <= 1
        _assert_interrupt_claim_invariants(thread_id, ids, claimed[0] if claimed else None, interrupted)


@race_db
def test_interrupt_racing_inline_claim_dispatch() -> None:
    for round_no in range(30):
        thread_id = f"int-inline-{round_no}"
        ids = enqueue_three(thread_id)

        won, interrupted = _race_in_both_orders(
            round_no,
            partial(store.claim_dispatch, ids[1], "inline", LEASE_MS, 2000),
            partial(store.interrupt_detailed, thread_id, 2000),
        )

        if won is not None:
            assert won.dispatch_id == ids[1]
        _assert_interrupt_claim_invariants(thread_id, ids, won, interrupted)


@race_db
def test_enqueue_racing_interrupt_is_linearizable() -> None:
    """An enqueue concurrent with an interrupt lands either before it (and is superseded by it) or after
    it (stamped with the new epoch). A Queued dispatch with a stale epoch must not survive the interrupt
    (spec §3.11: interrupt atomically supersedes every Queued dispatch of the thread; §2.1 T1/T4)."""
    for round_no in range(20):
        thread_id = f"enq-int-{round_no}"
        new_id = f"{thread_id}-new"
        store.enqueue(make_dispatch(f"{thread_id}-old", thread_id))

        _, interrupted = _race_in_both_orders(
            round_no,
            partial(store.enqueue, make_dispatch(new_id, thread_id, created_at=1001)),
            partial(store.interrupt_detailed, thread_id, 2000),
        )

        epoch = conformance.current_dispatch_epoch(thread_id)
        assert epoch == 1
        new = store.load_dispatch(new_id)
        assert new is not None
        superseded_ids = {d.dispatch_id for d in interrupted.superseded_dispatches}
        assert f"{thread_id}-old" in superseded_ids
        if new.status is DispatchStatus.QUEUED:
            assert new.dispatch_epoch == epoch, (
                f"round {round_no}: {new_id} is Queued with stale epoch {new.dispatch_epoch} after an "
                f"interrupt to epoch {epoch} that did not supersede it (superseded: {sorted(superseded_ids)})"
            )
            assert new_id not in superseded_ids
        else:
            assert new.status is DispatchStatus.SUPERSEDED
            assert new.last_error == "queued dispatch superseded by interrupt"
            assert new_id in superseded_ids
        claimed = store.claim(thread_id, "worker", LEASE_MS, 3000)
        for dispatch in claimed:
            assert dispatch.dispatch_epoch == epoch


# --- c. reclaim vs. late writers with the old token -----------------------------------------------


def _assert_old_token_rejected(dispatch_id: str, old_token: str) -> None:
    """Every claimed-only write with the superseded token fails and changes nothing."""
    before = store.load_dispatch(dispatch_id)
    with pytest.raises(VersionConflict):
        conformance.ack(dispatch_id, old_token, 50_000)
    assert store.load_dispatch(dispatch_id) == before
    with pytest.raises(VersionConflict):
        store.nack(dispatch_id, old_token, 60_000, "late nack", 50_001)
    assert store.load_dispatch(dispatch_id) == before
    with pytest.raises(VersionConflict):
        conformance.dead_letter(dispatch_id, old_token, "late dead letter", 50_002)
    assert store.load_dispatch(dispatch_id) == before
    with pytest.raises(VersionConflict):
        conformance.record_dispatch_start(dispatch_id, old_token, "late-instance", 50_003)
    assert store.load_dispatch(dispatch_id) == before
    with pytest.raises(VersionConflict):
        conformance.record_run_result(
            dispatch_id,
            old_token,
            RunDispatchResult(run_id="r", dispatch_instance_id="late-instance", status="done"),
            50_004,
        )
    assert store.load_dispatch(dispatch_id) == before
    assert store.extend_lease(dispatch_id, old_token, 600_000, 50_005) is False
    assert store.load_dispatch(dispatch_id) == before


@pytest.mark.django_db
def test_reclaim_then_late_writes_with_old_token_are_rejected() -> None:
    store.enqueue(make_dispatch("d1", "t-reclaim"))
    [first] = store.claim("t-reclaim", "node-a", LEASE_MS, 1000)
    old_token = first.claim_token
    assert old_token is not None
    conformance.record_dispatch_start("d1", old_token, "inst-a", 1001)

    # the lease is not expired at exactly lease_until (strict <)
    assert store.reclaim_expired_leases(1000 + LEASE_MS) == []
    [reclaimed] = store.reclaim_expired_leases(1000 + LEASE_MS + 1)
    assert reclaimed.status is DispatchStatus.QUEUED
    assert reclaimed.attempt_count == 1
    assert reclaimed.claim_token is None

    # late writes while the row is queued again
    queued = store.load_dispatch("d1")
    assert queued == reclaimed
    _assert_old_token_rejected("d1", old_token)
    assert store.load_dispatch("d1") == queued

    # another consumer re-claims it; the old token still cannot touch the new claim
    [second] = store.claim("t-reclaim", "node-b", LEASE_MS, 40_000)
    assert second.dispatch_id == "d1" and second.claim_token not in (None, old_token)
    assert second.claimed_by == "node-b"
    _assert_old_token_rejected("d1", old_token)
    assert store.load_dispatch("d1") == second

    # and the new claim is fully usable
    assert second.claim_token is not None
    assert store.extend_lease("d1", second.claim_token, 60_000, 41_000) is True
    acked = conformance.ack("d1", second.claim_token, 42_000)
    assert acked.status is DispatchStatus.ACKED


def _ack_or_none(dispatch_id: str, token: str, now: int) -> DispatchRecord | None:
    try:
        return conformance.ack(dispatch_id, token, now)
    except VersionConflict:
        return None


def _reclaim_of_thread(thread_id: str, now: int) -> list[DispatchRecord]:
    return [d for d in store.reclaim_expired_leases(now) if d.thread_id == thread_id]


@race_db
def test_reclaim_racing_late_ack_has_exactly_one_winner() -> None:
    for round_no in range(20):
        thread_id = f"reclaim-ack-{round_no}"
        dispatch_id = f"{thread_id}-d"
        store.enqueue(make_dispatch(dispatch_id, thread_id))
        [claimed] = store.claim(thread_id, "node-a", LEASE_MS, 1000)
        token = claimed.claim_token
        assert token is not None
        expired_at = 1000 + LEASE_MS + 1

        acked, reclaimed = _race_in_both_orders(
            round_no,
            partial(_ack_or_none, dispatch_id, token, expired_at),
            partial(_reclaim_of_thread, thread_id, expired_at),
        )

        final = store.load_dispatch(dispatch_id)
        assert final is not None
        if acked is not None:
            assert reclaimed == []
            assert final.status is DispatchStatus.ACKED and final.attempt_count == 0
        else:
            assert [d.dispatch_id for d in reclaimed] == [dispatch_id]
            assert final.status is DispatchStatus.QUEUED and final.attempt_count == 1
            assert final == reclaimed[0]


# --- d. dedupe under concurrency ------------------------------------------------------------------


@race_db
def test_concurrent_enqueue_with_one_dedupe_key_admits_exactly_one() -> None:
    for round_no in range(3):
        thread_id = f"dedupe-{round_no}"
        outcomes = run_concurrently(
            [
                partial(store.enqueue, make_dispatch(f"{thread_id}-d{i}", thread_id, dedupe_key="same"))
                for i in range(8)
            ]
        )

        ok = [o.value for o in outcomes if o.error is None]
        errors = [o.error for o in outcomes if o.error is not None]
        assert len(ok) == 1
        assert len(errors) == 7
        for error in errors:
            assert isinstance(error, AlreadyExists), repr(error)
            assert not isinstance(error, IntegrityError)
            assert str(error) == "dedupe_key=same"
        rows = store.list_dispatches(thread_id)
        assert [d.dispatch_id for d in rows] == [ok[0].dispatch_id]
        assert rows[0].status is DispatchStatus.QUEUED and rows[0].dedupe_key == "same"


@race_db
def test_concurrent_enqueue_of_one_dispatch_id_admits_exactly_one() -> None:
    outcomes = run_concurrently(
        [lambda i=i: store.enqueue(make_dispatch("dup-id", f"dup-thread-{i % 2}")) for i in range(8)]
    )
    errors = [o.error for o in outcomes if o.error is not None]
    assert len(errors) == 7
    assert all(isinstance(e, AlreadyExists) and "dispatch_id=dup-id" in str(e) for e in errors), errors
    assert Dispatch.objects.filter(dispatch_id="dup-id").count() == 1


# --- e. concurrent appends to the message log ------------------------------------------------------


@race_db
def test_concurrent_appends_allocate_gapless_unique_seqs() -> None:
    thread_id = "append-race"
    writers, per_writer = 8, 10

    def writer(w: int) -> list[int]:
        seqs: list[int] = []
        for j in range(per_writer):
            message = ChatMessage.user(f"w{w}-m{j}", id=f"msg-{w}-{j}")
            [record] = run_store.append_messages(thread_id=thread_id, messages=[message])
            seqs.append(record.seq)
        return seqs

    outcomes = run_concurrently([lambda w=w: writer(w) for w in range(writers)])
    returned = [o.get() for o in outcomes]

    records = run_store.load_message_records_range(thread_id=thread_id, from_seq=1, to_seq=10_000)
    assert [r.seq for r in records] == list(range(1, writers * per_writer + 1))
    assert len({r.message_id for r in records}) == writers * per_writer
    by_id = {r.message_id: r for r in records}
    for w in range(writers):
        own = [by_id[f"msg-{w}-{j}"] for j in range(per_writer)]
        assert [r.message.text for r in own] == [f"w{w}-m{j}" for j in range(per_writer)]
        seqs = [r.seq for r in own]
        assert seqs == sorted(seqs), f"writer {w} out of order: {seqs}"
        assert seqs == returned[w], "append_messages returned seqs that differ from the log"
    messages = run_store.load_messages(thread_id=thread_id)
    assert messages is not None and len(messages) == writers * per_writer
    assert Thread.objects.get(id=thread_id).message_count == writers * per_writer


@race_db
def test_concurrent_appends_of_the_same_ids_store_each_once() -> None:
    thread_id = "append-same-ids"
    batch = [ChatMessage.user(f"m{j}", id=f"same-{j}") for j in range(10)]

    outcomes = run_concurrently(
        [lambda: run_store.append_messages(thread_id=thread_id, messages=batch) for _ in range(8)]
    )

    appended = [o.get() for o in outcomes]
    assert sum(len(a) for a in appended) == 10
    records = run_store.load_message_records_range(thread_id=thread_id, from_seq=1, to_seq=100)
    assert [(r.seq, r.message_id) for r in records] == [(j + 1, f"same-{j}") for j in range(10)]
    assert Thread.objects.get(id=thread_id).message_count == 10


# --- f. the hot queries use indexes at scale ------------------------------------------------------

_BULK_INSERT = """
INSERT INTO mailbox_dispatch (dispatch_id, thread_id, run_id, priority, dedupe_key, dispatch_epoch, status,
    available_at, attempt_count, max_attempts, last_error, claim_token, claimed_by, lease_until,
    dispatch_instance_id, run_status, termination, run_response, run_error, completed_at, created_at,
    updated_at, request, agent_key)
SELECT 'bulk-' || g, 'bulk-t-' || (g % 1000), 'bulk-r-' || g, 128, NULL, 0,
       s.status, 1000 + g, 0, 5, NULL,
       CASE WHEN s.status = 'claimed' THEN 'tok-' || g END,
       CASE WHEN s.status = 'claimed' THEN 'node' END,
       CASE WHEN s.status = 'claimed' THEN 100000 + g END,
       NULL, NULL, NULL, NULL, NULL,
       CASE WHEN s.status IN ('queued', 'claimed') THEN NULL ELSE 2000 + g END,
       1000 + g, 1000 + g, NULL, ''
  FROM generate_series(0, 99999) AS g,
       LATERAL (SELECT CASE
           WHEN g / 1000 = 0 AND g % 2 = 0 THEN 'claimed'
           WHEN g / 1000 BETWEEN 1 AND 8 THEN 'queued'
           ELSE (ARRAY['acked', 'superseded', 'cancelled', 'dead_letter'])[1 + (g / 1000) % 4]
       END AS status) AS s
"""


def _claim_pick() -> str:
    """The statement mailbox_claim_thread picks the thread's head with (claims.sql), its PL/pgSQL
    variables as named parameters: the text PostgreSQL plans inside the function."""
    source = (install.HERE / "claims.sql").read_text()
    start = source.index("SELECT q.dispatch_id FROM mailbox_dispatch q")
    end = source.index("FOR UPDATE SKIP LOCKED", start) + len("FOR UPDATE SKIP LOCKED")
    statement = source[start:end]
    for variable, parameter in (("p_thread_id", "thread_id"), ("v_epoch", "epoch"), ("p_now", "now")):
        statement = statement.replace(variable, f"%({parameter})s")
    return statement


_SCAN_NODES_OK = {"Index Scan", "Index Only Scan", "Bitmap Heap Scan", "Bitmap Index Scan"}


def _plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    nodes = [plan]
    for child in plan.get("Plans", []):
        nodes.extend(_plan_nodes(child))
    return nodes


def _explain(query: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (FORMAT JSON) " + query, params)
        raw = cursor.fetchone()[0]
    doc = json.loads(raw) if isinstance(raw, str) else raw
    return _plan_nodes(doc[0]["Plan"])


def _dispatch_scans(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Scan nodes that read the dispatch table (by relation, or by one of its indexes)."""
    indexes = _dispatch_index_names()
    return [
        n
        for n in nodes
        if "Scan" in n["Node Type"]
        and (n.get("Relation Name") == "mailbox_dispatch" or n.get("Index Name") in indexes)
    ]


def _dispatch_index_names() -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = %s", ["mailbox_dispatch"])
        return {row[0] for row in cursor.fetchall()}


def _assert_index_only_access(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    scans = _dispatch_scans(nodes)
    described = [(n["Node Type"], n.get("Index Name")) for n in scans]
    assert scans, f"no scan of mailbox_dispatch in plan: {[n['Node Type'] for n in nodes]}"
    assert all(n["Node Type"] in _SCAN_NODES_OK for n in scans), described
    assert any(n.get("Index Name") for n in scans), described
    return scans


@pytest.mark.django_db
def test_claim_and_lease_sweep_plans_use_indexes_at_scale() -> None:
    with connection.cursor() as cursor:
        cursor.execute(_BULK_INSERT)
        assert cursor.rowcount == 100_000
        cursor.execute(
            "INSERT INTO mailbox_thread_epoch (thread_id, current_epoch)"
            " SELECT 'bulk-t-' || g, 0 FROM generate_series(0, 999) AS g"
        )
        cursor.execute("ANALYZE mailbox_dispatch")
        cursor.execute("ANALYZE mailbox_thread_epoch")
    assert Dispatch.objects.filter(status="claimed").count() == 500
    assert Dispatch.objects.filter(status="queued").count() == 8000

    # the claim's pick, as mailbox_claim_thread (claims.sql) runs it, its parameters given values
    claim_plan = _explain(
        _claim_pick(),
        {"thread_id": "bulk-t-421", "epoch": 0, "now": 10**12},
    )
    _assert_index_only_access(claim_plan)

    sweep_plan = _explain(upkeep.LOCK_EXPIRED, {"now": 150_000, "limit": 100})
    scans = _assert_index_only_access(sweep_plan)
    assert "dispatch_lease_idx" in {n.get("Index Name") for n in scans}, [
        (n["Node Type"], n.get("Index Name")) for n in scans
    ]
