"""What the two apps' admin pages share: links between them (by URL name, so neither imports the other's
admin) and the display formats of times and counts. Django and the standard library only."""

from __future__ import annotations

from datetime import UTC, datetime
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


def format_utc_ms(ms: int | None) -> str:
    """Unix ms as a UTC timestamp with milliseconds, e.g. `2025-11-27 16:20:01.123 UTC`."""
    if ms is None:
        return "—"
    stamp = datetime.fromtimestamp(ms // 1000, tz=UTC).replace(microsecond=(ms % 1000) * 1000)
    return stamp.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def format_duration_ms(ms: int) -> str:
    """A duration for people: `850 ms`, `12.3 s`, `4 min 05 s`, `2 h 03 min`, `3 d 04 h`."""
    sign = "-" if ms < 0 else ""
    ms = abs(ms)
    if ms < 1000:
        text = f"{ms} ms"
    elif ms < 60_000:
        text = f"{ms / 1000:.1f} s"
    elif ms < 3_600_000:
        text = f"{ms // 60_000} min {ms % 60_000 // 1000:02d} s"
    elif ms < 86_400_000:
        text = f"{ms // 3_600_000} h {ms % 3_600_000 // 60_000:02d} min"
    else:
        text = f"{ms // 86_400_000} d {ms % 86_400_000 // 3_600_000:02d} h"
    return sign + text
