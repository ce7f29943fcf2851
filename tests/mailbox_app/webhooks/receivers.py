"""Webhook receivers on loopback for the webhook tests: a well-behaved one that records every request,
and a hostile one that answers one byte at a time; and the Procfile's worker lines as real processes."""

from __future__ import annotations

import json
import os
import select
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.support.servers import PROJECT_ROOT
from tests.support.worker_farm import Worker, WorkerFarm

PROJECT_SECRET = "test-project-webhook-secret"  # AWAKEN_WEBHOOK_SECRET in these tests


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int

    @property
    def document(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


class Receiver:
    """A webhook receiver on loopback: answers the scripted codes first, then 200; records everything."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.script: list[int] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    code = receiver.script.pop(0) if receiver.script else 200
                    receiver.received.append(Received(self.path, dict(self.headers.items()), body, code))
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def fail_next(self, *codes: int) -> None:
        with self.lock:
            self.script.extend(codes)

    def requests(self) -> list[Received]:
        with self.lock:
            return list(self.received)

    def accepted(self) -> list[Received]:
        return [r for r in self.requests() if 200 <= r.answered < 300]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Held:
    """One connection to the trickling receiver: when it was accepted, and when the client hung up."""

    accepted_at: float
    closed_at: float | None = None
    bytes_sent: int = 0

    @property
    def held_s(self) -> float | None:
        return None if self.closed_at is None else self.closed_at - self.accepted_at


class TrickleReceiver:
    """A hostile receiver: reads the request, then answers `answer` one byte every `interval_s` and
    notes when the client hangs up (it sees EOF within the interval). `silent`: it never answers.
    `tls`: it speaks TLS with that server context (the handshake itself at full speed)."""

    def __init__(
        self,
        *,
        interval_s: float = 1.0,
        answer: bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        silent: bool = False,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.interval_s = interval_s
        self.answer = answer
        self.silent = silent
        self.tls = tls
        self.held: list[Held] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.listener.settimeout(0.1)  # the acceptor looks at `stop` between waits
        self.threads: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    @property
    def port(self) -> int:
        return int(self.listener.getsockname()[1])

    def url(self, path: str = "/slow") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held = Held(time.monotonic())
            with self.lock:
                self.held.append(held)
            thread = threading.Thread(target=self._serve, args=(conn, held), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, raw: socket.socket, held: Held) -> None:
        conn = raw
        if self.tls is not None:
            try:
                raw.settimeout(5)
                conn = self.tls.wrap_socket(raw, server_side=True)
                conn.settimeout(None)
            except (OSError, ssl.SSLError):
                held.closed_at = time.monotonic()
                raw.close()
                return
        with conn:
            pending = b"" if self.silent else self.answer
            while not self.stop.is_set():
                readable, _, _ = select.select([conn], [], [], self.interval_s)
                if readable:
                    try:
                        chunk = conn.recv(65536)
                    except OSError:
                        chunk = b""
                    if not chunk:  # the client hung up
                        held.closed_at = time.monotonic()
                        return
                    continue  # the request (ignored)
                if pending:
                    try:
                        conn.sendall(pending[:1])
                    except OSError:
                        held.closed_at = time.monotonic()
                        return
                    pending = pending[1:]
                    held.bytes_sent += 1

    def connections(self) -> list[Held]:
        with self.lock:
            return list(self.held)

    def open_count(self) -> int:
        return sum(1 for h in self.connections() if h.closed_at is None)

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        self.acceptor.join(5)
        for thread in self.threads:
            thread.join(5)


# --- the Procfile's worker lines as real processes ---------------------------------------------------


def procfile_line(name: str) -> str:
    lines = (PROJECT_ROOT / "Procfile").read_text().splitlines()
    entries = dict(line.split(": ", 1) for line in lines if line.strip() and not line.startswith("#"))
    return entries[name]


def spawn_worker_line(
    farm: WorkerFarm,
    line: str,
    nodename: str,
    metrics_dir: Path,
    env: dict[str, str] | None = None,
) -> Worker:
    """Run a Procfile-style `line` through bash as a process manager would (the venv's python first on
    PATH), as one of `farm`'s workers (stopped with them), without waiting; `nodename@host` is the name
    it answers pings by."""
    full_env = dict(farm.env) | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "AWAKEN_METRICS_DIR": str(metrics_dir),
    }
    full_env |= env or {}
    log_path = farm.log_dir / f"{nodename}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            ["bash", "-c", line],
            cwd=PROJECT_ROOT,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = Worker(nodename, proc, log_path)
    farm.workers.append(worker)
    return worker


def start_procfile_worker(
    farm: WorkerFarm, entry: str, nodename: str, metrics_dir: Path, env: dict[str, str] | None = None
) -> Worker:
    """The Procfile's `entry` line as a worker of `farm`, once it answers a ping."""
    worker = spawn_worker_line(farm, procfile_line(entry), nodename, metrics_dir, env)
    farm.wait_ready(worker)
    return worker
