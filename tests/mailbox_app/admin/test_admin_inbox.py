"""The admin's pauses and schedules (docs/inbox.md): adding a pause holds the scope (and says when it was
paused already), the confirmed resume lifts it and rings the thread, the why-blocked report names the
pause and an open debounce window, and the schedule list shows each schedule with its beat row."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from mailbox_app import store
from mailbox_app.contract.inbox import InboxPolicy, PauseScope
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import RunRequest
from mailbox_app.models import Pause
from mailbox_app.services import inbox, pauses, schedules, selectors
from mailbox_app.services.schedules import Timing
from runs_app import store as run_store
from tests.support.api import new_user
from tests.support.dispatches import make_dispatch

pytestmark = pytest.mark.django_db
PAUSES = "admin:mailbox_app_pause_changelist"


@pytest.fixture
def operator(django_user_model: Any, settings: Any) -> Client:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    user = django_user_model.objects.create_user("ops", password="pw", is_staff=True)
    codenames = ["view_dispatch", "change_dispatch", "view_pause", "add_pause", "view_schedule"]
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


def test_adding_a_pause_holds_the_thread_and_a_confirmed_resume_lifts_it(operator: Client) -> None:
    store.enqueue(make_dispatch("d1", "t-1", available_at=0, created_at=0))
    add = reverse("admin:mailbox_app_pause_add")
    resp = operator.post(add, {"scope": "thread", "key": "t-1", "reason": "incident 7"})
    assert resp.status_code == 302, resp.content
    pause = pauses.pause_of(PauseScope.THREAD, "t-1")
    assert pause is not None and pause.paused_by == "admin:ops" and pause.by_operator
    assert store.claim("t-1", "w", 30_000, 10) == []
    report = selectors.thread_block_report("t-1", now=10)
    assert report.state is selectors.ThreadState.PAUSED
    assert report.verdict.startswith("paused by admin:ops since ") and "incident 7" in report.verdict
    again = operator.post(add, {"scope": "thread", "key": "t-1"}, follow=True)
    assert "was paused already, by admin:ops" in again.content.decode()
    assert operator.post(add, {"scope": "all", "key": "x"}).status_code == 200  # the form's error
    assert operator.post(add, {"scope": "agent", "key": ""}).status_code == 200
    assert Pause.objects.count() == 1
    listing = operator.get(reverse(PAUSES)).content.decode()
    assert "incident 7" in listing and "admin:ops" in listing
    row = Pause.objects.get()
    ask = operator.post(reverse(PAUSES), {"action": "resume_pauses", "_selected_action": [row.pk]})
    assert ask.status_code == 200 and "Resume paused scopes" in ask.content.decode()
    assert pauses.pause_of(PauseScope.THREAD, "t-1") is not None  # nothing moved before "yes"
    done = operator.post(
        reverse(PAUSES), {"action": "resume_pauses", "_selected_action": [row.pk], "post": "yes"}, follow=True
    )
    assert "Resumed 1 pause; rang 1 thread" in done.content.decode()
    assert pauses.pause_of(PauseScope.THREAD, "t-1") is None
    assert [d.dispatch_id for d in store.claim("t-1", "w", 30_000, 10)] == ["d1"]


def test_the_why_blocked_report_names_an_open_debounce_window() -> None:
    inbox.deliver(
        RunRequest(thread_id="t-w", messages=[ChatMessage.user("hi")]), InboxPolicy(debounce_ms=60_000)
    )
    inbox.deliver(
        RunRequest(thread_id="t-w", messages=[ChatMessage.user("more")]), InboxPolicy(debounce_ms=60_000)
    )
    report = selectors.thread_block_report("t-w")
    assert any(
        "coalescing 2 message(s)" in reason and "inbox debounce" in reason for reason in report.reasons
    )


def test_the_schedule_list_shows_each_schedule_and_links_its_beat_row(operator: Client) -> None:
    owner = new_user("alice")
    run_store.ensure_thread(thread_id="t-s", owner_id=owner.pk)
    created = schedules.create(
        thread_id="t-s",
        owner_id=owner.pk,
        timing=Timing(cron="0 9 * * *", timezone="Europe/Paris"),
        messages=[],
    )
    page = operator.get(reverse("admin:mailbox_app_schedule_changelist")).content.decode()
    assert "cron 0 9 * * * (Europe/Paris)" in page and "periodic task" in page
    detail = operator.get(reverse("admin:mailbox_app_schedule_change", args=[created.schedule_id]))
    assert detail.status_code == 200
