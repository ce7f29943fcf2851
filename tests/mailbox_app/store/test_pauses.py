"""Pauses (mailbox_app/store/pauses.py, docs/inbox.md) in every claim path: the thread's claim, the claim
by id, the fair claim, each without limits (claims.sql) and under limits (claims.py), the fused
submit's inline claim and a foreground submit; the sweep's reads; and the two races a pause must win —
a claim that runs while a pause commits, and a pause that arrives while a claim is in flight."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection

from mailbox_app import store
from mailbox_app.contract.config import ClaimPolicy
from mailbox_app.contract.inbox import PauseScope
from mailbox_app.contract.mailbox import DispatchStatus
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import RunRequest
from mailbox_app.services import mailbox, pauses
from mailbox_app.store import conformance, upkeep
from mailbox_app.store import pauses as pause_rows
from tests.support.blocking import held_transaction, in_background, wait_blocked
from tests.support.dispatches import make_dispatch

LEASE = 30_000
NOW = 10_000
LIMITED = ClaimPolicy(agent_limits={"unrelated": 100})  # limits on: the claims take claims.py's statements


def _queue(dispatch_id: str, thread_id: str, *, agent: str = "a", created: int = 1000) -> None:
    record = make_dispatch(dispatch_id, thread_id, created_at=created, available_at=created)
    store.enqueue(record.replace(agent_key=agent), owner_key="o")


def _pause(scope: PauseScope, key: str = "") -> None:
    pauses.pause(scope, key, paused_by="test", by_operator=True)


def _resume(scope: PauseScope, key: str = "") -> None:
    pauses.resume(scope, key, by_operator=True)


@pytest.fixture(params=["functions", "limits"])
def claim_path(request: pytest.FixtureRequest, settings: Any) -> str:
    if request.param == "limits":
        settings.AWAKEN_CLAIM_POLICY = LIMITED
    return str(request.param)


@pytest.mark.django_db
def test_a_paused_thread_is_claimed_by_no_claim_and_resumes_in_its_order(claim_path: str) -> None:
    _queue("x1", "t-x", created=1000)
    _queue("x2", "t-x", created=1001)
    _queue("y1", "t-y", created=2000)
    _pause(PauseScope.THREAD, "t-x")
    assert store.claim("t-x", "w", LEASE, NOW) == []
    assert store.claim_dispatch("x1", "w", LEASE, NOW) is None
    fair = store.claim_next_fair("w", LEASE, NOW)  # the older thread is paused: the other one's head
    assert fair is not None and fair.dispatch_id == "y1"
    assert store.claim_next_fair("w2", LEASE, NOW) is None
    assert [d.status for d in store.list_dispatches("t-x")] == [DispatchStatus.QUEUED] * 2
    _resume(PauseScope.THREAD, "t-x")
    claimed = store.claim("t-x", "w", LEASE, NOW)
    assert [d.dispatch_id for d in claimed] == ["x1"]


@pytest.mark.django_db
def test_an_agent_pause_holds_its_heads_and_keeps_each_threads_order(claim_path: str) -> None:
    # t-x: a paused agent's dispatch first, another agent's behind it; t-y: the other agent only
    _queue("x1", "t-x", agent="paused", created=1000)
    _queue("x2", "t-x", agent="free", created=1001)
    _queue("y1", "t-y", agent="free", created=2000)
    _pause(PauseScope.AGENT, "paused")
    assert store.claim("t-x", "w", LEASE, NOW) == []  # not x2 ahead of x1: the thread's order holds
    fair = store.claim_next_fair("w", LEASE, NOW)
    assert fair is not None and fair.dispatch_id == "y1"
    assert store.claim_dispatch("x1", "w", LEASE, NOW) is None
    assert store.claim_next_fair("w", LEASE, NOW) is None
    assert [p.label for p in pauses.pauses_holding("t-x", ["paused", "free"])] == ["agent paused"]
    _resume(PauseScope.AGENT, "paused")
    assert [d.dispatch_id for d in store.claim("t-x", "w", LEASE, NOW)] == ["x1"]


@pytest.mark.django_db
def test_pausing_everything_holds_every_claim_until_resumed(claim_path: str) -> None:
    _queue("x1", "t-x")
    _queue("y1", "t-y", agent="b")
    _pause(PauseScope.ALL)
    assert store.claim("t-x", "w", LEASE, NOW) == []
    assert store.claim_dispatch("y1", "w", LEASE, NOW) is None
    assert store.claim_next_fair("w", LEASE, NOW) is None
    # a second pause of the same scope keeps the first one's author and time
    again = pauses.pause(PauseScope.ALL, paused_by="someone else", by_operator=True)
    assert not again.created and again.pause.paused_by == "test"
    assert pause_rows.queued_in_scope(PauseScope.ALL, "", 10) == [("t-x", 1000), ("t-y", 1000)]
    _resume(PauseScope.ALL)
    assert store.claim_next_fair("w", LEASE, NOW) is not None


@pytest.mark.django_db
def test_the_sweep_does_not_ring_paused_work() -> None:
    _queue("x1", "t-x", created=1000)
    record = make_dispatch("y1", "t-y", created_at=1000, available_at=NOW + 5_000)
    store.enqueue(record.replace(agent_key="a"), owner_key="o")  # a delayed start coming due
    assert upkeep.claimable_thread_ids(NOW) == ["t-x"]
    assert [t for t, _, _ in upkeep.threads_coming_due(NOW, NOW + 10_000)] == ["t-y"]
    _pause(PauseScope.AGENT, "a")
    assert upkeep.claimable_thread_ids(NOW) == []
    assert upkeep.threads_coming_due(NOW, NOW + 10_000) == []


@pytest.mark.django_db
def test_with_no_pause_the_per_head_pause_check_is_never_executed() -> None:
    """The cost of pauses for everyone else: one read of the (empty) pause table per statement, not one
    per candidate (EXPLAIN ANALYZE of the sweep's read over 50 claimable threads)."""
    for i in range(50):
        _queue(f"d{i}", f"t-{i}")
    with connection.cursor() as cursor:
        cursor.execute(
            "EXPLAIN (ANALYZE, FORMAT TEXT) " + upkeep.CLAIMABLE_THREADS, {"now": NOW, "limit": 1000}
        )
        plan = "\n".join(row[0] for row in cursor.fetchall())
    pause_scans = [line for line in plan.splitlines() if "mailbox_pause" in line]
    assert len(pause_scans) == 2, plan  # the one-time check, and the per-head one...
    assert any("never executed" in line for line in pause_scans), plan  # ...which never runs


@pytest.mark.django_db(transaction=True)
def test_a_submit_while_paused_is_accepted_and_queued_background_and_foreground() -> None:
    _pause(PauseScope.THREAD, "t-p")
    background = mailbox.submit_background(RunRequest(thread_id="t-p", messages=[ChatMessage.user("a")]))
    assert background.status is mailbox.SubmitStatus.QUEUED  # the fused submit's inline claim held
    foreground = mailbox.submit(RunRequest(thread_id="t-p", messages=[ChatMessage.user("b")]))
    assert foreground.status is mailbox.SubmitStatus.QUEUED  # not 409: it waits its turn
    statuses = {d.dispatch_id: d.status for d in store.list_dispatches("t-p")}
    # (latest wins: the foreground submit interrupted the thread, which superseded the queued one)
    assert statuses == {
        background.dispatch_id: DispatchStatus.SUPERSEDED,
        foreground.dispatch_id: DispatchStatus.QUEUED,
    }


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("policy", [None, LIMITED], ids=["functions", "limits"])
def test_a_claim_waits_for_a_pause_being_written_and_then_sees_it(settings: Any, policy: Any) -> None:
    """The race the claim statement must win: a pause half written (its lock held, its row inserted, not
    committed). The claim waits for it and then claims nothing — without the lock it would have read the
    pause table before the commit and claimed."""
    if policy is not None:
        settings.AWAKEN_CLAIM_POLICY = policy
    _queue("x1", "t-x")

    def half_written_pause() -> None:
        with connection.cursor() as cursor:
            cursor.execute(pause_rows.LOCK_PAUSES)
            cursor.execute(
                pause_rows.INSERT_PAUSE,
                {
                    "scope": "thread",
                    "key": "t-x",
                    "paused_by": "t",
                    "by_operator": True,
                    "reason": "",
                    "now": 1,
                },
            )

    with held_transaction(half_written_pause) as pause:
        claimer = in_background(lambda: store.claim("t-x", "w", LEASE, NOW))
        wait_blocked(claimer.pid, what="the claim waits for the pause")
        assert not claimer.finished()
        pause.release()
        assert claimer.wait() == []
    assert store.load_dispatch("x1").status is DispatchStatus.QUEUED  # type: ignore[union-attr]


@pytest.mark.django_db(transaction=True)
def test_a_pause_waits_for_a_claim_in_flight_and_nothing_is_claimed_after_it() -> None:
    """The other order: a claim's transaction is open when the pause comes. The pause waits for it (so
    its answer never precedes a claim that commits later), and every claim after it sees it."""
    _queue("x1", "t-x", created=1000)
    _queue("x2", "t-x", created=1001)
    with held_transaction(lambda: store.claim("t-x", "w", LEASE, NOW)) as claim:
        pauser = in_background(lambda: _pause(PauseScope.THREAD, "t-x"))
        wait_blocked(pauser.pid, what="the pause waits for the claim in flight")
        claimed = claim.release()
        pauser.wait()
    assert [d.dispatch_id for d in claimed] == ["x1"]  # made before the pause: it stands
    assert conformance.ack("x1", claimed[0].claim_token or "", NOW)
    assert store.claim("t-x", "w", LEASE, NOW) == []  # x2 is held
    assert store.claim_next_fair("w", LEASE, NOW) is None
