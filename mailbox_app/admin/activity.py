"""The overview's pictures of the last hour: what each chart draws, from which read of
mailbox_app/services/selectors.py, and what it can and cannot say (its `<desc>`).

Everything is reconstructed from the rows themselves, minute by minute (UTC): a dispatch row keeps when
it was created and when it ended (`created_at`, `completed_at`) and how many attempts failed, not when
each attempt started, so the charts draw what those columns can answer. Rows the GC purged (after
AWAKEN_MAILBOX's gc_ttl_ms, a day by default) are gone from them. Prometheus has the per-event view
(deploy/grafana/dashboards/mailbox.json).
"""

from __future__ import annotations

from dataclasses import dataclass

from django.utils.safestring import SafeString

from mailbox_app.admin.charts import Chart, Level, Series, render, render_levels
from mailbox_app.contract.timefmt import format_duration_ms, format_utc_ms
from mailbox_app.services.selectors import (
    MinuteActivity,
    minute_activity,
    queue_now,
    webhook_failures,
    webhooks_retrying,
)


def duration_text(ms: float) -> str:
    return format_duration_ms(round(ms))


def _total(values: tuple[float | None, ...]) -> str:
    return f"{sum(v or 0 for v in values):,.0f} in the hour"


def _series(name: str, key: str, values: list[float | None], *, total: bool = True) -> Series:
    as_tuple = tuple(values)
    return Series(name, key, as_tuple, _total(as_tuple) if total else "")


@dataclass(frozen=True, slots=True)
class Pictures:
    charts: tuple[SafeString, ...]
    window: str  # e.g. "14:05-15:04 UTC"


def _open(minutes: list[MinuteActivity], labels: tuple[str, ...]) -> Chart:
    last = minutes[-1].open_at_end if minutes else 0
    return Chart(
        "chart-open",
        "Open dispatches (queued or claimed)",
        "At the end of each minute, the dispatches created by then and not ended by then, counted from the "
        "rows' created_at and completed_at. It cannot tell queued from claimed in the past (no row keeps "
        "its claim times), and a dead letter requeued since counts as open from its creation.",
        labels,
        lines=(Series("open", "open", tuple(float(m.open_at_end) for m in minutes), f"{last:,} now"),),
    )


def _throughput(minutes: list[MinuteActivity], labels: tuple[str, ...]) -> Chart:
    return Chart(
        "chart-throughput",
        "Throughput: created and ended per minute",
        "Bars: dispatches that ended in each minute, stacked by outcome (acked, dead letter, cancelled, "
        "superseded). Line: dispatches created in each minute.",
        labels,
        bars=(
            _series("acked", "acked", [m.acked for m in minutes]),
            _series("dead letter", "dead", [m.dead_letter for m in minutes]),
            _series("cancelled", "cancelled", [m.cancelled for m in minutes]),
            _series("superseded", "superseded", [m.superseded for m in minutes]),
        ),
        lines=(_series("created", "created", [m.created for m in minutes]),),
    )


def _latency(minutes: list[MinuteActivity], labels: tuple[str, ...]) -> Chart:
    return Chart(
        "chart-latency",
        "Latency: enqueue to end, p50 and p95",
        "For the dispatches that ran to an end (acked or dead-lettered) in each minute, the time from "
        "their enqueue (created_at) to their end (completed_at): queueing, delayed starts, retries and "
        "the run itself. No line where no dispatch ended.",
        labels,
        lines=(
            _series("p50", "p50", [m.p50_ms for m in minutes], total=False),
            _series("p95", "p95", [m.p95_ms for m in minutes], total=False),
        ),
        unit=duration_text,
    )


def _failures(minutes: list[MinuteActivity], labels: tuple[str, ...]) -> Chart:
    return Chart(
        "chart-failures",
        "Retries and dead letters per minute",
        "Retries: the attempts beyond the first of the dispatches that ended (acked or dead-lettered) in "
        "each minute, charged to the minute they ended (a row keeps how many attempts failed, not when). "
        "Dead letters: dispatches dead-lettered in each minute.",
        labels,
        bars=(
            _series("retries", "retries", [m.retries for m in minutes]),
            _series("dead letters", "dead", [m.dead_letter for m in minutes]),
        ),
    )


def _webhooks(failed: list[int], retrying: int, labels: tuple[str, ...]) -> Chart:
    return Chart(
        "chart-webhooks",
        "Webhook deliveries given up per minute",
        "Deliveries that failed for good in each minute (AWAKEN_WEBHOOK_MAX_ATTEMPTS spent, or the target "
        f"refused), by when they gave up. Pending a retry after a failed attempt now: {retrying}.",
        labels,
        bars=(Series("failed", "dead", tuple(float(n) for n in failed), f"{sum(failed):,} in the hour"),),
        lines=(),
    )


def _depth_now(now: int) -> SafeString:
    depth = queue_now(now=now)
    return render_levels(
        "chart-depth",
        "Queue depth now, by what each dispatch waits for",
        "Queued dispatches available now (ready), waiting for the start time their submit asked for "
        "(delayed), waiting to retry after a failed attempt (backoff), and claimed ones.",
        [
            Level("ready", "ready", depth.ready, "queued, claimable now"),
            Level("delayed", "delayed", depth.delayed, "queued for a start time (after_seconds)"),
            Level("backoff", "backoff", depth.backoff, "queued to retry after a failed attempt"),
            Level("claimed", "claimed", depth.claimed, "held by a worker"),
        ],
    )


def pictures(now: int) -> Pictures:
    minutes = minute_activity(now=now)
    labels = tuple(format_utc_ms(m.start)[11:16] for m in minutes)
    failed = webhook_failures(now=now, minutes=len(minutes))
    charts = (
        _depth_now(now),
        *(
            render(chart)
            for chart in (
                _open(minutes, labels),
                _throughput(minutes, labels),
                _latency(minutes, labels),
                _failures(minutes, labels),
                _webhooks(failed, webhooks_retrying(), labels),
            )
        ),
    )
    window = f"{labels[0]}–{labels[-1]} UTC" if labels else ""
    return Pictures(charts, window)
