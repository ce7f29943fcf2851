"""End to end in headless Chromium (Debian's `chromium`): log into the admin through its login form,
follow the index's link to the mailbox overview, ask why a thread is blocked, read the answer; then, at
1280 px, an hour of history drawn as charts, the why-blocked verdicts that used to mislead (a decision
awaited, a thread that does not exist, a delayed start), and a dispatch list whose id cells stay on one
line (measured in the page).

Chromium is driven over the DevTools protocol on a pipe (tests/support/chromium.py); without it these
tests are skipped, saying why.
Set AWAKEN_SCREENSHOT_DIR to keep the screenshots (PNG) of the pages.
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
from mailbox_app.admin.links import overview_url
from mailbox_app.contract.ids import now_ms, uuid7
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchStatus
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.storage import RunRecord, TerminationReason
from mailbox_app.contract.suspension import RunWaitingState, WaitingTicket
from mailbox_app.models import Dispatch, WebhookDelivery, WebhookDeliveryStatus
from runs_app import store as run_store
from tests.mailbox_app.admin.history import an_hour
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

    overview = reverse("admin:mailbox_app_dispatch_overview")
    log_in(chromium, live_server)

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

    keep_screenshot(chromium, tmp_path / "mailbox_overview.png")


def log_in(chromium: Chromium, live_server: Any) -> None:
    index = reverse("admin:index")
    chromium.navigate(f"{live_server.url}{reverse('admin:login')}?{urlencode({'next': index})}")
    chromium.evaluate(
        "document.getElementById('id_username').value = 'ops';"
        "document.getElementById('id_password').value = 'ops-password';"
        "document.querySelector('#login-form input[type=submit]').click();"
    )
    chromium.wait_for_page(lambda path: path == index, what="the admin index after logging in")


def keep_screenshot(chromium: Chromium, shot: Path) -> None:
    chromium.screenshot(shot)
    assert shot.stat().st_size > 10_000
    keep = os.environ.get("AWAKEN_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / shot.name)


# --- the overview's pictures and verdicts, and the dispatch list, at 1280 px -----------------------

WIDTH = 1280
DECIDING, DELAYED, MISSING = "t-decide", "t-delayed", "t-nobody-here"
CHARTS = {
    "chart-depth", "chart-open", "chart-throughput", "chart-latency", "chart-failures", "chart-webhooks",
}  # fmt: skip

# Per chart: its SVG's <title>, each data path (series, `d`), and the hover titles of its columns.
READ_CHARTS = """JSON.stringify([...document.querySelectorAll('figure.mb-chart')].map(f => ({
  id: f.id,
  title: (f.querySelector('svg > title') || {}).textContent || '',
  paths: [...f.querySelectorAll('path[data-series]')].map(p => ({series: p.dataset.series,
                                                                  d: p.getAttribute('d') || ''})),
  hovers: [...f.querySelectorAll('rect.mb-hit > title')].map(t => t.textContent),
})))"""

# For every cell of the list that holds an id: its content's height in lines of its own font.
MEASURE_ID_CELLS = """JSON.stringify([...document.querySelectorAll('#result_list tbody td')]
  .filter(cell => cell.querySelector('.mb-id'))
  .map(cell => {
    const probe = document.createElement('span');
    probe.textContent = 'x';
    cell.appendChild(probe);
    const line = probe.getBoundingClientRect().height;
    probe.remove();
    const range = document.createRange();
    range.selectNodeContents(cell);
    return {field: cell.className, text: cell.innerText, lines: range.getBoundingClientRect().height / line};
  }))"""


def _seed_verdicts(now: int) -> tuple[str, str]:
    """A run waiting for a decision, a delayed start, a claimed thread and a retrying one (named by
    UUIDs, claimed by a worker with a long pod name: the widest rows); the delayed dispatch's id and the
    claimed thread's."""
    waiting = RunWaitingState(
        reason="tool_permission",
        ticket_ids=["call-7"],
        tickets=[WaitingTicket(ticket_id="call-7", tool_call_id="call-7", tool_name="delete_file")],
    )
    run = RunRecord(
        run_id="r-decide", thread_id=DECIDING, status=RunStatus.WAITING, waiting=waiting,
        created_at=now, updated_at=now,
    )  # fmt: skip
    run_store.checkpoint(thread_id=DECIDING, messages=[ChatMessage.user("delete it?")], run=run, now=now)
    talk = uuid7()  # a conversation named by a UUID, its run done, for the runs, threads and messages lists
    done = RunRecord(
        run_id=uuid7(), thread_id=talk, status=RunStatus.DONE, final_output="fine",
        termination_reason=TerminationReason(type="natural_end"), created_at=now, updated_at=now,
    )  # fmt: skip
    said = [ChatMessage.user("a question that goes on " * 12), ChatMessage.assistant("an answer")]
    run_store.checkpoint(thread_id=talk, messages=said, run=done, now=now)
    delayed = uuid7()
    store.enqueue(make_dispatch(delayed, DELAYED, uuid7(), created_at=now, available_at=now + 600_000))
    busy, retrying = uuid7(), uuid7()
    for thread_id in (busy, retrying):
        store.enqueue(
            make_dispatch(uuid7(), thread_id, uuid7(), created_at=now - 5_000, available_at=now - 5_000)
        )
    assert store.claim(busy, "awaken-worker-7d9f8c6b5-x2x9z:1234", 120_000, now)
    [failing] = store.claim(retrying, "awaken-worker-7d9f8c6b5-x2x9z:1234", 120_000, now)
    store.nack(
        failing.dispatch_id, failing.claim_token or "", now + 90_000, "upstream 503: " + "x" * 200, now
    )
    store.enqueue(make_dispatch(uuid7(), busy, uuid7(), created_at=now, available_at=now))  # behind the claim
    return delayed, busy


