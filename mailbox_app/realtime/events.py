"""Run events in a Redis Stream per run: strictly increasing ids, a bounded length, a TTL — and every
entry says which entry came before it, so a reader can tell a complete read from one with a hole.

Events an attempt emits while it runs are fenced like its database writes: `append_fenced` adds the
event only while the thread's Redis lock still holds that attempt's claim token (checked and appended in
one server-side step), so a worker resumed after its lease was reclaimed adds nothing to the stream.
Terminal events are appended after the transaction that ended the run committed: that commit is the
proof of ownership.

Retention. A stream keeps at least `AWAKEN_EVENTS_MAX_PER_RUN` events (100,000: one per token of a long
LLM answer) and lives `AWAKEN_EVENTS_TTL_MS` after its last event. Trimming drops the oldest entries
(`XADD MAXLEN ~`). Every entry carries `prev`, the id of the entry appended just before it (stored as
`<ms difference>-<seq>`, a few bytes), so a read after id A is complete exactly when its first entry's
`prev` is at or before A (`follows`): nothing needs to remember what was trimmed, and the check holds
for every batch a reader takes, however the trim interleaves with it. The script that appends picks the
entry's id itself (as `XADD *` would: the server's clock, or the last id's sequence + 1) to know it.

Finish bookkeeping, for the reconcile pass that re-emits a lost `run_finish`
(mailbox_app/services/reconcile.py): each finish carries a fingerprint of the run's state, added to a
small per-run set in the same step (`append_finish` appends a fingerprint at most once), and a sorted
set of runs whose stream is "open" (events since their last finish, or a waiting finish) scores each run
by when reconcile should look at it next.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis

from mailbox_app.conf import awaken_settings
from mailbox_app.realtime.redis_client import get_redis

RUN_START = "run_start"
RUN_FINISH = "run_finish"
RUN_RETRY = "run_retry"
NO_EVENT = "0-0"
OPEN_RUNS_KEY = "mailbox:events:open"  # run id -> when reconcile should look at it next (ms)
OPEN_CHECK_AFTER_MS = 30_000  # an open activation is first looked at this long after its first event
WAITING_CHECK_AFTER_MS = 300_000  # a waiting run is looked at again this often (its end may get lost)
# what an append does to the run's entry in OPEN_RUNS_KEY
_OPEN, _CLOSE, _WAIT = "open", "close", "wait"

# KEYS: stream, open runs, finishes, lock. ARGV: type, data, maxlen, ttl ms, run id, claim token ("": not
# fenced), fingerprint ("": not a finish), expected top id ("": any), mark, open ms, waiting ms, release
# token ("": none; else the lock is deleted first while it holds that token: a finishing attempt gives its
# thread back in the same call that appends its run_finish).
# redis-py has no conditional XADD, and a WATCH/MULTI round would cost three round trips per event on the
# hot path; this is one.
_APPEND = """
local stream, open_runs, finishes, lock = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local token, fingerprint, expected, mark = ARGV[6], ARGV[7], ARGV[8], ARGV[9]
if ARGV[12] ~= '' and redis.call('GET', lock) == ARGV[12] then redis.call('DEL', lock) end
if token ~= '' and redis.call('GET', lock) ~= token then return false end
local top = nil
if redis.call('EXISTS', stream) == 1 then
  local info = redis.call('XINFO', 'STREAM', stream)
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then top = info[i + 1] end
  end
end
if expected ~= '' and (top or '0-0') ~= expected then return false end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local function mark_run()
  if mark == 'close' then
    redis.call('ZREM', open_runs, ARGV[5])
  elseif mark == 'wait' then
    redis.call('ZADD', open_runs, now + tonumber(ARGV[11]), ARGV[5])
  else
    redis.call('ZADD', open_runs, 'LT', now + tonumber(ARGV[10]), ARGV[5])
  end
end
if fingerprint ~= '' and redis.call('SISMEMBER', finishes, fingerprint) == 1 then
  mark_run()
  return false
end
local ms, seq = now, 0
local fields = {'type', ARGV[1], 'data', ARGV[2]}
if top then
  local top_ms, top_seq = string.match(top, '^(%d+)-(%d+)$')
  top_ms, top_seq = tonumber(top_ms), tonumber(top_seq)
  if now <= top_ms then ms, seq = top_ms, top_seq + 1 end
  table.insert(fields, 'prev')
  table.insert(fields, string.format('%d-%d', ms - top_ms, top_seq))
