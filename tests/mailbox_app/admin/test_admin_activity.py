"""The overview's charts: the minute-by-minute reads (mailbox_app/services/selectors.py) give the exact
numbers of a history written through the store with a controlled clock, and the SVG (charts.py) is
well formed, titled, and draws what it is given (gaps too)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from mailbox_app import store
from mailbox_app.admin.charts import Chart, Level, Series, nice_ceiling, render, render_levels
from mailbox_app.contract.mailbox import DispatchRecord, RunDispatchResult
from mailbox_app.models import WebhookDelivery, WebhookDeliveryStatus
from mailbox_app.services.selectors import MINUTE_MS, minute_activity, queue_now, webhook_failures
from tests.support.dispatches import make_dispatch

pytestmark = pytest.mark.django_db

NOW = 1_800_000_000_000 + 59 * MINUTE_MS + 30_000  # half a minute into the window's last minute
START = (NOW // MINUTE_MS - 59) * MINUTE_MS  # the window's first minute


def at(minute: int, second: float = 0) -> int:
    return START + minute * MINUTE_MS + int(second * 1000)


def enqueue(dispatch_id: str, created: int, *, available: int | None = None) -> None:
    store.enqueue(
        make_dispatch(dispatch_id, f"t-{dispatch_id}", created_at=created, available_at=available or created)
    )


def claim(dispatch_id: str, now: int) -> DispatchRecord:
    [claimed] = store.claim(f"t-{dispatch_id}", "w:1", 60_000, now)
    assert store.try_start(dispatch_id, claimed.claim_token or "", f"i-{now}", "w:1", now) is not None
    return claimed


def settle(claimed: DispatchRecord, outcome: store.Settle, now: int) -> None:
    result = RunDispatchResult(run_id=claimed.run_id, dispatch_instance_id=f"i-{now}", status="done")
    assert store.try_settle(claimed.dispatch_id, claimed.claim_token or "", outcome, result, now) is not None


def seed() -> None:
    enqueue("d-old", START - 5 * MINUTE_MS)  # queued since before the window: open all along
    enqueue("d1", at(10, 5))
    settle(claim("d1", at(10, 6)), store.Settle.ACK, at(10, 20))  # 15 s
    enqueue("d2", at(10, 30))
    for second in (31, 40):  # two failed attempts
        failed = claim("d2", at(11, second))
        store.nack("d2", failed.claim_token or "", at(11, second), "transient", at(11, second))
    settle(claim("d2", at(12, 1)), store.Settle.ACK, at(12, 30))  # 2 min after its enqueue
    enqueue("d3", at(20, 1))
    settle(claim("d3", at(20, 2)), store.Settle.DEAD_LETTER, at(20, 3))  # a permanent failure
    enqueue("d4", at(20, 10))
    assert store.cancel("d4", at(21, 0)) is not None
    enqueue("d5", at(30))
    claim("d5", at(30, 1))  # still running
    enqueue("d-later", at(40), available=NOW + 600_000)  # a delayed start
    enqueue("d-retry", at(41))
    failed = claim("d-retry", at(41, 1))
    store.nack("d-retry", failed.claim_token or "", NOW + 60_000, "transient", at(41, 2))  # backoff


def test_minute_activity_counts_what_the_rows_hold() -> None:
    seed()
    minutes = minute_activity(now=NOW)
    assert len(minutes) == 60 and minutes[0].start == START and minutes[-1].start == at(59)
    by = {m.start: m for m in minutes}
    created = {i: by[at(i)].created for i in range(60) if by[at(i)].created}
    assert created == {10: 2, 20: 2, 30: 1, 40: 1, 41: 1}
    ended = {
        i: (m.acked, m.dead_letter, m.cancelled, m.superseded)
        for i in range(60)
        if (m := by[at(i)]).completed
    }
    assert ended == {10: (1, 0, 0, 0), 12: (1, 0, 0, 0), 20: (0, 1, 0, 0), 21: (0, 0, 1, 0)}
    assert {i: by[at(i)].retries for i in range(60) if by[at(i)].retries} == {12: 2}
    assert (by[at(10)].p50_ms, by[at(10)].p95_ms) == (15_000, 15_000)
    assert by[at(12)].p50_ms == 120_000 and by[at(11)].p50_ms is None
    assert by[at(20)].p50_ms == 2_000  # a dead letter ran to an end too; a cancellation did not
    # open at each minute's end: d-old all along; d2 from minute 10 to 12; d4 20-21; d5, d-later, d-retry
    opened = [m.open_at_end for m in minutes]
    assert opened[:10] == [1] * 10
    assert opened[10:13] == [2, 2, 1]
    assert opened[19:22] == [1, 2, 1]
    assert opened[30] == 2 and opened[40] == 3 and opened[41:] == [4] * 19


def test_queue_now_tells_delayed_starts_from_backoffs() -> None:
    seed()
    depth = queue_now(now=NOW)
    assert (depth.ready, depth.delayed, depth.backoff, depth.claimed) == (1, 1, 1, 1)


def test_webhook_failures_per_minute_by_when_they_gave_up() -> None:
    for delivery_id, status, updated in (
        ("w1", WebhookDeliveryStatus.FAILED, at(5, 1)),
        ("w2", WebhookDeliveryStatus.FAILED, at(5, 50)),
        ("w3", WebhookDeliveryStatus.FAILED, START - 1),  # before the window
        ("w4", WebhookDeliveryStatus.PENDING, at(7)),
    ):
        WebhookDelivery.objects.create(
            delivery_id=delivery_id, run_id="r", thread_id="t", event="run.finished",
            url="https://x.example", payload={}, status=status, attempts=1, next_attempt_at=updated,
            created_at=updated, updated_at=updated,
        )  # fmt: skip
    failed = webhook_failures(now=NOW)
    assert len(failed) == 60 and failed[5] == 2 and sum(failed) == 2


# --- the SVG ------------------------------------------------------------------------------------

SVG = "{http://www.w3.org/2000/svg}"


def parse(markup: str) -> ET.Element:
    return ET.fromstring(markup.replace("<svg ", f'<svg xmlns="{SVG[1:-1]}" ', 1))


def test_a_chart_is_well_formed_titled_and_hoverable() -> None:
    labels = ("14:00", "14:01", "14:02")
    chart = Chart(
        "chart-x", "Things & <stuff>", "What it shows.", labels,
        bars=(Series("acked", "acked", (1, 0, 3)),),
        lines=(Series("p95", "p95", (2.0, None, 5.0)),),
    )  # fmt: skip
    figure = parse(str(render(chart)))
    svg = figure.find(f"{SVG}svg")
    assert svg is not None and svg.get("role") == "img"
    assert svg.findtext(f"{SVG}title") == "Things & <stuff>"  # escaped in the markup, read back whole
    assert svg.findtext(f"{SVG}desc") == "What it shows."
    paths = {p.get("data-series"): p.get("d") or "" for p in svg.iter(f"{SVG}path")}
    assert paths["acked"].count("Z") == 2  # no bar for the zero
    assert paths["p95"].count("M") == 2 and "L" not in paths["p95"]  # the gap lifts the pen
    hovers = [t.text for r in svg.iter(f"{SVG}rect") for t in r.iter(f"{SVG}title")]
    assert hovers == ["14:00: acked 1, p95 2", "14:01: acked 0, p95 —", "14:02: acked 3, p95 5"]


def test_levels_write_their_numbers() -> None:
    figure = parse(str(render_levels("chart-d", "Depth", "Now.", [Level("ready", "ready", 7, "claimable")])))
    texts = [t.text for t in figure.iter(f"{SVG}text")]
    assert "ready" in texts and "7" in texts


@pytest.mark.parametrize(
    ("value", "top"), [(0, 1), (0.4, 0.5), (1, 1), (3, 5), (7, 10), (12, 20), (2_001, 5_000)]
)
def test_nice_ceiling(value: float, top: float) -> None:
    assert nice_ceiling(value) == top