def _seed_failed_webhook(now: int) -> None:
    """An outbox row that gave up two minutes ago (the outbox's own columns; nothing is sent)."""
    WebhookDelivery.objects.create(
        delivery_id=uuid7(), run_id=uuid7(), thread_id=DECIDING, event="run.finished",
        url="https://hooks.example/x", payload={}, status=WebhookDeliveryStatus.FAILED, attempts=8,
        next_attempt_at=now - 120_000, created_at=now - 600_000, updated_at=now - 120_000,
        last_error="HTTP 500",
    )  # fmt: skip


def _verdict(chromium: Chromium, live_server: Any, thread_id: str) -> tuple[str, str]:
    """The block report's verdict and its CSS class; the page must fit the window's width."""
    chromium.navigate(f"{live_server.url}{overview_url(thread_id)}")
    _assert_fits(chromium)
    verdict = "document.querySelector('#block-report .verdict')"
    return str(chromium.evaluate(f"{verdict}.innerText")), str(chromium.evaluate(f"{verdict}.className"))


def _assert_fits(chromium: Chromium) -> None:
    wide = chromium.evaluate("document.documentElement.scrollWidth")
    keep = os.environ.get("AWAKEN_SCREENSHOT_DIR")
    if wide > WIDTH and keep:  # the page as it overflowed, to look at
        chromium.screenshot(Path(keep) / "overflowing.png")
    assert wide <= WIDTH, f"{chromium.evaluate('location.href')} is {wide} px wide at {WIDTH} px"


def _assert_charts_drawn(charts: list[dict[str, Any]]) -> None:
    by_id = {c["id"]: c for c in charts}
    assert set(by_id) == CHARTS
    for chart in charts:
        assert chart["title"], chart["id"]
        assert chart["paths"] and all(p["d"] for p in chart["paths"]), chart
    paths = {(c["id"], p["series"]): p["d"] for c in charts for p in c["paths"]}
    assert paths[("chart-open", "open")].count("L") >= 50  # a line over the hour's minutes
    assert paths[("chart-throughput", "acked")].count("Z") >= 50  # a bar per minute with completions
    assert paths[("chart-throughput", "created")].count("L") >= 50
    latency = paths[("chart-latency", "p95")]  # a gap where no dispatch ended in a minute
    assert latency.count("M") + latency.count("L") >= 50
    assert paths[("chart-failures", "retries")] and paths[("chart-failures", "dead letters")]
    assert paths[("chart-webhooks", "failed")].count("Z") == 1  # the one delivery that gave up
    assert {p["series"] for p in by_id["chart-depth"]["paths"]} == {"ready", "delayed", "backoff", "claimed"}
    hovers = by_id["chart-throughput"]["hovers"]
    assert len(hovers) == 60 and any("acked 2" in h for h in hovers), hovers[:3]


def test_the_overview_draws_the_hour_and_names_what_each_thread_waits_for_at_1280_px(
    chromium: Chromium, live_server: Any, django_user_model: Any, settings: Any, tmp_path: Path
) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    django_user_model.objects.create_user("ops", password="ops-password", is_staff=True, is_superuser=True)
    now = now_ms()
    an_hour(now)
    delayed, busy = _seed_verdicts(now)
    _seed_failed_webhook(now)
    chromium.call(
        "Emulation.setDeviceMetricsOverride",
        {"width": WIDTH, "height": 900, "deviceScaleFactor": 1, "mobile": False},
    )
    log_in(chromium, live_server)

    chromium.navigate(f"{live_server.url}{overview_url()}")
    _assert_fits(chromium)
    _assert_charts_drawn(json.loads(chromium.evaluate(READ_CHARTS)))
    keep_screenshot(chromium, tmp_path / "mailbox_overview_charts.png")

    text, css = _verdict(chromium, live_server, DECIDING)
    assert text == "State: waiting for a decision (tool call call-7 (delete_file), run r-decide)"
    assert "blocked" not in css
    text, css = _verdict(chromium, live_server, MISSING)
    assert text == "State: no such thread"
    text, css = _verdict(chromium, live_server, DELAYED)
    assert text.startswith("State: delayed until ") and "blocked" not in css
    assert "delayed · in 9 min" in str(chromium.evaluate("document.getElementById('block-queued').innerText"))
    text, css = _verdict(chromium, live_server, busy)
    assert text == "State: blocked" and "blocked" in css

    listed = _assert_list_readable(chromium, live_server, "admin:mailbox_app_dispatch_changelist", ids=100)
    assert "delayed · 9 min" in listed or "delayed · 10 min" in listed  # the delayed start, not "backoff"
    assert "backoff · 1 min" in listed and "lease 1 min" in listed and delayed[:8] in listed
    keep_screenshot(chromium, tmp_path / "mailbox_dispatch_list.png")
    _copy_an_id(chromium, live_server, delayed)
    _cancel_through_the_confirmation_page(chromium, delayed, tmp_path)
    for name in OTHER_LISTS:
        _assert_list_readable(chromium, live_server, name, ids=1)


