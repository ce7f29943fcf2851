"""The inbox over HTTP (docs/inbox.md): a thread's policy set at creation and by PATCH (and checked), the
`auto` message mode and the run routes deferring to the policy (answers say what became of each post),
pause and resume of a thread, another user's ids in every position, malformed bodies; and on a real
worker, a debounced burst of 10 costs one run whose input holds the 10 in order."""

from __future__ import annotations

import json
from typing import Any

import pytest
from rest_framework.test import APIClient

from mailbox_app.contract.inbox import InboxPolicy, PauseScope
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchStatus
from mailbox_app.models import Dispatch
from mailbox_app.services import pauses
from runs_app import store as run_store
from tests.support.agents import RECORDER
from tests.support.api import post_json, user_client
from tests.support.waiting import wait_until

THREADS = "/api/v1/threads"
SLOW = {"debounce_ms": 60_000, "max_wait_ms": 120_000}  # nothing starts while a test runs


def _say(text: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], **extra}


def _patch(client: APIClient, path: str, data: Any) -> Any:
    return client.patch(path, data=json.dumps(data), content_type="application/json")


def _error(resp: Any, status: int) -> tuple[str, str | None]:
    assert resp.status_code == status, resp.content
    return resp.json()["code"], resp.json().get("field")


def _thread(client: APIClient, thread_id: str, inbox: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"thread_id": thread_id}
    if inbox is not None:
        body["inbox"] = inbox
    resp = post_json(client, THREADS, body)
    assert resp.status_code == 201, resp.content
    return dict(resp.json())


# --- the policy ---------------------------------------------------------------------------------------


def test_a_policy_is_set_at_creation_normalized_changed_and_cleared(alice: APIClient) -> None:
    created = _thread(alice, "t-1", {"debounce_ms": 500})
    assert created["inbox"] == {"debounce_ms": 500, "max_wait_ms": 2_500, "while_running": "queue"}
    assert _thread(alice, "t-0")["inbox"] is None
    changed = _patch(alice, f"{THREADS}/t-1", {"inbox": {"debounce_ms": 0, "while_running": "steer"}})
    assert changed.status_code == 200 and changed.json()["inbox"]["while_running"] == "steer"
    untouched = _patch(alice, f"{THREADS}/t-1", {"title": "x"}).json()
    assert untouched["inbox"] == changed.json()["inbox"]
    cleared = _patch(alice, f"{THREADS}/t-1", {"inbox": None}).json()
    assert cleared["inbox"] is None and alice.get(f"{THREADS}/t-1").json()["inbox"] is None


@pytest.mark.parametrize(
    ("inbox", "field"),
    [
        ({"debounce_ms": -1}, "inbox.debounce_ms"),
        ({"debounce_ms": "soon"}, "inbox.debounce_ms"),
        ({"debounce_ms": 3_600_001}, "inbox.debounce_ms"),
        ({"debounce_ms": 500, "max_wait_ms": 100}, "inbox.max_wait_ms"),
        ({"while_running": "later"}, "inbox.while_running"),
        ({"debounce_ms": 1, "surprise": True}, "inbox"),
        ("queue", "inbox"),
        ([], "inbox"),
    ],
)
def test_a_malformed_policy_is_a_400_naming_the_field(alice: APIClient, inbox: Any, field: str) -> None:
    code, named = _error(post_json(alice, THREADS, {"thread_id": "t-bad", "inbox": inbox}), 400)
    assert (code, named) == ("invalid", field)
    _thread(alice, "t-ok")
    assert _error(_patch(alice, f"{THREADS}/t-ok", {"inbox": inbox}), 400)[1] == named


# --- auto: what became of each message ----------------------------------------------------------------


