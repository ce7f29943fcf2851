"""The admin tells what happened (issue 21 item 7): attempts count the attempts made, the why-blocked
verdict names a decision awaited, a thread that does not exist and a deliberate delayed start, and every
state-moving action lists what it will change before it changes anything.

Attempts and verdicts are provoked twice: through the store's own statements with a controlled clock,
and end to end on a real Celery worker with agents that fail and suspend."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from mailbox_app import store
from mailbox_app.agents.base import InferenceFailed, ResolveFailed, RunContext, RunResult
from mailbox_app.contract.ids import now_ms
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchRecord, DispatchStatus, RunDispatchResult
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import RunRequest
from mailbox_app.contract.suspension import ToolCallResume
from mailbox_app.models import Dispatch, WebhookDelivery, WebhookDeliveryStatus
from mailbox_app.services import mailbox
from mailbox_app.services.operator import requeue_dead_letters
from mailbox_app.services.selectors import ThreadState, attempts_made, thread_block_report
from runs_app import store as run_store
from tests.support.agents import TEST_AGENTS
from tests.support.dispatches import make_dispatch
from tests.support.waiting import wait_until

DISPATCHES = "admin:mailbox_app_dispatch_changelist"
WEBHOOKS = "admin:mailbox_app_webhookdelivery_changelist"
OVERVIEW = "admin:mailbox_app_dispatch_overview"


@pytest.fixture
def operator_client(django_user_model: Any, settings: Any) -> Client:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    user = django_user_model.objects.create_user("truth", password="pw", is_staff=True)
    codenames = ["view_dispatch", "change_dispatch", "view_webhookdelivery"]
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


# --- attempts, through the store's statements ----------------------------------------------------


def _queued(dispatch_id: str, *, max_attempts: int = 5, at: int = 1_000) -> None:
    store.enqueue(
        make_dispatch(
            dispatch_id, f"t-{dispatch_id}", created_at=at, available_at=at, max_attempts=max_attempts
        )
    )


def _claimed(dispatch_id: str, now: int, *, start: bool = True, lease_ms: int = 60_000) -> DispatchRecord:
    [claimed] = store.claim(f"t-{dispatch_id}", "w:1", lease_ms, now)
    if start:
        assert store.try_start(dispatch_id, claimed.claim_token or "", f"i-{now}", "w:1", now) is not None
    return claimed


def _settle(claimed: DispatchRecord, outcome: store.Settle, now: int) -> DispatchRecord:
    result = RunDispatchResult(run_id=claimed.run_id, dispatch_instance_id=f"i-{now}", status="done")
    settled = store.try_settle(
        claimed.dispatch_id, claimed.claim_token or "", outcome, result, now, error="x"
    )
    assert settled is not None
    return settled


def _nacked(dispatch_id: str, times: int, *, start_at: int = 2_000) -> int:
    clock = start_at
    for _ in range(times):
        claimed = _claimed(dispatch_id, clock)
        store.nack(dispatch_id, claimed.claim_token or "", clock, "transient", clock)
        clock += 1_000
    return clock


def _attempts(dispatch_id: str) -> tuple[str, str]:
    counted = attempts_made(Dispatch.objects.get(pk=dispatch_id))
    return counted.text, counted.why


@pytest.mark.django_db
def test_a_permanent_failure_at_the_first_attempt_shows_one_attempt_not_zero() -> None:
    _queued("d-perm")
    settled = _settle(_claimed("d-perm", 2_000), store.Settle.DEAD_LETTER, 3_000)
    assert settled.status is DispatchStatus.DEAD_LETTER and settled.attempt_count == 0  # what the row says
    text, why = _attempts("d-perm")
    assert text == "1 / 5" and "failed permanently" in why


@pytest.mark.django_db
def test_attempts_for_every_way_a_dispatch_ends() -> None:
    _queued("d-nacked")  # five transient failures: dead-lettered by the fifth nack
    _nacked("d-nacked", 5)
    _queued("d-lease", max_attempts=3)  # three expired leases: dead-lettered by the sweep
    for clock in (2_000, 100_000, 200_000):  # each attempt started (a 30 s lease), then its worker died
        _claimed("d-lease", clock)
        assert len(store.reclaim_expired_leases(clock + 60_000)) == 1
    _queued("d-acked")  # two failures, then success
    _settle(_claimed("d-acked", _nacked("d-acked", 2)), store.Settle.ACK, 9_000)
    _queued("d-running")
    _claimed("d-running", 2_000)
    _queued("d-retrying")
    _nacked("d-retrying", 1)
    assert Dispatch.objects.get(pk="d-nacked").status == DispatchStatus.DEAD_LETTER
    assert Dispatch.objects.get(pk="d-lease").status == DispatchStatus.DEAD_LETTER
    assert _attempts("d-nacked")[0] == "5 / 5" and "max_attempts reached" in _attempts("d-nacked")[1]
    assert _attempts("d-lease")[0] == "3 / 3"
    assert _attempts("d-acked")[0] == "3 / 5" and "succeeded" in _attempts("d-acked")[1]
    assert _attempts("d-running")[0] == "1 / 5" and "claimed now" in _attempts("d-running")[1]
    assert _attempts("d-retrying")[0] == "1 / 5"
    # an operator's requeue starts the count again, and the tooltip says so
    assert requeue_dead_letters(dispatch_ids=["d-nacked"]).requeued == ["d-nacked"]
    text, why = _attempts("d-nacked")
    assert text == "0 / 5" and "starts the count again at 0" in why


@pytest.mark.django_db
def test_a_claim_superseded_while_it_ran_counts_its_attempt() -> None:
    _queued("d-ran")
    claimed = _claimed("d-ran", 2_000)
    store.interrupt_detailed("t-d-ran", 3_000)
    lost = store.explain_lost("d-ran", claimed.claim_token or "", 3_000, "interrupted")  # its next write
    assert lost.current is not None and lost.current.status is DispatchStatus.SUPERSEDED
    assert _attempts("d-ran")[0] == "1 / 5"
    _queued("d-waited")
    store.interrupt_detailed("t-d-waited", 3_000)
    assert store.claim("t-d-waited", "w:1", 60_000, 4_000) == []  # the claim supersedes the stale row
    assert Dispatch.objects.get(pk="d-waited").status == DispatchStatus.SUPERSEDED
    assert _attempts("d-waited")[0] == "0 / 5"


@pytest.mark.django_db
def test_the_list_and_the_form_show_the_attempts_made_with_how_they_were_counted(
    operator_client: Client,
) -> None:
    _queued("d-perm")
    _settle(_claimed("d-perm", 2_000), store.Settle.DEAD_LETTER, 3_000)
    page = operator_client.get(reverse(DISPATCHES)).content.decode()
    cell = re.search(r'<td class="field-attempts">(.*?)</td>', page)
    assert cell is not None and ">1 / 5<" in cell.group(1) and "failed permanently" in cell.group(1)
    form = operator_client.get(reverse("admin:mailbox_app_dispatch_change", args=["d-perm"])).content.decode()
    assert "1 / 5: 0 ended without success, then the final one failed permanently" in form


# --- attempts and verdicts on a real worker ----------------------------------------------------------


class AlwaysFails:
    """Fails every attempt: transiently (retried until max attempts) or permanently (at once)."""

    def run(self, request: RunRequest, context: RunContext) -> RunResult:
        text = request.messages[-1].text if request.messages else ""
        if text == "permanent":
            raise ResolveFailed("backend gone")
        raise InferenceFailed("model overloaded")


@pytest.fixture
def agents(mailbox_worker: Any, engine_settings: Any) -> Any:
    engine_settings.AWAKEN_AGENTS = {
        **TEST_AGENTS,
        "fails": f"{__name__}.AlwaysFails",
        "echo": "mailbox_app.agents.echo.EchoAgent",
    }
    return engine_settings


def _submit(thread_id: str, text: str, agent: str, **extra: Any) -> mailbox.SubmitResult:
    request = RunRequest(thread_id=thread_id, messages=[ChatMessage.user(text)], agent_id=agent, **extra)
    return mailbox.submit_background(request)


def _ended(dispatch_id: str) -> Dispatch | None:
    row = Dispatch.objects.filter(pk=dispatch_id).first()
    return (
        row if row is not None and row.status not in (DispatchStatus.QUEUED, DispatchStatus.CLAIMED) else None
    )


def test_dead_letters_of_a_real_worker_show_the_attempts_they_made(
    agents: Any, operator_client: Client
) -> None:
    permanent = _submit("t-w-perm", "permanent", "fails")
    transient = _submit("t-w-trans", "transient", "fails")
    for submitted in (permanent, transient):
        row = wait_until(lambda s=submitted: _ended(s.dispatch_id), timeout=60, what="dead letter")
        assert row.status == DispatchStatus.DEAD_LETTER
    assert _attempts(permanent.dispatch_id)[0] == "1 / 5"  # was "0 / 5": the store never counted it
    assert _attempts(transient.dispatch_id)[0] == "5 / 5"
    page = operator_client.get(reverse(DISPATCHES), {"status__exact": "dead_letter"}).content.decode()
    assert page.count(">1 / 5<") == 1 and page.count(">5 / 5<") == 1


def test_a_thread_waiting_for_a_decision_says_so_and_is_idle_once_answered(
    agents: Any, operator_client: Client
) -> None:
    submitted = _submit("t-w-ask", "ask may I delete it?", "echo")
    call_id = f"call-{submitted.dispatch_id}"

    def waiting() -> Any:
        report = thread_block_report("t-w-ask")
        return report if report.state is ThreadState.WAITING_DECISION else None

    report = wait_until(waiting, timeout=30, what="the run waiting for a decision")
    assert not report.is_blocked
    expected = f"waiting for a decision (tool call {call_id} (approve), run {submitted.run_id})"
    assert report.verdict == expected
    page = operator_client.get(reverse(OVERVIEW), {"thread_id": "t-w-ask"}).content.decode()
    assert f"State: {expected}" in page and "State: idle" not in page
    assert mailbox.send_decision(
        mailbox.ThreadTarget("t-w-ask"),
        call_id,
        ToolCallResume(decision_id="dec-1", action="resume", result={"ok": True}),
    )
    wait_until(
        lambda: (r := run_store.load_run(run_id=submitted.run_id)) and r.status is RunStatus.DONE,
        timeout=30,
        what="the resumed run done",
    )
    assert thread_block_report("t-w-ask").state is ThreadState.IDLE
    assert "State: idle" in operator_client.get(reverse(OVERVIEW), {"thread_id": "t-w-ask"}).content.decode()


def test_a_delayed_start_is_delayed_and_a_retry_is_backoff(agents: Any, operator_client: Client) -> None:
    later = _submit("t-w-later", "hi", "echo", start_after_ms=120_000)
    report = thread_block_report("t-w-later")
    assert report.state is ThreadState.DELAYED and not report.is_blocked
    assert report.verdict.startswith("delayed until ") and "backoff" not in report.verdict
    page = operator_client.get(reverse(OVERVIEW), {"thread_id": "t-w-later"}).content.decode()
    assert 'class="verdict" data-state="delayed"' in page  # not red
    listed = operator_client.get(reverse(DISPATCHES), {"thread_id": "t-w-later"}).content.decode()
    assert 'class="mb-delayed"' in listed and "delayed · 1 min" in listed and "backoff" not in listed
    # the same wait after a failed attempt is a backoff
    now = now_ms()
    store.enqueue(make_dispatch("d-retry", "t-w-retry", created_at=now, available_at=now))
    [claimed] = store.claim("t-w-retry", "w:2", 60_000, now)
    store.nack("d-retry", claimed.claim_token or "", now + 120_000, "transient", now)
    retry = thread_block_report("t-w-retry")
    assert retry.state is ThreadState.BACKOFF and retry.is_blocked
    assert retry.verdict.startswith("backoff: retry at ")
    assert Dispatch.objects.get(pk=later.dispatch_id).status == DispatchStatus.QUEUED  # still waiting


@pytest.mark.django_db
def test_no_such_thread_versus_an_idle_thread(operator_client: Client) -> None:
    run_store.append_messages(thread_id="t-real", messages=[ChatMessage.user("hello")], now=now_ms())
    assert thread_block_report("t-real").state is ThreadState.IDLE
    assert thread_block_report("t-never").state is ThreadState.NO_SUCH_THREAD
    for thread_id, verdict in (("t-real", "State: idle"), ("t-never", "State: no such thread")):
        page = operator_client.get(reverse(OVERVIEW), {"thread_id": thread_id}).content.decode()
        assert verdict in page
    # malformed input is the form's error, never a 500
    response = operator_client.get(reverse(OVERVIEW), {"thread_id": "x" * 129})
    assert response.status_code == 200 and "at most 128 characters" in response.content.decode()


# --- confirmations -------------------------------------------------------------------------------


def _hidden_inputs(page: str) -> list[tuple[str, str]]:
    """The confirmation form's hidden fields, as a browser would post them."""
    return re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page)


