"""Thread routes (issue 9 item 4): create, list/read, update, delete, search, ownership and bad input."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import RunRequest
from mailbox_app.contract.storage import RunRecord, TerminationReason
from mailbox_app.models import Dispatch, ThreadEpoch
from mailbox_app.services import mailbox
from runs_app import store as run_store
from runs_app.models import IdempotencyRecord, Message, Run, RunStep, Thread
from runs_app.store import threads
from tests.support.api import new_user, post_json, token_client
from tests.support.waiting import wait_until

THREADS = "/api/v1/threads"
SEARCH = "/api/v1/threads/search"
HELLO = {"messages": [{"role": "user", "content": "hello"}]}


def _patch(client: APIClient, path: str, data: Any) -> Any:
    return client.patch(path, data=json.dumps(data), content_type="application/json")


def _create(client: APIClient, **body: Any) -> dict[str, Any]:
    resp = post_json(client, THREADS, body)
    assert resp.status_code == 201, resp.content
    return dict(resp.json())


def _error(resp: Any, status: int) -> tuple[str, str | None]:
    assert resp.status_code == status, resp.content
    return resp.json()["code"], resp.json().get("field")


def _run(thread_id: str, run_id: str, status: RunStatus, termination: str | None = None) -> None:
    run_store.checkpoint(
        thread_id=thread_id,
        messages=[],
        run=RunRecord(
            run_id=run_id,
            thread_id=thread_id,
            status=status,
            termination_reason=None if termination is None else TerminationReason(type=termination),
            created_at=1000,
            updated_at=1000,
        ),
    )


# --- create -------------------------------------------------------------------------------------------


def test_create_answers_the_thread_and_list_and_detail_show_metadata_and_title(alice: APIClient) -> None:
    body = _create(alice, thread_id="  t-1 ", metadata={"team": "a", "n": 1}, title="First")
    assert {k: body[k] for k in ("id", "title", "metadata", "status", "open_run", "active_run")} == {
        "id": "t-1",  # trimmed like every id
        "title": "First",
        "metadata": {"team": "a", "n": 1},
        "status": "idle",
        "open_run": None,
        "active_run": None,
    }
    assert body["message_count"] == 0 and body["latest_run_id"] is None
    assert body["created_at"] == body["updated_at"] and body["created_at"].endswith("Z")
    assert alice.get(f"{THREADS}/t-1").json() == body
    listed = alice.get(THREADS).json()
    assert listed == {"items": [body], "total": 1, "has_more": False}


def test_create_without_an_id_makes_one_and_defaults_to_empty_metadata(alice: APIClient) -> None:
    body = _create(alice)
    assert len(body["id"]) == 36 and body["metadata"] == {} and body["title"] is None
    assert Thread.objects.get(id=body["id"]).owner.username == "alice"


def test_if_exists_raise_is_409_and_do_nothing_answers_the_existing_thread(alice: APIClient) -> None:
    first = _create(alice, thread_id="t-1", metadata={"v": 1})
    resp = post_json(alice, THREADS, {"thread_id": "t-1", "metadata": {"v": 2}})
    assert _error(resp, 409) == ("thread_exists", "thread_id")
    again = post_json(alice, THREADS, {"thread_id": "t-1", "metadata": {"v": 2}, "if_exists": "do_nothing"})
    assert again.status_code == 200 and again.json() == first  # nothing overwritten


def test_another_users_id_is_409_or_404_and_writes_nothing(alice: APIClient, bob: APIClient) -> None:
    first = _create(alice, thread_id="t-1", metadata={"v": 1}, title="mine")
    assert _error(post_json(bob, THREADS, {"thread_id": "t-1"}), 409) == ("thread_exists", "thread_id")
    taken = post_json(bob, THREADS, {"thread_id": "t-1", "metadata": {"x": 1}, "if_exists": "do_nothing"})
    assert _error(taken, 404) == ("thread_not_found", None)
    assert alice.get(f"{THREADS}/t-1").json() == first
    assert Thread.objects.get(id="t-1").owner.username == "alice"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"thread_id": "a\x01b"}, "thread_id"),
        ({"thread_id": "x" * 129}, "thread_id"),
        ({"metadata": [1, 2]}, "metadata"),
        ({"metadata": "text"}, "metadata"),
        ({"metadata": {"big": "x" * 20_000}}, "metadata"),
        (
            {"metadata": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": 1}}}}}}}}}},
            "metadata",
        ),  # 9 levels
        ({"title": "t" * 256}, "title"),
        ({"title": 5}, "title"),
        ({"if_exists": "overwrite"}, "if_exists"),
    ],
)
def test_bad_create_input_is_400_naming_the_field(alice: APIClient, body: dict[str, Any], field: str) -> None:
    assert _error(post_json(alice, THREADS, body), 400) == ("invalid", field)
    assert Thread.objects.count() == 0


def test_a_body_that_is_not_an_object_is_400(alice: APIClient) -> None:
    assert _error(post_json(alice, THREADS, [1]), 400)[0] == "invalid"


# --- update -------------------------------------------------------------------------------------------


def test_patch_merges_metadata_removes_null_keys_and_sets_the_title(alice: APIClient) -> None:
    created = _create(alice, thread_id="t-1", metadata={"a": 1, "b": 2}, title="old")
    resp = _patch(alice, f"{THREADS}/t-1", {"metadata": {"b": None, "c": {"d": 3}}, "title": "new"})
    assert resp.status_code == 200
    assert (resp.json()["metadata"], resp.json()["title"]) == ({"a": 1, "c": {"d": 3}}, "new")
    assert resp.json()["updated_at"] >= created["updated_at"]
    cleared = _patch(alice, f"{THREADS}/t-1", {"title": None})
    assert (cleared.json()["metadata"], cleared.json()["title"]) == ({"a": 1, "c": {"d": 3}}, None)
    assert alice.get(f"{THREADS}/t-1").json() == cleared.json()


def test_patch_bad_input_is_400_naming_the_field_and_writes_nothing(alice: APIClient) -> None:
    _create(alice, thread_id="t-1", metadata={"big": "x" * 10_000}, title="kept")
    assert _error(_patch(alice, f"{THREADS}/t-1", {"metadata": [1]}), 400) == ("invalid", "metadata")
    assert _error(_patch(alice, f"{THREADS}/t-1", {"title": "t" * 256}), 400) == ("invalid", "title")
    # each part is within the bound, the merge is not
    over = _patch(alice, f"{THREADS}/t-1", {"metadata": {"more": "y" * 10_000}, "title": "changed"})
    assert _error(over, 400) == ("invalid", "metadata")
    thread = Thread.objects.get(id="t-1")
    assert (list(thread.metadata), thread.title) == (["big"], "kept")


# --- ownership ----------------------------------------------------------------------------------------


def test_another_user_cannot_read_patch_delete_or_find_the_thread(alice: APIClient, bob: APIClient) -> None:
    mine = _create(alice, thread_id="t-1", metadata={"team": "a"}, title="mine")
    assert _error(bob.get(f"{THREADS}/t-1"), 404) == ("thread_not_found", None)
    assert _error(_patch(bob, f"{THREADS}/t-1", {"title": "theirs"}), 404) == ("thread_not_found", None)
    assert _error(bob.delete(f"{THREADS}/t-1"), 404) == ("thread_not_found", None)
    assert post_json(bob, SEARCH, {"metadata": {"team": "a"}}).json() == {
        "items": [],
        "total": 0,
        "has_more": False,
    }
    assert bob.get(THREADS).json()["total"] == 0
    assert alice.get(f"{THREADS}/t-1").json() == mine


def test_a_bad_path_id_is_400_naming_it(alice: APIClient) -> None:
    assert _error(alice.delete(f"{THREADS}/%20"), 400) == ("invalid", "thread_id")
    assert _error(_patch(alice, f"{THREADS}/%20", {"title": "x"}), 400) == ("invalid", "thread_id")


# --- search and status ----------------------------------------------------------------------------


def _statused_threads(alice: APIClient) -> None:
    """t-idle: no runs; t-busy: a dispatch claimed; t-wait: a run waiting; t-err: latest run failed;
    t-done: latest run ended naturally (an earlier one failed)."""
    for name in ("idle", "busy", "wait", "err", "done"):
        _create(alice, thread_id=f"t-{name}", metadata={"kind": name, "team": "a"})
    owner = Thread.objects.get(id="t-idle").owner_id
    mailbox.submit_background(
        RunRequest(thread_id="t-busy", messages=[ChatMessage.user("hi")]), owner_id=owner
    )
    _run("t-wait", "r-wait", RunStatus.WAITING)
    _run("t-err", "r-err", RunStatus.DONE, "error")
    _run("t-done", "r-old", RunStatus.DONE, "error")
    Run.objects.filter(run_id="r-old").update(updated_at=500)
    _run("t-done", "r-new", RunStatus.DONE, "natural_end")


def test_status_is_derived_from_runs_and_dispatches(alice: APIClient) -> None:
    _statused_threads(alice)
    got = {t["id"]: t["status"] for t in alice.get(THREADS).json()["items"]}
    assert got == {
        "t-idle": "idle",
        "t-busy": "busy",
        "t-wait": "waiting",
        "t-err": "error",
        "t-done": "idle",
    }
    assert alice.get(f"{THREADS}/t-wait").json()["status"] == "waiting"


def test_a_threads_answer_is_one_query_and_the_same_as_the_lists(alice: APIClient) -> None:
    """`GET threads/{id}` reads the thread, its status and its open and active runs in one statement
    (issue 19: a plain read in two round trips, the other being the throttle's); what it answers is
    what the list answers for the same thread."""
    _statused_threads(alice)
    listed = {t["id"]: t for t in alice.get(THREADS).json()["items"]}
    for thread_id in ("t-idle", "t-busy", "t-wait", "t-err", "t-done"):
        with CaptureQueriesContext(connection) as queries:
            answer = alice.get(f"{THREADS}/{thread_id}")
        assert answer.status_code == 200
        assert answer.json() == listed[thread_id]
        reads = [q["sql"] for q in queries.captured_queries if "authtoken" not in q["sql"]]
        assert len(reads) == 1, reads


@pytest.mark.parametrize(
    ("status", "ids"),
    [("idle", {"t-idle", "t-done"}), ("busy", {"t-busy"}), ("waiting", {"t-wait"}), ("error", {"t-err"})],
)
def test_search_by_status(alice: APIClient, status: str, ids: set[str]) -> None:
    _statused_threads(alice)
    page = post_json(alice, SEARCH, {"status": status}).json()
    assert ({t["id"] for t in page["items"]}, page["total"], page["has_more"]) == (ids, len(ids), False)
    assert {t["status"] for t in page["items"]} == {status}


def test_search_by_metadata_containment_and_status_together(alice: APIClient) -> None:
    _statused_threads(alice)
    _create(alice, thread_id="t-other", metadata={"kind": "idle", "team": "b"})
    page = post_json(alice, SEARCH, {"metadata": {"kind": "idle"}}).json()
    assert sorted(t["id"] for t in page["items"]) == ["t-idle", "t-other"]
    both = post_json(alice, SEARCH, {"metadata": {"team": "a", "kind": "idle"}, "status": "idle"}).json()
    assert [t["id"] for t in both["items"]] == ["t-idle"] and both["total"] == 1
    assert post_json(alice, SEARCH, {"metadata": {"team": "a"}, "status": "busy"}).json()["total"] == 1
    nested = _create(alice, thread_id="t-nested", metadata={"tags": ["x", "y"], "env": {"region": "eu"}})
    found = post_json(alice, SEARCH, {"metadata": {"tags": ["y"], "env": {"region": "eu"}}}).json()
    assert found["items"] == [nested]


def test_search_pages_most_recently_active_first(alice: APIClient) -> None:
    for i in range(5):
        _create(alice, thread_id=f"t-{i}", metadata={"team": "a"})
        Thread.objects.filter(id=f"t-{i}").update(updated_at=1000 + i)
    first = post_json(alice, SEARCH, {"metadata": {"team": "a"}, "limit": 2}).json()
    assert ([t["id"] for t in first["items"]], first["total"], first["has_more"]) == (["t-4", "t-3"], 5, True)
    last = post_json(alice, SEARCH, {"metadata": {"team": "a"}, "limit": 2, "offset": 4}).json()
    assert ([t["id"] for t in last["items"]], last["total"], last["has_more"]) == (["t-0"], 5, False)
    beyond = post_json(alice, SEARCH, {"limit": 2, "offset": 10}).json()
    assert beyond == {"items": [], "total": 5, "has_more": False}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"status": "sleeping"}, "status"),
        ({"metadata": [1]}, "metadata"),
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"offset": -1}, "offset"),
    ],
)
def test_bad_search_input_is_400_naming_the_field(alice: APIClient, body: dict[str, Any], field: str) -> None:
    assert _error(post_json(alice, SEARCH, body), 400) == ("invalid", field)


def test_the_search_uses_the_metadata_index(db: None) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("EXPLAIN SELECT id FROM runs_thread WHERE metadata @> '{\"a\": 1}'::jsonb")
        plan = " ".join(row[0] for row in cursor.fetchall())
    assert "thread_metadata_gin" in plan


# --- delete -------------------------------------------------------------------------------------------


def test_delete_is_409_while_a_dispatch_is_claimed_and_writes_nothing(alice: APIClient) -> None:
    _create(alice, thread_id="t-1")
    assert post_json(alice, f"{THREADS}/t-1/mailbox", HELLO).status_code == 201  # claimed inline
    counts = (Run.objects.count(), Message.objects.count(), Dispatch.objects.count())
    assert _error(alice.delete(f"{THREADS}/t-1"), 409) == ("active_run_conflict", None)
    assert (Run.objects.count(), Message.objects.count(), Dispatch.objects.count()) == counts == (1, 1, 1)
    assert alice.get(f"{THREADS}/t-1").json()["status"] == "busy"


def test_delete_of_a_waiting_thread_removes_its_run_and_step_journal(alice: APIClient) -> None:
    _create(alice, thread_id="t-1")
    _run("t-1", "r-1", RunStatus.WAITING)
    RunStep.objects.create(
        run_id="r-1",
        key="k",
        dispatch_id="d",
        session_id="s",
        attempt=1,
        result=1,
        result_bytes=1,
        recorded_at=1,
    )
    resp = alice.delete(f"{THREADS}/t-1")
    assert resp.status_code == 200
    assert resp.json() == {
        "status": "deleted",
        "thread_id": "t-1",
        "deleted": {"dispatches": 0, "epochs": 0, "idempotency_keys": 0, "run": 1, "runstep": 1, "thread": 1},
    }
    assert not Run.objects.exists() and not Thread.objects.exists() and not RunStep.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_delete_after_a_real_run_removes_runs_messages_dispatches_epoch_and_keys(mailbox_worker: Any) -> None:
    # given a thread whose run finished on a real worker, submitted with an idempotency key
    alice = token_client(new_user("alice"))
    _create(alice, thread_id="t-1", metadata={"k": "v"})
    resp = post_json(alice, f"{THREADS}/t-1/mailbox", HELLO, HTTP_IDEMPOTENCY_KEY="key-1")
    run_id = resp.json()["run_id"]
    wait_until(lambda: (r := run_store.load_run(run_id=run_id)) and r.status is RunStatus.DONE)
    wait_until(lambda: alice.get(f"{THREADS}/t-1").json()["status"] == "idle", what="idle thread")
    other = _create(alice, thread_id="t-2")
    # when
    resp = alice.delete(f"{THREADS}/t-1")
    # then everything of t-1 is gone, nothing else
    assert resp.status_code == 200
    assert resp.json()["deleted"] == {
        "dispatches": 1,
        "epochs": 1,
        "idempotency_keys": 1,
        "message": 2,  # the user's and the echo
        "run": 1,
        "thread": 1,
    }
    assert not Run.objects.filter(thread_id="t-1").exists()
    assert not Message.objects.filter(thread_id="t-1").exists()
    assert not Dispatch.objects.filter(thread_id="t-1").exists()
    assert not ThreadEpoch.objects.filter(thread_id="t-1").exists()
    assert not IdempotencyRecord.objects.exists()
    assert _error(alice.get(f"{THREADS}/t-1"), 404) == ("thread_not_found", None)
    assert alice.get(THREADS).json()["items"] == [other]
    # and the id is free again: the replayed key runs anew on a fresh thread
    again = post_json(alice, f"{THREADS}/t-1/mailbox", HELLO, HTTP_IDEMPOTENCY_KEY="key-1")
    assert again.status_code == 201 and again.json()["run_id"] != run_id


# --- delete vs. a concurrent submit (the thread row lock) -------------------------------------------


def _lock_waiters() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")  # inside a transaction the view is cached
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND datname = current_database() AND pid <> pg_backend_pid()"
        )
        return int(cursor.fetchone()[0])


def _in_thread(target: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = target()
        except Exception as exc:  # noqa: BLE001 - reported to the test, which asserts there was none
            out["error"] = exc
        finally:
            connection.close()

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    return worker, out


@pytest.mark.django_db(transaction=True)
def test_a_submit_that_arrives_during_the_delete_waits_and_lands_on_a_fresh_thread(clean_redis: Any) -> None:
    user = new_user("alice")
    alice, alice_elsewhere = token_client(user), APIClient()  # a second client: one request in flight each
    alice_elsewhere.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get(user=user).key}")
    _create(alice, thread_id="t-1", metadata={"old": True})
    _run("t-1", "r-old", RunStatus.DONE, "natural_end")
    submits: list[tuple[threading.Thread, dict[str, Any]]] = []

    def submit_while_locked(thread_id: str) -> None:
        # the delete holds the row lock and has checked the status: a submit now must wait for it
        submit = _in_thread(lambda: post_json(alice_elsewhere, f"{THREADS}/{thread_id}/mailbox", HELLO))
        submits.append(submit)
        wait_until(lambda: _lock_waiters() == 1, what="the submit waiting on the thread row lock")

    threads.delete_hook["before_delete"] = submit_while_locked
    try:
        deleted = alice.delete(f"{THREADS}/t-1")
    finally:
        threads.delete_hook.clear()
    assert deleted.status_code == 200 and deleted.json()["deleted"]["run"] == 1
    worker, out = submits[0]
    worker.join(timeout=15)
    assert "error" not in out and out["value"].status_code == 201
    # nothing of the old thread survived, and the submit's rows are all on the new one
    thread = Thread.objects.get(id="t-1")
    assert (thread.metadata, thread.message_count, thread.owner.username) == ({}, 1, "alice")
    assert list(Run.objects.values_list("run_id", flat=True)) == [out["value"].json()["run_id"]]
    assert list(Message.objects.values_list("seq", flat=True)) == [1]
    assert Dispatch.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_delete_that_waits_for_a_submit_sees_its_dispatch_and_is_409(clean_redis: Any) -> None:
    user = new_user("alice")
    alice = token_client(user)
    _create(alice, thread_id="t-1")
    submitted, release = threading.Event(), threading.Event()

    def submit_and_hold() -> None:
        with transaction.atomic():
            mailbox.submit_background(
                RunRequest(thread_id="t-1", messages=[ChatMessage.user("hi")]), owner_id=user.id
            )
            submitted.set()
            assert release.wait(15)

    submitter, submit_out = _in_thread(submit_and_hold)
    assert submitted.wait(15)
    deleter, delete_out = _in_thread(lambda: alice.delete(f"{THREADS}/t-1"))
    wait_until(lambda: _lock_waiters() == 1, what="the delete waiting on the thread row lock")
    release.set()
    submitter.join(timeout=15)
    deleter.join(timeout=15)
    assert "error" not in submit_out and "error" not in delete_out
    assert _error(delete_out["value"], 409) == ("active_run_conflict", None)
    assert (Run.objects.count(), Message.objects.count(), Dispatch.objects.count()) == (1, 1, 1)


# --- the OpenAPI schema -------------------------------------------------------------------------------


def _ref(content: dict[str, Any]) -> str:
    return str(content["application/json"]["schema"]["$ref"]).rsplit("/", 1)[-1]


def test_the_schema_types_the_request_and_response_bodies_of_every_thread_route(alice: APIClient) -> None:
    paths = alice.get("/api/v1/schema/", HTTP_ACCEPT="application/json").json()["paths"]
    threads_, detail, search = paths["/api/v1/threads"], paths["/api/v1/threads/{thread_id}"], paths[SEARCH]
    expected = {
        ("post", "threads"): ("ThreadCreateIn", {"201": "ThreadOut", "200": "ThreadOut", "409": "ErrorOut"}),
        ("patch", "detail"): ("PatchedThreadPatchIn", {"200": "ThreadOut", "404": "ErrorOut"}),
        ("post", "search"): ("ThreadSearchIn", {"200": "ThreadPageOut", "400": "ErrorOut"}),
    }
    routes = {"threads": threads_, "detail": detail, "search": search}
    for (method, route), (request_ref, responses) in expected.items():
        operation = routes[route][method]
        assert _ref(operation["requestBody"]["content"]) == request_ref
        assert {code: _ref(operation["responses"][code]["content"]) for code in responses} == responses
    assert _ref(detail["delete"]["responses"]["200"]["content"]) == "ThreadDeletedOut"
    assert _ref(detail["delete"]["responses"]["409"]["content"]) == "ErrorOut"
    assert _ref(detail["get"]["responses"]["200"]["content"]) == "ThreadOut"
    assert _ref(threads_["get"]["responses"]["200"]["content"]) == "ThreadPageOut"
