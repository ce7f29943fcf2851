"""Schedules on a thread (docs/inbox.md, mailbox_app/services/schedules.py): the routes, their beat rows
(django-celery-beat's PeriodicTask with its crontab in its time zone, or its interval), ownership (another
user's thread or schedule is a 404 in every position), malformed bodies (a 400 naming the field); firing:
one run per slot with the schedule's metadata, a repeated or early firing and two firings at once
submit nothing more, `if_busy`; a thread's delete takes its schedules; and beat itself (its
DatabaseScheduler, in this process) restarted before it saved its state fires nothing twice."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from celery.signals import task_postrun
from django_celery_beat.models import PeriodicTask
from django_celery_beat.schedulers import DatabaseScheduler
from rest_framework.test import APIClient

from awaken_project.celery import app as celery_app
from mailbox_app import store
from mailbox_app.contract.ids import now_ms
from mailbox_app.contract.mailbox import DispatchStatus
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import RunRequest
from mailbox_app.models import Schedule
from mailbox_app.services import mailbox, schedules
from mailbox_app.services.schedules import FireOutcome, next_cron_ms
from runs_app import store as run_store
from tests.support.api import post_json, user_client
from tests.support.blocking import held_transaction, in_background, wait_blocked
from tests.support.waiting import wait_until

THREADS = "/api/v1/threads"
SCHEDULES = "/api/v1/schedules"
HELLO = [{"role": "user", "content": "good morning"}]


def _thread(client: APIClient, thread_id: str) -> None:
    assert post_json(client, THREADS, {"thread_id": thread_id}).status_code == 201


def _schedule(client: APIClient, thread_id: str, **body: Any) -> dict[str, Any]:
    resp = post_json(client, f"{THREADS}/{thread_id}/schedules", {"messages": HELLO, **body})
    assert resp.status_code == 201, resp.content
    return dict(resp.json())


def _patch(client: APIClient, path: str, data: Any) -> Any:
    return client.patch(path, data=json.dumps(data), content_type="application/json")


def _error(resp: Any, status: int) -> tuple[str, str | None]:
    assert resp.status_code == status, resp.content
    return resp.json()["code"], resp.json().get("field")


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


# --- the routes and the beat rows ---------------------------------------------------------------------


def test_a_cron_schedule_in_a_time_zone_and_its_beat_row(alice: APIClient) -> None:
    _thread(alice, "t-cron")
    before = now_ms()
    created = _schedule(alice, "t-cron", cron="30 9 * * 1-5", timezone="Europe/Paris", metadata={"k": 1})
    assert set(created) == {"schedule_id", "next_run_at"}
    next_at = datetime.fromtimestamp(_ms(created["next_run_at"]) / 1000, ZoneInfo("Europe/Paris"))
    assert (next_at.hour, next_at.minute, next_at.isoweekday() <= 5) == (9, 30, True)
    bounds = (
        next_cron_ms("30 9 * * 1-5", "Europe/Paris", before),
        next_cron_ms("30 9 * * 1-5", "Europe/Paris", now_ms()),
    )
    assert bounds[0] <= _ms(created["next_run_at"]) <= bounds[1]
    task = PeriodicTask.objects.get(name=f"awaken schedule {created['schedule_id']}")
    assert task.task == "mailbox.fire_schedule" and task.enabled
    assert json.loads(task.kwargs) == {"schedule_id": created["schedule_id"]}
    assert task.crontab is not None and task.interval is None
    assert (task.crontab.minute, task.crontab.hour, task.crontab.day_of_week) == ("30", "9", "1-5")
    assert str(task.crontab.timezone) == "Europe/Paris"
    detail = alice.get(f"{SCHEDULES}/{created['schedule_id']}").json()
    assert detail["cron"] == "30 9 * * 1-5" and detail["timezone"] == "Europe/Paris"
    assert detail["interval_s"] is None and detail["metadata"] == {"k": 1} and detail["messages"] == HELLO
    assert detail["if_busy"] == "skip" and detail["enabled"] is True and detail["firings"] == 0


def test_an_interval_schedule_starts_its_beat_row_at_its_anchor(alice: APIClient) -> None:
    _thread(alice, "t-int")
    before = now_ms()
    created = _schedule(alice, "t-int", interval_s=90, if_busy="enqueue", agent_id="counting")
    next_run = _ms(created["next_run_at"])
    assert before + 90_000 <= next_run <= now_ms() + 90_000
    task = PeriodicTask.objects.get(name=f"awaken schedule {created['schedule_id']}")
    assert task.interval is not None and (task.interval.every, task.interval.period) == (90, "seconds")
    assert task.last_run_at is not None and int(task.last_run_at.timestamp() * 1000) == next_run - 90_000
    listed = alice.get(f"{THREADS}/t-int/schedules").json()
    assert listed["total"] == 1 and listed["items"][0]["agent_id"] == "counting"


def test_patch_pauses_changes_and_resumes_and_delete_removes_the_beat_row(alice: APIClient) -> None:
    _thread(alice, "t-patch")
    schedule_id = _schedule(alice, "t-patch", interval_s=60)["schedule_id"]
    path = f"{SCHEDULES}/{schedule_id}"
    paused = _patch(alice, path, {"enabled": False}).json()
    assert paused["enabled"] is False and paused["next_run_at"] is None
    assert not PeriodicTask.objects.get(name=f"awaken schedule {schedule_id}").enabled
    changed = _patch(alice, path, {"cron": "0 8 * * *", "timezone": "Asia/Tokyo", "enabled": True}).json()
    assert changed["cron"] == "0 8 * * *" and changed["interval_s"] is None and changed["enabled"] is True
    task = PeriodicTask.objects.get(name=f"awaken schedule {schedule_id}")
    assert task.enabled and task.interval is None and task.crontab is not None
    assert (task.crontab.hour, str(task.crontab.timezone)) == ("8", "Asia/Tokyo")
    assert _ms(changed["next_run_at"]) == next_cron_ms("0 8 * * *", "Asia/Tokyo", _ms(changed["updated_at"]))
    renamed = _patch(
        alice, path, {"messages": [{"role": "user", "content": "evening"}], "agent_id": None}
    ).json()
    assert renamed["messages"] == [{"role": "user", "content": "evening"}] and renamed["cron"] == "0 8 * * *"
    deleted = alice.delete(path)
    assert deleted.json() == {"status": "deleted", "schedule_id": schedule_id}
    assert not PeriodicTask.objects.filter(name=f"awaken schedule {schedule_id}").exists()
    assert _error(alice.get(path), 404) == ("schedule_not_found", None)


def test_another_users_thread_and_schedule_are_404_in_every_position(
    alice: APIClient, bob: APIClient
) -> None:
    _thread(alice, "t-a")
    schedule_id = _schedule(alice, "t-a", interval_s=60)["schedule_id"]
    path = f"{SCHEDULES}/{schedule_id}"
    assert _error(bob.get(f"{THREADS}/t-a/schedules"), 404)[0] == "thread_not_found"
    assert _error(post_json(bob, f"{THREADS}/t-a/schedules", {"messages": HELLO, "interval_s": 5}), 404)[
        0
    ] == ("thread_not_found")
    assert _error(bob.get(path), 404) == ("schedule_not_found", None)
    assert _error(_patch(bob, path, {"enabled": False}), 404) == ("schedule_not_found", None)
    assert _error(_patch(bob, path, {"cron": "not a cron"}), 404) == ("schedule_not_found", None)  # 404 first
    assert _error(bob.delete(path), 404) == ("schedule_not_found", None)
    assert Schedule.objects.get(pk=schedule_id).enabled  # untouched
    assert _error(alice.get(f"{SCHEDULES}/no-such-schedule"), 404)[0] == "schedule_not_found"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "* * *"}, "cron"),
        ({"cron": "0 0 31 2 *"}, "cron"),
        ({"cron": "0 9 * * *", "timezone": "Mars/Olympus_Mons"}, "timezone"),
        ({"interval_s": 0}, "interval_s"),
        ({"interval_s": "often"}, "interval_s"),
        ({"interval_s": 10, "cron": "* * * * *"}, "cron"),
        ({}, "cron"),
        ({"interval_s": 10, "timezone": "UTC"}, "timezone"),
        ({"interval_s": 10, "if_busy": "maybe"}, "if_busy"),
        ({"interval_s": 10, "metadata": [1]}, "metadata"),
        ({"interval_s": 10, "messages": []}, "messages"),
        ({"interval_s": 10, "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"interval_s": 10, "agent_id": ""}, "agent_id"),
    ],
)
def test_a_malformed_schedule_is_a_400_naming_the_field(alice: APIClient, body: Any, field: str) -> None:
    _thread(alice, "t-bad")
    resp = post_json(alice, f"{THREADS}/t-bad/schedules", {"messages": HELLO, **body})
    assert _error(resp, 400) == ("invalid", field)
    assert (
        not Schedule.objects.exists()
        and not PeriodicTask.objects.filter(task="mailbox.fire_schedule").exists()
    )


@pytest.mark.parametrize(
    ("body", "field"), [({"timezone": "UTC"}, "timezone"), ({"enabled": "sometimes"}, "enabled")]
)
def test_a_malformed_patch_is_a_400_naming_the_field(alice: APIClient, body: Any, field: str) -> None:
    _thread(alice, "t-bad")
    schedule_id = _schedule(alice, "t-bad", interval_s=60)["schedule_id"]
    assert _error(_patch(alice, f"{SCHEDULES}/{schedule_id}", body), 400) == ("invalid", field)


# --- firing -------------------------------------------------------------------------------------------


def test_each_slot_fires_once_with_the_schedules_metadata(alice: APIClient) -> None:
    _thread(alice, "t-fire")
    schedule_id = _schedule(alice, "t-fire", interval_s=60, metadata={"job": "digest"}, if_busy="enqueue")[
        "schedule_id"
    ]
    slot = Schedule.objects.get(pk=schedule_id).next_run_at
    assert schedules.fire(schedule_id, now=slot - 10_000).outcome is FireOutcome.NOT_DUE  # early
    fired = schedules.fire(schedule_id, now=slot + 5)
    assert fired.outcome is FireOutcome.SUBMITTED and fired.slot == slot
    assert (
        schedules.fire(schedule_id, now=slot + 900).outcome is FireOutcome.NOT_DUE
    )  # a repeat (beat restart)
    run = run_store.load_run(run_id=fired.run_id or "")
    assert run is not None and run.metadata["job"] == "digest" and run.metadata["schedule_id"] == schedule_id
    assert run.metadata["scheduled_at"] == datetime.fromtimestamp(slot / 1000, UTC).isoformat(
        timespec="milliseconds"
    ).replace("+00:00", "Z")
    dispatch = store.load_dispatch(fired.dispatch_id or "")
    assert dispatch is not None and dispatch.dedupe_key == f"schedule:{schedule_id}:{slot}"
    row = Schedule.objects.get(pk=schedule_id)
    assert (row.next_run_at, row.last_fired_at, row.firings, row.last_outcome) == (
        slot + 60_000,
        slot,
        1,
        "submitted",
    )
    second = schedules.fire(schedule_id, now=slot + 60_000)
    assert second.outcome is FireOutcome.SUBMITTED and second.slot == slot + 60_000
    late = schedules.fire(schedule_id, now=slot + 10 * 60_000 + 7)  # beat was down: one firing, no catch-up
    assert late.outcome is FireOutcome.SUBMITTED
    assert Schedule.objects.get(pk=schedule_id).next_run_at == slot + 11 * 60_000
    assert run_store.list_runs(thread_id="t-fire").total == 3


def test_if_busy_skip_spends_the_slot_and_enqueue_queues_behind(alice: APIClient) -> None:
    _thread(alice, "t-busy")
    mailbox.submit_background(
        RunRequest(thread_id="t-busy", messages=[ChatMessage.user("busy")], start_after_ms=10**9)
    )
    skip_id = _schedule(alice, "t-busy", interval_s=60)["schedule_id"]
    slot = Schedule.objects.get(pk=skip_id).next_run_at
    assert schedules.fire(skip_id, now=slot).outcome is FireOutcome.SKIPPED_BUSY
    row = Schedule.objects.get(pk=skip_id)
    assert (row.next_run_at, row.last_outcome, row.firings) == (slot + 60_000, "skipped_busy", 1)
    enqueue_id = _schedule(alice, "t-busy", interval_s=60, if_busy="enqueue")["schedule_id"]
    queued = schedules.fire(enqueue_id, now=Schedule.objects.get(pk=enqueue_id).next_run_at)
    assert queued.outcome is FireOutcome.SUBMITTED
    # behind the delayed one (which is not due): the new one was claimed at once
    assert [d.status for d in store.list_dispatches("t-busy")] == [
        DispatchStatus.QUEUED,
        DispatchStatus.CLAIMED,
    ]


def test_a_disabled_or_deleted_schedule_fires_nothing(alice: APIClient) -> None:
    _thread(alice, "t-off")
    schedule_id = _schedule(alice, "t-off", interval_s=60, enabled=False)["schedule_id"]
    assert schedules.fire(schedule_id, now=now_ms() + 10**7).outcome is FireOutcome.DISABLED
    schedules.delete(schedule_id)
    assert schedules.fire(schedule_id).outcome is FireOutcome.MISSING
    assert run_store.list_runs(thread_id="t-off").total == 0


def test_deleting_the_thread_deletes_its_schedules_and_their_beat_rows(alice: APIClient) -> None:
    _thread(alice, "t-gone")
    ids = [_schedule(alice, "t-gone", interval_s=60)["schedule_id"] for _ in range(2)]
    _thread(alice, "t-stays")
    kept = _schedule(alice, "t-stays", interval_s=60)["schedule_id"]
    deleted = alice.delete(f"{THREADS}/t-gone").json()
    assert deleted["deleted"]["schedules"] == 2
    assert list(Schedule.objects.values_list("schedule_id", flat=True)) == [kept]
    assert not PeriodicTask.objects.filter(name__in=[f"awaken schedule {i}" for i in ids]).exists()
    assert PeriodicTask.objects.filter(name=f"awaken schedule {kept}").exists()
    assert all(schedules.fire(i).outcome is FireOutcome.MISSING for i in ids)
    assert run_store.load_thread(thread_id="t-gone") is None  # and no firing brings it back


@pytest.mark.django_db(transaction=True)
def test_two_firings_of_one_slot_at_once_submit_one_run() -> None:
    """Beat restarted while its first firing is still in its transaction: the second waits for the
    thread's row lock, then finds the slot taken and rolls its submit back."""
    alice = user_client("alice")
    _thread(alice, "t-twice")
    schedule_id = _schedule(alice, "t-twice", interval_s=60, if_busy="enqueue")["schedule_id"]
    slot = Schedule.objects.get(pk=schedule_id).next_run_at
    with held_transaction(lambda: schedules.fire(schedule_id, now=slot)) as first:
        second = in_background(lambda: schedules.fire(schedule_id, now=slot + 10))
        wait_blocked(second.pid, what="the second firing waits for the first's locks")
        fired = first.release()
        raced = second.wait()
    assert fired.outcome is FireOutcome.SUBMITTED and raced.outcome is FireOutcome.RACED
    assert run_store.list_runs(thread_id="t-twice").total == 1
    assert Schedule.objects.get(pk=schedule_id).firings == 1


