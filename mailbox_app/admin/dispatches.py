"""The dispatch admin: the list (filters, search, one line per row at 1280 px), the read-only change
form, and the overview's URL (mailbox_app/admin/overview.py). The actions are in
mailbox_app/admin/dispatch_actions.py.

Every field is read-only and no form ever saves: a dispatch changes state only through the actions, the
same service calls the API and the management commands make. Rows are never deleted here either:
terminal rows are the evidence an operator reads, `reconcile` still needs them to finish their runs,
and GC (`purge_terminal`) deletes them after the TTL.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, path
from django.utils.html import format_html
from django.utils.safestring import SafeString

from mailbox_app.admin import display, overview
from mailbox_app.admin.dispatch_actions import DispatchActions
from mailbox_app.admin.links import (
    ADMIN_CSS,
    ADMIN_JS,
    OVERVIEW_URL_NAME,
    dispatch_list_url,
    dispatch_url,
    id_cell,
    link,
    overview_url,
    run_url,
    thread_url,
)
from mailbox_app.contract.ids import now_ms
from mailbox_app.contract.mailbox import DispatchStatus
from mailbox_app.contract.timefmt import format_utc_ms
from mailbox_app.models import Dispatch, ThreadEpoch
from mailbox_app.services.selectors import attempts_made, claim_started_at

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
            "available_detail",
            "attempts_detail",
            "last_error",
        ),
    ),
    ("Claim", ("claimed_by", "claimed_since", "lease_until_at", "lease_left_detail")),
    (
        "Run trace",
        ("dispatch_instance_id", "run_status", "termination", "run_response", "run_error", "completed"),
    ),
    ("Times", ("created_at_utc", "updated")),
)


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


@admin.register(Dispatch)
class DispatchAdmin(DispatchActions):
    # Seven columns fit beside the admin's navigation at 1280 px (the filters are a bar above the table,
    # mailbox_app/static/mailbox_admin/admin.css); the run, priority, epoch and the exact times are on
    # the dispatch's page and in each cell's tooltip.
    list_display = ("dispatch", "thread", "status", "attempts", "timing", "holder", "error")
    list_display_links = None  # the dispatch column links its change page (with a copy button beside)
    list_filter = ("status", ClaimedByFilter, HasErrorFilter)
    search_fields = ("dispatch_id__startswith", "run_id__startswith", "thread_id__startswith")
    search_help_text = "Dispatch, run or thread id (or its beginning)."
    ordering = ("-created_at", "dispatch_id")
    list_per_page = 50
    show_full_result_count = False
    fieldsets = [(title, {"fields": names}) for title, names in DISPATCH_SECTIONS]
    readonly_fields = tuple(name for _, names in DISPATCH_SECTIONS for name in names)

    class Media:
        css = {"all": (ADMIN_CSS,)}
        js = (ADMIN_JS,)

    # Nothing is editable and nothing is saved: state moves only through the actions.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Dispatch | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Dispatch | None = None) -> bool:
        return False

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view(self.overview_view)
        return [path("overview/", view, name=OVERVIEW_URL_NAME), *super().get_urls()]

    def overview_view(self, request: HttpRequest) -> HttpResponse:
        return overview.overview_page(self, request)

    # --- columns --------------------------------------------------------------------------------

    @admin.display(description="dispatch", ordering="dispatch_id")
    def dispatch(self, obj: Dispatch) -> SafeString:
        return id_cell(obj.dispatch_id, dispatch_url(obj.dispatch_id))

    @admin.display(description="thread", ordering="thread_id")
    def thread(self, obj: Dispatch) -> SafeString:
        return id_cell(obj.thread_id, dispatch_list_url(thread_id=obj.thread_id))

    @admin.display(description="attempts")
    def attempts(self, obj: Dispatch) -> SafeString:
        return display.attempts(attempts_made(obj))

    @admin.display(description="waits · lease · end")
    def timing(self, obj: Dispatch) -> SafeString:
        return display.timing(obj)

    @admin.display(description="claimed by", ordering="claimed_by")
    def holder(self, obj: Dispatch) -> SafeString:
        return id_cell(obj.claimed_by)

    @admin.display(description="last error")
    def error(self, obj: Dispatch) -> SafeString:
        return display.error(obj.last_error)

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

    @admin.display(description="available at")
    def available_detail(self, obj: Dispatch) -> str:
        kind = display.wait_kind(obj, now_ms())
        text = display.when(obj.available_at) if obj.status == DispatchStatus.QUEUED else "—"
        if kind == "delayed":
            return f"delayed until {text}: the start time its submit asked for (after_seconds)"
        if kind == "backoff":
            return f"backoff until {text}: a retry after a failed attempt"
        return text

    @admin.display(description="attempts / max")
    def attempts_detail(self, obj: Dispatch) -> str:
        counted = attempts_made(obj)
        return f"{counted.text}: {counted.why}"

    @admin.display(description="lease left")
    def lease_left_detail(self, obj: Dispatch) -> str:
        return display.lease_left(obj.lease_until)

    @admin.display(description="thread epoch")
    def thread_epoch(self, obj: Dispatch) -> str:
        epoch = (
            ThreadEpoch.objects.filter(thread_id=obj.thread_id)
            .values_list("current_epoch", flat=True)
            .first()
        ) or 0
        stale = obj.status == DispatchStatus.QUEUED and obj.dispatch_epoch < epoch
        return f"{epoch} (stale: superseded at the next claim)" if stale else str(epoch)

    @admin.display(description="lease until")
    def lease_until_at(self, obj: Dispatch) -> str:
        return format_utc_ms(obj.lease_until)

    @admin.display(description="claimed since")
    def claimed_since(self, obj: Dispatch) -> str:
        claimed = obj.status == DispatchStatus.CLAIMED
        return display.when(claim_started_at(obj.claim_token)) if claimed else "—"

    @admin.display(description="created at")
    def created_at_utc(self, obj: Dispatch) -> str:
        return format_utc_ms(obj.created_at)

    @admin.display(description="completed at")
    def completed(self, obj: Dispatch) -> str:
        return format_utc_ms(obj.completed_at)

    @admin.display(description="updated at")
    def updated(self, obj: Dispatch) -> str:
        return format_utc_ms(obj.updated_at)
