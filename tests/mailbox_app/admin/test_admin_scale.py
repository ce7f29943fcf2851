"""The overview at scale: 10,000 dispatches in the last hour beside 100,000 older terminal ones (a day of
history the GC has not purged yet). The chart reads go through the partial indexes of mailbox_dispatch,
never a scan of the table (EXPLAIN), the charts count every row of the hour, and the page's render time
is measured and printed (`-s` shows it; docs/admin.md has the numbers).

The rows are inserted in bulk with one INSERT ... SELECT: 110,000 rows through the store would take
minutes; their columns are what the store writes for each status (tests/mailbox_app/admin/history.py
drives the real statements for the charts' exact numbers)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse

from mailbox_app.contract.ids import now_ms
from mailbox_app.services.selectors import (
    ACTIVITY,
    MINUTE_MS,
    QUEUE_NOW,
    mailbox_overview,
    minute_activity,
    queue_now,
    webhook_failures,
)

pytestmark = pytest.mark.django_db

HOUR_ROWS = 10_000
OLD_ROWS = 100_000

# Spread over the window (its first minute up to 31 s ago): every 20th row is queued (its own thread),
# every 33rd dead-lettered after 4 retries, every 50th cancelled, the rest acked; each ended 2-30 s after
# its enqueue, before now. The old rows were acked 1-23 h ago.
SEED = """
INSERT INTO mailbox_dispatch (dispatch_id, thread_id, run_id, priority, dispatch_epoch, status,
                              available_at, attempt_count, max_attempts, created_at, updated_at,
                              completed_at, agent_key)
SELECT 'h-' || i, 't-h-' || i, 'r-h-' || i, 128, 0, s.status, c.at, s.attempts, 5, c.at,
       CASE WHEN s.status = 'queued' THEN c.at ELSE c.at + 2000 + (i %% 29) * 1000 END,
       CASE WHEN s.status = 'queued' THEN NULL ELSE c.at + 2000 + (i %% 29) * 1000 END, ''
  FROM generate_series(1, %(hour_rows)s) AS i,
       LATERAL (SELECT %(start)s + (i - 1)::bigint * (%(now)s - 31000 - %(start)s) / %(hour_rows)s AS at) c,
       LATERAL (SELECT CASE WHEN i %% 20 = 0 THEN 'queued' WHEN i %% 33 = 0 THEN 'dead_letter'
                            WHEN i %% 50 = 0 THEN 'cancelled' ELSE 'acked' END AS status,
                       CASE WHEN i %% 20 <> 0 AND i %% 33 = 0 THEN 4 ELSE 0 END AS attempts) s;
INSERT INTO mailbox_dispatch (dispatch_id, thread_id, run_id, priority, dispatch_epoch, status,
                              available_at, attempt_count, max_attempts, created_at, updated_at,
                              completed_at, agent_key)
SELECT 'o-' || i, 't-o-' || (i %% 5000), 'r-o-' || i, 128, 0, 'acked', at, 0, 5, at, at + 5000, at + 5000, ''
  FROM generate_series(1, %(old_rows)s) AS i,
       LATERAL (SELECT %(now)s - 3600000 * 23 + i::bigint * 3600000 * 22 / %(old_rows)s AS at) c;
ANALYZE mailbox_dispatch;
"""


def _plan(statement: str, params: dict[str, Any]) -> dict[str, Any]:
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (FORMAT JSON) " + statement, params)
        raw = cursor.fetchone()[0]
    parsed = raw if isinstance(raw, list) else json.loads(raw)
    plan: dict[str, Any] = parsed[0]["Plan"]
    return plan


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(node for child in plan.get("Plans", []) for node in _nodes(child))]


def _dispatch_scans(plan: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (node["Node Type"], node.get("Index Name", ""))
        for node in _nodes(plan)
        if node.get("Relation Name") == "mailbox_dispatch" or "Index Name" in node
    ]


def test_the_overview_reads_the_hour_through_the_indexes_and_renders_it(
    admin_client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    now = now_ms()
    start = (now // MINUTE_MS - 59) * MINUTE_MS
    with connection.cursor() as cursor:
        for statement in filter(str.strip, SEED.split(";")):
            params = {"now": now, "start": start, "hour_rows": HOUR_ROWS, "old_rows": OLD_ROWS}
            cursor.execute(statement, params)

    activity = _dispatch_scans(_plan(ACTIVITY, {"start": start, "end": now + 1, "minutes": 60}))
    depth = _dispatch_scans(_plan(QUEUE_NOW, {"now": now}))
    for scans in (activity, depth):
        assert not [s for s in scans if s[0] == "Seq Scan"], scans
    assert ("Bitmap Index Scan", "dispatch_terminal_idx") in activity, activity

    minutes = minute_activity(now=now)
    assert sum(m.created for m in minutes) == HOUR_ROWS
    assert sum(m.completed for m in minutes) == HOUR_ROWS - HOUR_ROWS // 20
    assert minutes[-1].open_at_end == HOUR_ROWS // 20  # the queued ones

    timings = []
    for _ in range(3):
        began = time.perf_counter()
        response = admin_client.get(reverse("admin:mailbox_app_dispatch_overview"))
        timings.append(time.perf_counter() - began)
        assert response.status_code == 200 and 'id="chart-throughput"' in response.content.decode()
    reads = {name: _timed(read) for name, read in _reads(now).items()}
    with capsys.disabled():
        print(
            f"\noverview with {HOUR_ROWS} dispatches in the hour and {OLD_ROWS} older: "
            f"{', '.join(f'{t * 1000:.0f} ms' for t in timings)}; "
            f"reads: {', '.join(f'{name} {t * 1000:.1f} ms' for name, t in reads.items())}; "
            f"plans: activity {activity}, depth {depth}"
        )


def _reads(now: int) -> dict[str, Callable[[], object]]:
    return {
        "minute_activity": lambda: minute_activity(now=now),
        "queue_now": lambda: queue_now(now=now),
        "webhook_failures": lambda: webhook_failures(now=now),
        "counts by status (whole table)": lambda: mailbox_overview(now=now),
    }


def _timed(read: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        read()
        best = min(best, time.perf_counter() - began)
    return best
