"""Another user's live work, for attack tests: Bob has a run executing (and a dispatch queued behind it),
a run suspended live in a worker waiting for a decision, and a run waiting durably for one. `snapshot()`
is everything an attacker must not change; `release()` ends Bob's held runs so the worker can stop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

from mailbox_app import store
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchStatus
from mailbox_app.contract.storage import RunRecord
from mailbox_app.realtime import events
from runs_app import store as run_store
from runs_app.models import RunDecision
from tests.support.waiting import wait_until

HOLD_MS = 120_000


@dataclass
class Victim:
    """Bob's ids, by what they name (every one of them an id an attacker can learn: they travel in
    webhooks, headers and logs)."""

    user_id: int
    token: str
    busy_thread: str
    running_run: str
    running_dispatch: str
    queued_run: str
    queued_dispatch: str
    live_thread: str
    live_run: str
    live_dispatch: str
    live_call: str
    waiting_thread: str
    waiting_run: str
    waiting_dispatch: str
    waiting_call: str

    @property
    def threads(self) -> list[str]:
        return [self.busy_thread, self.live_thread, self.waiting_thread]

    @property
    def runs(self) -> list[str]:
        return [self.running_run, self.queued_run, self.live_run, self.waiting_run]

    def ids(self) -> dict[str, str]:
        """Every id of Bob's that is not a thread id, by what it names."""
        return {
            "running_run": self.running_run,
            "running_dispatch": self.running_dispatch,
            "queued_run": self.queued_run,
            "queued_dispatch": self.queued_dispatch,
            "live_run": self.live_run,
            "live_dispatch": self.live_dispatch,
            "live_call": self.live_call,
            "waiting_run": self.waiting_run,
            "waiting_dispatch": self.waiting_dispatch,
            "waiting_call": self.waiting_call,
        }

    def snapshot(self) -> dict[str, Any]:
        """Bob's runs, messages, dispatches, events and decisions, as an attacker must leave them (lease
        renewals, which move `lease_until`, are not part of it)."""
        runs = [run_store.load_run(run_id=r) for r in self.runs]
        return {
            "runs": [None if r is None else _run_state(r) for r in runs],
            "messages": {
                t: [(m.id, m.role.value, m.text) for m in run_store.load_messages(thread_id=t) or []]
                for t in self.threads
            },
            "dispatches": {
                t: [
                    (d.dispatch_id, d.run_id, d.status.value, d.attempt_count)
                    for d in store.list_dispatches(t)
                ]
                for t in self.threads
            },
            "events": {r: [(e.id, e.type) for e in events.read_events(r)] for r in self.runs},
            "decisions": sorted(
                RunDecision.objects.filter(run_id__in=self.runs).values_list("run_id", "tool_call_id")
            ),
        }

    def assert_untouched(self, before: dict[str, Any]) -> None:
        after = self.snapshot()
        assert after == before, _diff(before, after)
        statuses = {r: run_store.load_run(run_id=r) for r in self.runs}
        assert _status(statuses[self.running_run]) is RunStatus.RUNNING
        assert _status(statuses[self.live_run]) is RunStatus.RUNNING
        assert _status(statuses[self.waiting_run]) is RunStatus.WAITING
        assert _status(statuses[self.queued_run]) is RunStatus.CREATED
        queued = store.load_dispatch(self.queued_dispatch)
        assert queued is not None and queued.status is DispatchStatus.QUEUED


def _status(run: RunRecord | None) -> RunStatus | None:
    return None if run is None else run.status


def _run_state(run: RunRecord) -> tuple[Any, ...]:
    termination = run.termination_reason.type if run.termination_reason else None
    return (
        run.run_id,
        run.status.value,
        termination,
        run.final_output,
        run.dispatch_id,
        run.session_id,
        run.waiting is not None,
    )


def _diff(before: dict[str, Any], after: dict[str, Any]) -> str:
    return "; ".join(f"{k}: {before[k]!r} -> {after[k]!r}" for k in before if before[k] != after[k])


def _tool_call(run_id: str) -> str:
    start = next((e for e in events.read_events(run_id) if e.type == "tool_call_start"), None)
    return "" if start is None else str(start.data["tool_call_id"])


def _held_call(run_id: str) -> str:
    """The call of the run's approval request once it went out with a live hold (`tool_call_done`,
    suspended, `hold_ms` > 0). echo reads the hold after its `tool_call_start`: switching the hold off at
    the start (as this did) let a loaded worker read 0, and the "live" run waited durably instead."""
    done = next(
        (
            e
            for e in events.read_events(run_id)
            if e.type == "tool_call_done"
            and e.data.get("status") == "suspended"
            and e.data.get("hold_ms", 0) > 0
        ),
        None,
    )
    return "" if done is None else str(done.data["tool_call_id"])


def _run(run_id: str) -> RunRecord:
    run = run_store.load_run(run_id=run_id)
    assert run is not None
    return run


def victim(settings: Any, post: Any, name: str = "bob") -> Victim:
    """Bob's work, started through the API as `post(token, path, body) -> (status, json)` sends it (the
    test client or a real server), executed by the test's real worker (`mailbox_worker`)."""
    user = get_user_model().objects.create_user(username=name, password="pw")
    token = Token.objects.create(user=user).key

    def submit(thread: str, text: str) -> dict[str, Any]:
        status, body = post(
            token, f"/api/v1/threads/{thread}/mailbox", {"messages": [{"role": "user", "content": text}]}
        )
        assert status == 201, body
        return dict(body)

    # a run suspended live in the worker (echo's `ask` holds for a decision), then one waiting durably
    settings.AWAKEN_LIVE_SUSPEND_HOLD_MS = HOLD_MS
    live = submit(f"{name}-live", "ask deploy to production?")
    live_call = wait_until(lambda: _held_call(live["run_id"]), timeout=30, what="Bob's live tool call held")
    settings.AWAKEN_LIVE_SUSPEND_HOLD_MS = 0
    waiting = submit(f"{name}-wait", "ask refund the order?")
    held = wait_until(
        lambda: (r := _run(waiting["run_id"])).status is RunStatus.WAITING and r.waiting and r,
        timeout=30,
        what="Bob's run waiting durably",
    )
    assert held.waiting is not None
    # a run executing, and a dispatch queued behind it
    running = submit(f"{name}-busy", "sleep 120")
    wait_until(
        lambda: _run(running["run_id"]).status is RunStatus.RUNNING, timeout=30, what="Bob's run running"
    )
    queued = submit(f"{name}-busy", "later")
    assert queued["status"] == "queued", queued
    assert _run(live["run_id"]).status is RunStatus.RUNNING
    return Victim(
        user_id=int(user.pk),
        token=token,
        busy_thread=f"{name}-busy",
        running_run=running["run_id"],
        running_dispatch=running["dispatch_id"],
        queued_run=queued["run_id"],
        queued_dispatch=queued["dispatch_id"],
        live_thread=f"{name}-live",
        live_run=live["run_id"],
        live_dispatch=live["dispatch_id"],
        live_call=live_call,
        waiting_thread=f"{name}-wait",
        waiting_run=waiting["run_id"],
        waiting_dispatch=waiting["dispatch_id"],
        waiting_call=held.waiting.tickets[0].tool_call_id,
    )


def release(bob: Victim, post: Any) -> None:
    """Bob ends his own held runs (a worker thread each), through the same API: the owner can (a run
    that ended meanwhile answers 404)."""
    for path in (f"/api/v1/threads/{bob.busy_thread}/interrupt", f"/api/v1/runs/{bob.live_run}/cancel"):
        status, body = post(bob.token, path, {})
        assert status in (202, 404), (path, body)
