"""A debounce window survives the worker that holds its doorbell (docs/inbox.md): real `celery worker`
subprocesses on the test database and broker, the one holding the window's countdown killed with
SIGKILL mid-window, more messages after the kill, and a fresh worker rung by the sweep (as beat would):
one run, whose input holds every message in arrival order."""

from __future__ import annotations

import pytest

from mailbox_app import store
from mailbox_app.contract.inbox import InboxOutcome, InboxPolicy
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchStatus
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import RunRequest
from mailbox_app.contract.storage import RunRequestSnapshot
from mailbox_app.services import inbox
from runs_app import store as run_store
from tests.support.worker_farm import WorkerFarm, probe_workers, sweep_until, wait_run_status

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

POLICY = InboxPolicy(debounce_ms=3_000, max_wait_ms=60_000)


def _say(text: str) -> inbox.InboxResult:
    return inbox.deliver(
        RunRequest(thread_id="t-crash", messages=[ChatMessage.user(text)], agent_id="echo"), POLICY
    )


def test_a_worker_killed_mid_window_loses_nothing(farm: WorkerFarm) -> None:
    first_worker = farm.start("w0")
    probe_workers()
    before = [_say("m0"), _say("m1")]  # the window's doorbell is a countdown now held by w0
    first_worker.kill_group()
    after = [_say("m2"), _say("m3")]  # no worker alive: the window keeps coalescing
    results = before + after
    assert [r.outcome for r in results] == [InboxOutcome.QUEUED] + [InboxOutcome.COALESCED] * 3
    assert len({r.dispatch_id for r in results}) == 1
    farm.start("w1")
    acked = sweep_until(results[0].dispatch_id, DispatchStatus.ACKED, timeout=60)
    assert [d.dispatch_id for d in store.list_dispatches("t-crash")] == [acked.dispatch_id]
    records, _ = run_store.list_message_records(thread_id="t-crash", limit=100, include_internal=True)
    user_ids = [r.message_id for r in records if r.message.role.value == "user"]
    assert RunRequestSnapshot.model_validate(acked.request).input_message_ids == user_ids
    assert [r.message.text for r in records if r.message.role.value == "user"] == ["m0", "m1", "m2", "m3"]
    run = wait_run_status(results[0].run_id, RunStatus.DONE)
    assert run.final_output == "echo: m3"  # the agent's input ends with the last message
    assert run_store.list_runs(thread_id="t-crash").total == 1
