"""Thread schedules (docs/inbox.md), read-only: each schedule's thread, owner and timing, when it fires
next and what its last firing did. A schedule is changed through the API (`PATCH schedules/{id}`); its
beat row is django-celery-beat's PeriodicTask (linked), whose own admin can disable it too."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib import admin
from django.contrib.admin.utils import quote
from django.http import HttpRequest
from django.urls import reverse
from django.utils.safestring import SafeString

from mailbox_app.admin.links import ADMIN_CSS, ADMIN_JS, id_cell, link, moment, run_url, thread_url
from mailbox_app.models import Schedule

if TYPE_CHECKING:
    ScheduleAdminBase = admin.ModelAdmin[Schedule]
else:  # ModelAdmin is generic only in django-stubs
    ScheduleAdminBase = admin.ModelAdmin


@admin.register(Schedule)
class ScheduleAdmin(ScheduleAdminBase):
    list_display = (
        "schedule", "thread", "owner", "timing", "enabled", "next_run", "last_fired", "last_outcome",
        "last_run", "firings", "beat_row",
    )  # fmt: skip
    list_display_links = None
    list_filter = ("enabled", "if_busy", "last_outcome")
    search_fields = ("schedule_id__startswith", "thread_id__startswith", "owner__username")
    search_help_text = "Schedule or thread id (or its beginning), or the owner's username."
    ordering = ("next_run_at", "schedule_id")
    list_select_related = ("owner",)
    readonly_fields = (
        "schedule_id", "thread", "owner", "timing", "messages", "metadata", "agent_id", "if_busy", "enabled",
        "next_run", "last_fired", "last_outcome", "last_run", "firings", "beat_row",
    )  # fmt: skip
    fields = readonly_fields

    class Media:
        css = {"all": (ADMIN_CSS,)}
        js = (ADMIN_JS,)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Schedule | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Schedule | None = None) -> bool:
        return False

    @admin.display(description="schedule", ordering="schedule_id")
    def schedule(self, obj: Schedule) -> SafeString:
        return id_cell(
            obj.schedule_id, reverse("admin:mailbox_app_schedule_change", args=[quote(obj.schedule_id)])
        )

    @admin.display(description="thread", ordering="thread_id")
    def thread(self, obj: Schedule) -> SafeString:
        return id_cell(obj.thread_id, thread_url(obj.thread_id))

    @admin.display(description="when")
    def timing(self, obj: Schedule) -> str:
        if obj.interval_s is not None:
            return f"every {obj.interval_s} s"
        return f"cron {obj.cron} ({obj.timezone})"

    @admin.display(description="next run", ordering="next_run_at")
    def next_run(self, obj: Schedule) -> SafeString | str:
        return moment(obj.next_run_at) if obj.enabled else "— (disabled)"

    @admin.display(description="last slot fired", ordering="last_fired_at")
    def last_fired(self, obj: Schedule) -> SafeString:
        return moment(obj.last_fired_at)

    @admin.display(description="last run")
    def last_run(self, obj: Schedule) -> SafeString:
        return id_cell(obj.last_run_id, run_url(obj.last_run_id) if obj.last_run_id else None)

    @admin.display(description="beat row")
    def beat_row(self, obj: Schedule) -> SafeString:
        url = reverse("admin:django_celery_beat_periodictask_change", args=[obj.periodic_task_id])
        return link(url, "periodic task")
