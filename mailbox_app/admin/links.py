"""What the two apps' admin pages share: links between them (by URL name, so neither imports the other's
admin) and the display of counts; times and durations are mailbox_app/contract/timefmt.py's. Django and the
standard library only."""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib.admin.utils import quote
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

OVERVIEW_URL_NAME = "mailbox_app_dispatch_overview"


def overview_url(thread_id: str | None = None) -> str:
    """The mailbox overview, with the block report of `thread_id` when given."""
    url = reverse(f"admin:{OVERVIEW_URL_NAME}")
    return f"{url}?{urlencode({'thread_id': thread_id})}" if thread_id else url


def dispatch_list_url(**filters: str) -> str:
    return f"{reverse('admin:mailbox_app_dispatch_changelist')}?{urlencode(filters)}"


def dispatch_url(dispatch_id: str) -> str:
    return reverse("admin:mailbox_app_dispatch_change", args=[quote(dispatch_id)])


def run_url(run_id: str) -> str:
    return reverse("admin:runs_app_run_change", args=[quote(run_id)])


def thread_url(thread_id: str) -> str:
    return reverse("admin:runs_app_thread_change", args=[quote(thread_id)])


def link(url: str, text: object) -> SafeString:
    return format_html('<a href="{}">{}</a>', url, text)


def counted(n: int, singular: str, plural: str | None = None) -> str:
    return f"{n} {singular if n == 1 else plural or singular + 's'}"
