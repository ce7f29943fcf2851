"""1,000 concurrent SSE streams on one web process while a second client measures plain reads.

    bash scripts/with-services.sh .venv/bin/python bench/stream_bench.py [--streams 1000]

Needs DATABASE_URL / REDIS_URL (scratch, as for e2e_bench.py: migrated, mailbox/runs tables
truncated, Redis flushed). Starts the web server from the Procfile's web line
(`bench.http_bench.web_server`) with ONE worker process, submits one background run (no Celery worker:
the run exists and stays queued; the bench appends the run's events to its Redis stream itself, as an
executing attempt would), then:

  1. opens `--streams` `GET /api/v1/runs/{id}/events` streams concurrently (asyncio, raw HTTP/1.1) and
     waits until each has the run_start frame; the web worker's RSS before/after, divided by the
     number of streams, is the memory per open stream (and its thread count while they are open);
  2. while they are open, a second client (its own process, keep-alive `http.client`) issues plain
     `GET /api/v1/threads` reads back to back for `--read-seconds`, while `--events` text_delta events
     are appended one every `--event-interval` s (each fanned out to every stream);
  3. appends run_finish: every stream must end, having received exactly the run's events in order.

Targets: reads p99 ≤ 100 ms; every stream receives every event in order.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import e2e_bench as e2e
from bench.http_bench import api_token, web_server
from mailbox_app.realtime import events
from tests.support.http_sse import Frame, HttpConnection, SseStream, open_stream

TARGET_P99_MS = 100.0
HOST = "127.0.0.1"
OPEN_CONCURRENCY = 200  # connections being opened at once (the listen backlog is 2048)

# The second client: its own process, so the 1,000 stream clients' parsing does not delay it.
READER = r"""
import http.client, json, sys, time
port, token, seconds = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
headers = {"Authorization": f"Token {token}"}
latencies, statuses, end = [], set(), time.monotonic() + seconds
while time.monotonic() < end:
    began = time.perf_counter()
    conn.request("GET", "/api/v1/threads", headers=headers)
    response = conn.getresponse()
    response.read()
    latencies.append(time.perf_counter() - began)
    statuses.add(response.status)
    time.sleep(0.01)
print(json.dumps({"latencies": latencies, "statuses": sorted(statuses)}))
"""


def raise_fd_limit(needed: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard == resource.RLIM_INFINITY else max(soft, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft < needed:
        raise SystemExit(f"fd limit {soft} < {needed} needed for the streams (raise `ulimit -n`)")
    return soft


def worker_pid(master: int) -> int:
    """The single gunicorn worker (the web process that serves the streams)."""
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    if len(children) != 1:
        raise RuntimeError(f"expected one web worker under gunicorn {master}, found {children}")
    return int(children[0])


def proc_status(pid: int, field: str) -> int:
    """A number from /proc/<pid>/status (`VmRSS` in KiB, `Threads`)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


def rss_kib(pid: int) -> int:
    return proc_status(pid, "VmRSS")


def submit_run(port: int, token: str) -> str:
    async def go() -> str:
        conn = HttpConnection(HOST, port)
        body = json.dumps({"messages": [{"role": "user", "content": "stream bench"}]}).encode()
        headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
        response = await conn.request("POST", "/api/v1/threads/stream-bench/mailbox", headers, body)
        await conn.close()
        if response.status != 201:
            raise RuntimeError(f"submit answered {response.status}: {response.body!r}")
        return str(response.json()["run_id"])

    return asyncio.run(go())


@dataclass
class Outcome:
    open_s: float
    rss_before: int
    rss_after: int
    threads: int
    still_open: int
    received: list[list[Frame]]
    finish_s: float
    latencies: list[float]
    statuses: list[int]


async def _open(port: int, token: str, run_id: str, gate: asyncio.Semaphore) -> tuple[SseStream, Frame]:
    async with gate:
        stream = await open_stream(
            HOST, port, f"/api/v1/runs/{run_id}/events", {"Authorization": f"Token {token}"}
        )
        if stream.status != 200:
            raise RuntimeError(f"stream answered {stream.status}")
        frames = stream.frames()
        first = await anext(frames)
        return stream, first


async def _rest(stream: SseStream, first: Frame) -> list[Frame]:
    return [first, *[frame async for frame in stream.frames()]]


