"""Background submits over HTTP: the submit route against the HTTP floor, and the Procfile's processes.

    bash scripts/with-services.sh .venv/bin/python bench/http_bench.py [--submits 1000] [--clients 8]

Needs DATABASE_URL / REDIS_URL (scratch: migrated, the mailbox/runs tables truncated, Redis flushed).
Every client opens a connection per request; `--submits` background submits go over 100 threads to
`POST /api/v1/threads/{id}/mailbox` with a token. Two parts, each its own comparison in one run:

  (f) floor: the HTTP floor (bench/http_floor: a plain DRF view, DRF's token authentication, a
      serializer, one INSERT in a transaction, one Celery message on commit) and the project's web
      server, each started from the Procfile's `web` line (the floor with its own application), Celery
      workers and beat stopped so that only the submit path counts; reps alternate floor / route.
      Reports submits/s and p50 / p99 of each, and route ÷ floor (target ≥ 0.8). `--shapes` adds other
      server shapes (`gthread`: gunicorn's threaded WSGI worker, 2 × 8 threads) for the record.
  (p) procfile: `make run` as it ships (awaken_project/devrun.py: the Procfile's web, worker, webhooks and
      beat), the built-in echo agent: submits/s, p50 / p99, and runs/s end to end (first request to
      the last run acked). Targets ≥ 80 submits/s, p99 ≤ 150 ms, runs/s ≥ 0.9 × submits/s.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import e2e_bench as e2e  # noqa: I001  (first: it sets up Django with the bench agents)

from django.contrib.auth import get_user_model
from django.db import connection
from honcho.environ import parse_procfile  # type: ignore[import-untyped]
from rest_framework.authtoken.models import Token

from awaken_project.celery import app as celery_app
from bench.http_floor import QUEUE as FLOOR_QUEUE
from bench.http_floor import TABLE as FLOOR_TABLE
from mailbox_app.contract.mailbox import DispatchStatus
from mailbox_app.realtime.redis_client import get_redis
from mailbox_app.store import conformance

TARGET_OVER_FLOOR = 0.8
TARGET_SUBMITS = 80.0
TARGET_P99_MS = 150.0
TARGET_RUNS_OVER_SUBMITS = 0.9
THREADS = 100
APPS = {"route": "awaken_project", "floor": "bench.http_floor"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def procfile() -> dict[str, str]:
    return dict(parse_procfile((e2e.ROOT / "Procfile").read_text()).processes)


def web_line(app: str, shape: str) -> str:
    """The Procfile's web line serving `app` (a package with asgi.py / wsgi.py) in `shape`."""
    line = procfile()["web"].replace("awaken_project.asgi:application", f"{APPS[app]}.asgi:application")
    if shape == "gthread":
        line = line.replace(".asgi:application", ".wsgi:application").replace(
            "--worker-class uvicorn_worker.UvicornWorker", "--worker-class gthread --threads 8"
        )
    return line


