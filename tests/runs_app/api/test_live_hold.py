"""The live suspend hold as a client meets it (issue 21 items 3 and 8), over HTTP with a real worker.

An `ask` holds its claim for `AWAKEN_LIVE_SUSPEND_HOLD_MS` so that a decision is taken live, yet its
approval request reaches the caller at once: `runs/wait` answers within about a second with the waiting
tool call (not after the hold), a decision sent right then is taken by the running run (no second
dispatch), and one sent after the hold takes the durable path. `join` right after a decision waits for
the resumed run instead of answering the stale `waiting` run, whichever path the decision took."""

from __future__ import annotations

import time
from typing import Any

import pytest
from rest_framework.test import APIClient

from mailbox_app import store
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.storage import RunRecord
from runs_app import store as run_store
from tests.support.api import post_json, user_client
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow
HOLD_MS = 15_000  # the default: the decision buttons must not wait for it
PROMPT_S = 5.0  # "at once" on a loaded 2-core machine (measured ~0.3-1 s); the hold is 15 s


@pytest.fixture
def client(mailbox_worker: Any, settings: Any) -> APIClient:
    settings.AWAKEN_LIVE_SUSPEND_HOLD_MS = HOLD_MS
    return user_client("asker")


def _say(text: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], **extra}


def _status(run_id: str, status: RunStatus, timeout: float = 15.0) -> RunRecord:
    def reached() -> RunRecord | None:
        run = run_store.load_run(run_id=run_id)
        return run if run is not None and run.status is status else None

    run = wait_until(reached, timeout=timeout, what=f"run {run_id} {status.value}")
    assert run is not None
    return run


def _ask(client: APIClient, thread_id: str) -> tuple[dict[str, Any], float]:
    began = time.monotonic()
    resp = post_json(client, f"/api/v1/threads/{thread_id}/runs/wait", _say("ask may I?"))
    elapsed = time.monotonic() - began
    assert resp.status_code == 200, resp.content
    return resp.json(), elapsed


def _decide(client: APIClient, run_id: str, call_id: str, action: str = "resume") -> None:
    body = {"tool_call_id": call_id, "action": action, "payload": {"ok": True}}
    resp = post_json(client, f"/api/v1/runs/{run_id}/decision", body)
    assert resp.status_code == 202, resp.content


def test_wait_answers_the_approval_request_at_once_and_a_decision_then_is_taken_live(
    client: APIClient,
) -> None:
    asked, elapsed = _ask(client, "t-hold")
    print(f"\nruns/wait on `ask` answered in {elapsed:.2f} s (hold {HOLD_MS} ms)")
    assert elapsed < PROMPT_S, elapsed
    assert asked["status"] == "waiting"
    waiting = asked["waiting"]
    (ticket,) = waiting["tickets"]
    assert ticket["tool_name"] == "approve" and ticket["arguments"] == {"question": "may I?"}
    assert waiting["ticket_ids"] == [ticket["tool_call_id"]] and waiting["live_until"]
    # PostgreSQL still says running: the worker holds the claim for the live decision
    held = run_store.load_run(run_id=asked["run_id"])
    assert held is not None and held.status is RunStatus.RUNNING
    _decide(client, asked["run_id"], ticket["tool_call_id"])
    done = _status(asked["run_id"], RunStatus.DONE)
    assert done.final_output == 'approved: {"ok": true}'
    # taken by the running run: no dispatch was queued to resume it
    assert len(store.list_dispatches("t-hold")) == 1


def test_join_right_after_a_live_decision_waits_for_the_resumed_run(client: APIClient) -> None:
    asked, _ = _ask(client, "t-join-live")
    held = client.get(f"/api/v1/runs/{asked['run_id']}/join", {"timeout_s": 10})
    assert held.status_code == 200 and held.json()["status"] == "waiting"  # join sees the hold too
    _decide(client, asked["run_id"], asked["waiting"]["ticket_ids"][0], action="cancel")
    joined = client.get(f"/api/v1/runs/{asked['run_id']}/join", {"timeout_s": 10})
    assert joined.status_code == 200, joined.content
    assert (joined.json()["status"], joined.json()["final_output"]) == ("done", "denied")
    assert len(store.list_dispatches("t-join-live")) == 1


def test_join_right_after_a_durable_decision_waits_for_the_resumed_run(
    client: APIClient, settings: Any
) -> None:
    settings.AWAKEN_LIVE_SUSPEND_HOLD_MS = 0  # no hold: the run waits durably at once
    asked, _ = _ask(client, "t-join-durable")
    assert run_store.load_run(run_id=asked["run_id"]).status is RunStatus.WAITING  # type: ignore[union-attr]
    _decide(client, asked["run_id"], asked["waiting"]["ticket_ids"][0])
    joined = client.get(f"/api/v1/runs/{asked['run_id']}/join", {"timeout_s": 10})
    assert joined.status_code == 200, joined.content
    assert (joined.json()["status"], joined.json()["final_output"]) == ("done", 'approved: {"ok": true}')
    assert len(store.list_dispatches("t-join-durable")) == 2  # the resume went through the queue


def test_a_decision_after_the_hold_takes_the_durable_path(client: APIClient, settings: Any) -> None:
    settings.AWAKEN_LIVE_SUSPEND_HOLD_MS = 1_000
    asked, elapsed = _ask(client, "t-after-hold")
    assert asked["status"] == "waiting" and elapsed < 1.0 + PROMPT_S
    waiting = _status(asked["run_id"], RunStatus.WAITING)  # the hold ran out: waiting durably
    assert waiting.waiting is not None and waiting.waiting.ticket_ids == asked["waiting"]["ticket_ids"]
    _decide(client, asked["run_id"], asked["waiting"]["ticket_ids"][0])
    assert _status(asked["run_id"], RunStatus.DONE).final_output == 'approved: {"ok": true}'
    assert len(store.list_dispatches("t-after-hold")) == 2


def test_the_held_answer_is_the_callers_only(client: APIClient, bob: APIClient) -> None:
    asked, _ = _ask(client, "t-held-own")
    assert bob.get(f"/api/v1/runs/{asked['run_id']}/join").status_code == 404
    call_id = asked["waiting"]["ticket_ids"][0]
    other = post_json(
        bob, f"/api/v1/runs/{asked['run_id']}/decision", {"tool_call_id": call_id, "action": "resume"}
    )
    assert other.status_code == 404
    _decide(client, asked["run_id"], call_id, action="cancel")
    assert _status(asked["run_id"], RunStatus.DONE).final_output == "denied"