def test_auto_messages_coalesce_and_each_answer_says_into_which_dispatch(alice: APIClient) -> None:
    _thread(alice, "t-auto", SLOW)
    answers = [post_json(alice, f"{THREADS}/t-auto/messages", _say(f"m{i}", mode="auto")) for i in range(3)]
    assert [a.status_code for a in answers] == [202] * 3
    bodies = [a.json() for a in answers]
    assert [b["inbox"] for b in bodies] == ["queued", "coalesced", "coalesced"]
    assert len({b["dispatch_id"] for b in bodies}) == 1 and len({b["run_id"] for b in bodies}) == 1
    assert all(b["status"] == "queued" and b["starts_at"].endswith("Z") for b in bodies)
    assert Dispatch.objects.filter(thread_id="t-auto").count() == 1


def test_auto_without_a_policy_queues_like_queue_and_says_so(alice: APIClient) -> None:
    _thread(alice, "t-plain")
    body = post_json(alice, f"{THREADS}/t-plain/messages", _say("hi", mode="auto")).json()
    assert body["inbox"] == "queued" and body["status"] in ("running", "queued")
    second = post_json(alice, f"{THREADS}/t-plain/messages", _say("again", mode="auto")).json()
    assert second["dispatch_id"] != body["dispatch_id"]  # no window: each message its own dispatch


def test_the_existing_modes_keep_their_meaning_on_a_thread_with_a_policy(alice: APIClient) -> None:
    _thread(alice, "t-modes", SLOW)
    queued = [post_json(alice, f"{THREADS}/t-modes/messages", _say(f"q{i}")).json() for i in range(2)]
    assert "inbox" not in queued[0] and queued[0]["dispatch_id"] != queued[1]["dispatch_id"]


@pytest.mark.parametrize("route", ["mailbox", "runs", "runs_wait"])
def test_the_run_routes_defer_to_the_threads_policy_unless_told_otherwise(
    alice: APIClient, route: str
) -> None:
    _thread(alice, f"t-{route}", SLOW)
    path = {"mailbox": "mailbox", "runs": "runs", "runs_wait": "runs/wait"}[route]
    extra: dict[str, Any] = {"wait_timeout_s": 0.1} if route == "runs_wait" else {}
    first = post_json(alice, f"{THREADS}/t-{route}/{path}", _say("one", **extra))
    second = post_json(alice, f"{THREADS}/t-{route}/{path}", _say("two", **extra))
    assert first.status_code in (201, 202) and second.status_code in (201, 202), second.content
    if route != "runs_wait":
        assert first.json()["inbox"] == "queued" and second.json()["inbox"] == "coalesced"
    assert Dispatch.objects.filter(thread_id=f"t-{route}").count() == 1
    # an explicit strategy is the caller's choice: not the inbox's
    told = post_json(
        alice, f"{THREADS}/t-{route}/{path}", _say("three", multitask_strategy="enqueue", **extra)
    )
    assert told.status_code in (201, 202) and "inbox" not in told.json()
    assert Dispatch.objects.filter(thread_id=f"t-{route}").count() == 2


@pytest.mark.django_db(transaction=True)
def test_the_fused_submit_defers_to_a_policy_it_finds_under_the_threads_lock() -> None:
    """Outside a transaction the mailbox route is one statement, which reads the thread's policy under
    its row lock: a thread with one is refused (nothing written) and its inbox takes the message."""
    alice = user_client("alice")
    _thread(alice, "t-fused", SLOW)
    bodies = [post_json(alice, f"{THREADS}/t-fused/mailbox", _say(f"m{i}")).json() for i in range(3)]
    assert [b["inbox"] for b in bodies] == ["queued", "coalesced", "coalesced"]
    assert Dispatch.objects.filter(thread_id="t-fused").count() == 1
    _thread(alice, "t-none")
    plain = post_json(alice, f"{THREADS}/t-none/mailbox", _say("x")).json()
    assert "inbox" not in plain  # no policy: the ordinary fused submit


def test_an_idempotency_key_replays_the_inbox_answer(alice: APIClient) -> None:
    _thread(alice, "t-key", SLOW)
    body = _say("once", idempotency_key="k-1")
    first = post_json(alice, f"{THREADS}/t-key/mailbox", body)
    again = post_json(alice, f"{THREADS}/t-key/mailbox", body)
    assert first.json() == again.json() and first.json()["inbox"] == "queued"
    texts = [m["content"] for m in alice.get(f"{THREADS}/t-key/messages").json()["items"]]
    assert texts == ["once"]


