"""The cancel of a waiting run through the API: a run suspended on a tool call holds no worker, so the
cancel ends it in one transaction — the run Done/cancelled, the suspended call answered with a cancelled
result in the history (mailbox_app/contract/history.py), its queued resume cancelled — and nothing of it is
left
for a worker to claim."""

from __future__ import annotations

import json
from typing import Any

import pytest
from rest_framework.test import APIClient

from mailbox_app import store
from mailbox_app.contract.history import open_tool_calls
from mailbox_app.contract.ids import now_ms
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchStatus
from mailbox_app.contract.message import Role, Visibility
from mailbox_app.contract.storage import RunRecord, TerminationReason
from runs_app import store as run_store
from tests.support.api import post_json, user_client
from tests.support.dispatches import make_dispatch
from tests.support.waiting import wait_until

THREAD = "t-cancel-waiting-api"
LIVE = [DispatchStatus.QUEUED, DispatchStatus.CLAIMED]


@pytest.fixture
def client(mailbox_worker: Any) -> APIClient:
    return user_client("waiter")


def _waiting(run_id: str) -> RunRecord | None:
    run = run_store.load_run(run_id=run_id)
    return run if run is not None and run.status is RunStatus.WAITING else None


def test_cancelling_a_waiting_run_via_the_api_ends_it_and_answers_its_suspended_call(
    client: APIClient,
) -> None:
    # given a run suspended on a tool call (echo's `ask`), durably waiting for a decision
    submitted = post_json(
        client, f"/api/v1/threads/{THREAD}/mailbox", {"messages": [{"role": "user", "content": "ask may I?"}]}
    )
    assert submitted.status_code == 201, submitted.content
    run_id = submitted.json()["run_id"]
    waiting = wait_until(lambda: _waiting(run_id), what="run waiting")
    assert waiting.waiting is not None
    call_id = waiting.waiting.tickets[0].tool_call_id
    # and a resume of it queued for later (a retry's backoff), which must not run after the cancel
    later = now_ms() + 600_000
    store.enqueue(make_dispatch("resume-later", THREAD, run_id, available_at=later, created_at=now_ms()))

    # when its owner cancels it through the API
    response = post_json(client, f"/api/v1/runs/{run_id}/cancel", {})
    assert response.status_code == 202, response.content

    # then the run is done, cancelled, no longer waiting, and the thread points at no open run
    run = run_store.load_run(run_id=run_id)
    assert run is not None and run.status is RunStatus.DONE
    assert run.termination_reason == TerminationReason(type="cancelled") and run.waiting is None
    thread = run_store.load_thread(thread_id=THREAD)
    assert thread is not None and thread.open_run_id is None and thread.active_run_id is None
    # the suspended call has its cancelled result in the history
    log = run_store.load_messages(thread_id=THREAD) or []
    [result] = [m for m in log if m.role is Role.TOOL and m.tool_call_id == call_id]
    assert json.loads(result.text) == {"status": "cancelled", "reason": "cancelled"}
    assert result.visibility is Visibility.INTERNAL
    assert open_tool_calls(log) == []
    # and nothing is left claimable: the queued resume is cancelled, no dispatch of the thread is live
    resume = store.load_dispatch("resume-later")
    assert resume is not None and resume.status is DispatchStatus.CANCELLED
    assert store.list_dispatches(THREAD, LIVE) == []
    assert THREAD not in store.claimable_thread_ids(later + 1)
    assert store.claim(THREAD, "late-worker", 30_000, later + 1) == []
    # a second cancel finds nothing to cancel (the API answers 404, as for any run it cannot cancel)
    # and changes nothing
    assert post_json(client, f"/api/v1/runs/{run_id}/cancel", {}).status_code == 404
    assert run_store.load_run(run_id=run_id) == run