def _first_post(client: Client, url: str, action: str, ids: list[str]) -> str:
    response = client.post(url, {"action": action, "_selected_action": ids, "index": 0})
    assert response.status_code == 200
    return response.content.decode()


def _confirm(client: Client, url: str, page: str) -> str:
    data: dict[str, list[str]] = {}
    for name, value in _hidden_inputs(page):
        data.setdefault(name, []).append(value)
    response = client.post(url, data, follow=True)
    assert response.status_code == 200
    return " ".join(str(m) for m in response.context["messages"])


def _seed_queue() -> None:
    now = now_ms()
    store.enqueue(make_dispatch("d-q", "t-conf", created_at=now, available_at=now))
    store.enqueue(make_dispatch("d-dead", "t-dead", created_at=now, available_at=now, max_attempts=1))
    [claimed] = store.claim("t-dead", "w:3", 60_000, now)
    store.nack("d-dead", claimed.claim_token or "", now, "boom", now)


def _statuses() -> dict[str, str]:
    return dict(Dispatch.objects.values_list("dispatch_id", "status"))


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("action", "changing", "left", "after"),
    [
        (
            "cancel_queued",
            "queued → cancelled; run run-d-q ends as cancelled",
            "d-dead",
            {"d-q": "cancelled"},
        ),
        (
            "requeue_dead_letter",
            "dead letter → queued, available now, attempts from 0",
            "d-q",
            {"d-dead": "queued"},
        ),
        ("interrupt_thread", "epoch 0 → 1; 1 queued dispatch superseded", "t-dead", {"d-q": "superseded"}),
    ],
)
def test_every_dispatch_action_lists_what_will_change_before_it_changes_anything(
    operator_client: Client, action: str, changing: str, left: str, after: dict[str, str]
) -> None:
    _seed_queue()
    before = _statuses()
    page = _first_post(operator_client, reverse(DISPATCHES), action, ["d-q", "d-dead"])
    assert 'id="action-plan"' in page and changing in page
    plan = page.split('id="action-plan"')[1].split("</table>")[0]
    skipped_rows = re.findall(r'<tr class="mb-skipped">(.*?)</tr>', plan, re.S)
    assert len(skipped_rows) == 1 and left in skipped_rows[0] and "left as it is" in skipped_rows[0]
    assert "<strong>1</strong> will change" in page
    assert sorted(v for k, v in _hidden_inputs(page) if k == "_selected_action") == ["d-dead", "d-q"]
    assert _statuses() == before and not LogEntry.objects.exists()  # nothing moved yet
    _confirm(operator_client, reverse(DISPATCHES), page)
    assert _statuses() == before | after