def test_a_project_default_applies_to_threads_without_a_policy(alice: APIClient, settings: Any) -> None:
    settings.AWAKEN_INBOX_DEFAULT = InboxPolicy(debounce_ms=60_000)
    settings.AWAKEN_INBOX_AGENT_DEFAULTS = {"counting": InboxPolicy(debounce_ms=0)}
    _thread(alice, "t-def")
    bodies = [post_json(alice, f"{THREADS}/t-def/mailbox", _say(f"m{i}")).json() for i in range(2)]
    assert [b["inbox"] for b in bodies] == ["queued", "coalesced"]
    _thread(alice, "t-agent")
    answer = post_json(alice, f"{THREADS}/t-agent/mailbox", _say("x", agent_id="counting")).json()
    assert answer["inbox"] == "queued" and answer["status"] == "running"  # its agent's: no debounce


# --- ownership and malformed input -------------------------------------------------------------------


def test_another_users_thread_is_404_in_every_inbox_route(alice: APIClient, bob: APIClient) -> None:
    _thread(alice, "t-a", SLOW)
    for method, path, body in [
        ("post", f"{THREADS}/t-a/messages", _say("x", mode="auto")),
        ("post", f"{THREADS}/t-a/mailbox", _say("x")),
        ("post", f"{THREADS}/t-a/pause", {}),
        ("post", f"{THREADS}/t-a/resume", None),
        ("get", f"{THREADS}/t-a/pause", None),
    ]:
        resp = post_json(bob, path, body) if method == "post" else bob.get(path)
        assert _error(resp, 404) == ("thread_not_found", None), path
    assert _error(_patch(bob, f"{THREADS}/t-a", {"inbox": None}), 404)[0] == "thread_not_found"
    assert Dispatch.objects.filter(thread_id="t-a").count() == 0
    assert pauses.pause_of(PauseScope.THREAD, "t-a") is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"interrupt": "yes please"}, "interrupt"),
        ({"reason": "x" * 501}, "reason"),
        ({"reason": 5}, "reason"),
    ],
)
def test_a_malformed_pause_is_a_400_naming_the_field(alice: APIClient, body: Any, field: str) -> None:
    _thread(alice, "t-p")
    assert _error(post_json(alice, f"{THREADS}/t-p/pause", body), 400) == ("invalid", field)
    assert pauses.pause_of(PauseScope.THREAD, "t-p") is None
    assert _error(post_json(alice, f"{THREADS}/t-p/messages", _say("x", mode="soon")), 400) == (
        "invalid",
        "mode",
    )


# --- pause and resume ---------------------------------------------------------------------------------


def test_pause_holds_the_thread_and_resume_releases_it_and_an_operators_pause_is_not_the_users(
    alice: APIClient,
) -> None:
    _thread(alice, "t-hold")
    paused = post_json(alice, f"{THREADS}/t-hold/pause", {"reason": "looking into it"})
    assert paused.status_code == 200, paused.content
    body = paused.json()
    assert body["paused"] is True and body["stopped_runs"] == []
    (pause,) = body["pauses"]
    assert (
        pause["scope"] == "thread"
        and pause["paused_by"] == "user:alice"
        and pause["reason"] == "looking into it"
    )
    submitted = post_json(alice, f"{THREADS}/t-hold/mailbox", _say("later"))
    assert submitted.status_code == 201 and submitted.json()["status"] == "queued"
    assert alice.get(f"{THREADS}/t-hold/pause").json()["paused"] is True
    resumed = post_json(alice, f"{THREADS}/t-hold/resume", None).json()
    assert resumed == {"thread_id": "t-hold", "resumed": True, "paused": False, "rung_threads": 1}
    again = post_json(alice, f"{THREADS}/t-hold/resume", None).json()
    assert again["resumed"] is False
    # an operator's pause: the user sees it, and cannot lift it
    pauses.pause(PauseScope.THREAD, "t-hold", paused_by="operator:root", by_operator=True)
    assert _error(post_json(alice, f"{THREADS}/t-hold/resume", None), 409) == ("paused_by_operator", None)
    assert pauses.pause_of(PauseScope.THREAD, "t-hold") is not None
    # everything paused: the thread is held though it has no pause of its own
    pauses.resume(PauseScope.THREAD, "t-hold", by_operator=True)
    pauses.pause(PauseScope.ALL, paused_by="operator:root", by_operator=True)
    held = alice.get(f"{THREADS}/t-hold/pause").json()
    assert held["paused"] is True and [p["scope"] for p in held["pauses"]] == ["all"]


