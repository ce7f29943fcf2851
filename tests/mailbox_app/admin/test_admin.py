"""The operator admin through Django's test client: every page as a staff user, each action (and the
rows it must skip), read-only forms, login required, and the overview's block report."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from mailbox_app import store
from mailbox_app.contract.ids import now_ms
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchStatus
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.storage import RunRecord, TerminationReason
from mailbox_app.contract.suspension import RunWaitingState, WaitingTicket
from mailbox_app.contract.timefmt import format_duration_ms, format_utc_ms
from mailbox_app.models import Dispatch, ThreadEpoch
from mailbox_app.services.selectors import ThreadState, mailbox_overview, thread_block_report
from mailbox_app.store import conformance
from runs_app import store as run_store
from runs_app.models import Message, Run, Thread
from tests.support.dispatches import make_dispatch

pytestmark = pytest.mark.django_db

HOLDER = "worker-A:4242"
BACKOFF_MS = 120_000
OVERVIEW = "admin:mailbox_app_dispatch_overview"
DISPATCHES = "admin:mailbox_app_dispatch_changelist"


# --- fixtures and data ---------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def fast_password_hasher(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def staff(django_user_model: Any) -> Any:
    """An operator: staff, may view everything the admin shows and run the dispatch actions."""
    user = django_user_model.objects.create_user("operator", password="pw", is_staff=True)
    codenames = [f"view_{m}" for m in ("dispatch", "threadepoch", "run", "thread", "message")] + [
        "change_dispatch"
    ]
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return user


@pytest.fixture
def staff_client(staff: Any) -> Client:
    client = Client()
    client.force_login(staff)
    return client


def enqueue(dispatch_id: str, thread_id: str, *, at: int, max_attempts: int = 5) -> None:
    store.enqueue(
        make_dispatch(dispatch_id, thread_id, created_at=at, available_at=at, max_attempts=max_attempts)
    )


def claim(thread_id: str, consumer: str, now: int, lease_ms: int = 60_000) -> Any:
    claimed = store.claim(thread_id, consumer, lease_ms, now)
    assert claimed, f"nothing claimable on {thread_id}"
    return claimed[0]


def seed_blocked_thread(thread_id: str = "t-blocked") -> dict[str, Any]:
    """d-backoff: nacked, waiting for its retry; d-held: claimed by HOLDER; d-waiting: queued behind."""
    now = now_ms()
    enqueue("d-backoff", thread_id, at=now - 3_000)
    first = claim(thread_id, "worker-old:1", now)
    store.nack(first.dispatch_id, first.claim_token, now + BACKOFF_MS, "tool failed: timeout", now)
    enqueue("d-held", thread_id, at=now - 2_000)
    held = claim(thread_id, HOLDER, now)
    assert held.dispatch_id == "d-held"  # d-backoff is not available yet
    enqueue("d-waiting", thread_id, at=now - 1_000)
    return {"now": now, "retry_at": now + BACKOFF_MS, "held": held}


def dead_letter(dispatch_id: str, thread_id: str) -> None:
    now = now_ms()
    enqueue(dispatch_id, thread_id, at=now, max_attempts=1)
    claimed = claim(thread_id, "worker-dl:1", now)
    store.nack(claimed.dispatch_id, claimed.claim_token, now, "exploded", now)
    assert Dispatch.objects.get(pk=dispatch_id).status == DispatchStatus.DEAD_LETTER


def seed_runs() -> None:
    """A thread with messages, a waiting run with a ticket and a finished one."""
    now = now_ms()
    run_store.append_messages(
        thread_id="t-runs",
        messages=[ChatMessage.user("first question"), ChatMessage.assistant("first answer")],
        now=now,
    )
    waiting = RunWaitingState(
        reason="tool_permission",
        ticket_ids=["call-1"],
        tickets=[WaitingTicket(ticket_id="call-1", tool_call_id="call-1", tool_name="delete_file")],
    )
    run_store.create_run(
        run=RunRecord(
            run_id="r-waiting",
            thread_id="t-runs",
            status=RunStatus.WAITING,
            waiting=waiting,
            created_at=now,
            updated_at=now,
        )
    )
    run_store.create_run(
        run=RunRecord(
            run_id="r-done",
            thread_id="t-runs",
            status=RunStatus.DONE,
            termination_reason=TerminationReason(type="error", value="model unavailable"),
            created_at=now - 5,
            updated_at=now,
        )
    )
    enqueue("d-of-r-done", "t-runs", at=now)
    Dispatch.objects.filter(pk="d-of-r-done").update(run_id="r-done")


def post_action(client: Client, action: str, ids: list[str]) -> str:
    """An action as its confirmation page posts it (`post=yes`); the messages it left."""
    response = client.post(
        reverse(DISPATCHES),
        {"action": action, "_selected_action": ids, "index": 0, "post": "yes"},
        follow=True,
    )
    assert response.status_code == 200
    return " ".join(str(m) for m in response.context["messages"])


# --- pages ---------------------------------------------------------------------------------------


def test_dispatch_changelist_shows_the_queue_columns(staff_client: Client) -> None:
    seeded = seed_blocked_thread()
    response = staff_client.get(reverse(DISPATCHES))
    assert response.status_code == 200
    page = response.content.decode()
    for text in ("d-backoff", "d-held", "d-waiting", "t-blocked", HOLDER, "tool failed: timeout"):
        assert text in page
    assert "0 / 5" in page and "1 / 5" in page  # attempts / max
    assert format_utc_ms(seeded["held"].lease_until) in page  # lease until, as UTC (the cell's tooltip)
    # the lease's time left (a minute when seeded): whole, or seconds gone by on a loaded machine (59.96 s
    # reads "60.0 s")
    left = re.search(r"lease (?:1 min 00 s|(\d+)\.\d s)", page)
    assert left is not None and (left.group(1) is None or 30 <= int(left.group(1)) <= 60), left
    assert format_utc_ms(seeded["retry_at"]) in page  # available at of the nacked one (tooltip)
    assert "backoff · 2 min" in page or "backoff · 1 min" in page  # a retry after a failed attempt
    assert 'id="mailbox-overview-link"' in page
    for action in ("cancel_queued", "requeue_dead_letter", "interrupt_thread"):
        assert action in page
    assert "delete_selected" not in page


@pytest.mark.parametrize(
    ("query", "shown", "hidden"),
    [
        ({"status__exact": "claimed"}, ["d-held"], ["d-backoff", "d-waiting"]),
        ({"claimed_by": HOLDER}, ["d-held"], ["d-waiting"]),
        ({"has_error": "yes"}, ["d-backoff"], ["d-held", "d-waiting"]),
        ({"has_error": "no"}, ["d-held", "d-waiting"], ["d-backoff"]),
        ({"q": "d-wait"}, ["d-waiting"], ["d-held"]),
        ({"q": "run-d-held"}, ["d-held"], ["d-waiting"]),
        ({"q": "t-blocked"}, ["d-held", "d-waiting", "d-backoff"], ["d-other"]),
        ({"thread_id": "t-other"}, ["d-other"], ["d-held"]),
        ({"run_id": "run-d-other"}, ["d-other"], ["d-held"]),
    ],
)
def test_dispatch_filters_and_search(
    staff_client: Client, query: dict[str, str], shown: list[str], hidden: list[str]
) -> None:
    seed_blocked_thread()
    enqueue("d-other", "t-other", at=now_ms())
    response = staff_client.get(reverse(DISPATCHES), query)
    assert response.status_code == 200
    rows = {d.dispatch_id for d in response.context["cl"].result_list}
    assert set(shown) <= rows
    assert not set(hidden) & rows


def test_dispatch_change_form_is_read_only_with_links(staff_client: Client) -> None:
    seeded = seed_blocked_thread()
    url = reverse("admin:mailbox_app_dispatch_change", args=["d-held"])
    response = staff_client.get(url)
    assert response.status_code == 200
    page = response.content.decode()
    assert HOLDER in page and "t-blocked" in page and "run-d-held" in page
    assert format_utc_ms(seeded["held"].lease_until) in page
    assert "why is this thread blocked?" in page
    assert 'name="_save"' not in page and 'class="closelink"' in page  # no save button
    assert response.context["adminform"].form.fields == {}  # every field read-only


def test_no_admin_path_writes_a_dispatch(staff_client: Client, django_user_model: Any) -> None:
    seed_blocked_thread()
    superuser = django_user_model.objects.create_superuser("root", password="pw")
    root = Client()
    root.force_login(superuser)
    for client in (staff_client, root):
        change = reverse("admin:mailbox_app_dispatch_change", args=["d-held"])
        assert client.post(change, {"status": "acked", "claimed_by": ""}).status_code == 403
        assert client.get(reverse("admin:mailbox_app_dispatch_add")).status_code == 403
        delete = reverse("admin:mailbox_app_dispatch_delete", args=["d-held"])
        assert client.post(delete, {"post": "yes"}).status_code == 403
        epoch = reverse("admin:mailbox_app_threadepoch_change", args=["t-blocked"])
        assert client.post(epoch, {"current_epoch": "0"}).status_code == 403
    held = Dispatch.objects.get(pk="d-held")
    assert held.status == DispatchStatus.CLAIMED and held.claimed_by == HOLDER
    assert Dispatch.objects.count() == 3


def test_thread_epoch_admin_lists_epochs_read_only(staff_client: Client) -> None:
    seed_blocked_thread()
    store.interrupt_detailed("t-blocked", now_ms())
    response = staff_client.get(reverse("admin:mailbox_app_threadepoch_changelist"))
    assert response.status_code == 200
    assert "t-blocked" in response.content.decode() and "block report" in response.content.decode()
    change = staff_client.get(reverse("admin:mailbox_app_threadepoch_change", args=["t-blocked"]))
    assert change.status_code == 200
    assert change.context["adminform"].form.fields == {}
    assert ThreadEpoch.objects.get(pk="t-blocked").current_epoch == 1


def test_run_pages_show_status_termination_tickets_and_links(staff_client: Client) -> None:
    seed_runs()
    response = staff_client.get(reverse("admin:runs_app_run_changelist"))
    assert response.status_code == 200
    page = response.content.decode()
    assert "r-waiting" in page and "r-done" in page
    assert "tool_permission: 1 ticket (delete_file call-1)" in page
    assert "error: model unavailable" in page
    change = staff_client.get(reverse("admin:runs_app_run_change", args=["r-done"]))
    assert change.status_code == 200
    page = change.content.decode()
    assert reverse(DISPATCHES) + "?run_id=r-done" in page
    assert reverse("admin:runs_app_thread_change", args=["t-runs"]) in page
    assert change.context["adminform"].form.fields == {}
    # the link lands on that run's dispatches only
    listed = staff_client.get(reverse(DISPATCHES), {"run_id": "r-done"})
    assert [d.dispatch_id for d in listed.context["cl"].result_list] == ["d-of-r-done"]


def test_thread_pages_show_messages_in_seq_order_and_dispatches(staff_client: Client) -> None:
    seed_runs()
    response = staff_client.get(reverse("admin:runs_app_thread_changelist"))
    assert response.status_code == 200
    assert "t-runs" in response.content.decode()
    change = staff_client.get(reverse("admin:runs_app_thread_change", args=["t-runs"]))
    assert change.status_code == 200
    page = change.content.decode()
    assert page.index("first question") < page.index("first answer")
    assert 'id="thread-dispatches"' in page and "d-of-r-done" in page
    assert reverse(OVERVIEW) + "?thread_id=t-runs" in page
    messages_url = reverse("admin:runs_app_message_changelist") + "?thread__id__exact=t-runs"
    assert messages_url in page
    listed = staff_client.get(messages_url)
    assert [m.seq for m in listed.context["cl"].result_list] == [1, 2]
    inline = change.context["inline_admin_formsets"][0]
    assert [form.original.seq for form in inline] == [1, 2]
    assert not inline.has_add_permission and not inline.has_delete_permission
    assert change.context["adminform"].form.fields == {}


def test_message_pages(staff_client: Client) -> None:
    seed_runs()
    response = staff_client.get(reverse("admin:runs_app_message_changelist"))
    assert response.status_code == 200
    assert "first question" in response.content.decode()
    message = Message.objects.get(thread_id="t-runs", seq=1)
    change = staff_client.get(reverse("admin:runs_app_message_change", args=[message.pk]))
    assert change.status_code == 200
    assert "first question" in change.content.decode()
    assert change.context["adminform"].form.fields == {}


def test_runs_app_admin_writes_nothing(staff_client: Client, django_user_model: Any) -> None:
    seed_runs()
    root = Client()
    root.force_login(django_user_model.objects.create_superuser("root", password="pw"))
    for client in (staff_client, root):
        assert client.post(reverse("admin:runs_app_thread_change", args=["t-runs"]), {}).status_code == 403
        assert client.post(reverse("admin:runs_app_run_change", args=["r-done"]), {}).status_code == 403
        assert client.get(reverse("admin:runs_app_message_add")).status_code == 403
        assert (
            client.post(reverse("admin:runs_app_thread_delete", args=["t-runs"]), {"post": "yes"}).status_code
            == 403
        )
    assert Thread.objects.get(pk="t-runs").message_count == 2
    assert Run.objects.filter(thread_id="t-runs").count() == 2


def test_index_links_the_overview(staff_client: Client) -> None:
    response = staff_client.get(reverse("admin:index"))
    assert response.status_code == 200
    assert reverse(OVERVIEW) in response.content.decode()
    app_index = staff_client.get(reverse("admin:app_list", args=["mailbox_app"]))
    assert app_index.status_code == 200


# --- actions -------------------------------------------------------------------------------------


def test_cancel_action_cancels_queued_rows_and_skips_the_rest(staff_client: Client) -> None:
    seed_blocked_thread()
    run_store.create_run(
        run=RunRecord(run_id="run-d-waiting", thread_id="t-blocked", created_at=1, updated_at=1)
    )
    text = post_action(staff_client, "cancel_queued", ["d-waiting", "d-held", "d-missing"])
    assert "Cancelled 1 queued dispatch." in text
    assert "Skipped 1 dispatch, not queued: d-held (claimed)" in text
    assert Dispatch.objects.get(pk="d-waiting").status == DispatchStatus.CANCELLED
    assert Dispatch.objects.get(pk="d-held").status == DispatchStatus.CLAIMED  # untouched
    run = run_store.load_run(run_id="run-d-waiting")
    assert run is not None and run.status is RunStatus.DONE  # the service terminalized its run
    assert run.termination_reason == TerminationReason(type="cancelled")
    assert LogEntry.objects.filter(object_id="d-waiting").exists()


def test_requeue_action_requeues_dead_letters_and_skips_the_rest(staff_client: Client) -> None:
    dead_letter("d-dead", "t-dl")
    enqueue("d-live", "t-dl2", at=now_ms())
    text = post_action(staff_client, "requeue_dead_letter", ["d-dead", "d-live"])
    assert "Requeued 1 dead-lettered dispatch." in text
    assert "Skipped 1 dispatch, not dead-lettered: d-live (queued)" in text
    requeued = Dispatch.objects.get(pk="d-dead")
    assert requeued.status == DispatchStatus.QUEUED and requeued.attempt_count == 0
    assert Dispatch.objects.get(pk="d-live").status == DispatchStatus.QUEUED


def test_interrupt_action_interrupts_each_thread_once_and_skips_idle_ones(staff_client: Client) -> None:
    seed_blocked_thread()
    dead_letter("d-dead", "t-idle")
    text = post_action(staff_client, "interrupt_thread", ["d-held", "d-waiting", "d-dead"])
    assert "Interrupted 1 thread: t-blocked: epoch now 1, 2 queued dispatches superseded" in text
    assert f"stop requested for running d-held ({HOLDER})" in text
    assert "Skipped 1 thread, nothing queued or running: t-idle" in text
    assert ThreadEpoch.objects.get(pk="t-blocked").current_epoch == 1
    assert ThreadEpoch.objects.get(pk="t-idle").current_epoch == 0
    statuses = dict(Dispatch.objects.filter(thread_id="t-blocked").values_list("dispatch_id", "status"))
    assert statuses == {"d-backoff": "superseded", "d-waiting": "superseded", "d-held": "claimed"}


def test_actions_need_the_change_permission(django_user_model: Any) -> None:
    seed_blocked_thread()
    viewer = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.set(Permission.objects.filter(codename="view_dispatch"))
    client = Client()
    client.force_login(viewer)
    response = client.get(reverse(DISPATCHES))
    assert response.status_code == 200
    assert "cancel_queued" not in response.content.decode()
    client.post(
        reverse(DISPATCHES),
        {"action": "cancel_queued", "_selected_action": ["d-waiting"], "index": 0, "post": "yes"},
    )
    assert Dispatch.objects.get(pk="d-waiting").status == DispatchStatus.QUEUED


# --- login ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [OVERVIEW, DISPATCHES, "admin:runs_app_thread_changelist", "admin:index"])
def test_non_staff_and_anonymous_users_are_sent_to_login(django_user_model: Any, name: str) -> None:
    url = reverse(name)
    anonymous = Client().get(url)
    assert anonymous.status_code == 302 and anonymous["Location"].startswith(reverse("admin:login"))
    user = django_user_model.objects.create_user("someone", password="pw")  # not staff
    client = Client()
    client.force_login(user)
    response = client.get(url)
    assert response.status_code == 302 and response["Location"].startswith(reverse("admin:login"))


# --- overview and block report -------------------------------------------------------------------


def test_overview_counts_claims_and_oldest_queued(staff_client: Client) -> None:
    seeded = seed_blocked_thread()
    dead_letter("d-dead", "t-dl")
    response = staff_client.get(reverse(OVERVIEW))
    assert response.status_code == 200
    page = response.content.decode()
    counts = dict((status, n) for status, n, _ in response.context["counts"])
    assert counts == {
        "queued": 2,
        "claimed": 1,
        "acked": 0,
        "cancelled": 0,
        "superseded": 0,
        "dead_letter": 1,
    }
    assert "Oldest queued dispatch: " in page and " old" in page
    claims = response.context["claims"]
    assert [(c["thread_id"], c["claimed_by"], c["dispatch_id"]) for c in claims] == [
        ("t-blocked", HOLDER, "d-held")
    ]
    assert "left" in claims[0]["lease_left"]
    assert seeded["held"].dispatch_id in page and HOLDER in page


def test_overview_explains_why_a_thread_is_blocked(staff_client: Client) -> None:
    seeded = seed_blocked_thread()
    response = staff_client.get(reverse(OVERVIEW), {"thread_id": "t-blocked"})
    assert response.status_code == 200
    page = response.content.decode()
    report = page.split('id="block-report"')[1].split('id="status-counts"')[0]
    assert "State: blocked" in report
    assert f"claimed by {HOLDER} since" in report  # the holder's consumer id
    assert "queued behind claimed dispatch d-held" in report  # the blocking dispatch
    assert f"d-backoff: backoff until {format_utc_ms(seeded['retry_at'])}" in report  # the nack's backoff
    assert "tool failed: timeout" in report
    assert "Thread epoch: <strong>0</strong>" in report
    # what each queued row waits behind: the claim first; a row available now overtakes a backing-off one
    behind = {q.dispatch_id: q.behind for q in thread_block_report("t-blocked").queued}
    assert behind == {"d-backoff": ("d-held", "d-waiting"), "d-waiting": ("d-held",)}


def test_requeue_after_interrupt_takes_the_current_epoch(staff_client: Client) -> None:
    """A dead letter requeued after an interrupt is stamped with the thread's epoch, so it runs."""
    dead_letter("d-old", "t-stale")
    store.interrupt_detailed("t-stale", now_ms())
    post_action(staff_client, "requeue_dead_letter", ["d-old"])
    requeued = store.load_dispatch("d-old")
    assert requeued is not None and requeued.status is DispatchStatus.QUEUED
    assert requeued.dispatch_epoch == conformance.current_dispatch_epoch("t-stale") == 1
    [claimed] = store.claim("t-stale", "c", 30_000, now_ms())
    assert claimed.dispatch_id == "d-old"


