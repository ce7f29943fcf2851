"""Operator admin for the dispatch queue.

Every field is read-only and no form ever saves: a dispatch changes state only through the mailbox
service (`interrupt`) and `admin_actions` (`cancel_queued`, `requeue_dead_letters`), the same code paths
the API and the management commands use, all of them the store's declared transitions, so the admin
cannot write a state the store would not. Rows are never
deleted here either: terminal rows are the evidence an operator reads, `reconcile` still needs them to
finish their runs, and GC (`purge_terminal`) already deletes them after the TTL.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.models import CHANGE, LogEntry
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from mailbox_app import store
from mailbox_app.admin.links import (
    OVERVIEW_URL_NAME,
    counted,
    dispatch_list_url,
    dispatch_url,
    link,
    overview_url,
    run_url,
    thread_url,
)
from mailbox_app.contract.ids import now_ms
from mailbox_app.contract.mailbox import DispatchStatus
from mailbox_app.contract.timefmt import format_duration_ms, format_utc_ms
from mailbox_app.models import Dispatch, ThreadEpoch, WebhookDelivery, WebhookDeliveryStatus
from mailbox_app.services import mailbox
from mailbox_app.services.operator import Requeued, cancel_queued, requeue_dead_letters
from mailbox_app.services.selectors import (
    ThreadBlockReport,
    claim_started_at,
    mailbox_overview,
    thread_block_report,
)
from mailbox_app.webhooks.delivery import retry_failed

if TYPE_CHECKING:
    DispatchAdminBase = admin.ModelAdmin[Dispatch]
    ThreadEpochAdminBase = admin.ModelAdmin[ThreadEpoch]
    WebhookDeliveryAdminBase = admin.ModelAdmin[WebhookDelivery]
else:  # ModelAdmin is generic only in django-stubs
    DispatchAdminBase = ThreadEpochAdminBase = WebhookDeliveryAdminBase = admin.ModelAdmin

SKIPPED_SHOWN = 10

# --- formatting ----------------------------------------------------------------------------------


def when(ms: int | None, now: int | None = None) -> str:
    """A UTC time, with how far from now it is."""
    if ms is None:
        return "—"
    delta = ms - (now_ms() if now is None else now)
    relative = f"in {format_duration_ms(delta)}" if delta > 0 else f"{format_duration_ms(-delta)} ago"
    return f"{format_utc_ms(ms)} ({relative})"


def lease_left(lease_until: int | None, now: int | None = None) -> str:
    if lease_until is None:
        return "—"
    left = lease_until - (now_ms() if now is None else now)
    return f"{format_duration_ms(left)} left" if left >= 0 else f"expired {format_duration_ms(-left)} ago"


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(items[:SKIPPED_SHOWN])
    more = len(items) - SKIPPED_SHOWN
    return f"{shown} and {more} more" if more > 0 else shown


# --- filters -------------------------------------------------------------------------------------


class HasErrorFilter(admin.SimpleListFilter):
    title = "has error"
    parameter_name = "has_error"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Yes"), ("no", "No")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        with_error = Q(last_error__isnull=False) & ~Q(last_error="")
        if self.value() == "yes":
            return queryset.filter(with_error)
        if self.value() == "no":
            return queryset.exclude(with_error)
        return queryset


class ClaimedByFilter(admin.SimpleListFilter):
    """The consumers holding a claim right now (claimed_by is NULL on every other row)."""

    title = "claimed by"
    parameter_name = "claimed_by"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        holders = (
            Dispatch.objects.claimed().order_by("claimed_by").values_list("claimed_by", flat=True).distinct()
        )
        return [(h, h) for h in holders[:50] if h]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(claimed_by=value) if value else queryset


# --- the overview's thread form ------------------------------------------------------------------


class ThreadLookupForm(forms.Form):
    thread_id = forms.CharField(
        max_length=128,
        required=False,
        label="Thread id",
        widget=forms.TextInput(attrs={"size": 48, "placeholder": "thread id", "autofocus": True}),
    )


# The change form's sections; every field in them is read-only.
DISPATCH_SECTIONS: tuple[tuple[str | None, tuple[str, ...]], ...] = (
    (None, ("dispatch_id", "status", "links")),
    (
        "Queue",
        (
            "thread_id",
            "run_id",
            "priority",
            "dedupe_key",
            "dispatch_epoch",
            "thread_epoch",
            "available",
            "attempts",
            "last_error",
        ),
    ),
    ("Claim", ("claimed_by", "claimed_since", "lease_until_at", "lease_left")),
    (
        "Run trace",
        ("dispatch_instance_id", "run_status", "termination", "run_response", "run_error", "completed"),
    ),
    ("Times", ("created", "updated")),
)


# --- Dispatch ------------------------------------------------------------------------------------


@admin.register(Dispatch)
class DispatchAdmin(DispatchAdminBase):
    list_display = (
        "dispatch_id",
        "thread",
        "run",
        "status",
        "attempts",
        "available",
        "lease_until_at",
        "lease_left",
        "claimed_by",
        "error",
    )
    list_filter = ("status", ClaimedByFilter, HasErrorFilter)
    search_fields = ("dispatch_id__startswith", "run_id__startswith", "thread_id__startswith")
    search_help_text = "Dispatch, run or thread id (or its beginning)."
    ordering = ("-created_at", "dispatch_id")
    list_per_page = 50
    show_full_result_count = False
    actions = ("cancel_queued", "requeue_dead_letter", "interrupt_thread")
    fieldsets = [(title, {"fields": names}) for title, names in DISPATCH_SECTIONS]
    readonly_fields = tuple(name for _, names in DISPATCH_SECTIONS for name in names)

    # Nothing is editable and nothing is saved: state moves only through the actions below.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Dispatch | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Dispatch | None = None) -> bool:
        return False

    def has_operate_permission(self, request: HttpRequest) -> bool:
        """The actions: for users allowed to change dispatches (the form itself never saves)."""
        return request.user.has_perm("mailbox_app.change_dispatch")

    # --- columns --------------------------------------------------------------------------------

    @admin.display(description="thread", ordering="thread_id")
    def thread(self, obj: Dispatch) -> SafeString:
        return link(dispatch_list_url(thread_id=obj.thread_id), obj.thread_id)

    @admin.display(description="run", ordering="run_id")
    def run(self, obj: Dispatch) -> SafeString:
        return link(run_url(obj.run_id), obj.run_id)

    @admin.display(description="attempts / max")
    def attempts(self, obj: Dispatch) -> str:
        return f"{obj.attempt_count} / {obj.max_attempts}"

    @admin.display(description="available at", ordering="available_at")
    def available(self, obj: Dispatch) -> str:
        if obj.status != DispatchStatus.QUEUED:
            return format_utc_ms(obj.available_at)
        return when(obj.available_at)

    @admin.display(description="lease until", ordering="lease_until")
    def lease_until_at(self, obj: Dispatch) -> str:
        return format_utc_ms(obj.lease_until)

    @admin.display(description="lease left")
    def lease_left(self, obj: Dispatch) -> str:
        return lease_left(obj.lease_until)

    @admin.display(description="last error")
    def error(self, obj: Dispatch) -> str:
        text = obj.last_error or ""
        return text if len(text) <= 80 else text[:79] + "…"

    # --- change-form-only fields ----------------------------------------------------------------

    @admin.display(description="links")
    def links(self, obj: Dispatch) -> SafeString:
        return format_html(
            "{} · {} · {} · {}",
            link(overview_url(obj.thread_id), "why is this thread blocked?"),
            link(dispatch_list_url(thread_id=obj.thread_id), "dispatches of the thread"),
            link(thread_url(obj.thread_id), "thread record"),
            link(run_url(obj.run_id), "run record"),
        )

    @admin.display(description="thread epoch")
    def thread_epoch(self, obj: Dispatch) -> str:
        epoch = (
            ThreadEpoch.objects.filter(thread_id=obj.thread_id)
            .values_list("current_epoch", flat=True)
            .first()
        ) or 0
        stale = obj.status == DispatchStatus.QUEUED and obj.dispatch_epoch < epoch
        return f"{epoch} (stale: superseded at the next claim)" if stale else str(epoch)

    @admin.display(description="claimed since")
    def claimed_since(self, obj: Dispatch) -> str:
        return when(claim_started_at(obj.claim_token)) if obj.status == DispatchStatus.CLAIMED else "—"

    @admin.display(description="completed at")
    def completed(self, obj: Dispatch) -> str:
        return format_utc_ms(obj.completed_at)

    @admin.display(description="created at")
    def created(self, obj: Dispatch) -> str:
        return format_utc_ms(obj.created_at)

    @admin.display(description="updated at")
    def updated(self, obj: Dispatch) -> str:
        return format_utc_ms(obj.updated_at)

    # --- actions (through the service layer) ----------------------------------------------------

    def _log(self, request: HttpRequest, dispatch_ids: Iterable[str], message: str) -> None:
        """An audit trail in the admin's history (LogEntry) for each dispatch an action moved."""
        rows = list(Dispatch.objects.filter(dispatch_id__in=list(dispatch_ids)))
        if rows:
            LogEntry.objects.log_actions(
                user_id=cast(int, request.user.pk), queryset=rows, action_flag=CHANGE, change_message=message
            )

    @admin.action(description="Cancel selected queued dispatches", permissions=["operate"])
    def cancel_queued(self, request: HttpRequest, queryset: QuerySet[Dispatch]) -> None:
        cancelled: list[str] = []
        skipped: list[str] = []
        for dispatch_id in list(queryset.values_list("dispatch_id", flat=True)):
            # only while queued (the store's statement decides): a row claimed meanwhile is skipped
            # rather than having its running run cancelled
            if cancel_queued(dispatch_id) is not None:
                cancelled.append(dispatch_id)
            else:
                current = store.load_dispatch(dispatch_id)
                skipped.append(f"{dispatch_id} ({current.status.value if current else 'gone'})")
        self._log(request, cancelled, "Cancelled (queued) from the admin")
        self._report(
            request,
            f"Cancelled {counted(len(cancelled), 'queued dispatch', 'queued dispatches')}",
            skipped,
            "not queued",
        )

    @admin.action(description="Requeue selected dead-lettered dispatches", permissions=["operate"])
    def requeue_dead_letter(self, request: HttpRequest, queryset: QuerySet[Dispatch]) -> None:
        rows = list(queryset.values_list("dispatch_id", "status"))
        dead = [d for d, s in rows if s == DispatchStatus.DEAD_LETTER]
        outcome = requeue_dead_letters(dispatch_ids=dead) if dead else Requeued()
        moved = set(outcome.requeued) | set(outcome.refused)
        skipped = [f"{d} ({s})" for d, s in rows if d not in moved]
        self._log(request, outcome.requeued, "Requeued (dead letter) from the admin")
        head = (
            f"Requeued {counted(len(outcome.requeued), 'dead-lettered dispatch', 'dead-lettered dispatches')}"
        )
        if outcome.refused:
            kept = [f"{d} (run {r})" for d, r in sorted(outcome.refused.items())]
            head += (
                f". Left {counted(len(kept), 'dispatch', 'dispatches')} dead-lettered, its run finished "
                f"naturally or by another dispatch: {_listing(kept)}"
            )
        self._report(request, head, skipped, "not dead-lettered")

    @admin.action(description="Interrupt the threads of selected dispatches", permissions=["operate"])
    def interrupt_thread(self, request: HttpRequest, queryset: QuerySet[Dispatch]) -> None:
        threads = sorted(set(queryset.values_list("thread_id", flat=True)))
        active = set(
            Dispatch.objects.filter(
                thread_id__in=threads, status__in=[DispatchStatus.QUEUED, DispatchStatus.CLAIMED]
            ).values_list("thread_id", flat=True)
        )
        done: list[str] = []
        for thread_id in threads:
            if thread_id not in active:
                continue
            details = mailbox.interrupt(thread_id)
            stopping = details.active_dispatch
            summary = f"{thread_id}: epoch now {details.new_dispatch_epoch}, "
            summary += (
                f"{counted(details.superseded_count, 'queued dispatch', 'queued dispatches')} superseded"
            )
            if stopping is not None:
                summary += f", stop requested for running {stopping.dispatch_id} ({stopping.claimed_by})"
            done.append(summary)
            superseded = [d.dispatch_id for d in details.superseded_dispatches]
            self._log(request, superseded, "Superseded by an interrupt from the admin")
        skipped = [t for t in threads if t not in active]
        head = f"Interrupted {counted(len(done), 'thread')}" + (f": {'; '.join(done)}" if done else "")
        self._report(request, head, skipped, "nothing queued or running", noun=("thread", "threads"))

    def _report(
        self,
        request: HttpRequest,
        head: str,
        skipped: list[str],
        why: str,
        *,
        noun: tuple[str, str] = ("dispatch", "dispatches"),
    ) -> None:
        if skipped:
            head += f". Skipped {counted(len(skipped), *noun)}, {why}: {_listing(skipped)}"
        level = messages.SUCCESS if not skipped else messages.WARNING
        self.message_user(request, head + ".", level)

    # --- the overview page ----------------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        overview = path("overview/", self.admin_site.admin_view(self.overview_view), name=OVERVIEW_URL_NAME)
        return [overview, *super().get_urls()]

    def overview_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        now = now_ms()
        form = ThreadLookupForm(request.GET or None)
        report: ThreadBlockReport | None = None
        if form.is_valid() and form.cleaned_data["thread_id"].strip():
            report = thread_block_report(form.cleaned_data["thread_id"].strip(), now=now)
        overview = mailbox_overview(now=now)
        context = {
            **self.admin_site.each_context(request),
            "title": "Mailbox overview",
            "opts": self.model._meta,
            "form": form,
            "now": format_utc_ms(now),
            "counts": [
                (status, n, dispatch_list_url(status__exact=status)) for status, n in overview.counts.items()
            ],
            "total": sum(overview.counts.values()),
            "oldest_queued_age": None
            if overview.oldest_queued_age_ms is None
            else format_duration_ms(overview.oldest_queued_age_ms),
            "claims": [_claim_row(claim, now) for claim in overview.claims],
            "report": None if report is None else _report_view(report),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/mailbox_overview.html", context)


def _claim_row(claim: dict[str, Any], now: int) -> dict[str, Any]:
    return {
        "thread_id": claim["thread_id"],
        "thread_url": overview_url(claim["thread_id"]),
        "dispatch_id": claim["dispatch_id"],
        "dispatch_url": dispatch_url(claim["dispatch_id"]),
        "run_id": claim["run_id"],
        "claimed_by": claim["claimed_by"],
        "since": when(claim["claimed_at"], now) if claim["claimed_at"] is not None else "—",
        "lease_left": lease_left(claim["lease_until"], now),
    }


def _report_view(report: ThreadBlockReport) -> dict[str, Any]:
    """The block report with display strings (the template does no arithmetic)."""
    now = report.now
    holder = report.holder
    lock = report.execution_lock
    if lock is None:
        lock_text = "unknown (Redis unreachable)"
    elif not lock.held:
        lock_text = "free"
    else:
        owner = "the current claim" if lock.by_current_claim else "another (older) claim"
        lock_text = f"held by {owner}, {format_duration_ms(lock.ttl_ms)} left"
    return {
        "thread_id": report.thread_id,
        "state": report.state.value,
        "is_blocked": report.is_blocked,
        "current_epoch": report.current_epoch,
        "reasons": report.reasons,
        "lock": lock_text,
        "dispatch_list_url": dispatch_list_url(thread_id=report.thread_id),
        "thread_url": thread_url(report.thread_id),
        "queued_total": report.queued_total,
        "holder": None
        if holder is None
        else {
            "dispatch_id": holder.dispatch_id,
            "dispatch_url": dispatch_url(holder.dispatch_id),
            "run_id": holder.run_id,
            "run_url": run_url(holder.run_id),
            "claimed_by": holder.claimed_by,
            "since": when(holder.claimed_at, now),
            "last_update": when(holder.last_update_at, now),
            "lease_until": format_utc_ms(holder.lease_until),
            "lease_left": lease_left(holder.lease_until, now),
            "lease_expired": holder.lease_expired,
            "epoch": holder.dispatch_epoch,
            "stale_epoch": holder.stale_epoch,
            "attempts": f"{holder.attempt_count} / {holder.max_attempts}",
        },
        "queued": [
            {
                "position": q.position,
                "dispatch_id": q.dispatch_id,
                "dispatch_url": dispatch_url(q.dispatch_id),
                "run_id": q.run_id,
                "priority": q.priority,
                "created": format_utc_ms(q.created_at),
                "backoff": f"until {when(q.available_at, now)}" if q.in_backoff else "",
                "epoch": q.dispatch_epoch,
                "stale_epoch": q.stale_epoch,
                "attempts": f"{q.attempt_count} / {q.max_attempts}",
                "last_error": q.last_error or "",
                "behind": format_html_join(
                    ", ", '<a href="{}">{}</a>', ((dispatch_url(d), d) for d in q.behind)
                ),
                "claimable_now": q.claimable_now,
            }
            for q in report.queued
        ],
    }


# --- ThreadEpoch ---------------------------------------------------------------------------------


@admin.register(ThreadEpoch)
class ThreadEpochAdmin(ThreadEpochAdminBase):
    """Read-only: only an interrupt moves an epoch."""

    list_display = ("thread_id", "current_epoch", "block_report")
    search_fields = ("thread_id__startswith",)
    ordering = ("thread_id",)
    readonly_fields = ("thread_id", "current_epoch", "block_report")
    fields = readonly_fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: ThreadEpoch | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: ThreadEpoch | None = None) -> bool:
        return False

    @admin.display(description="why blocked?")
    def block_report(self, obj: ThreadEpoch) -> SafeString:
        return link(overview_url(obj.thread_id), "block report")


