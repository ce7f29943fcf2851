"""The client's pure parts: the SSE decoder (what counts as a whole frame) and the resume budget."""

from __future__ import annotations

import httpx
import pytest
from awaken_client import Event, StreamPolicy
from awaken_client.calls import messages_json
from awaken_client.resume import StreamState
from awaken_client.sse import SseDecoder


def _feed(decoder: SseDecoder, text: str) -> list[Event]:
    return [e for line in text.split("\n") if (e := decoder.feed(line)) is not None]


def test_frames_end_at_a_blank_line_and_comments_are_counted() -> None:
    decoder = SseDecoder()
    frames = _feed(decoder, ': keep-alive\n\nid: 1-0\nevent: text_delta\ndata: {"delta": "a"}\n\nid: 1-1\r')
    assert [(f.id, f.type, f.data) for f in frames] == [("1-0", "text_delta", {"delta": "a"})]
    assert decoder.keepalives == 1
    decoder.reset()  # the connection dropped mid-frame: the partial frame is never handed out
    assert _feed(decoder, "\n") == []


def test_multi_line_data_is_joined_and_non_json_kept_as_text() -> None:
    decoder = SseDecoder()
    [frame] = _feed(decoder, "id: 2-0\ndata: line one\ndata: line two\n\n")
    assert (frame.type, frame.data) == ("message", "line one\nline two")


def test_the_resume_budget_counts_drops_since_the_last_event() -> None:
    state = StreamState(
        "run-1", None, StreamPolicy(max_reconnects=2, retry_delay_s=0.1, max_retry_delay_s=0.15)
    )
    drop = httpx.ReadError("gone")
    assert [state.on_drop(drop), state.on_drop(drop)] == [0.1, 0.15]
    with pytest.raises(httpx.ReadError):
        state.on_drop(drop)
    fresh = StreamState("run-1", "5-0", StreamPolicy(max_reconnects=1))
    fresh.on_drop(drop)
    [event] = _feed(fresh.decoder, "id: 6-0\nevent: run_finish\ndata: {}\n\n")
    fresh.on_event(event)
    assert (fresh.last_event_id, fresh.finished, fresh.reconnects) == ("6-0", True, 1)
    assert fresh.on_drop(drop) > 0  # an event in between: the budget starts again
    assert fresh.resume_call().headers["Last-Event-ID"] == "6-0"


def test_a_string_is_one_user_message() -> None:
    assert messages_json("hi") == [{"role": "user", "content": "hi"}]
    assert messages_json([{"role": "system", "content": "be brief"}]) == [
        {"role": "system", "content": "be brief"}
    ]
