"""Live input says where it went (issue 21 item 8): `POST threads/{id}/messages` in a live mode and
`POST runs/{id}/inputs` answer `delivered: "live"` when the running run acknowledged the messages (it
reads them) and `delivered: "queued"` when they became a dispatch of their own — each checked against
what the run then did with them, on a real worker."""

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
    return user_client("steerer")


def _say(text: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], **extra}


def _status(run_id: str, status: RunStatus) -> RunRecord:
    def reached() -> RunRecord | None:
        run = run_store.load_run(run_id=run_id)
        return run if run is not None and run.status is status else None

    run = wait_until(reached, what=f"run {run_id} {status.value}")
    assert run is not None
    return run


def _running(client: APIClient, thread_id: str, text: str) -> str:
    body = post_json(client, f"/api/v1/threads/{thread_id}/mailbox", _say(text)).json()
    _status(body["run_id"], RunStatus.RUNNING)
    return str(body["run_id"])


@pytest.mark.parametrize("mode", ["live_then_queue", "steer"])
def test_thread_messages_into_a_running_run_say_live(client: APIClient, mode: str) -> None:
    running = _running(client, f"t-live-{mode}", "sleep 1")
    resp = post_json(client, f"/api/v1/threads/t-live-{mode}/messages", _say("go faster", mode=mode))
    assert resp.status_code == 202, resp.content
    body = resp.json()
    assert body["delivered"] == "live" and body["run_id"] == running and body["status"] == "running"
    # the run read them: its answer carries them, and no other run was made for them
    assert _status(running, RunStatus.DONE).final_output == "slept 1 | steered: go faster"
    assert [r.run_id for r in run_store.list_runs(thread_id=f"t-live-{mode}").items] == [running]


def test_thread_messages_with_no_running_run_say_queued(client: APIClient) -> None:
    first = post_json(client, "/api/v1/threads/t-idle/mailbox", _say("hi")).json()["run_id"]
    _status(first, RunStatus.DONE)
    resp = post_json(client, "/api/v1/threads/t-idle/messages", _say("later", mode="live_then_queue"))
    assert resp.status_code == 202, resp.content
    body = resp.json()
    assert body["delivered"] == "queued" and body["run_id"] != first
    # a run of their own answered them
    assert _status(body["run_id"], RunStatus.DONE).final_output == "echo: later"


def test_run_inputs_say_live_for_the_running_run_and_queued_once_it_ended(client: APIClient) -> None:
    running = _running(client, "t-inputs", "sleep 1")
    live = post_json(client, f"/api/v1/runs/{running}/inputs", _say("one", mode="steer")).json()
    assert live["delivered"] == "live" and live["run_id"] == running
    assert live["status"] == "inputs_accepted" and live["run_status"] == "running"
    assert _status(running, RunStatus.DONE).final_output == "slept 1 | steered: one"
    late = post_json(client, f"/api/v1/runs/{running}/inputs", _say("two", mode="steer")).json()
    assert late["delivered"] == "queued" and late["run_id"] != running
    assert _status(late["run_id"], RunStatus.DONE).final_output == "echo: two"


def test_queue_mode_answers_carry_no_delivered_field(client: APIClient) -> None:
    _status(post_json(client, "/api/v1/threads/t-q/mailbox", _say("hi")).json()["run_id"], RunStatus.DONE)
    resp = post_json(client, "/api/v1/threads/t-q/messages", _say("plain", mode="queue"))
    assert resp.status_code == 202 and "delivered" not in resp.json()
    # its run ends before the test does (the worker still writing it deadlocked the database's flush)
    assert _status(resp.json()["run_id"], RunStatus.DONE).final_output == "echo: plain"


def test_the_schema_describes_delivered_on_both_answers(alice: APIClient) -> None:
    schema = alice.get("/api/v1/schema/", {"format": "json"}).json()["components"]["schemas"]
    for name in ("SubmitOut", "RunInputsOut"):
        field = schema[name]["properties"]["delivered"]
        assert "delivered" not in schema[name].get("required", [])
        enum = field.get("enum") or schema[field["allOf"][0]["$ref"].rsplit("/", 1)[1]]["enum"]
        assert enum == ["live", "queued"], field
