"""Background submits through the real web server, against a raw Celery baseline in the same run.

    bash scripts/with-services.sh .venv/bin/python bench/http_bench.py [--submits 500] [--clients 8]

Needs DATABASE_URL / REDIS_URL (scratch, as for e2e_bench.py: migrated, mailbox/runs tables
truncated, Redis flushed). Starts the web server exactly as `make run` does (gunicorn, 2 uvicorn ASGI
workers, in its own process group on a free loopback port) and `--workers` (2) Celery worker
processes, then:

  (a) raw Celery no-op tasks/s on the same broker and workers (e2e_bench's measurement);
  (h) `--clients` keep-alive HTTP clients POST `--submits` background submits (`noop` agent) over 100
      threads to `/api/v1/threads/{id}/mailbox` with a token: submits/s and per-request latency
      p50/p99, and end-to-end runs/s = submits / (first request -> all acked).
      Targets: ≥ 250 submits/s, p99 ≤ 50 ms, runs/s ≥ 0.5 × (a).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import e2e_bench as e2e  # noqa: I001  (first: it sets up Django with the bench agents)

from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

from mailbox_app.store import conformance
from mailbox_app.contract.mailbox import DispatchStatus

TARGET_SUBMITS = 250.0
TARGET_P99_MS = 50.0
TARGET_RUNS_OVER_RAW = 0.5
THREADS = 100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def web_command(port: int, workers: int = 2) -> list[str]:
    """The web server as the Procfile (`make run`) starts it: gunicorn with uvicorn (ASGI) workers."""
    return [
        sys.executable, "-m", "gunicorn", "awaken_project.asgi:application",
        "--worker-class", "uvicorn_worker.UvicornWorker", "--bind", f"127.0.0.1:{port}",
        "--workers", str(workers), "--timeout", "0", "--graceful-timeout", "3",
    ]  # fmt: skip


class WebServer:
    """The web server as `make run` starts it (`web_command`), in its own process group."""

    def __init__(
        self, port: int, log: Path, *, workers: int = 2, extra_env: dict[str, str] | None = None
    ) -> None:
        self.port, self.log, self.workers = port, log, workers
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ) | {"AWAKEN_API_THROTTLE_RATE": "1000000/minute"} | self.extra_env
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                web_command(self.port, self.workers),
                cwd=e2e.ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        e2e.wait_until(self._ready, 60, "the web server", 0.1)

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"web server exited:\n{self.log.read_text()[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            conn.request("GET", "/readyz")
            return conn.getresponse().status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)


def api_token() -> str:
    user, _ = get_user_model().objects.get_or_create(username="bench")
    token, _ = Token.objects.get_or_create(user=user)
    return str(token.key)


def http_submits(
    port: int, token: str, submits: int, clients: int, tag: str
) -> tuple[float, float, list[float]]:
    """(submits/s, runs/s end to end, per-request latencies in s)."""
    base = conformance.count_dispatches_by_status(DispatchStatus.ACKED)
    latencies: list[float] = []
    errors: list[str] = []
    done_at: list[float] = []
    body = json.dumps({"messages": [{"role": "user", "content": "go"}], "agent_id": "noop"})
    headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}

    def client(k: int, stop: threading.Event) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine = range(k, submits, clients)
        for i in mine:
            if stop.is_set():
                return
            began = time.perf_counter()
            conn.request("POST", f"/api/v1/threads/bench-{tag}-{i % THREADS:03d}/mailbox", body, headers)
            response = conn.getresponse()
            response.read()
            latencies.append(time.perf_counter() - began)
            if response.status != 201:
                errors.append(f"{response.status}")
        done_at.append(time.perf_counter())

    started = time.perf_counter()
    with e2e.in_threads(clients, client) as thread_errors:

        def all_acked() -> bool:
            if thread_errors or errors:
                raise RuntimeError(f"submit failed: {(thread_errors or errors)[0]!r}")
            return conformance.count_dispatches_by_status(DispatchStatus.ACKED) - base >= submits

        e2e.wait_until(all_acked, 180, f"{submits} runs to be acked", 0.02)
        elapsed = time.perf_counter() - started
    return submits / (max(done_at) - started), submits / elapsed, latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--submits", type=int, default=500)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--raw-tasks", type=int, default=4000)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    e2e.reset_state()
    log_dir = Path(tempfile.mkdtemp(prefix="awaken-http-bench-"))
    workers = e2e.Workers(args.workers, "threads", 8, log_dir)
    web = WebServer(free_port(), log_dir / "web.log")
    ok = True
    try:
        workers.start()
        workers.wait_ready()
        web.start()
        token = api_token()
        print(
            f"http bench: gunicorn + 2 uvicorn (ASGI) workers; {args.workers} Celery workers; "
            f"{os.cpu_count()} CPUs"
        )
        e2e.raw_throughput(workers, 400, 8)
        http_submits(web.port, token, 100, args.clients, "warm")
        e2e.quiesce(workers)
        raws, submits, runs, lat = [], [], [], []
        for rep in range(args.reps):
            raws.append(e2e.raw_throughput(workers, args.raw_tasks, 8))
            e2e.quiesce(workers)
            rate, run_rate, latencies = http_submits(web.port, token, args.submits, args.clients, f"r{rep}")
            submits.append(rate)
            runs.append(run_rate)
            lat += latencies
            e2e.quiesce(workers)
            print(
                f"  rep {rep + 1}: raw {raws[-1]:.0f} tasks/s; "
                f"http {rate:.0f} submits/s, {run_rate:.0f} runs/s"
            )
        raw, rate, run_rate = statistics.median(raws), statistics.median(submits), statistics.median(runs)
        p50, p99 = 1000 * e2e.percentile(lat, 0.5), 1000 * e2e.percentile(lat, 0.99)
        checks = (
            ("submits/s", rate, f"≥ {TARGET_SUBMITS:.0f}", rate >= TARGET_SUBMITS),
            ("submit p50 ms", p50, "", True),
            ("submit p99 ms", p99, f"≤ {TARGET_P99_MS:.0f}", p99 <= TARGET_P99_MS),
            ("runs/s end to end", run_rate, "", True),
            ("raw Celery tasks/s", raw, "", True),
            (
                "runs/s ÷ raw",
                run_rate / raw,
                f"≥ {TARGET_RUNS_OVER_RAW}",
                run_rate / raw >= TARGET_RUNS_OVER_RAW,
            ),
        )
        for label, value, target, met in checks:
            verdict = f"target {target}: {e2e.verdict(met)}" if target else ""
            print(f"  {label:22s}{value:10.2f}   {verdict}")
            ok &= met
    finally:
        web.stop()
        workers.stop()
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
