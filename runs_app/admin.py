"""Operator admin for threads, runs and the message log: read-only, because all of it is system-owned.

A form save would write every column it loaded, racing the store's locked writes (a thread's
`message_count` allocates message seqs; its run pointers follow checkpoints), and the log is
append-only. So nothing here adds, changes or deletes; state moves through the mailbox service.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from django.contrib import admin
from django.contrib.admin.utils import flatten_fieldsets
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from mailbox_app.admin.links import (
    ADMIN_CSS,
    ADMIN_JS,
    counted,
    dispatch_list_url,
    dispatch_url,
    id_cell,
    link,
    moment,
    overview_url,
    run_url,
    thread_url,
)
from mailbox_app.contract.mailbox import DispatchRecord
from mailbox_app.contract.timefmt import format_utc_ms
from mailbox_app.services.selectors import attempts_made, latest_thread_dispatches
from runs_app.models import Message, Run, RunStep, Thread

if TYPE_CHECKING:
    RunAdminBase = admin.ModelAdmin[Run]
    ThreadAdminBase = admin.ModelAdmin[Thread]
    MessageAdminBase = admin.ModelAdmin[Message]
    MessageInlineBase = admin.TabularInline[Message, Thread]
    RunStepInlineBase = admin.TabularInline[RunStep, Run]
else:  # ModelAdmin and InlineModelAdmin are generic only in django-stubs
    RunAdminBase = ThreadAdminBase = MessageAdminBase = admin.ModelAdmin
    MessageInlineBase = admin.TabularInline
    RunStepInlineBase = admin.TabularInline

THREAD_DISPATCHES_SHOWN = 25
PREVIEW_CHARS = 120


def _preview(value: Any, limit: int = PREVIEW_CHARS) -> str:
    """Message content (a string or a list of parts) as one short line."""
    if isinstance(value, list):
        parts = [p.get("text", "") if isinstance(p, dict) else str(p) for p in value]
        text = " ".join(p for p in parts if p) or json.dumps(value)
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def termination_text(value: Any) -> str:
    if not value:
        return "—"
    if isinstance(value, dict):
        kind = value.get("type", "?")
        detail = value.get("value")
        return f"{kind}: {_preview(detail, 80)}" if detail not in (None, "") else str(kind)
    return _preview(value, 80)


def waiting_text(value: Any) -> str:
    """`reason: N ticket(s) (tool_name call_id, …)` for a waiting run."""
    if not isinstance(value, dict):
        return "—"
    tickets = value.get("tickets") or []
    names = [
        f"{t.get('tool_name', '?')} {t.get('tool_call_id', '?')}" for t in tickets if isinstance(t, dict)
    ]
    ticket_ids = value.get("ticket_ids") or []
    count = max(len(tickets), len(ticket_ids))
    listed = f" ({', '.join(names)})" if names else ""
    return f"{value.get('reason', '?')}: {counted(count, 'ticket')}{listed}"


def _dispatch_cells(dispatch: DispatchRecord) -> tuple[object, ...]:
    """One row of a thread's dispatch table; attempts as services/selectors.py `attempts_made` counts them."""
    attempts = attempts_made(dispatch)
    return (
        id_cell(dispatch.dispatch_id, dispatch_url(dispatch.dispatch_id)),
        dispatch.status.value,
        id_cell(dispatch.run_id, run_url(dispatch.run_id)),
        attempts.why,
        attempts.text,
        dispatch.claimed_by or "",
        format_utc_ms(dispatch.created_at),
    )


class ReadOnlyAdmin:
    """No add, no change, no delete: the view permission shows every page read-only."""

    class Media:  # ids shortened with a copy button, rows on one line (mailbox_app/admin/links.py)
        css = {"all": (ADMIN_CSS,)}
        js = (ADMIN_JS,)

    # list columns: how long ago, the exact UTC time in the tooltip (the pages show the exact times)
    @admin.display(description="created", ordering="created_at")
    def created_when(self, obj: Any) -> SafeString:
        return moment(obj.created_at)

    @admin.display(description="updated", ordering="updated_at")
    def updated_when(self, obj: Any) -> SafeString:
        return moment(obj.updated_at)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# --- Run -----------------------------------------------------------------------------------------


