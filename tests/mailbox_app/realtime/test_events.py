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


# --- retention: every entry names the one before it ----------------------------------------------------


def _fill(run_id: str, n: int) -> list[str]:
    return [events.append_event(run_id, "text_delta", {"delta": f" w{i}"}) for i in range(n)]


def test_each_entry_names_the_entry_appended_before_it(clean_redis: Any) -> None:
    ids = _fill("run-chain", 5)
    read = events.read_events("run-chain")
    assert [e.id for e in read] == ids
    assert [e.prev for e in read] == [None, *ids[:-1]]
    assert all(events.follows(e, before) for e, before in zip(read[1:], ids, strict=False))
    assert events.follows(read[0], events.NO_EVENT)


def test_trimming_keeps_at_least_the_maximum_and_the_first_kept_entry_names_the_last_trimmed(
    clean_redis: Any, settings: Any
) -> None:
    settings.AWAKEN_EVENTS_MAX_PER_RUN = 50
    ids = _fill("run-long", 400)
    kept = events.read_events("run-long", count=1000)
    assert 50 <= len(kept) < 400  # `MAXLEN ~`: whole nodes go, never below the maximum
    assert [e.id for e in kept] == ids[-len(kept) :]
    first = kept[0]
    last_trimmed = ids[-len(kept) - 1]
    assert first.prev == last_trimmed
    # a read from the start, or after any trimmed id but the last, has a hole; after the last one it has not
    assert not events.follows(first, events.NO_EVENT)
    assert not events.follows(first, ids[0])
    assert not events.follows(first, ids[-len(kept) - 2])
    assert events.follows(first, last_trimmed)
    error = events.EventsNotRetained(ids[0], first)
    assert (error.first_retained_id, error.last_trimmed_id) == (first.id, last_trimmed)


def test_the_stream_lives_its_ttl_after_its_last_event(clean_redis: Any, settings: Any) -> None:
    settings.AWAKEN_EVENTS_TTL_MS = 60_000
    events.append_event("run-ttl", "text_delta", {"delta": "x"})
    assert 55_000 < clean_redis.pttl(events.stream_key("run-ttl")) <= 60_000


def test_ids_stay_strictly_increasing_when_appends_share_a_millisecond(clean_redis: Any) -> None:
    pipe_ids = _fill("run-fast", 300)
    positions = [events.position(i) for i in pipe_ids]
    assert positions == sorted(set(positions))


def test_a_fenced_append_without_the_claim_token_adds_nothing(clean_redis: Any) -> None:
    clean_redis.set("lock:t", "token-a")
    assert events.append_fenced("run-f", "lock:t", "token-b", "text_delta", {"delta": "x"}) is None
    assert events.has_stream("run-f") is False
    appended = events.append_fenced("run-f", "lock:t", "token-a", "text_delta", {"delta": "x"})
    assert [e.id for e in events.read_events("run-f")] == [appended]


# --- finish bookkeeping: each finish once, and the runs reconcile looks at ------------------------------


def test_a_finish_is_appended_once_per_fingerprint(clean_redis: Any) -> None:
    events.append_event("run-fin", events.RUN_START, {})
    first = events.append_finish("run-fin", {"status": "done"}, fingerprint="d1|done|5")
    assert first is not None
    assert events.append_finish("run-fin", {"status": "done"}, fingerprint="d1|done|5") is None
    assert [e.type for e in events.read_events("run-fin")] == [events.RUN_START, events.RUN_FINISH]


def test_a_re_emission_is_refused_once_anything_was_appended_after_the_top_it_saw(clean_redis: Any) -> None:
    events.append_event("run-top", events.RUN_START, {})
    seen = events.top_id("run-top")
    events.append_event("run-top", "text_delta", {"delta": "the run went on"})
    assert events.append_finish("run-top", {"status": "done"}, fingerprint="x", expected_top=seen) is None
    assert events.append_finish(
        "run-top", {"status": "done"}, fingerprint="x", expected_top=events.top_id("run-top")
    )
    assert events.top_id("run-never") == events.NO_EVENT


def test_open_runs_are_listed_until_their_finish_and_a_waiting_run_stays_listed(clean_redis: Any) -> None:
    far = 10**15
    events.append_event("run-open", events.RUN_START, {})
    events.append_event("run-wait", events.RUN_START, {})
    assert sorted(events.due_open_runs(far, 10)) == ["run-open", "run-wait"]
    assert events.due_open_runs(0, 10) == []  # not due before OPEN_CHECK_AFTER_MS has passed
    events.append_finish("run-open", {"status": "done"}, fingerprint="o|done|1")
    events.append_finish("run-wait", {"status": "waiting"}, fingerprint="w|waiting|")
    assert events.due_open_runs(far, 10) == ["run-wait"]  # its end (a cancel) may still get lost
    score = clean_redis.zscore(events.OPEN_RUNS_KEY, "run-wait")
    events.append_event("run-wait", events.RUN_START, {})  # the continuation is due sooner
    assert clean_redis.zscore(events.OPEN_RUNS_KEY, "run-wait") < score
    events.look_again_later("run-open", 0)  # only while listed: a finished run is not listed again
    assert clean_redis.zscore(events.OPEN_RUNS_KEY, "run-open") is None
