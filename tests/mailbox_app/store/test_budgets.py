"""Token budgets at admission (mailbox_app/store/budgets.sql, claims.py, docs/replay-and-budgets.md): in
the store with controlled time, racing claimers on their own connections, and through the claims
under concurrency limits. A head whose owner's or agent's window is spent is not claimed (it waits:
not failed, no attempt counted), the why-blocked report names the budget and when it resets, a claim
reserves an estimate and its finish replaces it with what was used, and an owner over budget cannot
keep another owner's work from the fair claim."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection

from mailbox_app import store
from mailbox_app.contract.budgets import TokenBudgets, WindowBudget
from mailbox_app.contract.config import ClaimPolicy
from mailbox_app.contract.mailbox import DispatchRecord, DispatchStatus, RunDispatchResult
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import RunRequest
from mailbox_app.models import Dispatch, TokenBudget, TokenCharge
from mailbox_app.services import mailbox, selectors
from mailbox_app.store import budgets
from tests.support.dispatches import make_dispatch

LEASE = 30_000
MINUTE = 60_000


def _budgets(owner: int | None = 1000, agent: int | None = None, reserve: int = 300) -> TokenBudgets:
    return TokenBudgets(
        enabled=True,
        owner=None if owner is None else WindowBudget(tokens=owner, window_s=60),
        agent=None if agent is None else WindowBudget(tokens=agent, window_s=60),
        reserve_tokens=reserve,
    )


def _queue(dispatch_id: str, thread_id: str, owner: str, *, created: int = 1000, agent: str = "a") -> None:
    record = make_dispatch(dispatch_id, thread_id, created_at=created, available_at=created)
    store.enqueue(record.replace(agent_key=agent), owner_key=owner)


def _claim(thread_id: str, now: int) -> DispatchRecord | None:
    claimed = store.claim(thread_id, "w", LEASE, now)
    return claimed[0] if claimed else None


def _settle(claimed: DispatchRecord, tokens: int, now: int) -> None:
    trace = RunDispatchResult(run_id=claimed.run_id, dispatch_instance_id="i", status="done")
    settled = store.try_settle(
        claimed.dispatch_id, claimed.claim_token or "", store.Settle.ACK, trace, now, charge_tokens=tokens
    )
    assert settled is not None


def _used(scope: str, key: str, now: int) -> int:
    owner, agent = (key, "") if scope == "owner" else ("", key)
    return next(s for s in budgets.window_states(owner, agent, now) if s.scope == scope).used


@pytest.mark.django_db
def test_without_budgets_a_claim_reads_and_writes_no_budget() -> None:
    _queue("d0", "t0", "A")
    assert budgets.budget_param() is None
    assert _claim("t0", 2000) is not None
    assert TokenCharge.objects.count() == 0
    assert store.blocking_limit("a", "A") is None


@pytest.mark.django_db
def test_a_spent_owner_window_holds_the_claim_until_a_finish_frees_tokens_or_the_window_resets(
    settings: Any,
) -> None:
    settings.AWAKEN_TOKEN_BUDGETS = _budgets(owner=1000, reserve=300)
    for i in range(5):
        _queue(f"d{i}", f"t{i}", "A")
    now = 1_000  # the window [0, 60 000)
    claimed = [_claim(f"t{i}", now) for i in range(4)]
    # 0, 300, 600, 900 are all below 1000: four admitted (the fourth overshoots by less than a reservation)
    assert all(c is not None for c in claimed)
    assert _used("owner", "A", now) == 1200
    assert _claim("t4", now) is None
    held = store.load_dispatch("d4")
    assert held is not None and held.status is DispatchStatus.QUEUED and held.attempt_count == 0  # waits
    report = selectors.thread_block_report("t4", now=now)
    assert any("token budget of owner A: resets in 59 s" in r for r in report.reasons), report.reasons
    assert store.blocking_limit("a", "A", now).startswith("token budget of owner A: resets in 59 s")

    # a finish replaces its reservation with what it used: 1200 - 300 + 100 is still the whole budget
    assert claimed[0] is not None and claimed[1] is not None
    _settle(claimed[0], 100, now + 1)
    assert _used("owner", "A", now) == 1000 and _claim("t4", now + 2) is None
    _settle(claimed[1], 0, now + 3)  # 700: the held head is admitted
    assert _claim("t4", now + 4) is not None
    [row] = TokenCharge.objects.filter(dispatch_id="d0")
    assert (row.reserved, row.tokens, row.settled_at) == (300, 100, now + 1)

    # the next window starts empty
    _queue("d5", "t5", "A")
    assert _claim("t5", now + 4) is None
    assert _claim("t5", MINUTE + 1) is not None
    assert _used("owner", "A", MINUTE + 1) == 300


@pytest.mark.django_db
def test_another_owner_and_an_unbudgeted_agent_are_not_held(settings: Any) -> None:
    settings.AWAKEN_TOKEN_BUDGETS = _budgets(owner=300, reserve=300)
    _queue("a0", "A-t0", "A")
    _queue("a1", "A-t1", "A")
    _queue("b0", "B-t0", "B")
    assert _claim("A-t0", 1000) is not None
    assert _claim("A-t1", 1000) is None
    assert _claim("B-t0", 1000) is not None


@pytest.mark.django_db
def test_an_admin_row_overrides_the_default_and_a_zero_budget_admits_nothing(settings: Any) -> None:
    settings.AWAKEN_TOKEN_BUDGETS = _budgets(owner=100_000, reserve=300)
    TokenBudget.objects.create(scope="owner", key="A", tokens=500, window_s=10)
    TokenBudget.objects.create(scope="owner", key="Z", tokens=0, window_s=60)
    for i in range(3):
        _queue(f"a{i}", f"A-t{i}", "A")
    _queue("z0", "Z-t0", "Z")
    assert _claim("A-t0", 1000) is not None and _claim("A-t1", 1000) is not None  # 0, 300 < 500
    assert _claim("A-t2", 1000) is None
    assert store.blocking_limit("a", "A", 1000).startswith("token budget of owner A: resets in 9 s")
    assert _claim("A-t2", 10_000) is not None  # its own 10 s window
    assert _claim("Z-t0", 1000) is None
    assert _claim("Z-t0", 10 * MINUTE) is None


class Frugal:
    """An executor that declares the most tokens one attempt of it uses (what a claim reserves)."""

    max_tokens = 40

    def run(self, request: RunRequest, context: Any) -> Any:
        raise NotImplementedError


@pytest.mark.django_db
def test_an_agent_budget_reserves_the_agents_declared_max_tokens(settings: Any) -> None:
    settings.AWAKEN_AGENTS = {"frugal": "tests.mailbox_app.store.test_budgets.Frugal"}
    settings.AWAKEN_TOKEN_BUDGETS = _budgets(owner=None, agent=None, reserve=1000)
    TokenBudget.objects.create(scope="agent", key="frugal", tokens=100, window_s=60)
    for i in range(4):
        _queue(f"f{i}", f"F-t{i}", f"O{i}", agent="frugal")
    _queue("e0", "E-t0", "O9", agent="echo")
    claimed = [_claim(f"F-t{i}", 1000) for i in range(4)]
    assert [c is not None for c in claimed] == [True, True, True, False]  # 0, 40, 80 < 100; 120 is not
    assert sorted(TokenCharge.objects.values_list("reserved", flat=True)) == [40, 40, 40]
    assert _claim("E-t0", 1000) is not None  # no budget applies to echo (and no reservation either)
    assert store.blocking_limit("frugal", "O3", 1000).startswith("token budget of agent frugal")


def _race(claimers: list[Callable[[], Any]]) -> list[Any]:
    """Run the claimers at once, each on its own thread and database connection."""
    barrier = threading.Barrier(len(claimers))
    results: list[Any] = [None] * len(claimers)

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            results[i] = claimers[i]()
        finally:
            connection.close()

    workers = [threading.Thread(target=run, args=(i,)) for i in range(len(claimers))]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    return results


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("round_", range(3))
def test_racing_claimers_overshoot_a_budget_by_less_than_one_reservation(settings: Any, round_: int) -> None:
    settings.AWAKEN_TOKEN_BUDGETS = _budgets(owner=1000, reserve=300)
    for t in range(10):
        _queue(f"r{round_}-{t}", f"R-t{t}", "A")
    now = 5000
    per_thread = [(lambda t=t: store.claim(f"R-t{t}", f"w{t}", LEASE, now)) for t in range(8)]
    fair = [
        lambda: store.claim_next_fair("wf1", LEASE, now),
        lambda: store.claim_next_fair("wf2", LEASE, now),
    ]
    _race(per_thread + fair)
    claimed = Dispatch.objects.filter(status=DispatchStatus.CLAIMED.value).count()
    used = _used("owner", "A", now)
    # admissions serialize on the owner's budget: each saw the charges of those before it, so the ones
    # admitted are exactly the ones that found the window below 1000 (0, 300, 600, 900)
    assert claimed == 4 and used == 1200, (claimed, used)
    assert TokenCharge.objects.count() == 4


@pytest.mark.django_db
@pytest.mark.parametrize("limits", [False, True], ids=["no-limits", "under-limits"])
def test_an_owner_over_budget_cannot_crowd_another_owner_out_of_the_fair_claim(
    settings: Any, limits: bool
) -> None:
    settings.AWAKEN_TOKEN_BUDGETS = _budgets(owner=300, reserve=300)
    if limits:
        settings.AWAKEN_CLAIM_POLICY = ClaimPolicy(max_active_runs=100)
    _queue("a-first", "A-first", "A", created=10)
    first = store.claim_next_fair("w", LEASE, 1000)
    assert first is not None and first.dispatch_id == "a-first"  # A's window is now spent
    assert store.try_start("a-first", first.claim_token or "", "i-first", "w", 1000)  # (running)
    # A's backlog is older than B's and A was never served later than B: without the spent filter the
    # fair claim's candidates (16) would all be A's heads, each refused, and B would wait
    for t in range(20):
        _queue(f"a{t}", f"A-t{t}", "A", created=100 + t)
    _queue("b0", "B-t0", "B", created=5000)
    taken = store.claim_next_fair("w", LEASE, 6000)
    assert taken is not None and taken.dispatch_id == "b0"
    assert store.claim_next_fair("w", LEASE, 6000) is None  # the rest are A's: spent


@pytest.mark.django_db
def test_claims_under_concurrency_limits_apply_budgets_too(settings: Any) -> None:
    settings.AWAKEN_TOKEN_BUDGETS = _budgets(owner=300, reserve=300)
    settings.AWAKEN_CLAIM_POLICY = ClaimPolicy(agent_limits={"a": 10})
    _queue("l0", "L-t0", "A")
    _queue("l1", "L-t1", "A")
    assert _claim("L-t0", 1000) is not None
    assert _claim("L-t1", 1000) is None
    assert store.claim_dispatch("l1", "web", LEASE, 1000) is None  # the inline claim of one dispatch
    report = selectors.thread_block_report("L-t1", now=1000)
    assert any("l1 waits for its token budget of owner A" in r for r in report.reasons), report.reasons
    assert TokenCharge.objects.count() == 1


@pytest.mark.django_db
def test_the_inline_claim_of_one_dispatch_applies_budgets(settings: Any) -> None:
    settings.AWAKEN_TOKEN_BUDGETS = _budgets(owner=300, reserve=300)
    _queue("i0", "I-t0", "A")
    _queue("i1", "I-t1", "A")
    assert store.claim_dispatch("i0", "web", LEASE, 1000) is not None
    assert store.claim_dispatch("i1", "web", LEASE, 1000) is None
    assert list(TokenCharge.objects.values_list("dispatch_id", "tokens")) == [("i0", 300)]


@pytest.mark.django_db
def test_a_foreground_submit_held_by_a_budget_is_queued_not_refused(settings: Any) -> None:
    settings.AWAKEN_TOKEN_BUDGETS = _budgets(owner=0)
    submitted = mailbox.submit(RunRequest(thread_id="fg-b", messages=[ChatMessage.user("hi")]), owner_id=None)
    assert submitted.status is mailbox.SubmitStatus.QUEUED
    held = store.load_dispatch(submitted.dispatch_id)
    assert held is not None and held.status is DispatchStatus.QUEUED and held.attempt_count == 0


@pytest.mark.django_db(transaction=True)
def test_the_fused_submit_leaves_a_spent_owners_run_queued(settings: Any) -> None:
    settings.AWAKEN_TOKEN_BUDGETS = _budgets(owner=300, reserve=300)
    first = mailbox.submit_background(RunRequest(thread_id="fu-0", messages=[ChatMessage.user("a")]))
    second = mailbox.submit_background(RunRequest(thread_id="fu-1", messages=[ChatMessage.user("b")]))
    assert first.status is mailbox.SubmitStatus.RUNNING  # claimed inline (no worker here: not started)
    assert second.status is mailbox.SubmitStatus.QUEUED
    assert list(TokenCharge.objects.values_list("dispatch_id", flat=True)) == [first.dispatch_id]
    report = selectors.thread_block_report("fu-1")
    assert any("token budget of owner (none)" in r for r in report.reasons), report.reasons


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("limits", [False, True], ids=["fused", "under-limits"])
def test_an_inline_claim_taken_over_by_a_worker_keeps_its_charge(settings: Any, limits: bool) -> None:
    """The take-over gives the claim a new token (the stuck hand-over's fence is gone): the charge the
    inline claim made moves to it, so the finish of the attempt that runs settles it."""
    settings.AWAKEN_TOKEN_BUDGETS = _budgets(owner=1000, reserve=300)
    settings.AWAKEN_CLAIM_POLICY = ClaimPolicy(
        unstarted_claim_grace_ms=0, agent_limits={"echo": 10} if limits else {}
    )
    submitted = mailbox.submit_background(RunRequest(thread_id="steal-b", messages=[ChatMessage.user("x")]))
    inline = store.load_dispatch(submitted.dispatch_id)
    assert inline is not None and inline.status is DispatchStatus.CLAIMED  # no worker here: never started
    taken = store.claim_next_fair("w", LEASE, inline.updated_at + 1)
    assert taken is not None and taken.dispatch_id == inline.dispatch_id
    assert taken.claim_token != inline.claim_token
    [charge] = TokenCharge.objects.all()
    assert (charge.claim_token, charge.tokens) == (taken.claim_token, 300)
    _settle(taken, 42, taken.updated_at + 1)
    charge.refresh_from_db()
    assert (charge.tokens, charge.settled_at is not None) == (42, True)
