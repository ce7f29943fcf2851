"""Run event streams (mailbox_app/realtime/events.py): reconnecting reads (spec §4.21 reconnect_sink -> Redis
Streams)."""

from __future__ import annotations

from typing import Any

from mailbox_app.realtime import events


def test_reading_events_of_an_unknown_run_yields_nothing(clean_redis: Any) -> None:
    """seed: reconnect_sink_returns_false_for_unknown_thread"""
    assert events.has_stream("run-never-existed") is False
    assert events.read_events("run-never-existed") == []
    assert events.read_events("run-never-existed", after="0-0", block_ms=50) == []


def test_reconnecting_to_a_finished_run_replays_but_yields_nothing_new(clean_redis: Any) -> None:
    """seed: reconnect_sink_returns_false_for_idle_worker"""
    start_id = events.append_event("run-idle", "run_start", {"run_id": "run-idle"})
    finish_id = events.append_event("run-idle", events.RUN_FINISH, {"run_id": "run-idle"})
    assert [e.id for e in events.read_events("run-idle")] == [start_id, finish_id]
    assert [e.type for e in events.read_events("run-idle", after=start_id)] == [events.RUN_FINISH]
    assert events.read_events("run-idle", after=finish_id) == []
    assert events.read_events("run-idle", after=finish_id, block_ms=50) == []