@pytest.mark.django_db
def test_a_row_that_changed_after_the_confirmation_page_is_skipped_and_reported(
    operator_client: Client,
) -> None:
    _seed_queue()
    page = _first_post(operator_client, reverse(DISPATCHES), "cancel_queued", ["d-q"])
    assert "queued → cancelled" in page
    store.claim("t-conf", "w:late", 60_000, now_ms())  # a worker takes it while the operator reads
    text = _confirm(operator_client, reverse(DISPATCHES), page)
    assert "Cancelled 0 queued dispatches. Skipped 1 dispatch, not queued: d-q (claimed)." in text
    assert Dispatch.objects.get(pk="d-q").status == DispatchStatus.CLAIMED


@pytest.mark.django_db
def test_more_rows_than_an_action_moves_are_refused_whole(operator_client: Client) -> None:
    now = now_ms()
    for i in range(501):
        store.enqueue(make_dispatch(f"d-many{i:03d}", f"t-many{i}", created_at=now, available_at=now))
    response = operator_client.post(
        reverse(DISPATCHES),
        {"action": "cancel_queued", "_selected_action": ["d-many000"], "select_across": "1", "index": 0},
        follow=True,
    )
    text = " ".join(str(m) for m in response.context["messages"])
    assert "More than 500 dispatches selected" in text and "Nothing was changed" in text
    assert set(_statuses().values()) == {DispatchStatus.QUEUED}