class Server:
    """A command in its own process group, ready when `GET ready_path` answers (any status < 500)."""

    def __init__(self, command: str, port: int, log: Path, env: dict[str, str], ready_path: str) -> None:
        self.command, self.port, self.log, self.env, self.ready_path = command, port, log, env, ready_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                ["bash", "-c", self.command],
                cwd=e2e.ROOT,
                env=dict(os.environ)
                | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
                | self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        e2e.wait_until(self._ready, 120, f"`{self.command[:60]}…`", 0.1)

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.command[:60]} exited:\n{self.log.read_text()[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            conn.request("GET", self.ready_path)
            return conn.getresponse().status < 500
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def web_server(app: str, shape: str, log_dir: Path, *, workers: int = 2) -> Server:
    """The Procfile's web line for `app` in `shape` (`--workers` from WEB_CONCURRENCY, as the line reads)."""
    port = free_port()
    env = {
        "PORT": str(port),
        "WEB_HOST": "127.0.0.1",
        "WEB_CONCURRENCY": str(workers),
        "AWAKEN_API_THROTTLE_RATE": "1000000/minute",
    }
    log = log_dir / f"{app}-{shape}.log"
    return Server(web_line(app, shape), port, log, env, "/api/v1/threads/x/mailbox")


def api_token() -> str:
    user, _ = get_user_model().objects.get_or_create(username="bench")
    token, _ = Token.objects.get_or_create(user=user)
    return str(token.key)


@dataclass
class Submits:
    rate: float  # submits/s: first request to the last response
    latencies: list[float]  # seconds, connect included
    started: float  # perf_counter of the first request


def post_submits(port: int, token: str, submits: int, *, clients: int, tag: str, agent: str) -> Submits:
    """`submits` POSTs over THREADS threads from `clients` threads, a new connection per request."""
    latencies: list[float] = []
    errors: list[str] = []
    body = json.dumps({"messages": [{"role": "user", "content": "go"}], "agent_id": agent})
    headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}

    def client(k: int, stop: threading.Event) -> None:
        for i in range(k, submits, clients):
            if stop.is_set():
                return
            began = time.perf_counter()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("POST", f"/api/v1/threads/bench-{tag}-{i % THREADS:03d}/mailbox", body, headers)
            response = conn.getresponse()
            text = response.read()
            conn.close()
            latencies.append(time.perf_counter() - began)
            if response.status != 201:
                errors.append(f"{response.status} {text[:200]!r}")

    started = time.perf_counter()
    with e2e.in_threads(clients, client) as thread_errors:
        e2e.wait_until(lambda: len(latencies) >= submits or bool(thread_errors), 300, "the submits", 0.01)
    if thread_errors or errors:
        raise RuntimeError(f"submit failed: {(thread_errors or errors)[0]!r}")
    return Submits(submits / (time.perf_counter() - started), latencies, started)


def ms(values: list[float], q: float) -> float:
    return 1000 * e2e.percentile(values, q)


# --- (f) the submit route against the HTTP floor ---------------------------------------------------------


def reset_queues() -> None:
    """Between reps with no worker: drop what the submits queued (rows, broker messages)."""
    e2e.reset_state()
    with connection.cursor() as cursor:
        cursor.execute(FLOOR_TABLE)
        cursor.execute("TRUNCATE bench_http_floor_job")
    get_redis().delete(FLOOR_QUEUE)


def floor_part(args: argparse.Namespace, log_dir: Path) -> bool:
    ok = True
    for shape in args.shapes.split(","):
        servers = {app: web_server(app, shape, log_dir) for app in APPS}
        results: dict[str, list[Submits]] = {app: [] for app in APPS}
        try:
            for server in servers.values():
                server.start()
            for rep in range(-1, args.reps):  # rep -1 warms both up
                for app, server in (("floor", servers["floor"]), ("route", servers["route"])):
                    reset_queues()
                    token = api_token()
                    n = 200 if rep < 0 else args.submits
                    result = post_submits(
                        server.port, token, n, clients=args.clients, tag=f"{app}{rep}", agent="noop"
                    )
                    if rep >= 0:
                        results[app].append(result)
                        print(f"  {shape} rep {rep + 1} {app}: {result.rate:.0f} submits/s")
        finally:
            for server in servers.values():
                server.stop()
        rates = {app: statistics.median(r.rate for r in results[app]) for app in APPS}
        for app in APPS:
            lat = [x for r in results[app] for x in r.latencies]
            print(
                f"  {shape:8s}{app:6s} {rates[app]:7.0f} submits/s   p50 {ms(lat, 0.5):6.1f} ms"
                f"   p99 {ms(lat, 0.99):6.1f} ms"
            )
        ratio = rates["route"] / rates["floor"]
        met = ratio >= TARGET_OVER_FLOOR
        print(f"  {shape:8s}route ÷ floor = {ratio:.2f}   target ≥ {TARGET_OVER_FLOOR}: {e2e.verdict(met)}")
        ok &= met or shape != "uvicorn"
    return ok


# --- (p) the Procfile's processes as they ship ------------------------------------------------------------


def make_run(log_dir: Path) -> Server:
    """`make run` as it ships (awaken_project/devrun.py: the Procfile's web, worker, webhooks and beat) on
    the scratch servers; `start()` returns once /readyz answers, `wait_for_workers` once both Celery
    workers answer a ping."""
    port = free_port()
    devrun = [sys.executable, "-m", "awaken_project.devrun", "run"]
    command = shlex.join([*devrun, "--data", str(log_dir / "data"), "--port", str(port)])
    return Server(
        command, port, log_dir / "make-run.log", {"AWAKEN_API_THROTTLE_RATE": "1000000/minute"}, "/readyz"
    )


def wait_for_workers() -> None:
    e2e.wait_until(lambda: len(celery_app.control.ping(timeout=0.5) or []) >= 2, 60, "the workers", 0.1)


def procfile_part(args: argparse.Namespace, log_dir: Path) -> bool:
    e2e.reset_state()
    stack = make_run(log_dir)
    port = stack.port
    try:
        stack.start()
        wait_for_workers()
        token = api_token()
        runs, submits, latencies = [], [], []
        for rep in range(-1, args.reps):
            base = conformance.count_dispatches_by_status(DispatchStatus.ACKED)
            n = 200 if rep < 0 else args.submits
            result = post_submits(port, token, n, clients=args.clients, tag=f"p{rep}", agent="echo")

            def all_acked(base: int = base, n: int = n) -> bool:
                return conformance.count_dispatches_by_status(DispatchStatus.ACKED) - base >= n

            e2e.wait_until(all_acked, 300, f"{n} runs to finish", 0.02)
            if rep < 0:
                continue
            run_rate = n / (time.perf_counter() - result.started)
            submits.append(result.rate)
            runs.append(run_rate)
            latencies += result.latencies
            print(f"  procfile rep {rep + 1}: {result.rate:.0f} submits/s, {run_rate:.0f} runs/s")
    finally:
        stack.stop()
    rate, run_rate = statistics.median(submits), statistics.median(runs)
    p50, p99 = ms(latencies, 0.5), ms(latencies, 0.99)
    checks = (
        ("submits/s", rate, f"≥ {TARGET_SUBMITS:.0f}", rate >= TARGET_SUBMITS),
        ("submit p50 ms", p50, "", True),
        ("submit p99 ms", p99, f"≤ {TARGET_P99_MS:.0f}", p99 <= TARGET_P99_MS),
        ("runs/s end to end", run_rate, "", True),
        (
            "runs/s ÷ submits/s",
            run_rate / rate,
            f"≥ {TARGET_RUNS_OVER_SUBMITS}",
            run_rate >= TARGET_RUNS_OVER_SUBMITS * rate,
        ),
    )
    ok = True
    for label, value, target, met in checks:
        print(f"  {label:22s}{value:10.2f}   {f'target {target}: {e2e.verdict(met)}' if target else ''}")
        ok &= met
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--submits", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--parts", default="floor,procfile", help="floor, procfile or both")
    parser.add_argument("--shapes", default="uvicorn", help="uvicorn[,gthread]: server shapes for (f)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="awaken-http-bench-"))
    print(
        f"http bench: {os.cpu_count()} CPUs, {args.clients} clients (a connection per request); "
        f"logs in {log_dir}"
    )
    ok = True
    if "floor" in args.parts:
        print("(f) the submit route against the HTTP floor, workers stopped")
        ok &= floor_part(args, log_dir)
    if "procfile" in args.parts:
        print("(p) make run as it ships, echo agent")
        ok &= procfile_part(args, log_dir)
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
