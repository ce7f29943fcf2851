"""The inbox (mailbox_app/services/inbox.py, docs/inbox.md) in the store with controlled time: a burst
coalesces into one dispatch whose input holds every message in arrival order, its start is pushed back
but capped, a claim that takes the window first makes the next message open a new one — and the two
orders of the race between a message and a claim, provoked on two connections — plus 20 concurrent
deliveries, with and without claims racing them: every message lands in exactly one dispatch's input."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from mailbox_app import store
from mailbox_app.contract.inbox import InboxOutcome, InboxPolicy, WhileRunning
from mailbox_app.contract.mailbox import DispatchRecord, DispatchStatus
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import RunRequest
from mailbox_app.contract.storage import NotFound, RunRequestSnapshot
from mailbox_app.services import inbox
from mailbox_app.services.inbox import InboxResult
from mailbox_app.services.mailbox import SubmitStatus
from mailbox_app.store import conformance
from runs_app import store as run_store
from tests.support.api import new_user
from tests.support.blocking import held_transaction, in_background, wait_blocked

LEASE = 30_000
T0 = 1_000_000
DEBOUNCE = InboxPolicy(debounce_ms=1_000, max_wait_ms=10_000)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The inbox's `now`: the test moves it (`clock[0] = ...`)."""
    now = [T0]
    monkeypatch.setattr(inbox, "now_ms", lambda: now[0])
    yield now


def _say(
    thread_id: str, text: str, policy: InboxPolicy = DEBOUNCE, owner_id: int | None = None
) -> InboxResult:
    request = RunRequest(thread_id=thread_id, messages=[ChatMessage.user(text)])
    return inbox.deliver(request, policy, owner_id=owner_id)


def _log(thread_id: str) -> list[tuple[str, str]]:
    """(message id, text) of the thread's log, in seq order."""
    records, _ = run_store.list_message_records(thread_id=thread_id, limit=1000, include_internal=True)
    return [(r.message_id, r.message.text) for r in records]


def _input_ids(dispatch: DispatchRecord) -> list[str]:
    return RunRequestSnapshot.model_validate(dispatch.request).input_message_ids


def _dispatches(thread_id: str) -> list[DispatchRecord]:
    return store.list_dispatches(thread_id, None, 1000)


@pytest.mark.django_db
def test_a_burst_of_ten_on_an_idle_thread_is_one_dispatch_holding_all_ten_in_order(clock: list[int]) -> None:
    results = []
    for i in range(10):
        clock[0] = T0 + i * 100
        results.append(_say("t-burst", f"part {i}"))
    assert [r.outcome for r in results] == [InboxOutcome.QUEUED] + [InboxOutcome.COALESCED] * 9
    assert {r.dispatch_id for r in results} == {results[0].dispatch_id}
    assert {r.run_id for r in results} == {results[0].run_id}
    (dispatch,) = _dispatches("t-burst")
    log = _log("t-burst")
    assert [text for _, text in log] == [f"part {i}" for i in range(10)]
    assert _input_ids(dispatch) == [message_id for message_id, _ in log]  # arrival order
    run = run_store.load_run(run_id=dispatch.run_id)
    assert run is not None and run.request is not None
    assert run.request.input_message_ids == _input_ids(dispatch)  # the run's input too
    assert dispatch.available_at == T0 + 900 + 1_000 == results[-1].starts_at  # last message + debounce
    assert dispatch.status is DispatchStatus.QUEUED and dispatch.attempt_count == 0


@pytest.mark.django_db
def test_a_window_never_starts_later_than_max_wait_after_its_first_message(clock: list[int]) -> None:
    policy = InboxPolicy(debounce_ms=1_000, max_wait_ms=2_500)
    starts = []
    for offset in (0, 800, 1_600, 2_400):
        clock[0] = T0 + offset
        starts.append(_say("t-cap", f"at {offset}", policy).starts_at)
    assert starts == [T0 + 1_000, T0 + 1_800, T0 + 2_500, T0 + 2_500]
    assert InboxPolicy(debounce_ms=400).window_cap_ms == 2_000  # the default cap: 5 × debounce


@pytest.mark.django_db
def test_a_claim_that_takes_the_window_first_makes_the_next_message_open_a_new_one(clock: list[int]) -> None:
    first = _say("t-next", "one")
    (claimed,) = store.claim("t-next", "w", LEASE, T0 + 5_000)  # the window came due and a worker took it
    assert claimed.dispatch_id == first.dispatch_id
    clock[0] = T0 + 5_100
    second = _say("t-next", "two")  # a run is active: while_running=queue opens the next window
    third = _say("t-next", "three")
    assert second.outcome is InboxOutcome.QUEUED and second.dispatch_id != first.dispatch_id
    assert third.outcome is InboxOutcome.COALESCED and third.dispatch_id == second.dispatch_id
    by_id = {d.dispatch_id: d for d in _dispatches("t-next")}
    texts = dict(_log("t-next"))
    assert [texts[i] for i in _input_ids(by_id[first.dispatch_id])] == ["one"]
    assert [texts[i] for i in _input_ids(by_id[second.dispatch_id])] == ["two", "three"]