# --- on a real worker ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_debounced_burst_of_ten_costs_one_run_holding_the_ten_in_order(mailbox_worker: Any) -> None:
    client = user_client("carol")
    _thread(client, "t-ten", {"debounce_ms": 1_500, "max_wait_ms": 30_000})
    bodies = [
        post_json(
            client, f"{THREADS}/t-ten/messages", _say(f"part {i}", mode="auto", agent_id="counting")
        ).json()
        for i in range(10)
    ]
    assert len({b["run_id"] for b in bodies}) == 1
    run_id = bodies[0]["run_id"]
    wait_until(lambda: (r := run_store.load_run(run_id=run_id)) and r.status is RunStatus.DONE, timeout=30)
    assert Dispatch.objects.filter(thread_id="t-ten").count() == 1
    assert Dispatch.objects.get(thread_id="t-ten").status == DispatchStatus.ACKED.value
    assert run_store.list_runs(thread_id="t-ten").total == 1
    (call,) = RECORDER.calls  # the agent ran once...
    assert [m.text for m in call.messages] == [f"part {i}" for i in range(10)]  # ...with the ten, in order


@pytest.mark.slow
def test_while_running_steer_delivers_into_the_live_run(mailbox_worker: Any) -> None:
    client = user_client("dave")
    _thread(client, "t-steer", {"debounce_ms": 0, "while_running": "steer"})
    first = post_json(client, f"{THREADS}/t-steer/messages", _say("sleep 2", mode="auto")).json()
    wait_until(lambda: (r := run_store.load_run(run_id=first["run_id"])) and r.status is RunStatus.RUNNING)
    steered = post_json(client, f"{THREADS}/t-steer/messages", _say("go faster", mode="auto")).json()
    assert steered["inbox"] == "steered" and steered["run_id"] == first["run_id"]
    assert steered["starts_at"] is None
    done = wait_until(
        lambda: (r := run_store.load_run(run_id=first["run_id"])) and r.status is RunStatus.DONE and r
    )
    assert done.final_output == "slept 2 | steered: go faster"
    assert Dispatch.objects.filter(thread_id="t-steer").count() == 1


@pytest.mark.slow
def test_while_running_interrupt_stops_the_run_and_the_message_runs_next(mailbox_worker: Any) -> None:
    client = user_client("erin")
    _thread(client, "t-int", {"debounce_ms": 0, "while_running": "interrupt"})
    first = post_json(client, f"{THREADS}/t-int/messages", _say("sleep 20", mode="auto")).json()
    wait_until(lambda: (r := run_store.load_run(run_id=first["run_id"])) and r.status is RunStatus.RUNNING)
    second = post_json(client, f"{THREADS}/t-int/messages", _say("newer", mode="auto")).json()
    assert second["inbox"] == "queued" and second["run_id"] != first["run_id"]
    stopped = wait_until(
        lambda: (r := run_store.load_run(run_id=first["run_id"])) and r.status is RunStatus.DONE and r
    )
    assert stopped.termination_reason is not None and stopped.termination_reason.type == "cancelled"
    after = wait_until(
        lambda: (r := run_store.load_run(run_id=second["run_id"])) and r.status is RunStatus.DONE and r
    )
    assert after.final_output == "echo: newer"
