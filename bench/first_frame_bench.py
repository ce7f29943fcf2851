"""The first SSE frame of a foreground turn, one at a time, on an idle `make run` stack.

    bash scripts/with-services.sh .venv/bin/python bench/first_frame_bench.py [--turns 60]

Needs DATABASE_URL / REDIS_URL (scratch, as for e2e_bench.py). Starts `make run` as it ships
(bench/http_bench.py `make_run`: the Procfile's web, worker, webhooks and beat; the built-in echo agent),
then, one after another, `--turns` foreground turns: `POST /api/v1/runs` with `"stream": true` on a new
connection each, timing from the request's first byte to the response head, to the first event frame
(the run's `run_start`, written by the worker that started it) and to the stream's end. Each turn is on
a thread of its own; the first `--warm` turns are not counted.

Target (issue 19): first frame p50 ≤ 15 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import e2e_bench as e2e
from bench import http_bench as hb
from tests.support.http_sse import open_stream

TARGET_FIRST_FRAME_MS = 15.0


async def one_turn(port: int, token: str, thread_id: str) -> tuple[float, float, float, str]:
    """(head, first frame, end) in seconds after the request was sent, and the first frame's event."""
    body = json.dumps(
        {"thread_id": thread_id, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    )
    headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
    began = time.perf_counter()
    stream = await open_stream("127.0.0.1", port, "/api/v1/runs", headers, method="POST", body=body.encode())
    head = time.perf_counter() - began
    if stream.status != 200:
        raise RuntimeError(f"turn answered {stream.status}")
    first, event = 0.0, ""
    async for frame in stream.frames():
        if not first:
            first, event = time.perf_counter() - began, frame.event
    await stream.close()
    return head, first, time.perf_counter() - began, event


async def turns(port: int, token: str, count: int) -> list[tuple[float, float, float, str]]:
    return [await one_turn(port, token, f"ff-{time.time_ns()}-{i}") for i in range(count)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--turns", type=int, default=60)
    parser.add_argument("--warm", type=int, default=10)
    parser.add_argument("--strict", action="store_true", help="exit 1 when the target is missed")
    args = parser.parse_args()
    e2e.reset_state()
    log_dir = Path(tempfile.mkdtemp(prefix="awaken-first-frame-"))
    stack = hb.make_run(log_dir)
    try:
        stack.start()
        hb.wait_for_workers()
        results = asyncio.run(turns(stack.port, hb.api_token(), args.warm + args.turns))[args.warm :]
    finally:
        stack.stop()
    events = {event for *_, event in results}
    print(f"first frame bench: {args.turns} foreground turns one at a time; first events {sorted(events)}")
    for label, index in (("response head", 0), ("first frame", 1), ("stream end", 2)):
        values = [float(r[index]) for r in results]
        print(f"  {label:14s} p50 {hb.ms(values, 0.5):7.1f} ms   p99 {hb.ms(values, 0.99):7.1f} ms")
    p50 = hb.ms([r[1] for r in results], 0.5)
    met = p50 <= TARGET_FIRST_FRAME_MS
    print(f"  first frame p50 target ≤ {TARGET_FIRST_FRAME_MS:.0f} ms: {e2e.verdict(met)}")
    return 1 if args.strict and not met else 0


if __name__ == "__main__":
    sys.exit(main())