end
local id = string.format('%d-%d', ms, seq)
redis.call('XADD', stream, 'MAXLEN', '~', ARGV[3], id, unpack(fields))
redis.call('PEXPIRE', stream, ARGV[4])
if fingerprint ~= '' then  -- after the XADD: a script that fails midway is not rolled back
  redis.call('SADD', finishes, fingerprint)
  redis.call('PEXPIRE', finishes, ARGV[4])
end
mark_run()
return id
"""
_scripts: dict[int, Any] = {}


def stream_key(run_id: str) -> str:
    return f"mailbox:events:{run_id}"


def finishes_key(run_id: str) -> str:
    """The fingerprints of the finishes appended to the run's stream (`append_finish`)."""
    return f"mailbox:events:{run_id}:finishes"


@dataclass(frozen=True, slots=True)
class RunEvent:
    id: str
    type: str
    data: dict[str, Any]
    prev: str | None = None  # the entry appended just before this one; None: the stream's first


class EventsNotRetained(Exception):
    """A read after `after` would skip events the stream no longer keeps (trimmed, or expired)."""

    def __init__(self, after: str, first_retained: RunEvent) -> None:
        self.after = after
        self.first_retained_id = first_retained.id
        self.last_trimmed_id = first_retained.prev or NO_EVENT
        lost = "the run's first events are" if after == NO_EVENT else f"the events after {after} are"
        super().__init__(
            f"{lost} no longer retained: the stream keeps at most {awaken_settings.EVENTS_MAX_PER_RUN} "
            f"events per run and its first retained event is {self.first_retained_id}; to read from "
            f"there, accepting the gap, resume after {self.last_trimmed_id} (Last-Event-ID)"
        )


def position(event_id: str) -> tuple[int, int]:
    """A Redis stream id (`<ms>-<seq>`) as a comparable pair."""
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


def follows(event: RunEvent, after: str) -> bool:
    """Whether `event` comes right after `after`: nothing was appended between them (the entry before
    it is `after` or older). False means the entries in between were trimmed."""
    return event.prev is None or position(event.prev) <= position(after)


def append_event(run_id: str, event_type: str, data: dict[str, Any]) -> str:
    event_id = _append(run_id, event_type, data)
    assert event_id is not None  # an unfenced append without a fingerprint always appends
    return event_id


def append_fenced(
    run_id: str, lock_key: str, claim_token: str, event_type: str, data: dict[str, Any]
) -> str | None:
    """Append while `lock_key` holds `claim_token`; None (nothing appended) when the attempt lost it."""
    return _append(run_id, event_type, data, lock_key=lock_key, claim_token=claim_token)


def append_finish(
    run_id: str,
    data: dict[str, Any],
    *,
    fingerprint: str,
    expected_top: str | None = None,
    release: tuple[str, str] | None = None,
) -> str | None:
    """Append the run's `run_finish` unless one with `fingerprint` was appended already (then None).
    With `expected_top`, only while the stream's last generated id is still that one ("0-0": no
    stream): a re-emission must not land after events of a run that went on meanwhile. With `release`
    (the thread lock's key and the attempt's token), the same call first deletes the lock while that
    token holds it."""
    return _append(
        run_id,
        RUN_FINISH,
        data,
        lock_key=None if release is None else release[0],
        fingerprint=fingerprint,
        expected_top=expected_top or "",
        release_token="" if release is None else release[1],
    )


def _append(
    run_id: str,
    event_type: str,
    data: dict[str, Any],
    *,
    lock_key: str | None = None,
    claim_token: str = "",
    fingerprint: str = "",
    expected_top: str = "",
    release_token: str = "",
) -> str | None:
    key = stream_key(run_id)
    event_id = _script()(
        keys=[key, OPEN_RUNS_KEY, finishes_key(run_id), lock_key or key],
        args=[
            event_type,
            json.dumps(data),
            awaken_settings.EVENTS_MAX_PER_RUN,
            awaken_settings.EVENTS_TTL_MS,
            run_id,
            claim_token,
            fingerprint,
            expected_top,
            _mark(event_type, data),
            OPEN_CHECK_AFTER_MS,
            WAITING_CHECK_AFTER_MS,
            release_token,
        ],
    )
    if event_id is None:
        return None
    return _text(event_id)