class RunStepInline(ReadOnlyAdmin, RunStepInlineBase):
    """The run's step journal (mailbox_app/store/runs_tables/steps.py), in the order the steps were
    recorded."""

    model = RunStep
    verbose_name = "journaled step"
    ordering = ("id",)
    fields = ("key", "attempt_of_dispatch", "recorded", "step_usage", "result_size", "result_preview")
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False

    @admin.display(description="attempt")
    def attempt_of_dispatch(self, obj: RunStep) -> SafeString:
        return format_html("{} of {}", obj.attempt, link(dispatch_url(obj.dispatch_id), obj.dispatch_id))

    @admin.display(description="recorded at")
    def recorded(self, obj: RunStep) -> str:
        return format_utc_ms(obj.recorded_at)

    @admin.display(description="tokens in / out")
    def step_usage(self, obj: RunStep) -> str:
        """What the step reported; a replayed run's copy says which run recorded (and paid for) it."""
        used = f"{obj.input_tokens} / {obj.output_tokens}" + (
            "" if obj.cost is None else f" · cost {obj.cost:g}"
        )
        return (
            used if obj.copied_from_run_id is None else f"{used} (replayed from run {obj.copied_from_run_id})"
        )

    @admin.display(description="result size")
    def result_size(self, obj: RunStep) -> str:
        return f"{obj.result_bytes} B"

    @admin.display(description="result")
    def result_preview(self, obj: RunStep) -> str:
        return _preview(json.dumps(obj.result), 80)


@admin.register(Run)
class RunAdmin(ReadOnlyAdmin, RunAdminBase):
    list_display = (
        "run",
        "thread_link",
        "agent_id",
        "status",
        "termination",
        "waiting_tickets",
        "dispatches",
        "created_when",
        "updated_when",
    )
    list_filter = ("status", "agent_id")
    list_display_links = None  # the run column links its page (with a copy button beside)
    search_fields = ("run_id__startswith", "thread__id__startswith", "dispatch_id__startswith")
    search_help_text = "Run, thread or dispatch id (or its beginning)."
    ordering = ("-created_at", "run_id")
    list_select_related = False
    show_full_result_count = False
    fieldsets = [
        (None, {"fields": ("run_id", "thread_link", "agent_id", "parent_run_id", "status", "dispatches")}),
        ("Outcome", {"fields": ("termination", "waiting_tickets", "final_output", "error_payload")}),
        (
            "Trace",
            {"fields": ("dispatch_link", "session_id", "transport_request_id", "steps")},
        ),
        (
            "Usage",  # summed over the attempts (mailbox_app/contract/usage.py)
            {"fields": ("tokens", "cost_total", "usage_per_attempt")},
        ),
        ("Times", {"fields": ("created", "started", "finished", "updated")}),
        (
            "Payloads",
            {
                "classes": ["collapse"],
                "fields": ("request", "input", "output", "waiting", "outcome", "state"),
            },
        ),
    ]
    readonly_fields = flatten_fieldsets(fieldsets)
    inlines = (RunStepInline,)

    @admin.display(description="run", ordering="run_id")
    def run(self, obj: Run) -> SafeString:
        return id_cell(obj.run_id, run_url(obj.run_id))

    @admin.display(description="thread", ordering="thread_id")
    def thread_link(self, obj: Run) -> SafeString:
        return id_cell(obj.thread_id, thread_url(obj.thread_id))

    @admin.display(description="termination")
    def termination(self, obj: Run) -> str:
        return termination_text(obj.termination_reason)

    @admin.display(description="waiting tickets")
    def waiting_tickets(self, obj: Run) -> str:
        return waiting_text(obj.waiting)

    @admin.display(description="dispatches")
    def dispatches(self, obj: Run) -> SafeString:
        return link(dispatch_list_url(run_id=obj.run_id), "dispatches")

    @admin.display(description="dispatch")
    def dispatch_link(self, obj: Run) -> SafeString | str:
        return id_cell(obj.dispatch_id, dispatch_url(obj.dispatch_id)) if obj.dispatch_id else "—"

    @admin.display(description="tokens in / out")
    def tokens(self, obj: Run) -> str:
        return f"{obj.input_tokens} / {obj.output_tokens}"

    @admin.display(description="cost")
    def cost_total(self, obj: Run) -> str:
        return "— (not reported)" if obj.cost is None else f"{obj.cost:g}"

    @admin.display(description="per attempt")
    def usage_per_attempt(self, obj: Run) -> SafeString | str:
        """One line per attempt: the dispatch and attempt, tokens in / out, cost, how it ended."""
        attempts = obj.usage_attempts or []
        if not attempts:
            return "—"
        return format_html_join(
            mark_safe("<br>"),  # a constant
            "{} of {}: {} / {}{} ({})",
            (
                (
                    a.get("attempt"),
                    link(dispatch_url(str(a.get("dispatch_id"))), str(a.get("dispatch_id"))),
                    a.get("input_tokens", 0),
                    a.get("output_tokens", 0),
                    "" if a.get("cost") is None else f" · cost {a['cost']:g}",
                    a.get("ended", "finished"),
                )
                for a in attempts
            ),
        )

    @admin.display(description="created at", ordering="created_at")
    def created(self, obj: Run) -> str:
        return format_utc_ms(obj.created_at)

    @admin.display(description="started at")
    def started(self, obj: Run) -> str:
        return format_utc_ms(obj.started_at)

    @admin.display(description="finished at")
    def finished(self, obj: Run) -> str:
        return format_utc_ms(obj.finished_at)

    @admin.display(description="updated at", ordering="updated_at")
    def updated(self, obj: Run) -> str:
        return format_utc_ms(obj.updated_at)