def _copy_an_id(chromium: Chromium, live_server: Any, dispatch_id: str) -> None:
    """The copy button beside a shortened id puts the whole id on the clipboard: a real click (a user
    gesture, which the clipboard requires), then the clipboard read back."""
    chromium.call(
        "Browser.grantPermissions",
        {"origin": live_server.url, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]},
    )
    button = f"document.querySelector('button.mb-copy[data-copy=\"{dispatch_id}\"]')"
    assert chromium.evaluate(f"{button}.getAttribute('aria-label')") == "copy the whole id"
    box = chromium.evaluate(
        f"(r => [r.x + r.width / 2, r.y + r.height / 2])({button}.getBoundingClientRect())"
    )
    for kind in ("mousePressed", "mouseReleased"):
        chromium.call(
            "Input.dispatchMouseEvent",
            {"type": kind, "x": box[0], "y": box[1], "button": "left", "clickCount": 1},
        )
    wait_until(lambda: chromium.evaluate(f"{button}.classList.contains('mb-copied')"), what="copied")
    pasted = chromium.call(
        "Runtime.evaluate",
        {"expression": "navigator.clipboard.readText()", "awaitPromise": True, "returnByValue": True},
    )
    assert pasted["result"]["value"] == dispatch_id


def _cancel_through_the_confirmation_page(chromium: Chromium, delayed: str, tmp_path: Path) -> None:
    """Tick the delayed dispatch and an acked one, choose the cancel action: the confirmation page lists
    both (one to cancel, one left as it is) and nothing has changed; confirming cancels the queued one."""
    newest_acked = Dispatch.objects.filter(status=DispatchStatus.ACKED).order_by("-created_at")  # on page 1
    acked = str(newest_acked.values_list("pk", flat=True).first())
    chromium.evaluate(
        f"for (const id of {json.dumps([delayed, acked])}) "
        "{ document.querySelector(`input.action-select[value='${id}']`).click(); }"
        "document.querySelector('select[name=action]').value = 'cancel_queued';"
        "document.querySelector('button[name=index], #changelist-form button[type=submit]').click();"
    )
    wait_until(lambda: chromium.evaluate("!!document.getElementById('action-plan')"), what="the confirmation")
    _assert_fits(chromium)
    plan = str(chromium.evaluate("document.getElementById('action-plan').innerText"))
    assert "queued → cancelled" in plan and "left as it is" in plan
    assert Dispatch.objects.get(pk=delayed).status == DispatchStatus.QUEUED  # nothing moved yet
    keep_screenshot(chromium, tmp_path / "mailbox_confirm_cancel.png")
    chromium.evaluate("document.getElementById('confirm-action').click()")
    wait_until(
        lambda: "Cancelled 1 queued dispatch" in str(chromium.evaluate("document.body?.innerText")),
        what="the action's result on the list",
    )
    assert Dispatch.objects.get(pk=delayed).status == DispatchStatus.CANCELLED
    assert Dispatch.objects.get(pk=acked).status == DispatchStatus.ACKED


OTHER_LISTS = (
    "admin:runs_app_run_changelist",
    "admin:runs_app_thread_changelist",
    "admin:runs_app_message_changelist",
    "admin:mailbox_app_webhookdelivery_changelist",
    "admin:mailbox_app_threadepoch_changelist",
)


def _assert_list_readable(chromium: Chromium, live_server: Any, name: str, *, ids: int) -> str:
    """A change list at WIDTH px: no cell holding an id takes more than one line, the table is no wider
    than the window (nothing hides in a horizontal scroll); the page's text."""
    chromium.navigate(f"{live_server.url}{reverse(name)}")
    _assert_fits(chromium)
    cells = json.loads(chromium.evaluate(MEASURE_ID_CELLS))
    assert len(cells) >= ids, (name, len(cells))
    wrapped = [c for c in cells if c["lines"] >= 1.5]
    assert wrapped == [], (name, wrapped[:5])
    right = chromium.evaluate("document.getElementById('result_list').getBoundingClientRect().right")
    widths = chromium.evaluate(
        "JSON.stringify([...document.querySelectorAll('#result_list thead th')]"
        ".map(th => [th.className, Math.round(th.getBoundingClientRect().width)]))"
    )
    assert right <= WIDTH, f"{name}: the table is {right} px wide at {WIDTH} px: {widths}"
    return chromium.text()