def test_overview_flags_an_interrupted_holder(staff_client: Client) -> None:
    """A claim whose thread was interrupted is stale: its next fenced write supersedes it."""
    now = now_ms()
    enqueue("d-held", "t-stale", at=now)
    claim("t-stale", HOLDER, now)
    store.interrupt_detailed("t-stale", now_ms())
    page = staff_client.get(reverse(OVERVIEW), {"thread_id": "t-stale"}).content.decode()
    assert (
        "the claim&#x27;s epoch 0 is older than the thread&#x27;s 1" in page
        or "the claim's epoch 0 is older than the thread's 1" in page
    )
    assert HOLDER in page


def test_overview_for_an_unknown_thread_says_there_is_no_such_thread(staff_client: Client) -> None:
    response = staff_client.get(reverse(OVERVIEW), {"thread_id": "t-nobody"})
    assert response.status_code == 200
    page = response.content.decode()
    assert "State: no such thread" in page and "no thread, run or dispatch has this id" in page
    assert "State: idle" not in page


# --- selectors -----------------------------------------------------------------------------------


def test_block_report_states() -> None:
    now = now_ms()
    assert thread_block_report("t", now=now).state is ThreadState.NO_SUCH_THREAD
    enqueue("d1", "t", at=now)
    assert thread_block_report("t", now=now).state is ThreadState.CLAIMABLE
    assert thread_block_report("t", now=now).next_claimable is not None
    held = claim("t", HOLDER, now, lease_ms=1_000)
    report = thread_block_report("t", now=now)
    assert report.state is ThreadState.RUNNING and report.holder is not None
    assert report.holder.claimed_by == HOLDER and report.holder.lease_left_ms == 1_000
    assert report.holder.claimed_at is not None and abs(report.holder.claimed_at - now) < 60_000
    assert thread_block_report("t", now=now + 2_000).state is ThreadState.LEASE_EXPIRED
    store.nack(held.dispatch_id, held.claim_token, now + 5_000, "retry later", now)
    report = thread_block_report("t", now=now)
    assert report.state is ThreadState.BACKOFF and report.queued[0].backoff_left_ms == 5_000
    assert thread_block_report("t", now=now + 5_000).state is ThreadState.CLAIMABLE
    store.interrupt_detailed("t", now)
    assert thread_block_report("t", now=now).state is ThreadState.IDLE  # the interrupt superseded it


def test_mailbox_overview_counts_every_status() -> None:
    seed_blocked_thread()
    overview = mailbox_overview()
    assert overview.counts["queued"] == 2 and overview.counts["claimed"] == 1
    assert set(overview.counts) == {s.value for s in DispatchStatus}
    assert overview.claims[0]["claimed_by"] == HOLDER and overview.claims[0]["claimed_at"] is not None


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (850, "850 ms"),
        (12_345, "12.3 s"),
        (245_000, "4 min 05 s"),
        (7_380_000, "2 h 03 min"),
        (-1500, "-1.5 s"),
    ],
)
def test_format_duration(ms: int, text: str) -> None:
    assert format_duration_ms(ms) == text


def test_format_utc() -> None:
    assert format_utc_ms(1_700_000_000_123) == "2023-11-14 22:13:20.123 UTC"
    assert format_utc_ms(None) == "—"
