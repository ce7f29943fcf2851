"""The run surface (issue 9, item 3) through the API against a real worker: wait and join, delayed starts,
run metadata and its containment filter, run timeouts (worker and sweep), multitask strategies."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from mailbox_app import store
from mailbox_app.contract.ids import now_ms
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchStatus
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import RunRequest
from mailbox_app.contract.storage import RunRecord
from mailbox_app.realtime import events
from mailbox_app.services import mailbox, maintenance, selectors
from mailbox_app.worker import attempt
from runs_app import store as run_store
from runs_app.api.run_options import METADATA_MAX_BYTES
from runs_app.api.run_serializers import RunOut
from runs_app.api.serializers import run_json
from runs_app.models import Message, Run
from tests.support.api import post_json, token_client
from tests.support.http_sse import HttpConnection
from tests.support.servers import asgi_server
from tests.support.waiting import wait_until

TIMED_OUT = {"type": "timeout", "value": None}


@pytest.fixture
def client(mailbox_worker: Any) -> APIClient:
    return token_client(get_user_model().objects.create_user(username="dora", password="pw"))


def _say(text: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], **extra}


def _run(run_id: str) -> Any:
    return run_store.load_run(run_id=run_id)


def _done(run_id: str) -> Any:
    return wait_until(lambda: (r := _run(run_id)) and r.status is RunStatus.DONE and r, what=f"{run_id} done")


def _error(resp: Any) -> tuple[int, str, str | None]:
    body = resp.json()
    return resp.status_code, body["code"], body.get("field")


# --- wait and join ------------------------------------------------------------------------------------


def test_wait_answers_the_finished_run(client: APIClient) -> None:
    resp = post_json(client, "/api/v1/threads/t-w/runs/wait", _say("hello there"))
    assert resp.status_code == 200
    body = resp.json()
    assert (body["status"], body["final_output"], body["thread_id"]) == ("done", "echo: hello there", "t-w")
    assert body["termination_reason"] == {"type": "natural_end", "value": None}
    assert body == run_json(_run(body["run_id"]))


def test_wait_times_out_with_202_then_join_answers_the_run(client: APIClient) -> None:
    began = time.monotonic()
    resp = post_json(client, "/api/v1/threads/t-slow/runs/wait", _say("sleep 1.5", wait_timeout_s=0.3))
    assert resp.status_code == 202 and time.monotonic() - began < 1.4
    pending = resp.json()
    run_id = pending["run_id"]
    assert pending == {
        "run_id": run_id,
        "thread_id": "t-slow",
        "dispatch_id": pending["dispatch_id"],
        "status": "running",
        "detail": f"the run did not finish or suspend within 0.3 s; GET /api/v1/runs/{run_id}/join "
        "to keep waiting",
    }
    joined = client.get(f"/api/v1/runs/{run_id}/join", {"timeout_s": "20"})
    assert joined.status_code == 200
    assert (joined.json()["status"], joined.json()["final_output"]) == ("done", "slept 1.5")
    again = client.get(f"/api/v1/runs/{run_id}/join")  # already over: answered at once
    assert again.status_code == 200 and again.json() == joined.json()


def test_join_times_out_with_202(client: APIClient) -> None:
    body = post_json(client, "/api/v1/threads/t-j/mailbox", _say("sleep 2")).json()
    wait_until(lambda: _run(body["run_id"]).status is RunStatus.RUNNING)
    resp = client.get(f"/api/v1/runs/{body['run_id']}/join", {"timeout_s": "0.2"})
    assert resp.status_code == 202
    assert resp.json()["status"] == "running" and "dispatch_id" not in resp.json()


def test_wait_answers_a_run_waiting_for_a_decision_then_a_resumed_run_is_waited_for_anew(
    client: APIClient,
) -> None:
    asked = post_json(client, "/api/v1/threads/t-ask/runs/wait", _say("ask may I?"))
    assert asked.status_code == 200
    assert (asked.json()["status"], asked.json()["waiting"]["reason"]) == ("waiting", "tool_permission")
    # the thread's waiting run is continued by the next submit: its earlier run_finish must not answer
    resumed = post_json(client, "/api/v1/threads/t-ask/runs/wait", _say("hello again"))
    assert resumed.status_code == 200
    assert resumed.json()["run_id"] == asked.json()["run_id"]
    assert (resumed.json()["status"], resumed.json()["final_output"]) == ("done", "echo: hello again")


def test_wait_and_join_bad_inputs_name_the_field(client: APIClient) -> None:
    for timeout in (0, -1, "soon", 301):
        resp = post_json(client, "/api/v1/threads/t-b/runs/wait", _say("x", wait_timeout_s=timeout))
        assert _error(resp) == (400, "invalid", "wait_timeout_s"), timeout
    run_id = post_json(client, "/api/v1/threads/t-b/mailbox", _say("x")).json()["run_id"]
    for raw in ("0", "-2", "abc", "nan"):
        assert _error(client.get(f"/api/v1/runs/{run_id}/join", {"timeout_s": raw})) == (
            400,
            "invalid",
            "timeout_s",
        ), raw
    assert client.get("/api/v1/runs/nope/join").status_code == 404
    assert Run.objects.filter(thread_id="t-b").count() == 1  # the refused waits wrote nothing


# --- delayed start ------------------------------------------------------------------------------------


def test_after_seconds_delays_the_start_and_the_block_report_says_why(client: APIClient) -> None:
    resp = post_json(client, "/api/v1/threads/t-later/mailbox", _say("hi", after_seconds=1))
    assert resp.status_code == 201 and resp.json()["status"] == "queued"
    dispatch = store.load_dispatch(resp.json()["dispatch_id"])
    assert dispatch.available_at == dispatch.created_at + 1000
    report = selectors.thread_block_report("t-later")
    assert report.queued[0].is_delayed_start
    assert any(
        r.startswith(f"{dispatch.dispatch_id}: delayed start (after_seconds) at ") for r in report.reasons
    )
    run = _done(resp.json()["run_id"])
    assert run.final_output == "echo: hi" and run.started_at >= dispatch.available_at


def test_after_seconds_on_a_foreground_submit_interrupts_now_and_starts_later(client: APIClient) -> None:
    first = post_json(client, "/api/v1/threads/t-fg/runs", _say("sleep 5")).json()
    wait_until(lambda: _run(first["run_id"]).status is RunStatus.RUNNING)
    later = post_json(client, "/api/v1/threads/t-fg/runs", _say("later", after_seconds=0.5))
    assert later.status_code == 201 and later.json()["status"] == "queued"
    assert _done(first["run_id"]).termination_reason.type == "cancelled"
    run = _done(later.json()["run_id"])
    dispatch = store.load_dispatch(later.json()["dispatch_id"])
    assert run.final_output == "echo: later" and run.started_at >= dispatch.available_at


def test_negative_after_seconds_is_400(client: APIClient) -> None:
    for value in (-1, "1", True):
        resp = post_json(client, "/api/v1/threads/t-neg/mailbox", _say("x", after_seconds=value))
        assert _error(resp) == (400, "invalid", "after_seconds"), value
    assert not Run.objects.filter(thread_id="t-neg").exists()


# --- metadata -----------------------------------------------------------------------------------------


def test_metadata_is_stored_returned_and_filtered_by_containment(client: APIClient) -> None:
    tagged = {"team": "ops", "ticket": {"id": 7, "tags": ["a", "b"]}}
    one = post_json(client, "/api/v1/threads/t-m/mailbox", _say("a", metadata=tagged)).json()
    two = post_json(client, "/api/v1/threads/t-m2/runs", _say("b", metadata={"team": "dev"})).json()
    three = post_json(client, "/api/v1/threads/t-m3/mailbox", _say("c")).json()
    for body in (one, two, three):
        _done(body["run_id"])
    assert client.get(f"/api/v1/runs/{one['run_id']}").json()["metadata"] == tagged
    assert client.get(f"/api/v1/runs/{three['run_id']}").json()["metadata"] == {}

    def ids(query: Any) -> list[str]:
        page = client.get("/api/v1/runs", {"metadata": json.dumps(query)}).json()
        return [r["run_id"] for r in page["items"]]

    assert ids({"team": "ops"}) == [one["run_id"]]
    assert ids({"ticket": {"tags": ["b"]}}) == [one["run_id"]]
    assert ids({"team": "dev"}) == [two["run_id"]]
    assert ids({}) == [one["run_id"], two["run_id"], three["run_id"]]
    assert ids({"team": "nobody"}) == []
    page = client.get("/api/v1/runs", {"metadata": '{"team": "ops"}'}).json()
    assert (page["total"], page["has_more"]) == (1, False)


def test_metadata_containment_uses_the_gin_index(db: None) -> None:
    query = str(Run.objects.filter(metadata__contains={"team": "ops"}).query)
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(
            "EXPLAIN SELECT run_id FROM runs_run WHERE metadata @> %s::jsonb", [json.dumps({"team": "ops"})]
        )
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert '"runs_run"."metadata" @>' in query
    assert "run_metadata_gin" in plan


def test_bad_metadata_is_400_naming_the_field(client: APIClient) -> None:
    big = {"blob": "x" * METADATA_MAX_BYTES}
    for value in (["a"], "text", 3, None, big):
        resp = post_json(client, "/api/v1/threads/t-bad/mailbox", _say("x", metadata=value))
        assert _error(resp) == (400, "invalid", "metadata"), value
    assert not Run.objects.filter(thread_id="t-bad").exists()
    for raw in ("[1]", "{nope", '"s"'):
        assert _error(client.get("/api/v1/runs", {"metadata": raw})) == (400, "invalid", "metadata"), raw


# --- run timeout --------------------------------------------------------------------------------------


def test_timeout_s_cancels_the_run_with_termination_timeout(client: APIClient) -> None:
    began = time.monotonic()
    resp = post_json(client, "/api/v1/threads/t-to/runs/wait", _say("sleep 10", timeout_s=0.4))
    assert resp.status_code == 200 and time.monotonic() - began < 5
    body = resp.json()
    assert (body["status"], body["termination_reason"], body["timeout_ms"]) == ("done", TIMED_OUT, 400)
    run = _run(body["run_id"])
    assert run.deadline_at == run.started_at + 400 and run.finished_at >= run.deadline_at
    finish = [e for e in events.read_events(run.run_id) if e.type == events.RUN_FINISH]
    assert [e.data["termination"] for e in finish] == [TIMED_OUT]


def test_default_run_timeout_comes_from_the_setting(client: APIClient, settings: Any) -> None:
    settings.AWAKEN_RUN_TIMEOUT_MS = 300
    body = post_json(client, "/api/v1/threads/t-def/runs/wait", _say("sleep 10")).json()
    assert (body["termination_reason"], body["timeout_ms"]) == (TIMED_OUT, 300)
    settings.AWAKEN_RUN_TIMEOUT_MS = 3_600_000
    quick = post_json(client, "/api/v1/threads/t-def2/runs/wait", _say("hi")).json()
    assert (quick["final_output"], quick["timeout_ms"]) == ("echo: hi", 3_600_000)


def test_bad_timeout_s_is_400(client: APIClient) -> None:
    for value in (0, -5, "10", 10**9):
        resp = post_json(client, "/api/v1/threads/t-bt/runs", _say("x", timeout_s=value))
        assert _error(resp) == (400, "invalid", "timeout_s"), value
    assert not Run.objects.filter(thread_id="t-bt").exists()


def _started_attempt(thread_id: str, timeout_ms: int) -> tuple[attempt.Started, Any]:
    """A submitted run started by an attempt in this process (no worker): Running with a deadline."""
    result = mailbox.submit_background(
        RunRequest(thread_id=thread_id, messages=[ChatMessage.user("sleep 1")], timeout_ms=timeout_ms)
    )
    claimed = store.load_dispatch(result.dispatch_id)
    assert claimed is not None and claimed.status is DispatchStatus.CLAIMED  # claimed inline
    started = attempt.start(claimed, "instance-1", "test-worker")
    assert isinstance(started, attempt.Started)
    return started, claimed


def test_sweep_times_out_an_overdue_run_waiting_out_its_retry(
    transactional_db: None, clean_redis: Any
) -> None:
    started, claimed = _started_attempt("t-sweep", 1_000)
    run = started.run
    assert run.started_at is not None and run.deadline_at == run.started_at + 1_000
    # its attempt failed transiently: the dispatch waits queued for the retry, the run stays Running
    store.nack(claimed.dispatch_id, claimed.claim_token, now_ms() + 60_000, "boom", now_ms())
    assert maintenance.sweep(now=run.deadline_at - 1).timed_out == 0  # not overdue yet
    report = maintenance.sweep(now=run.deadline_at + 1)
    assert report.timed_out == 1
    ended = _run(run.run_id)
    assert (ended.status, ended.termination_reason.model_dump()) == (RunStatus.DONE, TIMED_OUT)
    assert store.load_dispatch(claimed.dispatch_id).status is DispatchStatus.CANCELLED
    finish = [e for e in events.read_events(run.run_id) if e.type == events.RUN_FINISH]
    assert [(e.data["status"], e.data["termination"]) for e in finish] == [("done", TIMED_OUT)]
    assert maintenance.sweep(now=run.deadline_at + 2).timed_out == 0


def test_sweep_leaves_an_overdue_run_held_under_a_live_lease(
    transactional_db: None, clean_redis: Any
) -> None:
    started, claimed = _started_attempt("t-held", 1_000)
    lease_until, deadline_at = store.load_dispatch(claimed.dispatch_id).lease_until, started.run.deadline_at
    assert lease_until is not None and deadline_at is not None
    now = min(lease_until - 1, deadline_at + 1)
    assert now > deadline_at  # overdue, and its lease still live: its worker ends it
    assert maintenance.sweep(now=now).timed_out == 0
    assert _run(started.run.run_id).status is RunStatus.RUNNING


# --- multitask strategies -----------------------------------------------------------------------------


def test_reject_is_409_while_the_thread_is_busy_and_writes_nothing(client: APIClient) -> None:
    first = post_json(client, "/api/v1/threads/t-r/mailbox", _say("sleep 3")).json()
    wait_until(lambda: _run(first["run_id"]).status is RunStatus.RUNNING)
    messages_before = Message.objects.filter(thread_id="t-r").count()
    for path in ("/api/v1/threads/t-r/runs", "/api/v1/threads/t-r/mailbox", "/api/v1/threads/t-r/runs/wait"):
        resp = post_json(client, path, _say("me too", multitask_strategy="reject"))
        assert resp.status_code == 409, path
        assert resp.json() == {
            "error": "thread t-r is busy: it has a run in progress or queued",
            "code": "thread_busy",
            "field": "multitask_strategy",
        }
    assert Message.objects.filter(thread_id="t-r").count() == messages_before
    assert Run.objects.filter(thread_id="t-r").count() == 1
    assert _run(first["run_id"]).status is RunStatus.RUNNING  # not interrupted
    client.post("/api/v1/threads/t-r/cancel")
    _done(first["run_id"])
    idle = post_json(client, "/api/v1/threads/t-r/runs", _say("now", multitask_strategy="reject"))
    assert idle.status_code == 201 and _done(idle.json()["run_id"]).final_output == "echo: now"


def test_enqueue_on_the_foreground_route_queues_behind_the_running_run(client: APIClient) -> None:
    first = post_json(client, "/api/v1/threads/t-e/runs", _say("sleep 0.5")).json()
    wait_until(lambda: _run(first["run_id"]).status is RunStatus.RUNNING)
    second = post_json(client, "/api/v1/threads/t-e/runs", _say("next", multitask_strategy="enqueue"))
    assert second.status_code == 201 and second.json()["status"] == "queued"
    assert _done(first["run_id"]).final_output == "slept 0.5"  # not interrupted
    assert _done(second.json()["run_id"]).final_output == "echo: next"


def test_interrupt_on_the_mailbox_route_cancels_the_running_run(client: APIClient) -> None:
    first = post_json(client, "/api/v1/threads/t-i/mailbox", _say("sleep 5")).json()
    wait_until(lambda: _run(first["run_id"]).status is RunStatus.RUNNING)
    second = post_json(client, "/api/v1/threads/t-i/mailbox", _say("mine", multitask_strategy="interrupt"))
    assert second.status_code == 201 and second.json()["status"] == "running"
    assert _done(first["run_id"]).termination_reason.type == "cancelled"
    assert _done(second.json()["run_id"]).final_output == "echo: mine"


def test_route_defaults_are_unchanged(client: APIClient) -> None:
    first = post_json(client, "/api/v1/threads/t-d/mailbox", _say("sleep 0.5")).json()
    wait_until(lambda: _run(first["run_id"]).status is RunStatus.RUNNING)
    queued = post_json(client, "/api/v1/threads/t-d/mailbox", _say("queued"))  # mailbox: enqueue
    assert queued.json()["status"] == "queued"
    assert _done(first["run_id"]).final_output == "slept 0.5"
    _done(queued.json()["run_id"])
    busy = post_json(client, "/api/v1/threads/t-d/mailbox", _say("sleep 5")).json()
    wait_until(lambda: _run(busy["run_id"]).status is RunStatus.RUNNING)
    latest = post_json(client, "/api/v1/threads/t-d/runs", _say("latest"))  # runs: interrupt
    assert latest.json()["status"] == "running"
    assert _done(busy["run_id"]).termination_reason.type == "cancelled"


def test_bad_strategy_is_400(client: APIClient) -> None:
    resp = post_json(client, "/api/v1/threads/t-s/runs", _say("x", multitask_strategy="rollback"))
    assert _error(resp) == (400, "invalid", "multitask_strategy")


# --- schema -------------------------------------------------------------------------------------------


def test_run_out_describes_every_field_of_run_json(db: None) -> None:
    run = run_store.create_run(run=RunRecord(run_id="r-1", thread_id="t-1", created_at=1))
    assert set(run_json(run)) == set(RunOut().fields)


def test_openapi_schema_types_the_new_routes(alice: APIClient) -> None:
    schema = alice.get("/api/v1/schema/", {"format": "json"}).json()
    wait = schema["paths"]["/api/v1/threads/{thread_id}/runs/wait"]["post"]
    assert wait["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/RunWaitIn"
    }
    join = schema["paths"]["/api/v1/runs/{run_id}/join"]["get"]
    for operation in (wait, join):
        responses = operation["responses"]
        assert responses["200"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/RunOut"
        }
        assert responses["202"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/RunPendingOut"
        }
    assert [p["name"] for p in join["parameters"] if p["in"] == "query"] == ["timeout_s"]
    fields = schema["components"]["schemas"]["RunWaitIn"]["properties"]
    assert {"metadata", "after_seconds", "timeout_s", "multitask_strategy", "wait_timeout_s"} <= set(fields)
    assert "stream" not in fields
    strategies = schema["components"]["schemas"]["MultitaskStrategyEnum"]["enum"]
    assert fields["multitask_strategy"] == {
        "allOf": [{"$ref": "#/components/schemas/MultitaskStrategyEnum"}],
        "description": fields["multitask_strategy"]["description"],
    }
    assert strategies == ["reject", "enqueue", "interrupt"]
    run_out = schema["components"]["schemas"]["RunOut"]["properties"]
    assert run_out["status"] == {"$ref": "#/components/schemas/RunStatusEnum"}
    runs = schema["paths"]["/api/v1/runs"]["get"]
    assert "metadata" in [p["name"] for p in runs["parameters"]]
    assert runs["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/RunPageOut"
    }


# --- on the real ASGI server --------------------------------------------------------------------------


@pytest.mark.slow
def test_waits_hold_no_view_permit_on_the_asgi_server(mailbox_worker: Any, tmp_path: Path) -> None:
    # given one view permit per process (AWAKEN_WEB_MAX_CONCURRENT_VIEWS=1, so one pooled DB connection)
    user = get_user_model().objects.create_user(username="asgi-waiter", password="pw")
    headers = {"Authorization": f"Token {Token.objects.create(user=user).key}"}
    with asgi_server(tmp_path, env={"AWAKEN_WEB_MAX_CONCURRENT_VIEWS": "1"}) as web:

        async def scenario() -> tuple[list[Any], float, float]:
            async def wait(thread_id: str) -> Any:
                conn = HttpConnection("127.0.0.1", web.port)
                body = json.dumps(_say("sleep 1.5", wait_timeout_s=20)).encode()
                path = f"/api/v1/threads/{thread_id}/runs/wait"
                answer = await conn.request(
                    "POST", path, headers | {"Content-Type": "application/json"}, body
                )
                await conn.close()
                return answer

            began = time.monotonic()
            waits = [asyncio.create_task(wait(f"t-asgi-{i}")) for i in range(3)]
            conn = HttpConnection("127.0.0.1", web.port)
            deadline = time.monotonic() + 15
            while True:  # the three runs are running (their waits open) before the timed read
                read_began = time.monotonic()
                listed = await asyncio.wait_for(
                    conn.request("GET", "/api/v1/runs?status=running", headers), 10
                )
                read_s = time.monotonic() - read_began
                if listed.status != 200 or listed.json()["total"] == 3 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            await conn.close()
            assert listed.status == 200 and listed.json()["total"] == 3, listed.body
            answers = await asyncio.wait_for(asyncio.gather(*waits), 30)
            return answers, read_s, time.monotonic() - began

        # when three waits block at once
        answers, read_s, total_s = asyncio.run(scenario())
        log = web.log_tail()
    # then they ran side by side and a plain read got through meanwhile: none held the permit
    assert [(a.status, a.json()["final_output"]) for a in answers] == [(200, "slept 1.5")] * 3
    assert read_s < 1.0, f"GET /api/v1/runs took {read_s:.2f}s while three waits were open"
    assert total_s < 4.0, f"three 1.5 s runs waited for took {total_s:.2f}s: the waits were serialized"
    assert "Traceback" not in log, log
