"""The webhook outbox, read-only: pending rows (with the next attempt), delivered ones, and failed ones
(gave up after AWAKEN_WEBHOOK_MAX_ATTEMPTS, or the target was refused). Failed rows can be retried, after
a confirmation page that lists them (mailbox_app/admin/confirm.py): a retry sends requests out again."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib import admin, messages
from django.contrib.admin.utils import quote
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils.safestring import SafeString

from mailbox_app.admin import display
from mailbox_app.admin.confirm import Confirmation, Planned, bounded, confirmation_page, confirmed
from mailbox_app.admin.links import ADMIN_CSS, ADMIN_JS, counted, id_cell, moment, run_url
from mailbox_app.contract.timefmt import format_utc_ms
from mailbox_app.models import WebhookDelivery, WebhookDeliveryStatus
from mailbox_app.webhooks.delivery import retry_failed

if TYPE_CHECKING:
    WebhookDeliveryAdminBase = admin.ModelAdmin[WebhookDelivery]
else:  # ModelAdmin is generic only in django-stubs
    WebhookDeliveryAdminBase = admin.ModelAdmin

FAILED = WebhookDeliveryStatus.FAILED
RETRY = Confirmation(
    action="retry_delivery",
    title="Retry failed webhook deliveries",
    question="Retry these deliveries? A failed one goes back to pending with fresh attempts and is POSTed "
    "to its URL again (the receiver sees the same webhook id). The others are left as they are.",
    columns=("delivery", "event · URL"),
    button="Yes, deliver the failed ones again",
)


def _plan(row: WebhookDelivery) -> Planned:
    change = "failed → pending: delivered again" if row.status == FAILED else ""
    context = f"{row.event} · {row.url}"
    return Planned(id_cell(row.delivery_id), context, str(row.status), change)


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(WebhookDeliveryAdminBase):
    list_display = (
        "delivery", "event", "run", "status", "attempts", "next_attempt", "code", "error", "url",
    )  # fmt: skip
    list_display_links = None
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

    class Media:
        css = {"all": (ADMIN_CSS,)}
        js = (ADMIN_JS,)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: WebhookDelivery | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: WebhookDelivery | None = None) -> bool:
        return False

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("mailbox_app.change_dispatch")

    @admin.display(description="delivery", ordering="delivery_id")
    def delivery(self, obj: WebhookDelivery) -> SafeString:
        url = reverse("admin:mailbox_app_webhookdelivery_change", args=[quote(obj.delivery_id)])
        return id_cell(obj.delivery_id, url)

    @admin.display(description="run", ordering="run_id")
    def run(self, obj: WebhookDelivery) -> SafeString:
        return id_cell(obj.run_id, run_url(obj.run_id))

    @admin.display(description="next attempt", ordering="next_attempt_at")
    def next_attempt(self, obj: WebhookDelivery) -> SafeString | str:
        return moment(obj.next_attempt_at) if obj.status == WebhookDeliveryStatus.PENDING else "—"

    @admin.display(description="HTTP", ordering="last_status_code")
    def code(self, obj: WebhookDelivery) -> str:
        return "—" if obj.last_status_code is None else str(obj.last_status_code)

    @admin.display(description="last error")
    def error(self, obj: WebhookDelivery) -> SafeString:
        return display.error(obj.last_error)

    @admin.display(description="created at")
    def created(self, obj: WebhookDelivery) -> str:
        return format_utc_ms(obj.created_at)

    @admin.display(description="delivered at")
    def delivered(self, obj: WebhookDelivery) -> str:
        return format_utc_ms(obj.delivered_at)

    @admin.action(description="Retry selected failed webhook deliveries…", permissions=["operate"])
    def retry_delivery(
        self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]
    ) -> HttpResponse | None:
        rows = bounded(self, request, queryset)
        if rows is None or not confirmed(request):
            plan = [_plan(row) for row in rows or []]
            return None if rows is None else confirmation_page(self, request, rows, RETRY, plan)
        retried = retry_failed([row.delivery_id for row in rows if row.status == FAILED])
        skipped = [f"{row.delivery_id} ({row.status})" for row in rows if row.delivery_id not in retried]
        head = f"Retrying {counted(len(retried), 'failed webhook delivery', 'failed webhook deliveries')}"
        if skipped:
            head += f". Skipped {counted(len(skipped), 'delivery', 'deliveries')}, not failed: "
            head += display.listing(skipped)
        self.message_user(request, head + ".", messages.SUCCESS if not skipped else messages.WARNING)
        return None