# --- WebhookDelivery (the webhook outbox) ---------------------------------------------------------


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(WebhookDeliveryAdminBase):
    """Read-only outbox rows: pending (with the next attempt), delivered, or failed (gave up after
    AWAKEN_WEBHOOK_MAX_ATTEMPTS, or the target was refused); failed rows can be retried."""

    list_display = (
        "delivery_id", "event", "run", "status", "attempts", "next_attempt", "code", "error", "url",
    )  # fmt: skip
    list_filter = ("status", "event")
    search_fields = ("delivery_id__startswith", "run_id__startswith", "thread_id__startswith")
    search_help_text = "Delivery (idempotency) id, run or thread id (or its beginning)."
    ordering = ("-created_at", "delivery_id")
    list_per_page = 50
    show_full_result_count = False
    actions = ("retry_delivery",)
    readonly_fields = (
        "delivery_id", "event", "run", "thread_id", "url", "status", "attempts", "next_attempt",
        "locked_until", "last_status_code", "last_error", "created", "delivered", "payload",
    )  # fmt: skip
    fields = readonly_fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: WebhookDelivery | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: WebhookDelivery | None = None) -> bool:
        return False

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("mailbox_app.change_dispatch")

    @admin.display(description="run", ordering="run_id")
    def run(self, obj: WebhookDelivery) -> SafeString:
        return link(run_url(obj.run_id), obj.run_id)

    @admin.display(description="next attempt", ordering="next_attempt_at")
    def next_attempt(self, obj: WebhookDelivery) -> str:
        return when(obj.next_attempt_at) if obj.status == WebhookDeliveryStatus.PENDING else "—"

    @admin.display(description="HTTP", ordering="last_status_code")
    def code(self, obj: WebhookDelivery) -> str:
        return "—" if obj.last_status_code is None else str(obj.last_status_code)

    @admin.display(description="last error")
    def error(self, obj: WebhookDelivery) -> str:
        text = obj.last_error or ""
        return text if len(text) <= 80 else text[:79] + "…"

    @admin.display(description="created at")
    def created(self, obj: WebhookDelivery) -> str:
        return format_utc_ms(obj.created_at)

    @admin.display(description="delivered at")
    def delivered(self, obj: WebhookDelivery) -> str:
        return format_utc_ms(obj.delivered_at)

    @admin.action(description="Retry selected failed webhook deliveries", permissions=["operate"])
    def retry_delivery(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> None:
        rows = list(queryset.values_list("delivery_id", "status"))
        retried = retry_failed([d for d, s in rows if s == WebhookDeliveryStatus.FAILED])
        skipped = [f"{d} ({s})" for d, s in rows if d not in retried]
        head = f"Retrying {counted(len(retried), 'failed webhook delivery', 'failed webhook deliveries')}"
        if skipped:
            head += f". Skipped {counted(len(skipped), 'delivery', 'deliveries')}, not failed: "
            head += _listing(skipped)
        self.message_user(request, head + ".", messages.SUCCESS if not skipped else messages.WARNING)


# Link the overview from the admin index (a documented AdminSite hook; kept if a project set its own).
if admin.site.index_template is None:
    admin.site.index_template = "admin/mailbox_app/site_index.html"
