"""The mailbox overview page (`admin/mailbox_app/dispatch/overview/`): the why-blocked report of a thread
asked for by id, the last hour's charts (mailbox_app/admin/activity.py), counts by status and the claims
held now. The reads are mailbox_app/services/selectors.py's; this module only turns them into display
strings (the template does no arithmetic)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from mailbox_app.admin.activity import pictures
from mailbox_app.admin.display import lease_left
from mailbox_app.admin.links import (
    ADMIN_CSS,
    ADMIN_JS,
    dispatch_list_url,
    dispatch_url,
    id_cell,
    moment,
    overview_url,
    run_url,
    thread_url,
)
from mailbox_app.contract.ids import now_ms
from mailbox_app.contract.timefmt import format_duration_ms, format_utc_ms
from mailbox_app.services.selectors import (
    ClaimHolder,
    ExecutionLock,
    QueuedEntry,
    ThreadBlockReport,
    mailbox_overview,
    thread_block_report,
)


class ThreadLookupForm(forms.Form):
    thread_id = forms.CharField(
        max_length=128,
        required=False,
        label="Thread id",
        widget=forms.TextInput(attrs={"size": 48, "placeholder": "thread id", "autofocus": True}),
    )


def overview_page(model_admin: Any, request: HttpRequest) -> HttpResponse:
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    now = now_ms()
    form = ThreadLookupForm(request.GET or None)
    thread_id = form.cleaned_data["thread_id"].strip() if form.is_valid() else ""
    overview = mailbox_overview(now=now)
    drawn = pictures(now)
    context = {
        **model_admin.admin_site.each_context(request),
        "title": "Mailbox overview",
        "opts": model_admin.model._meta,
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
        "report": report_view(thread_block_report(thread_id, now=now)) if thread_id else None,
        "charts": drawn.charts,
        "chart_window": drawn.window,
        "stylesheet": ADMIN_CSS,
        "script": ADMIN_JS,
    }
    request.current_app = model_admin.admin_site.name
    return TemplateResponse(request, "admin/mailbox_overview.html", context)


def _claim_row(claim: dict[str, Any], now: int) -> dict[str, Any]:
    return {
        "thread": id_cell(claim["thread_id"], overview_url(claim["thread_id"])),
        "thread_id": claim["thread_id"],
        "dispatch_id": claim["dispatch_id"],
        "dispatch": id_cell(claim["dispatch_id"], dispatch_url(claim["dispatch_id"])),
        "run": id_cell(claim["run_id"], run_url(claim["run_id"])),
        "claimed_by": claim["claimed_by"],
        "holder": id_cell(claim["claimed_by"]),
        "since": moment(claim["claimed_at"], now),
        "lease_left": lease_left(claim["lease_until"], now),
    }


def _lock_text(lock: ExecutionLock | None) -> str:
    if lock is None:
        return "unknown (Redis unreachable)"
    if not lock.held:
        return "free"
    owner = "the current claim" if lock.by_current_claim else "another (older) claim"
    return f"held by {owner}, {format_duration_ms(lock.ttl_ms)} left"


def _holder_view(holder: ClaimHolder, now: int) -> dict[str, Any]:
    return {
        "dispatch": id_cell(holder.dispatch_id, dispatch_url(holder.dispatch_id)),
        "run": id_cell(holder.run_id, run_url(holder.run_id)),
        "claimed_by": id_cell(holder.claimed_by),
        "since": moment(holder.claimed_at, now),
        "last_update": moment(holder.last_update_at, now),
        "lease_until": moment(holder.lease_until, now),
        "lease_left": lease_left(holder.lease_until, now),
        "lease_expired": holder.lease_expired,
        "epoch": holder.dispatch_epoch,
        "stale_epoch": holder.stale_epoch,
        "attempts": holder.attempts,
    }


def _waits(q: QueuedEntry) -> SafeString | str:
    """`delayed · in …` (a start time its submit asked for) or `backoff · in …` (a retry after a
    failed attempt), the exact time in the tooltip; "" when it is available now."""
    if not q.wait_kind:
        return ""
    left = format_duration_ms(q.backoff_left_ms)
    until = f"until {format_utc_ms(q.available_at)}"
    return format_html('<span title="{}">{} · in {}</span>', until, q.wait_kind, left)


def _queued_view(q: QueuedEntry, now: int) -> dict[str, Any]:
    return {
        "position": q.position,
        "dispatch": id_cell(q.dispatch_id, dispatch_url(q.dispatch_id)),
        "run": id_cell(q.run_id, run_url(q.run_id)),
        "priority": q.priority,
        "created": moment(q.created_at, now),
        "waits": _waits(q),
        "wait_kind": q.wait_kind,
        "epoch": q.dispatch_epoch,
        "stale_epoch": q.stale_epoch,
        "attempts": q.attempts,
        "last_error": q.last_error or "",
        "behind": format_html_join(", ", "{}", ((id_cell(d, dispatch_url(d)),) for d in q.behind)),
        "claimable_now": q.claimable_now,
    }


def report_view(report: ThreadBlockReport) -> dict[str, Any]:
    """The block report with display strings."""
    return {
        "thread_id": report.thread_id,
        "state": report.state.value,
        "verdict": report.verdict,
        "is_blocked": report.is_blocked,
        "current_epoch": report.current_epoch,
        "reasons": report.reasons,
        "lock": _lock_text(report.execution_lock),
        "dispatch_list_url": dispatch_list_url(thread_id=report.thread_id),
        "thread_url": thread_url(report.thread_id),
        "queued_total": report.queued_total,
        "holder": None if report.holder is None else _holder_view(report.holder, report.now),
        "queued": [_queued_view(q, report.now) for q in report.queued],
    }
