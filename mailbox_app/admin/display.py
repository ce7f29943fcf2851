"""How the mailbox admin's pages show waits, attempts and errors: short in a table cell, the exact value
in its tooltip, so a row stays on one line at 1280 px and nothing is lost (ids and times are links.py's,
shared with runs_app)."""

from __future__ import annotations

from collections.abc import Sequence

from django.utils.html import format_html
from django.utils.safestring import SafeString

from mailbox_app.admin.links import relative
from mailbox_app.contract.ids import now_ms
from mailbox_app.contract.mailbox import DispatchStatus
from mailbox_app.contract.timefmt import format_duration_ms, format_utc_ms
from mailbox_app.models import Dispatch
from mailbox_app.services.selectors import Attempts

SKIPPED_SHOWN = 10
ERROR_SHOWN = 60


def when(ms: int | None, now: int | None = None) -> str:
    """A UTC time, with how far from now it is."""
    if ms is None:
        return "—"
    return f"{format_utc_ms(ms)} ({relative(ms, now)})"


def lease_left(lease_until: int | None, now: int | None = None) -> str:
    if lease_until is None:
        return "—"
    left = lease_until - (now_ms() if now is None else now)
    return f"{format_duration_ms(left)} left" if left >= 0 else f"expired {format_duration_ms(-left)} ago"


def listing(items: Sequence[str]) -> str:
    shown = ", ".join(items[:SKIPPED_SHOWN])
    more = len(items) - SKIPPED_SHOWN
    return f"{shown} and {more} more" if more > 0 else shown


def wait_kind(dispatch: Dispatch, now: int) -> str:
    """Why a queued dispatch is not claimable yet: `delayed` (a start time its submit asked for,
    `after_seconds`: no attempt yet) or `backoff` (a retry after a failed attempt); "" otherwise."""
    if dispatch.status != DispatchStatus.QUEUED or dispatch.available_at <= now:
        return ""
    return "backoff" if dispatch.attempt_count > 0 else "delayed"


def timing(dispatch: Dispatch, now: int | None = None) -> SafeString:
    """One short cell for what the row's state waits on, the exact times in its tooltip: a queued
    dispatch is `ready` (for how long), `delayed` (a start time its submit asked for, `after_seconds`)
    or in `backoff` (a retry after a failed attempt), each with the time left; a claimed one has a
    lease; an ended one says when it ended."""
    stamp = now_ms() if now is None else now
    status = DispatchStatus(dispatch.status)
    created = f"created {format_utc_ms(dispatch.created_at)}"
    if status is DispatchStatus.QUEUED:
        return _queued_timing(dispatch, stamp, created)
    if status is DispatchStatus.CLAIMED and dispatch.lease_until is not None:
        left = dispatch.lease_until - stamp
        text = (
            f"lease {format_duration_ms(left)}" if left >= 0 else f"lease expired {format_duration_ms(-left)}"
        )
        title = f"lease until {format_utc_ms(dispatch.lease_until)}; {created}"
        return format_html(
            '<span class="{}" title="{}">{}</span>', "" if left >= 0 else "mb-backoff", title, text
        )
    if dispatch.completed_at is None:
        return format_html('<span title="{}">{}</span>', created, "—")
    took = format_duration_ms(dispatch.completed_at - dispatch.created_at)
    title = f"ended {format_utc_ms(dispatch.completed_at)}, {took} after it was {created}"
    return format_html('<span title="{}">ended {}</span>', title, relative(dispatch.completed_at, stamp))


def _queued_timing(dispatch: Dispatch, now: int, created: str) -> SafeString:
    kind = wait_kind(dispatch, now)
    exact = format_utc_ms(dispatch.available_at)
    if not kind:
        waited = format_duration_ms(now - dispatch.available_at)
        title = f"claimable since {exact}; {created}"
        return format_html('<span title="{}">ready for {}</span>', title, waited)
    left = format_duration_ms(dispatch.available_at - now)
    title = f"{'starts' if kind == 'delayed' else 'retries'} at {exact}; {created}"
    return format_html('<span class="mb-{}" title="{}">{} · {}</span>', kind, title, kind, left)


def attempts(counted: Attempts) -> SafeString:
    """`made / max`, how it was counted in the tooltip (services/selectors.py `attempts_made`)."""
    return format_html('<span class="mb-attempts" title="{}">{}</span>', counted.why, counted.text)


def error(text: str | None) -> SafeString:
    full = text or ""
    shown = full if len(full) <= ERROR_SHOWN else full[: ERROR_SHOWN - 1] + "…"
    return format_html('<span title="{}">{}</span>', full, shown)