@pytest.mark.django_db
def test_selections_that_match_nothing_confirm_nothing(operator_client: Client) -> None:
    _seed_queue()
    page = _first_post(operator_client, reverse(DISPATCHES), "cancel_queued", ["nope", "' OR 1=1 --"])
    assert "<strong>0</strong> will change" in page and 'id="confirm-action" value=' in page
    assert re.search(r'id="confirm-action"[^>]* disabled', page)
    response = operator_client.post(
        reverse(DISPATCHES), {"action": "no_such_action", "_selected_action": ["d-q"], "index": 0}
    )
    assert response.status_code == 302  # Django's "No action selected." back on the list
    assert _statuses()["d-q"] == DispatchStatus.QUEUED


@pytest.mark.django_db
def test_the_webhook_retry_lists_the_failed_deliveries_first(operator_client: Client) -> None:
    now = now_ms()
    for delivery_id, status in (("wh-failed", WebhookDeliveryStatus.FAILED), ("wh-done", "delivered")):
        WebhookDelivery.objects.create(
            delivery_id=delivery_id, run_id="r-1", thread_id="t-1", event="run.finished",
            url="https://hooks.example/x", payload={}, status=status, attempts=8, next_attempt_at=now,
            created_at=now, updated_at=now,
        )  # fmt: skip
    page = _first_post(operator_client, reverse(WEBHOOKS), "retry_delivery", ["wh-failed", "wh-done"])
    assert "failed → pending: delivered again" in page and "https://hooks.example/x" in page
    assert WebhookDelivery.objects.get(pk="wh-failed").status == WebhookDeliveryStatus.FAILED
    text = _confirm(operator_client, reverse(WEBHOOKS), page)
    assert "Retrying 1 failed webhook delivery. Skipped 1 delivery, not failed: wh-done (delivered)." in text
    assert WebhookDelivery.objects.get(pk="wh-failed").status == WebhookDeliveryStatus.PENDING
