"""API input modes against a real worker (spec §5.3): `interrupt_then_queue` and `resume_open_run` on
POST threads/{id}/messages, POST runs/{id}/inputs on a waiting and on a running run, and a successful
POST threads/{id}/decision on a suspended tool call."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.storage import RunRecord
from runs_app import store as run_store
from tests.support.api import post_json, user_client
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def client(mailbox_worker: Any) -> APIClient:
    return user_client("erin")


def _say(text: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], **extra}


def _status(run_id: str, status: RunStatus) -> RunRecord:
    def reached() -> RunRecord | None:
        run = run_store.load_run(run_id=run_id)
        return run if run is not None and run.status is status else None

    run = wait_until(reached, what=f"run {run_id} {status.value}")
    assert run is not None
    return run


def _running(client: APIClient, thread_id: str, text: str = "sleep 10") -> str:
    body = post_json(client, f"/api/v1/threads/{thread_id}/mailbox", _say(text)).json()
    _status(body["run_id"], RunStatus.RUNNING)
    return str(body["run_id"])


def _waiting(client: APIClient, thread_id: str) -> RunRecord:
    body = post_json(client, f"/api/v1/threads/{thread_id}/mailbox", _say("ask release?")).json()
    return _status(body["run_id"], RunStatus.WAITING)


def test_interrupt_then_queue_cancels_the_running_run_and_queues_the_input(client: APIClient) -> None:
    first = _running(client, "t-itq")
    resp = post_json(client, "/api/v1/threads/t-itq/messages", _say("hello", mode="interrupt_then_queue"))
    assert resp.status_code == 202, resp.content
    body = resp.json()
    assert body["thread_id"] == "t-itq" and body["run_id"] != first
    assert set(body) == {"dispatch_id", "run_id", "thread_id", "status"}
    assert body["status"] in ("running", "queued")  # the worker may or may not have let go yet
    assert _status(first, RunStatus.DONE).termination_reason.type == "cancelled"
    assert _status(body["run_id"], RunStatus.DONE).final_output == "echo: hello"


def test_resume_open_run_continues_the_waiting_run(client: APIClient) -> None:
    waiting = _waiting(client, "t-ror")
    resp = post_json(client, "/api/v1/threads/t-ror/messages", _say("carry on", mode="resume_open_run"))
    assert resp.status_code == 202, resp.content
    body = resp.json()
    assert body["run_id"] == waiting.run_id and body["thread_id"] == "t-ror"
    assert _status(waiting.run_id, RunStatus.DONE).final_output == "echo: carry on"


def test_resume_open_run_without_a_waiting_run_is_404(client: APIClient) -> None:
    first = post_json(client, "/api/v1/threads/t-ror2/mailbox", _say("hi")).json()
    _status(first["run_id"], RunStatus.DONE)
    resp = post_json(client, "/api/v1/threads/t-ror2/messages", _say("carry on", mode="resume_open_run"))
    assert resp.status_code == 404
    assert resp.json() == {"error": "run not found: open run for thread t-ror2", "code": "run_not_found"}


def test_run_inputs_on_a_waiting_run_resume_it(client: APIClient) -> None:
    waiting = _waiting(client, "t-in-w")
    resp = post_json(client, f"/api/v1/runs/{waiting.run_id}/inputs", _say("more input"))
    assert resp.status_code == 202, resp.content
    body = resp.json()
    assert body["status"] == "inputs_accepted"
    assert body["run_id"] == waiting.run_id and body["thread_id"] == "t-in-w"
    assert body["run_status"] == "running"  # the thread was idle: claimed inline
    assert set(body) == {"dispatch_id", "run_id", "thread_id", "status", "run_status"}
    assert _status(waiting.run_id, RunStatus.DONE).final_output == "echo: more input"


def test_run_inputs_on_a_running_run_queue_a_new_run(client: APIClient) -> None:
    first = _running(client, "t-in-r", "sleep 0.5")
    resp = post_json(client, f"/api/v1/runs/{first}/inputs", _say("after you"))
    assert resp.status_code == 202, resp.content
    body = resp.json()
    assert body["status"] == "inputs_accepted" and body["run_status"] == "queued"
    assert body["run_id"] != first and body["thread_id"] == "t-in-r"
    assert _status(first, RunStatus.DONE).final_output == "slept 0.5"  # not interrupted
    assert _status(body["run_id"], RunStatus.DONE).final_output == "echo: after you"


def test_run_inputs_live_then_queue_on_a_running_run_steer_it(client: APIClient) -> None:
    first = _running(client, "t-in-s", "sleep 1")
    resp = post_json(client, f"/api/v1/runs/{first}/inputs", _say("go faster", mode="steer"))
    assert resp.status_code == 202, resp.content
    body = resp.json()
    assert body == {
        "dispatch_id": body["dispatch_id"],
        "run_id": first,
        "thread_id": "t-in-s",
        "status": "inputs_accepted",
        "run_status": "running",
        "delivered": "live",
    }
    assert _status(first, RunStatus.DONE).final_output == "slept 1 | steered: go faster"


def test_run_inputs_interrupt_then_queue_on_a_waiting_run_resume_it_through_the_queue(
    client: APIClient,
) -> None:
    """The interrupt finds no active claim; the queued input then resumes the waiting run (spec §4.9)."""
    waiting = _waiting(client, "t-in-i")
    resp = post_json(
        client, f"/api/v1/runs/{waiting.run_id}/inputs", _say("start over", mode="interrupt_then_queue")
    )
    assert resp.status_code == 202, resp.content
    body = resp.json()
    assert body["status"] == "inputs_accepted" and body["run_id"] == waiting.run_id
    assert _status(waiting.run_id, RunStatus.DONE).final_output == "echo: start over"


def test_thread_decision_resumes_the_suspended_tool_call(client: APIClient) -> None:
    waiting = _waiting(client, "t-dec")
    assert waiting.waiting is not None
    call_id = waiting.waiting.tickets[0].tool_call_id
    resp = post_json(
        client,
        "/api/v1/threads/t-dec/decision",
        {"tool_call_id": call_id, "action": "resume", "payload": {"ok": True}},
    )
    assert resp.status_code == 202, resp.content
    assert resp.json() == {"status": "decision_submitted", "thread_id": "t-dec", "tool_call_id": call_id}
    assert _status(waiting.run_id, RunStatus.DONE).final_output == 'approved: {"ok": true}'


def test_thread_decision_cancel_denies_the_tool_call(client: APIClient) -> None:
    waiting = _waiting(client, "t-dec2")
    assert waiting.waiting is not None
    call_id = waiting.waiting.tickets[0].tool_call_id
    resp = post_json(client, "/api/v1/threads/t-dec2/decision", {"tool_call_id": call_id, "action": "cancel"})
    assert resp.status_code == 202, resp.content
    assert _status(waiting.run_id, RunStatus.DONE).final_output == "denied"


def test_interrupt_with_nothing_active_is_404_and_with_a_running_run_202(client: APIClient) -> None:
    done = post_json(client, "/api/v1/threads/t-int/mailbox", _say("hi")).json()
    _status(done["run_id"], RunStatus.DONE)
    idle = post_json(client, "/api/v1/threads/t-int/interrupt", {})
    assert idle.status_code == 404
    assert idle.json() == {"error": "thread not found: t-int", "code": "thread_not_found"}
    running = _running(client, "t-int")
    resp = post_json(client, "/api/v1/threads/t-int/interrupt", {})
    assert resp.status_code == 202
    body = resp.json()
    assert body == {
        "status": "interrupt_requested",
        "thread_id": "t-int",
        "superseded_dispatches": 0,
        "active_dispatch_id": body["active_dispatch_id"],
    }
    assert body["active_dispatch_id"]
    assert _status(running, RunStatus.DONE).termination_reason.type == "cancelled"
