"""What the two apps' admin pages share: links between them (by URL name, so neither imports the other's
admin), ids and times as a table cell shows them, their stylesheet and script, and the display of
counts; times and durations are mailbox_app/contract/timefmt.py's. Django, the standard library and the
contract only."""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib.admin.utils import quote
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

from mailbox_app.contract.ids import now_ms
from mailbox_app.contract.timefmt import format_duration_ms, format_utc_ms

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


# A UUIDv7 is 36 characters: four of them in a row wrap a 1280 px table. Tables show the first 8 and the
# last 6 characters of an id longer than ID_WHOLE_MAX (the head is the time, the tail the random part: two
# ids of one minute differ there), with the whole id in the tooltip and a button that copies it.
ID_HEAD, ID_TAIL, ID_WHOLE_MAX = 8, 6, 24
ADMIN_CSS = "mailbox_admin/admin.css"
# Two overlapping sheets, drawn (a font may lack a copy glyph); the button's text is its aria-label.
COPY_ICON = mark_safe(
    '<svg viewBox="0 0 12 12" width="11" height="11" aria-hidden="true" focusable="false">'
    '<rect x="3.5" y="0.5" width="8" height="8" rx="1" fill="none" stroke="currentColor"/>'
    '<rect x="0.5" y="3.5" width="8" height="8" rx="1" fill="currentColor" fill-opacity="0.15" '
    'stroke="currentColor"/></svg>'
)
ADMIN_JS = "mailbox_admin/admin.js"


def short_id(value: str) -> str:
    return value if len(value) <= ID_WHOLE_MAX else f"{value[:ID_HEAD]}…{value[-ID_TAIL:]}"


def id_cell(value: str | None, url: str | None = None) -> SafeString:
    """An id for a table cell: shortened, the whole id in its `title`, a link when `url` is given, and a
    copy button (mailbox_app/static/mailbox_admin/admin.js) when it was shortened. "—" for no id."""
    if not value:
        return format_html("{}", "—")
    shown = short_id(value)
    body = (
        format_html('<a href="{}" title="{}">{}</a>', url, value, shown)
        if url
        else format_html('<span title="{}">{}</span>', value, shown)
    )
    if shown == value:
        return format_html('<span class="mb-id">{}</span>', body)
    return format_html(
        '<span class="mb-id">{}<button type="button" class="mb-copy" data-copy="{}" title="copy {}" '
        'aria-label="copy the whole id">{}</button></span>',
        body,
        value,
        value,
        COPY_ICON,
    )


def counted(n: int, singular: str, plural: str | None = None) -> str:
    return f"{n} {singular if n == 1 else plural or singular + 's'}"


def relative(ms: int, now: int | None = None) -> str:
    """How far from now: `in 4 min 05 s`, `12.3 s ago`."""
    delta = ms - (now_ms() if now is None else now)
    return f"in {format_duration_ms(delta)}" if delta > 0 else f"{format_duration_ms(-delta)} ago"


def moment(ms: int | None, now: int | None = None) -> SafeString:
    """A table cell's time: how far from now, the exact UTC time in the tooltip."""
    if ms is None:
        return format_html("{}", "—")
    return format_html('<span title="{}">{}</span>', format_utc_ms(ms), relative(ms, now))
