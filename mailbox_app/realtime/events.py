"""Run events in a Redis Stream per run: strictly increasing ids, bounded length, a TTL.

Events an attempt emits while it runs are fenced like its database writes: `append_fenced` adds the
event only while the thread's Redis lock still holds that attempt's claim token (checked and appended in
one server-side step), so a worker resumed after its lease was reclaimed adds nothing to the stream.
Terminal events are appended after the transaction that ended the run committed: that commit is the
proof of ownership.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mailbox_app.realtime.redis_client import get_redis

STREAM_MAXLEN = 10_000
STREAM_TTL_S = 24 * 3600
RUN_START = "run_start"
RUN_FINISH = "run_finish"
RUN_RETRY = "run_retry"

# KEYS: lock, stream; ARGV: token, type, data, maxlen, ttl. redis-py has no conditional XADD, and a
# WATCH/MULTI round would cost three round trips per event on the hot path; this is one.
_FENCED_XADD = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'type', ARGV[2], 'data', ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[5])
return id
"""


def stream_key(run_id: str) -> str:
    return f"mailbox:events:{run_id}"


@dataclass(frozen=True, slots=True)
class RunEvent:
    id: str
    type: str
    data: dict[str, Any]


def append_event(run_id: str, event_type: str, data: dict[str, Any]) -> str:
    client = get_redis()
    key = stream_key(run_id)
    pipe = client.pipeline(transaction=False)
    pipe.xadd(key, {"type": event_type, "data": json.dumps(data)}, maxlen=STREAM_MAXLEN, approximate=True)
    pipe.expire(key, STREAM_TTL_S)
    event_id, _ = pipe.execute()
    return event_id.decode() if isinstance(event_id, bytes) else str(event_id)


def append_fenced(
    run_id: str, lock_key: str, claim_token: str, event_type: str, data: dict[str, Any]
) -> str | None:
    """Append while `lock_key` holds `claim_token`; None (nothing appended) when the attempt lost it."""
    script = get_redis().register_script(_FENCED_XADD)
    event_id = script(
        keys=[lock_key, stream_key(run_id)],
        args=[claim_token, event_type, json.dumps(data), STREAM_MAXLEN, STREAM_TTL_S],
    )
    if event_id is None:
        return None
    return event_id.decode() if isinstance(event_id, bytes) else str(event_id)


def finish_payload(
    run_id: str,
    dispatch_id: str,
    status: str,
    termination: dict[str, Any] | None,
    final_output: str | None,
) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "dispatch_id": dispatch_id,
        "status": status,
        "termination": termination,
        "final_output": final_output,
    }


def read_events(
    run_id: str, *, after: str = "0-0", count: int = 1000, block_ms: int | None = None
) -> list[RunEvent]:
    """Events strictly after `after` (exclusive), oldest first; blocks up to `block_ms` when given."""
    client = get_redis()
    entries: Any
    if block_ms is None:
        entries = client.xrange(stream_key(run_id), min=f"({after}" if after != "0-0" else "-", count=count)
    else:
        result: Any = client.xread({stream_key(run_id): after}, count=count, block=block_ms)
        entries = result[0][1] if result else []
    return [_decode(event_id, fields) for event_id, fields in entries]


def last_event_id(run_id: str) -> str | None:
    """The id of the run's newest event, None when its stream is empty or gone."""
    entries: Any = get_redis().xrevrange(stream_key(run_id), count=1)
    if not entries:
        return None
    event_id = entries[0][0]
    return event_id.decode() if isinstance(event_id, bytes) else str(event_id)


def has_stream(run_id: str) -> bool:
    return bool(get_redis().exists(stream_key(run_id)))


def _decode(event_id: Any, fields: dict[Any, Any]) -> RunEvent:
    def s(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    raw = {s(k): s(v) for k, v in fields.items()}
    return RunEvent(id=s(event_id), type=raw.get("type", ""), data=json.loads(raw.get("data", "{}")))
