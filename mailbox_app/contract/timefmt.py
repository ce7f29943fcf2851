"""Times and durations as people read them (the admin, the why-blocked reasons). Pure."""

from __future__ import annotations

from datetime import UTC, datetime


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