# --- beat itself ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_beat_fires_the_schedule_and_a_restart_before_its_sync_fires_no_slot_twice(
    mailbox_worker: Any,
) -> None:
    alice = user_client("alice")
    _thread(alice, "t-beat")
    schedule_id = _schedule(alice, "t-beat", interval_s=10, if_busy="enqueue")["schedule_id"]
    outcomes: list[str] = []

    def record(sender: Any = None, retval: Any = None, **_: Any) -> None:
        if getattr(sender, "name", "") == "mailbox.fire_schedule":
            outcomes.append(str(retval))

    def run_beat(beat: DatabaseScheduler, until: int) -> None:
        """Beat's loop (each tick sends what is due at the head of its heap), until `until` firings ran."""
        deadline = time.monotonic() + 30
        while len(outcomes) < until and time.monotonic() < deadline:
            time.sleep(max(min(beat.tick(), 0.1), 0))
        wait_until(lambda: len(outcomes) >= until, timeout=10, what=f"{until} firing(s)")

    task_postrun.connect(record, weak=False)
    try:
        task = PeriodicTask.objects.get(name=f"awaken schedule {schedule_id}")
        run_beat(DatabaseScheduler(app=celery_app), 1)  # the first slot, 10 s after the schedule's creation
        # beat died before it saved its last_run_at (it syncs every few minutes): a new beat reads the
        # row as it was before the firing, so the entry is due again at once
        PeriodicTask.objects.filter(pk=task.pk).update(last_run_at=task.last_run_at)
        run_beat(DatabaseScheduler(app=celery_app), 2)
    finally:
        task_postrun.disconnect(record)
    assert outcomes[:2] == ["submitted", "not_due"]
    assert Schedule.objects.get(pk=schedule_id).firings == 1
    assert run_store.list_runs(thread_id="t-beat").total == 1