# --- Thread --------------------------------------------------------------------------------------


class MessageInline(ReadOnlyAdmin, MessageInlineBase):
    model = Message
    ordering = ("seq",)
    fields = ("seq", "role", "visibility", "content_preview", "tool_call_id", "run_id", "created")
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False
    show_change_link = True

    @admin.display(description="content")
    def content_preview(self, obj: Message) -> str:
        return _preview(obj.content)

    @admin.display(description="created at")
    def created(self, obj: Message) -> str:
        return format_utc_ms(obj.created_at)


@admin.register(Thread)
class ThreadAdmin(ReadOnlyAdmin, ThreadAdminBase):
    list_display = (
        "thread",
        "owner",
        "title",
        "latest_run",
        "open_run",
        "active_run",
        "message_count",
        "updated_when",
    )
    list_display_links = None  # the thread column links its page (with a copy button beside)
    search_fields = ("id__startswith", "title__icontains")
    search_help_text = "Thread id (or its beginning) or title."
    list_select_related = ("owner",)
    show_full_result_count = False
    fieldsets = [
        (None, {"fields": ("id", "owner", "title", "resource_id", "parent_thread_id", "block_report")}),
        ("Runs", {"fields": ("latest_run", "open_run", "active_run", "messages")}),
        ("Dispatches", {"fields": ("dispatch_table",)}),
        ("Times", {"fields": ("created", "updated", "metadata")}),
    ]
    readonly_fields = flatten_fieldsets(fieldsets)
    inlines = (MessageInline,)

    @staticmethod
    def _run_link(run_id: str | None) -> SafeString | str:
        return id_cell(run_id, run_url(run_id)) if run_id else "—"

    @admin.display(description="thread", ordering="id")
    def thread(self, obj: Thread) -> SafeString:
        return id_cell(obj.id, thread_url(obj.id))

    @admin.display(description="latest run")
    def latest_run(self, obj: Thread) -> SafeString | str:
        return self._run_link(obj.latest_run_id)

    @admin.display(description="open run")
    def open_run(self, obj: Thread) -> SafeString | str:
        return self._run_link(obj.open_run_id)

    @admin.display(description="active run")
    def active_run(self, obj: Thread) -> SafeString | str:
        return self._run_link(obj.active_run_id)

    @admin.display(description="messages")
    def messages(self, obj: Thread) -> SafeString:
        url = f"{reverse('admin:runs_app_message_changelist')}?{urlencode({'thread__id__exact': obj.id})}"
        return format_html("{} (below, in seq order) · {}", obj.message_count, link(url, "message list"))

    @admin.display(description="why blocked?")
    def block_report(self, obj: Thread) -> SafeString:
        return link(overview_url(obj.id), "block report")

    @admin.display(description="dispatches")
    def dispatch_table(self, obj: Thread) -> SafeString:
        """Dispatch has no FK to Thread (`thread_id` is a plain column): a read-only list of links."""
        rows = latest_thread_dispatches(obj.id, THREAD_DISPATCHES_SHOWN)
        if not rows:
            return format_html("none · {}", link(dispatch_list_url(thread_id=obj.id), "dispatch list"))
        body = format_html_join(
            "",
            '<tr><td>{}</td><td>{}</td><td>{}</td><td><span class="mb-attempts" title="{}">{}</span></td>'
            "<td>{}</td><td>{}</td></tr>",
            (_dispatch_cells(d) for d in rows),
        )
        return format_html(
            '<table id="thread-dispatches"><thead><tr><th>dispatch</th><th>status</th><th>run</th>'
            "<th>attempts / max</th><th>claimed by</th><th>created at</th></tr></thead>"
            "<tbody>{}</tbody></table><p>{} (latest {} shown)</p>",
            body,
            link(dispatch_list_url(thread_id=obj.id), "all dispatches of this thread"),
            THREAD_DISPATCHES_SHOWN,
        )

    @admin.display(description="created at")
    def created(self, obj: Thread) -> str:
        return format_utc_ms(obj.created_at)

    @admin.display(description="updated at", ordering="updated_at")
    def updated(self, obj: Thread) -> str:
        return format_utc_ms(obj.updated_at)