def _mark(event_type: str, data: dict[str, Any]) -> str:
    if event_type != RUN_FINISH:
        return _OPEN
    return _WAIT if data.get("status") == "waiting" else _CLOSE


def _script() -> Any:
    client = get_redis()
    script = _scripts.get(id(client))
    if script is None:
        _scripts.clear()  # (a new client after a fork)
        script = _scripts[id(client)] = client.register_script(_APPEND)
    return script


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
    run_id: str, *, after: str = NO_EVENT, count: int = 1000, block_ms: int | None = None
) -> list[RunEvent]:
    """Events strictly after `after` (exclusive), oldest first; blocks up to `block_ms` when given."""
    client = get_redis()
    entries: Any
    if block_ms is None:
        entries = client.xrange(stream_key(run_id), min=_after(after), count=count)
    else:
        result: Any = client.xread({stream_key(run_id): after}, count=count, block=block_ms)
        entries = result[0][1] if result else []
    return [decode(event_id, fields) for event_id, fields in entries]


def stream_ends(run_id: str, after: str) -> tuple[RunEvent | None, RunEvent | None]:
    """(the stream's newest event, its first event after `after`), each None when there is none; in
    one round trip."""
    pipe = get_redis().pipeline(transaction=False)
    pipe.xrevrange(stream_key(run_id), count=1)
    pipe.xrange(stream_key(run_id), min=_after(after), count=1)
    newest, first = pipe.execute()
    return (decode(*newest[0]) if newest else None), (decode(*first[0]) if first else None)


def newest_events(run_id: str, count: int) -> list[RunEvent]:
    """The run's newest `count` events, newest first (a reader that asks what the run is doing now)."""
    entries: Any = get_redis().xrevrange(stream_key(run_id), count=count)
    return [decode(event_id, fields) for event_id, fields in entries]


def last_event_id(run_id: str) -> str | None:
    """The id of the run's newest event, None when its stream is empty or gone."""
    entries: Any = get_redis().xrevrange(stream_key(run_id), count=1)
    if not entries:
        return None
    return _text(entries[0][0])


def top_id(run_id: str) -> str:
    """The last id the run's stream generated ("0-0" when there is no stream): `append_finish`'s
    `expected_top`."""
    try:
        info: Any = get_redis().xinfo_stream(stream_key(run_id))
    except redis.ResponseError:  # no such key
        return NO_EVENT
    return _text(info["last-generated-id"])


def has_stream(run_id: str) -> bool:
    return bool(get_redis().exists(stream_key(run_id)))


def due_open_runs(now: int, limit: int) -> list[str]:
    """Runs whose stream is open (events since their last finish, or waiting) and due a look at `now`."""
    ids: Any = get_redis().zrangebyscore(OPEN_RUNS_KEY, "-inf", now, start=0, num=limit)
    return [_text(run_id) for run_id in ids]


def look_again_later(run_id: str, now: int) -> None:
    """A run reconcile found still running: look at it again after OPEN_CHECK_AFTER_MS (only while it
    is still listed: a finish appended meanwhile removed it)."""
    get_redis().zadd(OPEN_RUNS_KEY, {run_id: now + OPEN_CHECK_AFTER_MS}, xx=True)


def forget_open_run(run_id: str) -> None:
    """A run that no longer exists needs no finish."""
    get_redis().zrem(OPEN_RUNS_KEY, run_id)


def decode(event_id: Any, fields: dict[Any, Any]) -> RunEvent:
    """A stream entry as a `RunEvent` (its `prev` made absolute again)."""
    raw = {_text(k): _text(v) for k, v in fields.items()}
    own = _text(event_id)
    prev = None
    if "prev" in raw:
        delta, _, seq = raw["prev"].partition("-")
        prev = f"{position(own)[0] - int(delta)}-{seq}"
    return RunEvent(id=own, type=raw.get("type", ""), data=json.loads(raw.get("data", "{}")), prev=prev)


def _after(after: str) -> str:
    return "-" if after == NO_EVENT else f"({after}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
