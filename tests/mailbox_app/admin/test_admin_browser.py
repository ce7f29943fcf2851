"""End to end in headless Chromium (Debian's `chromium`): log into the admin through its login form,
follow the index's link to the mailbox overview, ask why a thread is blocked, read the answer.

Chromium is driven over the DevTools protocol on a pipe (tests/support/chromium.py); without it this
test is skipped, saying why.
Set AWAKEN_SCREENSHOT_DIR to keep a screenshot of the final page.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from django.urls import reverse

from mailbox_app import store
from mailbox_app.contract.ids import now_ms
from tests.support.chromium import Chromium, headless_chromium, requires_chromium
from tests.support.dispatches import make_dispatch
from tests.support.waiting import wait_until

HOLDER = "browser-worker:7"
THREAD = "t-browser-blocked"

pytestmark = [
    requires_chromium,
    pytest.mark.django_db(transaction=True),  # the live server's thread must see committed rows
]


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Chromium]:
    with headless_chromium(tmp_path / "chromium-profile") as browser:
        yield browser


def test_operator_logs_in_and_sees_why_a_thread_is_blocked(
    chromium: Chromium, live_server: Any, django_user_model: Any, settings: Any, tmp_path: Path
) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    django_user_model.objects.create_user("ops", password="ops-password", is_staff=True, is_superuser=True)
    now = now_ms()
    store.enqueue(make_dispatch("d-browser-held", THREAD, created_at=now - 2_000, available_at=now - 2_000))
    assert store.claim(THREAD, HOLDER, 120_000, now)
    store.enqueue(make_dispatch("d-browser-waiting", THREAD, created_at=now - 1_000, available_at=now))

    index = reverse("admin:index")
    overview = reverse("admin:mailbox_app_dispatch_overview")
    chromium.navigate(f"{live_server.url}{reverse('admin:login')}?{urlencode({'next': index})}")
    chromium.evaluate(
        "document.getElementById('id_username').value = 'ops';"
        "document.getElementById('id_password').value = 'ops-password';"
        "document.querySelector('#login-form input[type=submit]').click();"
    )
    chromium.wait_for_page(lambda path: path == index, what="the admin index after logging in")

    # the index links the overview
    chromium.evaluate(f"document.querySelector('#mailbox-overview-module a[href=\"{overview}\"]').click()")
    chromium.wait_for_page(lambda path: path == overview, what="the mailbox overview")
    text = chromium.text()
    assert "Threads currently claimed (1)" in text
    assert THREAD in text and HOLDER in text

    # ask why the thread is blocked through the form
    chromium.evaluate(
        f"document.getElementById('id_thread_id').value = {json.dumps(THREAD)};"
        "document.querySelector('#thread-lookup input[type=submit]').click();"
    )
    wait_until(
        lambda: chromium.evaluate("!!document.getElementById('block-report')"), what="the block report"
    )
    report = str(chromium.evaluate("document.getElementById('block-report').innerText"))
    assert f"Thread {THREAD}" in report
    assert "State: blocked" in report
    assert f"claimed by {HOLDER}" in report
    assert "queued behind claimed dispatch d-browser-held" in report

    shot = tmp_path / "mailbox_overview.png"
    chromium.screenshot(shot)
    assert shot.stat().st_size > 10_000
    keep = os.environ.get("AWAKEN_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / shot.name)
