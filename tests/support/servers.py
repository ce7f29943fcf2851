"""Real server subprocesses against the test database: its URL, and the ASGI web server of `make run`."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from django.conf import settings
from django.db import connection

from awaken_project.envurls import database_from_url

PROJECT_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 45.0
LOG_TAIL_CHARS = 4000


def database_url_of_test_db() -> str:
    """DATABASE_URL of the database pytest-django created (not the one in os.environ)."""
    db = connection.settings_dict
    assert str(db["NAME"]).startswith("test_"), f"not the test database: {db['NAME']}"
    user, password = quote(db["USER"] or "", safe=""), quote(db["PASSWORD"] or "", safe="")
    auth = f"{user}:{password}@" if user else ""
    host, port = str(db["HOST"] or ""), f":{db['PORT']}" if db["PORT"] else ""
    if host.startswith("/"):  # a unix-socket directory (the embedded server)
        url = f"postgresql://{auth}{port}/{quote(db['NAME'])}?host={quote(host, safe='/')}"
    else:
        url = f"postgresql://{auth}{host}{port}/{quote(db['NAME'])}"
    parsed = database_from_url(url)
    for key in ("NAME", "USER", "PASSWORD", "HOST", "PORT"):
        assert parsed[key] == (db[key] or ""), f"{key}: {parsed[key]!r} != {db[key]!r} ({url})"
    return url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def web_command(port: int, workers: int = 1) -> list[str]:
    """The Procfile's web server (gunicorn + uvicorn ASGI workers), with `workers` processes."""
    return [
        sys.executable, "-m", "gunicorn", "awaken_project.asgi:application",
        "-c", "python:awaken_project.gunicorn_conf",
        "--worker-class", "uvicorn_worker.UvicornWorker", "--bind", f"127.0.0.1:{port}",
        "--workers", str(workers), "--timeout", "0", "--graceful-timeout", "3",
    ]  # fmt: skip


@dataclass
class WebServer:
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        except OSError:
            return ""


def _ready(server: WebServer) -> bool:
    if server.proc.poll() is not None:
        raise AssertionError(f"web server exited {server.proc.returncode}:\n{server.log_tail()}")
    return healthy(server.port)


def healthy(port: int) -> bool:
    """`/healthz` on the loopback port answers 200."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


@contextlib.contextmanager
def asgi_server(log_dir: Path, env: dict[str, str] | None = None) -> Iterator[WebServer]:
    """The ASGI web server on a free loopback port against the test database and the test Redis."""
    port = free_port()
    log_path = log_dir / f"web-{port}.log"
    full_env = dict(os.environ) | {
        "DATABASE_URL": database_url_of_test_db(),
        "REDIS_URL": settings.REDIS_URL,
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "AWAKEN_API_THROTTLE_RATE": "1000000/minute",
        "AWAKEN_API_ANON_THROTTLE_RATE": "1000000/minute",  # tests that count it set their own
        "PYTHONUNBUFFERED": "1",
    }
    full_env |= env or {}
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            web_command(port),
            cwd=PROJECT_ROOT,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = WebServer(port, proc, log_path)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _ready(server):
            if time.monotonic() > deadline:
                raise AssertionError(f"web server not ready:\n{server.log_tail()}")
            time.sleep(0.1)
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
