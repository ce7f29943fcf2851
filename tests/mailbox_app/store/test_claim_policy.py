"""Fair claim order across owners, the take-over of stuck inline claims, and concurrency limits
(`mailbox_app/conf.py`): in the store with controlled time, racing claimers on their own
connections, and end to end on a real worker."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection

from mailbox_app import store
from mailbox_app.contract.config import ClaimPolicy, ConfigError
from mailbox_app.contract.ids import now_ms
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchRecord, DispatchStatus
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import RunRequest
from mailbox_app.models import Dispatch
from mailbox_app.realtime.locks import ThreadLock
from mailbox_app.services import mailbox, selectors
from mailbox_app.store import conformance
from mailbox_app.worker import execution
from runs_app import store as run_store
from tests.support.api import new_user
from tests.support.dispatches import make_dispatch
from tests.support.waiting import wait_until

LEASE = 30_000


def _queue(
    dispatch_id: str, thread_id: str, owner: str, *, created: int, agent: str = "a", **kw: Any
) -> None:
    record = make_dispatch(dispatch_id, thread_id, created_at=created, available_at=created, **kw)
    store.enqueue(record.replace(agent_key=agent), owner_key=owner)


def _claim_and_ack(now: int) -> DispatchRecord | None:
    """What a worker does with its next claim: start it (which marks its owner served), settle it."""
    claimed = store.claim_next_fair("w", LEASE, now)
    if claimed is not None:
        assert store.try_start(claimed.dispatch_id, claimed.claim_token or "", f"i-{now}", "w", now)
        conformance.ack(claimed.dispatch_id, claimed.claim_token or "", now)
    return claimed


def _owner_of(dispatch: DispatchRecord) -> str:
    return dispatch.thread_id.split("-")[0]


@pytest.mark.django_db
def test_a_second_owner_is_served_ahead_of_the_first_owners_backlog() -> None:
    for t in range(4):
        for i in range(5):
            _queue(f"A{t}-{i}", f"A-t{t}", "A", created=1000 + t * 10 + i)
    _queue("B0", "B-t0", "B", created=9000)
    order = [_claim_and_ack(10_000 + step) for step in range(3)]
    assert None not in order
    # A (oldest work) first, then B — not after A's 20 — then A again; within an owner any thread's
    # head may come first (finishing workers spread over them), within a thread the order is kept
    assert [_owner_of(d) for d in order if d] == ["A", "B", "A"]
    for thread in {d.thread_id for d in order if d}:
        mine = [d.dispatch_id for d in order if d and d.thread_id == thread]
        assert mine == sorted(mine) and mine[0].endswith(("-0", "B0")), mine


@pytest.mark.django_db
def test_claims_rotate_between_owners_and_keep_each_threads_order() -> None:
    for owner in ("A", "B"):
        for t in range(2):
            for i in range(3):
                _queue(f"{owner}{t}-{i}", f"{owner}-t{t}", owner, created=1000 + t * 10 + i)
    # within thread A-t0 a later, more urgent dispatch goes first (priority, then created)
    _queue("A0-urgent", "A-t0", "A", created=2000, priority=1)
    claimed = [_claim_and_ack(10_000 + step) for step in range(14)]
    assert None not in claimed[:13] and claimed[13] is None
    owners = [_owner_of(d) for d in claimed if d]
    assert owners[:12] == ["A", "B"] * 6  # strict alternation while both have work
    a0 = [d.dispatch_id for d in claimed if d and d.thread_id == "A-t0"]
    assert a0 == ["A0-urgent", "A0-0", "A0-1", "A0-2"]


@pytest.mark.django_db
def test_fairness_off_drains_in_submission_order(settings: Any) -> None:
    settings.AWAKEN_CLAIM_POLICY = ClaimPolicy(fairness="off")
    # the fair claim itself still exists (idle doorbells use it only with fairness on)
    _queue("A0", "A-t0", "A", created=1000)
    assert store.claim(thread_id="A-t0", consumer_id="w", lease_ms=LEASE, now=2000)[0].dispatch_id == "A0"


@pytest.mark.django_db
def test_an_inline_claim_no_worker_started_is_taken_over_and_its_late_hand_over_writes_nothing(
    settings: Any,
) -> None:
    settings.AWAKEN_CLAIM_POLICY = ClaimPolicy(unstarted_claim_grace_ms=500)
    _queue("d1", "B-t0", "B", created=1000)
    inline = store.claim_dispatch("d1", "web", LEASE, 1000)
    assert inline is not None
    # within the grace it is left to its hand-over
    assert store.claim_next_fair("w", LEASE, 1000 + 100) is None
    taken = store.claim_next_fair("w", LEASE, 1000 + 501)
    assert taken is not None and taken.dispatch_id == "d1"
    assert taken.claim_token != inline.claim_token and taken.claimed_by == "w"
    # the hand-over arrives late with the old token: its fence is gone
    assert store.extend_lease("d1", inline.claim_token or "", LEASE, 2000) is False
    assert store.try_start("d1", inline.claim_token or "", "instance-late", "web", 2000) is None
    started = store.try_start("d1", taken.claim_token or "", "instance-w", "w", 2000)
    assert started is not None and started.dispatch_instance_id == "instance-w"
    # a started claim is never taken over
    assert store.claim_next_fair("w2", LEASE, 99_000) is None


# --- limits ---------------------------------------------------------------------------------------


def test_the_policy_names_the_bad_variable() -> None:
    with pytest.raises(ConfigError, match="AWAKEN_AGENT_LIMITS"):
        ClaimPolicy.from_env({"AWAKEN_AGENT_LIMITS": "{not json"})
    with pytest.raises(ConfigError, match="AWAKEN_AGENT_LIMITS"):
        ClaimPolicy.from_env({"AWAKEN_AGENT_LIMITS": '{"slow": 0}'})
    with pytest.raises(ConfigError, match="AWAKEN_MAX_ACTIVE_RUNS"):
        ClaimPolicy.from_env({"AWAKEN_MAX_ACTIVE_RUNS": "zero"})
    with pytest.raises(ConfigError, match="AWAKEN_FAIRNESS"):
        ClaimPolicy.from_env({"AWAKEN_FAIRNESS": "lottery"})
    policy = ClaimPolicy.from_env({"AWAKEN_AGENT_LIMITS": '{"slow": 2}', "AWAKEN_OWNER_MAX_ACTIVE_RUNS": "3"})
    assert policy.agent_limits == {"slow": 2} and policy.owner_max_active_runs == 3 and policy.fair


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
        w.join(timeout=30)
    return results


def _claimed(agent: str | None = None) -> list[DispatchRecord]:
    rows = Dispatch.objects.filter(status=DispatchStatus.CLAIMED.value)
    if agent is not None:
        rows = rows.filter(agent_key=agent)
    return [store.load_dispatch(d) for d in rows.values_list("dispatch_id", flat=True)]  # type: ignore[misc]


def _claimed_count(agent: str | None = None) -> int:
    return len(_claimed(agent))


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("round_", range(4))
def test_racing_claimers_never_exceed_an_agent_limit(settings: Any, round_: int) -> None:
    settings.AWAKEN_CLAIM_POLICY = ClaimPolicy(agent_limits={"slow": 2})
    for t in range(6):
        _queue(f"s{round_}-{t}", f"S-t{t}", "A", created=1000 + t, agent="slow")
    _queue(f"f{round_}", "F-t0", "A", created=1000, agent="fast")
    per_thread = [(lambda t=t: store.claim(f"S-t{t}", f"w{t}", LEASE, 5000)) for t in range(6)]
    fair = [
        lambda: store.claim_next_fair("wf1", LEASE, 5000),
        lambda: store.claim_next_fair("wf2", LEASE, 5000),
    ]
    results = _race(per_thread + fair)
    assert _claimed_count("slow") == 2
    claimed_fast = store.load_dispatch(f"f{round_}")
    assert claimed_fast is not None and claimed_fast.status is DispatchStatus.CLAIMED  # not held by the limit
    assert sum(len(r) for r in results[:6] if r) + sum(1 for r in results[6:] if r) == 3
    # a freed slot is claimable again, by exactly one more
    holder = _claimed("slow")[0]
    conformance.ack(holder.dispatch_id, holder.claim_token or "", 6000)
    again = _race([(lambda t=t: store.claim(f"S-t{t}", f"x{t}", LEASE, 7000)) for t in range(6)])
    assert sum(len(r) for r in again if r) == 1 and _claimed_count("slow") == 2


@pytest.mark.django_db
def test_global_and_owner_limits_hold_and_the_block_report_names_them(settings: Any) -> None:
    settings.AWAKEN_CLAIM_POLICY = ClaimPolicy(max_active_runs=3, owner_max_active_runs=2)
    for t in range(3):
        _queue(f"a{t}", f"A-t{t}", "A", created=1000 + t)
        _queue(f"b{t}", f"B-t{t}", "B", created=1000 + t)
    assert store.claim("A-t0", "w", LEASE, 2000) and store.claim("A-t1", "w", LEASE, 2000)
    assert store.claim("A-t2", "w", LEASE, 2000) == []  # owner A holds 2
    report = selectors.thread_block_report("A-t2", now=2000)
    assert any("AWAKEN_OWNER_MAX_ACTIVE_RUNS=2 (2 running)" in r for r in report.reasons), report.reasons
    assert store.claim("B-t0", "w", LEASE, 2000)
    assert store.claim("B-t1", "w", LEASE, 2000) == []  # 3 running in all
    assert store.claim_next_fair("w", LEASE, 2000) is None
    report = selectors.thread_block_report("B-t1", now=2000)
    assert any("AWAKEN_MAX_ACTIVE_RUNS=3 (3 running)" in r for r in report.reasons), report.reasons
    assert store.blocking_limit("a", "C") == "AWAKEN_MAX_ACTIVE_RUNS=3 (3 running)"


@pytest.mark.django_db
def test_priority_is_passed_through_and_validated() -> None:
    result = mailbox.submit_background(
        RunRequest(thread_id="t-prio", messages=[ChatMessage.user("hi")], agent_id="echo", priority=7)
    )
    dispatch = store.load_dispatch(result.dispatch_id)
    assert dispatch is not None and dispatch.priority == 7 and dispatch.agent_key == "echo"
    with pytest.raises(ValueError, match="priority"):
        RunRequest(thread_id="t", messages=[ChatMessage.user("x")], priority=256)


# --- end to end on a real worker ------------------------------------------------------------------


def _request(thread_id: str, text: str, agent: str = "echo") -> RunRequest:
    return RunRequest(thread_id=thread_id, messages=[ChatMessage.user(text)], agent_id=agent)


def test_a_limited_agent_runs_at_its_limit_and_freed_slots_start_the_rest(
    mailbox_worker: Any, engine_settings: Any
) -> None:
    engine_settings.AWAKEN_CLAIM_POLICY = ClaimPolicy(agent_limits={"echo": 1})
    runs = [mailbox.submit_background(_request(f"lim-{i}", "sleep 0.3")).run_id for i in range(4)]
    other = mailbox.submit_background(_request("free-0", "hi", agent="counting")).run_id
    peak = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        peak = max(peak, _claimed_count("echo"))
        statuses = [run_store.load_run(run_id=r) for r in runs]
        if all(s is not None and s.status is RunStatus.DONE for s in statuses):
            break
        time.sleep(0.01)
    assert all(run_store.load_run(run_id=r).status is RunStatus.DONE for r in runs)  # type: ignore[union-attr]
    assert peak == 1
    # the unlimited agent did not wait for the limited backlog
    finished = wait_until(lambda: run_store.load_run(run_id=other))
    last_limited = max(run_store.load_run(run_id=r).updated_at for r in runs)  # type: ignore[union-attr]
    assert finished.status is RunStatus.DONE and finished.updated_at < last_limited


def test_a_foreground_submit_held_by_a_limit_is_queued_not_refused(
    mailbox_worker: Any, engine_settings: Any
) -> None:
    engine_settings.AWAKEN_CLAIM_POLICY = ClaimPolicy(agent_limits={"echo": 1})
    first = mailbox.submit_background(_request("fg-lim-0", "sleep 0.5"))
    wait_until(lambda: _claimed_count("echo") == 1, what="first run claimed")
    second = mailbox.submit(_request("fg-lim-1", "hi"))
    assert second.status is mailbox.SubmitStatus.QUEUED
    done = wait_until(
        lambda: (
            (r := run_store.load_run(run_id=second.run_id)) is not None and r.status is RunStatus.DONE and r
        )
    )
    assert done.final_output == "echo: hi"
    assert run_store.load_run(run_id=first.run_id).status is RunStatus.DONE  # type: ignore[union-attr]


def test_a_taken_over_claim_waits_briefly_for_its_stale_hand_over_to_leave_the_lock(
    transactional_db: None, engine_settings: Any, clean_redis: Any
) -> None:
    engine_settings.AWAKEN_CLAIM_POLICY = ClaimPolicy(unstarted_claim_grace_ms=0)
    result = mailbox.submit_background(_request("steal-t", "hi", agent="counting"))
    stale = store.load_dispatch(result.dispatch_id)
    assert stale is not None and stale.status is DispatchStatus.CLAIMED  # inline; no worker runs here
    # the hand-over has taken the thread lock and is about to fail its fenced start
    hand_over_lock = ThreadLock("steal-t", stale.claim_token or "", LEASE)
    assert hand_over_lock.acquire()
    taken = store.claim_next_fair("w", LEASE, now_ms() + 1)
    assert taken is not None and taken.dispatch_id == stale.dispatch_id
    threading.Timer(0.05, hand_over_lock.release).start()
    report = execution.execute_claimed(taken)
    assert report.final_status == "acked"
    dispatch = store.load_dispatch(stale.dispatch_id)
    assert dispatch is not None and dispatch.attempt_count == 0  # not nacked behind the stale lock
    assert run_store.load_run(run_id=result.run_id).status is RunStatus.DONE  # type: ignore[union-attr]


def test_on_a_real_worker_a_second_owners_run_starts_ahead_of_a_first_owners_backlog(
    mailbox_worker: Any, engine_settings: Any
) -> None:
    owner_a, owner_b = (new_user(name).pk for name in ("fair-a", "fair-b"))
    backlog = [
        mailbox.submit_background(_request(f"fair-a-{i % 8}", "sleep 0.1"), owner_id=owner_a).run_id
        for i in range(48)
    ]
    wait_until(lambda: _claimed_count("echo") >= 4, what="the worker busy with A's backlog")
    submitted_at = now_ms()
    b_run = mailbox.submit_background(_request("fair-b-0", "hi"), owner_id=owner_b).run_id
    wait_until(
        lambda: (r := run_store.load_run(run_id=b_run)) is not None and r.status is RunStatus.DONE,
        what="B's run",
    )
    b_started = run_store.load_run(run_id=b_run).started_at  # type: ignore[union-attr]
    assert b_started is not None
    # Counted, not timed (so it holds at any machine speed): the A runs that started after B was queued
    # and before B started. Fair: the first worker slot that frees up after B's submit takes B, so only
    # claims already under way (one per worker thread, 4) can start ahead of it; unfair (FIFO) would
    # start the rest of A's backlog first.
    started_ahead = sum(
        1
        for r in backlog
        if (run := run_store.load_run(run_id=r)) is not None
        and run.started_at is not None
        and submitted_at <= run.started_at < b_started
    )
    assert started_ahead <= 4, f"{started_ahead} of A's runs started after B was queued and before B"
    wait_until(
        lambda: all(run_store.load_run(run_id=r).status is RunStatus.DONE for r in backlog),  # type: ignore[union-attr]
        timeout=60,
        what="A's backlog",
    )
