"""The thread epochs, read-only: only an interrupt moves an epoch (the dispatch admin's action, the API)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib import admin
from django.contrib.admin.utils import quote
from django.http import HttpRequest
from django.urls import reverse
from django.utils.safestring import SafeString

from mailbox_app.admin.links import ADMIN_CSS, ADMIN_JS, id_cell, link, overview_url
from mailbox_app.models import ThreadEpoch

if TYPE_CHECKING:
    ThreadEpochAdminBase = admin.ModelAdmin[ThreadEpoch]
else:  # ModelAdmin is generic only in django-stubs
    ThreadEpochAdminBase = admin.ModelAdmin


@admin.register(ThreadEpoch)
class ThreadEpochAdmin(ThreadEpochAdminBase):
    list_display = ("thread", "current_epoch", "block_report")
    list_display_links = None
    search_fields = ("thread_id__startswith",)
    ordering = ("thread_id",)
    readonly_fields = ("thread_id", "current_epoch", "block_report")
    fields = readonly_fields

    class Media:
        css = {"all": (ADMIN_CSS,)}
        js = (ADMIN_JS,)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: ThreadEpoch | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: ThreadEpoch | None = None) -> bool:
        return False

    @admin.display(description="thread", ordering="thread_id")
    def thread(self, obj: ThreadEpoch) -> SafeString:
        return id_cell(
            obj.thread_id, reverse("admin:mailbox_app_threadepoch_change", args=[quote(obj.thread_id)])
        )

    @admin.display(description="why blocked?")
    def block_report(self, obj: ThreadEpoch) -> SafeString:
        return link(overview_url(obj.thread_id), "block report")
