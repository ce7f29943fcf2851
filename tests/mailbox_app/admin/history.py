"""An hour of queue history for the admin's charts, written through the real store with past clocks: each
dispatch is enqueued, claimed, started, nacked and settled by the store's own statements at the times
given (every store operation takes `now`), so the rows hold exactly what production would write."""

from __future__ import annotations

from dataclasses import dataclass

from mailbox_app import store
from mailbox_app.contract.ids import uuid7
from mailbox_app.contract.mailbox import DispatchRecord, RunDispatchResult
from tests.support.dispatches import make_dispatch

LEASE_MS = 60_000
WORKER = "history-worker:1"


@dataclass(frozen=True)
class Lived:
    """One dispatch's life: enqueued at `created`, `failures` attempts nacked, ended at `ended`."""

    thread_id: str
    created: int
    ended: int
    outcome: str  # acked | dead_letter | cancelled | permanent (dead-lettered by a permanent failure)
    failures: int = 0
    max_attempts: int = 5


def _claim(thread_id: str, now: int) -> DispatchRecord:
    claimed = store.claim(thread_id, WORKER, LEASE_MS, now)
    assert claimed, f"nothing claimable on {thread_id} at {now}"
    return claimed[0]


def _start(claimed: DispatchRecord, now: int) -> str:
    instance = uuid7()
    started = store.try_start(claimed.dispatch_id, claimed.claim_token or "", instance, WORKER, now)
    assert started is not None
    return instance


def _settle(claimed: DispatchRecord, outcome: store.Settle, now: int) -> None:
    instance = _start(claimed, now)
    result = RunDispatchResult(run_id=claimed.run_id, dispatch_instance_id=instance, status="done")
    error = None if outcome is store.Settle.ACK else "permanent failure"
    settled = store.try_settle(
        claimed.dispatch_id, claimed.claim_token or "", outcome, result, now, error=error
    )
    assert settled is not None


def live(spec: Lived) -> str:
    """Drive one dispatch through its life; its id (a UUIDv7, like production's)."""
    dispatch_id = uuid7()
    store.enqueue(
        make_dispatch(
            dispatch_id,
            spec.thread_id,
            uuid7(),
            created_at=spec.created,
            available_at=spec.created,
            max_attempts=spec.max_attempts,
        )
    )
    if spec.outcome == "cancelled":
        assert store.cancel(dispatch_id, spec.ended) is not None
        return dispatch_id
    step = max((spec.ended - spec.created) // (spec.failures + 1), 1)
    for attempt in range(spec.failures):
        clock = spec.created + step * attempt + 1
        claimed = _claim(spec.thread_id, clock)
        _start(claimed, clock)
        store.nack(dispatch_id, claimed.claim_token or "", clock, "transient failure", clock)
    if spec.failures >= spec.max_attempts:
        return dispatch_id  # the last nack dead-lettered it
    claimed = _claim(spec.thread_id, spec.ended - 1)
    outcome = store.Settle.ACK if spec.outcome == "acked" else store.Settle.DEAD_LETTER
    _settle(claimed, outcome, spec.ended)
    return dispatch_id


def an_hour(now: int, *, per_minute: int = 2) -> list[str]:
    """Dispatches over the last hour: mostly acked (some after retries), a few dead letters (exhausted
    and permanent) and cancellations; each on its own thread so none waits for another."""
    ids = []
    for minute in range(59, 0, -1):
        for n in range(per_minute):
            created = now - minute * 60_000 + n * 1_000
            duration = 2_000 + (minute % 7) * 3_000 + n * 500
            kind = "acked"
            if minute % 13 == 0 and n == 0:
                kind = "dead_letter"
            elif minute % 11 == 0 and n == 1:
                kind = "cancelled"
            elif minute % 17 == 0 and n == 1:
                kind = "permanent"
            failures = 5 if kind == "dead_letter" else (minute % 4 == 0) + (minute % 8 == 0)
            spec = Lived(f"t-hist-{minute}-{n}", created, created + duration, kind, failures=failures)
            ids.append(live(spec))
    return ids
