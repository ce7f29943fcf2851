"""The JSON both apps send about a run: the run as `GET runs/{id}` answers it — the API's detail route
(runs_app/api/serializers.py) and a webhook's `run` (mailbox_app/webhooks/outbox.py) are the same
document — and times as ISO 8601 UTC with milliseconds. Pure: no I/O."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from mailbox_app.contract.storage import RunRecord

RUN_TIME_FIELDS = ("created_at", "started_at", "finished_at", "updated_at", "deadline_at")


def iso_ms(value: int | None) -> str | None:
    """Unix milliseconds as `2026-12-07T18:00:00.000Z`; None stays None."""
    if value is None:
        return None
    return (
        datetime.fromtimestamp(value / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def run_json(run: RunRecord) -> dict[str, Any]:
    """The run's public document: its fields, times as ISO strings, and what it used — summed over its
    attempts and per attempt (mailbox_app/contract/usage.py) — under `usage`."""
    data = run.model_dump(mode="json")
    for name in RUN_TIME_FIELDS:
        data[name] = iso_ms(data[name])
    attempts = data.pop("usage_attempts")
    for attempt in attempts:
        attempt["recorded_at"] = iso_ms(attempt["recorded_at"])
    data["usage"] = {
        "input_tokens": run.input_tokens,
        "output_tokens": run.output_tokens,
        "cost": data.pop("cost"),
        "attempts": attempts,
    }
    return data
