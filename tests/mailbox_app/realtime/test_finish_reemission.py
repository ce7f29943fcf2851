"""A run's `run_finish` is appended after the transaction that stopped the run commits; when Redis loses
it, reconcile re-emits it (mailbox_app/services/reconcile.py `reemit_lost_finishes`), and never twice:
every way a run stops leaves a fingerprint reconcile recognises, a finish lost when a waiting run is
cancelled is found too, and the commit's own append racing the re-emission appends one finish."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import redis
from django import db
from django.contrib.auth import get_user_model
from django.db import transaction
from rest_framework.test import APIClient

from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.realtime import events
from mailbox_app.services import maintenance, reconcile
from runs_app import store as run_store
from tests.support.api import post_json, token_client
from tests.support.runs import seed_run
from tests.support.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)
LATER = 10**15  # a `now` at which every listed run is due a look
RACES = 20


@pytest.fixture
def client(mailbox_worker: Any) -> APIClient:
    return token_client(get_user_model().objects.create_user(username="finn", password="pw"))


def _say(text: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], **extra}


def _stopped(run_id: str, status: RunStatus) -> Any:
    return wait_until(lambda: (r := run_store.load_run(run_id=run_id)) and r.status is status and r)


def _finishes(run_id: str) -> list[events.RunEvent]:
    return [e for e in events.read_events(run_id) if e.type == events.RUN_FINISH]


def _finish_appended(run_id: str, count: int) -> None:
    wait_until(lambda: len(_finishes(run_id)) == count, what=f"{count} run_finish of {run_id}")


def test_every_way_a_run_stops_is_recognised_by_reconcile_and_never_finished_twice(
    client: APIClient, clean_redis: redis.Redis
) -> None:
    runs: dict[str, int] = {}  # run id -> its finishes
    done = post_json(client, "/api/v1/threads/t-done/runs/wait", _say("hello"))
    runs[done.json()["run_id"]] = 1
    waiting = post_json(client, "/api/v1/threads/t-wait/runs/wait", _say("ask may I?"))
    assert waiting.json()["status"] == "waiting"
    runs[waiting.json()["run_id"]] = 1
    continued = post_json(client, "/api/v1/threads/t-cont/runs/wait", _say("ask go on?"))
    again = post_json(client, "/api/v1/threads/t-cont/runs/wait", _say("hello again"))
    assert again.json()["run_id"] == continued.json()["run_id"] and again.json()["status"] == "done"
    runs[again.json()["run_id"]] = 2  # waiting, then done
    cancelled = post_json(client, "/api/v1/threads/t-cancel/runs/wait", _say("ask stop?"))
    cancelled_id = cancelled.json()["run_id"]
    assert client.post(f"/api/v1/runs/{cancelled_id}/cancel").status_code == 202
    _stopped(cancelled_id, RunStatus.DONE)
    runs[cancelled_id] = 2  # waiting, then cancelled
    failed = post_json(client, "/api/v1/threads/t-fail/runs/wait", _say("fail permanent"))
    assert failed.json()["termination_reason"]["type"] == "error"
    runs[failed.json()["run_id"]] = 1
    timed_out = post_json(client, "/api/v1/threads/t-slow/runs/wait", _say("sleep 5", timeout_s=0.5))
    assert timed_out.json()["termination_reason"]["type"] == "timeout"
    runs[timed_out.json()["run_id"]] = 1
    for run_id, count in runs.items():
        _finish_appended(run_id, count)
        clean_redis.zadd(events.OPEN_RUNS_KEY, {run_id: 0})  # listed and due, as if its end were lost

    assert reconcile.reemit_lost_finishes(now=LATER) == 0
    for run_id, count in runs.items():
        finishes = _finishes(run_id)
        assert len(finishes) == count, run_id
        assert finishes[-1].data["status"] == run_store.load_run(run_id=run_id).status.value
    # the done runs are no longer listed; the waiting one stays listed (its end may still get lost)
    assert events.due_open_runs(LATER, 100) == [waiting.json()["run_id"]]


def test_a_finish_lost_when_a_waiting_run_is_cancelled_is_re_emitted(
    client: APIClient, clean_redis: redis.Redis
) -> None:
    asked = post_json(client, "/api/v1/threads/t-lost-cancel/runs/wait", _say("ask shall I?"))
    run_id = asked.json()["run_id"]
    _finish_appended(run_id, 1)
    clean_redis.set(events.finishes_key(run_id), "not a set")  # Redis fails the cancel's finish
    assert client.post(f"/api/v1/runs/{run_id}/cancel").status_code == 202
    ended = _stopped(run_id, RunStatus.DONE)
    assert [f.data["status"] for f in _finishes(run_id)] == ["waiting"]
    clean_redis.delete(events.finishes_key(run_id))

    assert maintenance.reconcile_terminal(now=LATER) == 0  # (it terminalized nothing)
    finishes = _finishes(run_id)
    assert [f.data["status"] for f in finishes] == ["waiting", "done"]
    assert finishes[-1].data["termination"] == ended.termination_reason.model_dump(mode="json")
    assert reconcile.reemit_lost_finishes(now=LATER) == 0
    assert len(_finishes(run_id)) == 2


def test_a_still_running_run_is_looked_at_again_later_and_a_purged_one_is_forgotten(
    transactional_db: None, clean_redis: redis.Redis
) -> None:
    seed_run("run-busy", "t-busy", RunStatus.RUNNING)
    events.append_event("run-busy", events.RUN_START, {})
    events.append_event("run-gone", events.RUN_START, {})  # no such run in PostgreSQL
    assert reconcile.reemit_lost_finishes(now=LATER) == 0
    assert _finishes("run-busy") == []
    assert clean_redis.zscore(events.OPEN_RUNS_KEY, "run-busy") == LATER + events.OPEN_CHECK_AFTER_MS
    assert clean_redis.zscore(events.OPEN_RUNS_KEY, "run-gone") is None


def test_the_commits_own_append_racing_the_re_emission_appends_one_finish(
    transactional_db: None, clean_redis: redis.Redis
) -> None:
    for i in range(RACES):
        run_id = f"run-race-{i}"
        seed_run(run_id, f"t-race-{i}", RunStatus.DONE, dispatch_id=f"d-{i}", finished_at=5)
        events.append_event(run_id, events.RUN_START, {"run_id": run_id})  # lists it: its finish is due
        _race(run_store.load_run(run_id=run_id))
        assert len(_finishes(run_id)) == 1, f"race {i}"
    assert events.due_open_runs(LATER, 100) == []


def _race(run: Any) -> None:
    """The finish transaction's on_commit append and a reconcile pass, started together."""
    start = threading.Barrier(2)

    def committed() -> None:
        start.wait()
        try:
            with transaction.atomic():  # as the worker's finish transaction: appended on commit
                reconcile.emit_finish_on_commit(run, run.dispatch_id)
        finally:
            db.connections.close_all()

    def reconciled() -> None:
        start.wait()
        try:
            reconcile.reemit_lost_finishes(now=LATER)
        finally:
            db.connections.close_all()

    threads = [threading.Thread(target=committed), threading.Thread(target=reconciled)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