# --- Message -------------------------------------------------------------------------------------


@admin.register(Message)
class MessageAdmin(ReadOnlyAdmin, MessageAdminBase):
    """The append-only log, one row per message."""

    list_display = ("thread_link", "seq", "role", "visibility", "content_preview", "run_cell", "created_when")
    list_display_links = ("seq",)  # the thread column is a link of its own
    list_filter = ("role", "visibility")
    search_fields = ("thread__id__startswith", "message_id__startswith", "run_id__startswith")
    search_help_text = "Thread, message or run id (or its beginning)."
    ordering = ("thread_id", "seq")
    show_full_result_count = False
    fields = (
        "thread_link",
        "seq",
        "message_id",
        "role",
        "visibility",
        "content",
        "tool_calls",
        "tool_call_id",
        "run_link",
        "step_index",
        "metadata",
        "created",
    )
    readonly_fields = fields

    @admin.display(description="thread", ordering="thread_id")
    def thread_link(self, obj: Message) -> SafeString:
        return id_cell(obj.thread_id, thread_url(obj.thread_id))

    @admin.display(description="run")
    def run_link(self, obj: Message) -> SafeString | str:
        return id_cell(obj.run_id, run_url(obj.run_id)) if obj.run_id else "—"

    @admin.display(description="run", ordering="run_id")
    def run_cell(self, obj: Message) -> SafeString | str:
        return self.run_link(obj)

    @admin.display(description="content")
    def content_preview(self, obj: Message) -> str:
        return _preview(obj.content)

    @admin.display(description="created at", ordering="created_at")
    def created(self, obj: Message) -> str:
        return format_utc_ms(obj.created_at)