@pytest.mark.django_db
def test_messages_while_a_run_is_active_queue_into_one_next_run_even_without_debounce(
    clock: list[int],
) -> None:
    policy = InboxPolicy(debounce_ms=0, while_running=WhileRunning.QUEUE)
    first = _say("t-q", "one", policy)
    assert first.status is SubmitStatus.RUNNING  # idle, no debounce: claimed inline
    later = [_say("t-q", text, policy) for text in ("two", "three", "four")]
    assert [r.outcome for r in later] == [InboxOutcome.QUEUED, InboxOutcome.COALESCED, InboxOutcome.COALESCED]
    assert {r.dispatch_id for r in later} == {later[0].dispatch_id} and later[
        0
    ].dispatch_id != first.dispatch_id


@pytest.mark.django_db
def test_a_message_for_another_owners_thread_writes_nothing(clock: list[int]) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    _say("t-own", "mine", owner_id=alice.pk)
    with pytest.raises(NotFound):
        _say("t-own", "not yours", owner_id=bob.pk)
    assert [text for _, text in _log("t-own")] == ["mine"]
    thread = run_store.load_thread(thread_id="t-own")
    assert thread is not None and thread.owner_id == alice.pk  # a new thread is its first sender's


@pytest.mark.django_db(transaction=True)
def test_a_message_racing_a_claim_waits_for_it_then_opens_a_new_window(clock: list[int]) -> None:
    first = _say("t-race1", "one")
    with held_transaction(lambda: store.claim("t-race1", "w", LEASE, T0 + 5_000)) as claim:
        message = in_background(lambda: _say("t-race1", "two"))
        wait_blocked(message.pid, what="the message waits for the claim's epoch row lock")
        (claimed,) = claim.release()
        second = message.wait()
    assert claimed.dispatch_id == first.dispatch_id
    assert second.outcome is InboxOutcome.QUEUED and second.dispatch_id != first.dispatch_id
    texts = dict(_log("t-race1"))
    assert [texts[i] for i in _input_ids(claimed)] == ["one"]  # what the claim took holds only "one"


@pytest.mark.django_db(transaction=True)
def test_a_claim_racing_a_message_waits_for_it_and_takes_the_message_along(clock: list[int]) -> None:
    first = _say("t-race2", "one")
    with held_transaction(lambda: _say("t-race2", "two")) as message:
        claimer = in_background(lambda: store.claim("t-race2", "w", LEASE, T0 + 60_000))
        wait_blocked(claimer.pid, what="the claim waits for the message's epoch row lock")
        second = message.release()
        (claimed,) = claimer.wait()
    assert second.outcome is InboxOutcome.COALESCED and claimed.dispatch_id == first.dispatch_id
    texts = dict(_log("t-race2"))
    assert [texts[i] for i in _input_ids(claimed)] == ["one", "two"]


def _concurrently(count: int, call: Any) -> list[Any]:
    barrier = threading.Barrier(count)
    calls = [in_background(lambda i=i: (barrier.wait(30), call(i))[1]) for i in range(count)]
    return [c.wait(60) for c in calls]


def _exactly_once(thread_id: str) -> list[list[str]]:
    """Each dispatch's input as texts; asserts every message of the log is in exactly one of them, and
    each input in log (arrival) order."""
    log = _log(thread_id)
    position = {message_id: index for index, (message_id, _) in enumerate(log)}
    inputs = [_input_ids(d) for d in sorted(_dispatches(thread_id), key=lambda d: d.created_at)]
    flat = list(itertools.chain.from_iterable(inputs))
    assert sorted(flat) == sorted(position), "a message in no input, or in two"
    for ids in inputs:
        assert [position[i] for i in ids] == sorted(position[i] for i in ids), "an input out of arrival order"
    texts = dict(log)
    return [[texts[i] for i in ids] for ids in inputs]


@pytest.mark.django_db(transaction=True)
def test_twenty_concurrent_messages_on_an_idle_thread_coalesce_into_one_dispatch() -> None:
    policy = InboxPolicy(debounce_ms=5_000, max_wait_ms=60_000)
    results = _concurrently(20, lambda i: _say("t-twenty", f"m{i}", policy))
    assert sorted(r.outcome for r in results).count(InboxOutcome.QUEUED) == 1  # one opened the window
    assert len({r.dispatch_id for r in results}) == 1
    (inputs,) = _exactly_once("t-twenty")
    assert sorted(inputs) == sorted(f"m{i}" for i in range(20))


@pytest.mark.django_db(transaction=True)
def test_twenty_concurrent_messages_racing_claims_each_land_in_exactly_one_dispatch() -> None:
    """A claimer takes whatever window is there as fast as it can (its clock is past every window's
    start) while 20 messages arrive at once: however they interleave, no message is lost or doubled."""
    policy = InboxPolicy(debounce_ms=1, max_wait_ms=1)
    stop = threading.Event()

    def claim_and_ack_loop() -> int:
        taken = 0
        while not stop.is_set():
            for claimed in store.claim("t-mix", "w", LEASE, T0 * 10**6):
                conformance.ack(claimed.dispatch_id, claimed.claim_token or "", T0)
                taken += 1
        return taken

    claimer = in_background(claim_and_ack_loop)
    results = _concurrently(20, lambda i: _say("t-mix", f"m{i}", policy))
    stop.set()
    claimer.wait()
    inputs = _exactly_once("t-mix")
    assert sorted(itertools.chain.from_iterable(inputs)) == sorted(f"m{i}" for i in range(20))
    assert {r.dispatch_id for r in results} == {d.dispatch_id for d in _dispatches("t-mix")}
