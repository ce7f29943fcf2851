"""Branching a conversation through the API (runs_app/services/fork.py): replay a run from one of its
steps on a real worker (the demo agent's `steps 4`: its side-effect log shows which steps executed),
fork a thread at a run (what the fork holds, and that the two threads stay independent), and the
refusals: another user's ids in every position, malformed fields, a step the journal lacks, a taken id."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from django.db import connection
from rest_framework.test import APIClient

from mailbox_app.agents.echo import step_key, steps_log_key
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.realtime import events
from mailbox_app.realtime.redis_client import get_redis
from mailbox_app.store.runs_tables.steps import STEP_RECORDED, STEP_REPLAYED
from runs_app import store as run_store
from runs_app.models import Message, Run, RunStep, Thread
from runs_app.services import fork
from tests.support.api import new_user, post_json, token_client, user_client
from tests.support.waiting import wait_until

STEPS_TIMEOUT = 40.0  # `steps 4`: four one-second steps, on a loaded machine


def _done(run_id: str, timeout: float = STEPS_TIMEOUT) -> Any:
    return wait_until(
        lambda: (r := run_store.load_run(run_id=run_id)) is not None and r.status is RunStatus.DONE and r,
        timeout=timeout,
        what=f"run {run_id} done",
    )


def _submit(client: APIClient, thread_id: str, text: str) -> dict[str, Any]:
    response = post_json(
        client, f"/api/v1/threads/{thread_id}/runs", {"messages": [{"role": "user", "content": text}]}
    )
    assert response.status_code == 201, response.content
    return dict(response.json())


def _log(run_id: str) -> list[int]:
    return [json.loads(raw)["step"] for raw in get_redis().lrange(steps_log_key(run_id), 0, -1)]


def _texts(thread_id: str) -> list[tuple[int, str, str]]:
    return [
        (m.seq, m.role, m.message_id) for m in Message.objects.filter(thread_id=thread_id).order_by("seq")
    ]


# --- replay on a real worker ------------------------------------------------------------------------


def test_replay_from_step_3_of_4_executes_steps_3_and_4_only(mailbox_worker: Any) -> None:
    client = token_client(new_user("rita"))
    source = _submit(client, "replay-src", "steps 4")
    source_run = _done(source["run_id"])
    assert source_run.final_output == "steps done: 4 steps, 4 executions"
    assert _log(source["run_id"]) == [1, 2, 3, 4]
    turn = source_run.input.trigger_message_ids[-1]
    keys = [step_key(turn, i) for i in (1, 2, 3, 4)]
    assert (
        list(RunStep.objects.filter(run_id=source["run_id"]).order_by("id").values_list("key", flat=True))
        == keys
    )
    source_messages = _texts("replay-src")

    response = post_json(client, f"/api/v1/runs/{source['run_id']}/replay", {"from_step": keys[2]})
    assert response.status_code == 201, response.content
    replay = response.json()
    assert replay["replay_of"] == {"run_id": source["run_id"], "from_step": keys[2]}
    assert replay["forked_from"] == {"thread_id": "replay-src", "run_id": None}  # no run before it
    assert replay["replayed_steps"] == 2 and replay["thread_id"] != "replay-src"
    run = _done(replay["run_id"])

    # steps 1-2 came from the source's journal, 3-4 executed anew: the side-effect log shows only those
    assert _log(replay["run_id"]) == [3, 4]
    assert run.final_output == "steps done: 4 steps, 2 executions"
    stream = [(e.type, e.data) for e in events.read_events(replay["run_id"]) if e.type.startswith("step_")]
    assert [(kind, data["key"]) for kind, data in stream] == [
        (STEP_REPLAYED, keys[0]),
        (STEP_REPLAYED, keys[1]),
        (STEP_RECORDED, keys[2]),
        (STEP_RECORDED, keys[3]),
    ]
    assert [data.get("from_run_id") for _, data in stream] == [source["run_id"], source["run_id"], None, None]
    journal = list(
        RunStep.objects.filter(run_id=replay["run_id"])
        .order_by("id")
        .values_list("key", "copied_from_run_id")
    )
    assert journal == [
        (keys[0], source["run_id"]),
        (keys[1], source["run_id"]),
        (keys[2], None),
        (keys[3], None),
    ]

    # usage (words as tokens): the replay paid for steps 3-4 and its reply only; the source for all four
    body = client.get(f"/api/v1/runs/{replay['run_id']}").json()
    assert (body["usage"]["input_tokens"], body["usage"]["output_tokens"]) == (2 + 2, 6 + 2)
    [attempt] = body["usage"]["attempts"]
    assert (attempt["dispatch_id"], attempt["attempt"], attempt["ended"]) == (
        replay["dispatch_id"],
        1,
        "finished",
    )
    source_body = client.get(f"/api/v1/runs/{source['run_id']}").json()
    assert (source_body["usage"]["input_tokens"], source_body["usage"]["output_tokens"]) == (2 + 4, 6 + 4)
    assert source_body["input_tokens"] == 6 and source_body["usage"]["cost"] is None

    # the fork holds the source run's input under its id, then the replay's reply; the source is untouched
    fork = client.get(f"/api/v1/threads/{replay['thread_id']}").json()
    assert fork["metadata"]["forked_from"] == {"thread_id": "replay-src", "run_id": None}
    assert [m[2] for m in _texts(replay["thread_id"])][:1] == [turn]
    assert _texts("replay-src") == source_messages
    assert Run.objects.filter(thread_id="replay-src").count() == 1
    assert RunStep.objects.filter(run_id=source["run_id"]).count() == 4
    assert Thread.objects.get(id=replay["thread_id"]).owner_id == Thread.objects.get(id="replay-src").owner_id


def test_a_replay_forks_at_the_run_before_and_runs_on_an_id_of_the_callers_choice(
    mailbox_worker: Any,
) -> None:
    client = token_client(new_user("rhea"))
    first = _submit(client, "replay-two", "hello there")
    _done(first["run_id"], timeout=20)
    second = _submit(client, "replay-two", "steps 2")
    second_run = _done(second["run_id"])
    turn = second_run.input.trigger_message_ids[-1]
    response = post_json(
        client,
        f"/api/v1/runs/{second['run_id']}/replay",
        {"from_step": step_key(turn, 2), "thread_id": "replay-two-b"},
    )
    assert response.status_code == 201, response.content
    assert response.json()["forked_from"] == {"thread_id": "replay-two", "run_id": first["run_id"]}
    run = _done(response.json()["run_id"])
    assert run.thread_id == "replay-two-b" and _log(run.run_id) == [2]
    contents = [
        m.message.text
        for m in run_store.list_message_records(thread_id="replay-two-b", offset=0, limit=10)[0]
    ]
    assert contents == ["hello there", "echo: hello there", "steps 2", "steps done: 2 steps, 1 executions"]


# --- fork (no worker: the runs and messages written as the store writes them) ------------------------


def _run(thread_id: str, run_id: str, created_at: int, triggers: list[str], to_seq: int) -> None:
    Run.objects.create(
        run_id=run_id,
        thread_id=thread_id,
        status="done",
        created_at=created_at,
        updated_at=created_at,
        input={
            "thread_id": thread_id,
            "range": {"from_seq": 1, "to_seq": to_seq},
            "trigger_message_ids": triggers,
        },
    )


def _message(thread_id: str, seq: int, message_id: str, role: str, run_id: str | None = None) -> None:
    Message.objects.create(
        thread_id=thread_id,
        seq=seq,
        message_id=message_id,
        role=role,
        content=[{"type": "text", "text": message_id}],
        run_id=run_id,
        created_at=1000 + seq,
    )


@pytest.fixture
def conversation(alice: APIClient) -> str:
    """u1 starts r1; u2 is queued for r2 while r1 runs (so it lands before r1's answer); a1 answers r1,
    a2 answers r2; u3 starts r3, which has not answered."""
    response = post_json(
        alice, "/api/v1/threads", {"thread_id": "conv", "metadata": {"team": "x"}, "title": "T"}
    )
    assert response.status_code == 201
    for seq, (message_id, role, run_id) in enumerate(
        [
            ("u1", "user", None),
            ("u2", "user", None),
            ("a1", "assistant", "r1"),
            ("a2", "assistant", "r2"),
            ("u3", "user", None),
        ],
        start=1,
    ):
        _message("conv", seq, message_id, role, run_id)
    _run("conv", "r1", 10, ["u1"], 1)
    _run("conv", "r2", 20, ["u2"], 2)
    _run("conv", "r3", 30, ["u3"], 5)
    Thread.objects.filter(id="conv").update(message_count=5, latest_run_id="r3")
    return "conv"


def _fork(client: APIClient, thread_id: str, body: dict[str, Any]) -> Any:
    return post_json(client, f"/api/v1/threads/{thread_id}/fork", body)


@pytest.mark.django_db
def test_a_fork_at_a_run_holds_its_turn_and_not_the_input_of_later_runs(
    alice: APIClient, conversation: str
) -> None:
    response = _fork(alice, conversation, {"at_run_id": "r1", "thread_id": "conv-at-r1"})
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["forked_from"] == {"thread_id": "conv", "run_id": "r1"} and body["message_count"] == 2
    assert body["thread"]["id"] == "conv-at-r1" and body["thread"]["title"] == "T"
    assert body["thread"]["metadata"] == {"team": "x", "forked_from": {"thread_id": "conv", "run_id": "r1"}}
    assert _texts("conv-at-r1") == [(1, "user", "u1"), (2, "assistant", "a1")]  # u2 is r2's input
    assert Thread.objects.get(id="conv-at-r1").message_count == 2

    at_r2 = _fork(alice, conversation, {"at_run_id": "r2"}).json()
    assert [m[2] for m in _texts(at_r2["thread"]["id"])] == ["u1", "u2", "a1", "a2"]
    latest = _fork(alice, conversation, {}).json()  # the latest run, r3: its input, no answer yet
    assert latest["forked_from"]["run_id"] == "r3"
    assert [m[2] for m in _texts(latest["thread"]["id"])] == ["u1", "u2", "a1", "a2", "u3"]
    # found by metadata like any thread of the caller's
    found = post_json(
        alice, "/api/v1/threads/search", {"metadata": {"forked_from": {"thread_id": "conv"}}}
    ).json()
    assert {t["id"] for t in found["items"]} == {"conv-at-r1", at_r2["thread"]["id"], latest["thread"]["id"]}


@pytest.mark.django_db
def test_the_fork_and_its_source_are_independent(alice: APIClient, conversation: str) -> None:
    fork_id = _fork(alice, conversation, {"at_run_id": "r1"}).json()["thread"]["id"]
    queued = post_json(
        alice, f"/api/v1/threads/{fork_id}/mailbox", {"messages": [{"role": "user", "content": "more"}]}
    )
    assert queued.status_code == 201
    assert [m[2] for m in _texts("conv")] == ["u1", "u2", "a1", "a2", "u3"]
    assert Run.objects.filter(thread_id="conv").count() == 3
    post_json(alice, "/api/v1/threads/conv/mailbox", {"messages": [{"role": "user", "content": "again"}]})
    assert len(_texts(fork_id)) == 3  # u1, a1 and its own new message
    deleted = alice.delete(f"/api/v1/threads/{fork_id}")
    assert deleted.status_code in (200, 409)  # (its queued run may still hold it) either way the source stays
    assert len(_texts("conv")) == 6


@pytest.mark.django_db
def test_another_users_ids_are_not_found_in_every_position(alice: APIClient, conversation: str) -> None:
    bob = user_client("bob")
    post_json(bob, "/api/v1/threads", {"thread_id": "bobs"})
    assert _fork(bob, "conv", {}).status_code == 404  # alice's thread
    answer = _fork(bob, "bobs", {"at_run_id": "r1"})  # alice's run, on bob's own thread
    assert answer.status_code == 404 and answer.json()["field"] == "at_run_id"
    answer = _fork(alice, "conv", {"at_run_id": "no-such-run"})
    assert answer.status_code == 404 and answer.json()["code"] == "run_not_found"
    RunStep.objects.create(
        run_id="r1",
        key="k",
        dispatch_id="d",
        session_id="s",
        attempt=1,
        result=1,
        result_bytes=1,
        recorded_at=1,
    )
    assert post_json(bob, "/api/v1/runs/r1/replay", {"from_step": "k"}).status_code == 404  # alice's run
    taken = _fork(bob, "bobs", {"thread_id": "conv"})  # alice's thread id as the fork's: taken
    assert taken.status_code == 409 and taken.json()["field"] == "thread_id"
    assert Thread.objects.filter(owner__username="bob").count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"at_run_id": 5}, "at_run_id"),
        ({"at_run_id": "r1\u0007"}, "at_run_id"),
        ({"at_run_id": "r" * 65}, "at_run_id"),
        ({"thread_id": "x\u0000y"}, "thread_id"),
        ({"thread_id": "t" * 129}, "thread_id"),
        ({"thread_id": ["a"]}, "thread_id"),
    ],
)
def test_a_malformed_fork_names_the_field(
    alice: APIClient, conversation: str, body: dict[str, Any], field: str
) -> None:
    answer = _fork(alice, conversation, body)
    assert answer.status_code == 400, answer.content
    assert answer.json()["field"] == field
    assert Thread.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        ({}, "from_step", "invalid"),
        ({"from_step": ""}, "from_step", "invalid"),
        ({"from_step": "   "}, "from_step", "invalid"),
        ({"from_step": 3}, "from_step", "invalid"),
        ({"from_step": None}, "from_step", "invalid"),
        ({"from_step": "k" * 256}, "from_step", "invalid"),
        ({"from_step": "k\u0000"}, "from_step", "invalid"),
        ({"from_step": "not-a-step"}, "from_step", "step_not_in_journal"),
        ({"from_step": "k", "thread_id": "\u0001"}, "thread_id", "invalid"),
    ],
)
def test_a_malformed_replay_names_the_field(
    alice: APIClient, conversation: str, body: dict[str, Any], field: str, code: str
) -> None:
    RunStep.objects.create(
        run_id="r1",
        key="k",
        dispatch_id="d",
        session_id="s",
        attempt=1,
        result=1,
        result_bytes=1,
        recorded_at=1,
    )
    answer = post_json(alice, "/api/v1/runs/r1/replay", body)
    assert answer.status_code == 400, answer.content
    assert (answer.json()["field"], answer.json()["code"]) == (field, code)
    assert Thread.objects.count() == 1 and Run.objects.count() == 3


@pytest.mark.django_db
def test_a_replay_onto_a_taken_id_writes_nothing(alice: APIClient, conversation: str) -> None:
    RunStep.objects.create(
        run_id="r2",
        key="k",
        dispatch_id="d",
        session_id="s",
        attempt=1,
        result=1,
        result_bytes=1,
        recorded_at=1,
    )
    answer = post_json(alice, "/api/v1/runs/r2/replay", {"from_step": "k", "thread_id": "conv"})
    assert answer.status_code == 409 and answer.json()["code"] == "thread_exists"
    assert Thread.objects.count() == 1 and Run.objects.count() == 3
    # the replay of r2 (its journal's first step: nothing replayed) forks at r1 and queues r2's input
    answer = post_json(alice, "/api/v1/runs/r2/replay", {"from_step": "k", "thread_id": "conv-r2"})
    assert answer.status_code == 201, answer.content
    assert answer.json()["replayed_steps"] == 0
    assert [m[2] for m in _texts("conv-r2")] == ["u1", "a1", "u2"]


@pytest.mark.django_db(transaction=True)
def test_forks_racing_for_one_id_create_one_thread() -> None:
    """Six forks of one thread into the same new id at once, each on its own connection: one is created
    with all of its messages, the others are refused (nothing half-written)."""
    owner = new_user("racer")
    Thread.objects.create(id="race-src", owner=owner, created_at=1, updated_at=1, message_count=3)
    for seq, message_id in enumerate(["m1", "m2", "m3"], start=1):
        _message("race-src", seq, message_id, "user")
    barrier = threading.Barrier(6)
    outcomes: list[str] = []

    def fork_once() -> None:
        try:
            barrier.wait(timeout=10)
            fork.fork_thread(owner.pk, "race-src", thread_id="race-fork")
            outcomes.append("created")
        except fork.ThreadExists:
            outcomes.append("exists")
        finally:
            connection.close()

    workers = [threading.Thread(target=fork_once) for _ in range(6)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert sorted(outcomes) == ["created"] + ["exists"] * 5
    assert [m[2] for m in _texts("race-fork")] == ["m1", "m2", "m3"]
    assert Thread.objects.get(id="race-fork").message_count == 3