async def scenario(args: argparse.Namespace, port: int, token: str, run_id: str, pid: int) -> Outcome:
    # warm the web process (imports, pools) with one stream opened and dropped
    warm, _ = await _open(port, token, run_id, asyncio.Semaphore(1))
    await warm.close()
    await asyncio.sleep(1.0)
    rss_before = rss_kib(pid)
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)
    began = time.perf_counter()
    opened = await asyncio.gather(*(_open(port, token, run_id, gate) for _ in range(args.streams)))
    open_s = time.perf_counter() - began
    await asyncio.sleep(1.0)
    rss_after, threads = rss_kib(pid), proc_status(pid, "Threads")
    readers = [asyncio.create_task(_rest(stream, first)) for stream, first in opened]

    reader = await asyncio.create_subprocess_exec(
        sys.executable, "-c", READER, str(port), token, str(args.read_seconds),
        stdout=subprocess.PIPE,
    )  # fmt: skip
    for i in range(args.events):
        await asyncio.sleep(args.event_interval)
        await asyncio.to_thread(events.append_event, run_id, "text_delta", {"delta": f"{i} "})
    out, _ = await reader.communicate()
    still_open = sum(not task.done() for task in readers)
    await asyncio.to_thread(events.append_event, run_id, events.RUN_FINISH, {"status": "done"})
    finish_began = time.perf_counter()
    received = await asyncio.wait_for(asyncio.gather(*readers), 120)
    finish_s = time.perf_counter() - finish_began
    for stream, _ in opened:
        await stream.close()
    measured = json.loads(out)
    return Outcome(
        open_s, rss_before, rss_after, threads, still_open, list(received), finish_s, measured["latencies"],
        measured["statuses"],
    )  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--read-seconds", type=float, default=10.0)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--event-interval", type=float, default=0.4)
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    fd_limit = raise_fd_limit(2 * args.streams + 200)  # inherited by the server: sockets + Redis
    e2e.reset_state()
    log_dir = Path(tempfile.mkdtemp(prefix="awaken-stream-bench-"))
    web = web_server("route", "uvicorn", log_dir, workers=1)
    try:
        web.start()
        assert web.proc is not None
        pid = worker_pid(web.proc.pid)
        token = api_token()
        run_id = submit_run(web.port, token)
        events.append_event(run_id, events.RUN_START, {"run_id": run_id})
        print(
            f"stream bench: {args.streams} streams on one gunicorn+uvicorn worker (pid {pid}); "
            f"{args.events} events every {args.event_interval}s; reads for {args.read_seconds}s; "
            f"{os.cpu_count()} CPUs; fd limit {fd_limit}"
        )
        result = asyncio.run(scenario(args, web.port, token, run_id, pid))
    finally:
        web.stop()
    expected = [event.id for event in events.read_events(run_id)]
    in_order = sum([f.id for f in frames] == expected for frames in result.received)
    latencies = result.latencies
    p50, p99 = 1000 * e2e.percentile(latencies, 0.5), 1000 * e2e.percentile(latencies, 0.99)
    per_stream = (result.rss_after - result.rss_before) / args.streams
    ok_p99 = p99 <= TARGET_P99_MS
    ok_order = in_order == args.streams and result.still_open == args.streams
    print(f"  streams opened            {args.streams:8d}   in {result.open_s:.2f}s")
    print(f"  web RSS before / after    {result.rss_before / 1024:8.1f} / {result.rss_after / 1024:.1f} MiB")
    print(f"  memory per open stream    {per_stream:8.1f} KiB")
    print(f"  web worker threads, open  {result.threads:8d}")
    print(f"  reads (GET /threads)      {len(latencies):8d}   statuses {result.statuses}")
    print(f"  read p50 / max ms         {p50:8.2f} / {1000 * max(latencies):.2f}")
    print(f"  read p99 ms               {p99:8.2f}   target ≤ {TARGET_P99_MS:.0f}: {e2e.verdict(ok_p99)}")
    print(
        f"  streams in order to end   {in_order:8d}   of {args.streams}, {len(expected)} events each, "
        f"all ended {result.finish_s:.2f}s after run_finish: {e2e.verdict(ok_order)}"
    )
    return 1 if args.strict and not (ok_p99 and ok_order) else 0


if __name__ == "__main__":
    sys.exit(main())
