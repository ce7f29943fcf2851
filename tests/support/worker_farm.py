"""Celery worker subprocesses for multi-process tests (`WorkerFarm`), the mailbox config they and the test
process share, and waits on the dispatches and runs they settle."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from awaken_project.celery import app as celery_app
from mailbox_app import store
from mailbox_app.contract.config import MailboxConfig
from mailbox_app.contract.ids import now_ms
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchRecord, DispatchStatus
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import RunRequest
from mailbox_app.contract.storage import RunRecord
from mailbox_app.services import mailbox, maintenance
from runs_app import store as run_store
from tests.support.servers import PROJECT_ROOT
from tests.support.waiting import wait_until

MAILBOX_ENV = {
    "AWAKEN_MAILBOX_LEASE_MS": "3000",
    "AWAKEN_MAILBOX_LEASE_RENEWAL_INTERVAL_MS": "500",
    "AWAKEN_MAILBOX_DEFAULT_RETRY_DELAY_MS": "50",
    "AWAKEN_MAILBOX_MAX_RETRY_DELAY_MS": "500",
}
MP_CONFIG = MailboxConfig.from_env(MAILBOX_ENV)  # the same mailbox config in the test process
SIGNAL_ENV = {
    "AWAKEN_DISPATCH_SIGNAL_NACK_BASE_DELAY_MS": "50",
    "AWAKEN_DISPATCH_SIGNAL_NACK_MAX_DELAY_MS": "500",
}
READY_TIMEOUT_S = 45.0
STOP_TIMEOUT_S = 8.0
LOG_TAIL_CHARS = 4000


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


@dataclass
class Worker:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def nodename(self) -> str:
        return f"{self.name}@{socket.gethostname()}"

    @property
    def pgid(self) -> int:
        return self.proc.pid  # start_new_session: the worker's main process leads its own group

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill_group(self) -> None:
        """`kill -9` the whole worker: main process and every pool child, then reap it."""
        signal_group(self.pgid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        wait_until(lambda: not _group_members(self.pgid), timeout=10, what=f"{self.name} group gone")

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        except OSError:
            return ""


@dataclass
class WorkerFarm:
    log_dir: Path
    env: dict[str, str]
    workers: list[Worker] = field(default_factory=list)

    def start(self, name: str, *, pool: str = "threads", concurrency: int = 2, fault: str = "") -> Worker:
        """Spawn `celery worker` and wait until it answers a ping (it consumes the queue then)."""
        worker = self.spawn(name, pool=pool, concurrency=concurrency, fault=fault)
        self.wait_ready(worker)
        return worker

    def spawn(
        self,
        name: str,
        *,
        pool: str = "threads",
        concurrency: int = 2,
        fault: str = "",
        standby: bool = False,
    ) -> Worker:
        """Start a worker without waiting. A `standby` worker boots but consumes only a private queue
        until `join` (booting takes seconds; several boot in parallel, each joins when its turn comes)."""
        env = dict(self.env)
        if fault:
            env["AWAKEN_FAULT_POINT"] = fault
        command = [
            sys.executable, "-m", "celery", "-A", "awaken_project", "worker",
            "--pool", pool, "--concurrency", str(concurrency), "-n", f"{name}@%h",
            "--loglevel", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        if standby:
            command += ["--queues", f"standby-{name}"]
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                command,
                cwd=PROJECT_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = Worker(name, proc, log_path)
        self.workers.append(worker)
        return worker

    def wait_ready(self, *workers: Worker) -> None:
        for worker in workers:

            def pong(worker: Worker = worker) -> bool:
                if not worker.alive():
                    raise AssertionError(f"{worker.name} exited early:\n{worker.log_tail()}")
                replies = celery_app.control.ping(destination=[worker.nodename], timeout=0.3)
                return any(worker.nodename in reply for reply in replies)

            wait_until(pong, timeout=READY_TIMEOUT_S, interval=0.1, what=f"{worker.name} answers ping")

    def join(self, worker: Worker) -> None:
        """A standby worker starts consuming the task queue (confirmed by its reply)."""
        queue = celery_app.conf.task_default_queue
        replies = celery_app.control.add_consumer(queue, destination=[worker.nodename], reply=True, timeout=5)
        assert any("ok" in reply.get(worker.nodename, {}) for reply in replies), replies

    def stop_all(self) -> None:
        """SIGTERM every group, wait, SIGKILL the leftovers, and check that no process is left."""
        for worker in self.workers:
            if worker.alive():
                signal_group(worker.pgid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for worker in self.workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        for worker in self.workers:  # also reaches pool children left behind by their main process
            signal_group(worker.pgid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.proc.wait(timeout=10)
        for worker in self.workers:
            wait_until(lambda w=worker: not _group_members(w.pgid), timeout=10, what=f"{worker.name} gone")

    def print_logs(self) -> None:
        for worker in self.workers:
            tail = worker.log_tail()
            if tail.strip():
                print(f"--- {worker.name} (exit {worker.proc.returncode}) ---\n{tail}")


def echo_request(thread_id: str, text: str, agent_id: str = "echo") -> RunRequest:
    return RunRequest(thread_id=thread_id, messages=[ChatMessage.user(text)], agent_id=agent_id)


def dispatch_of(dispatch_id: str) -> DispatchRecord:
    dispatch = store.load_dispatch(dispatch_id)
    assert dispatch is not None
    return dispatch


def run_of(run_id: str) -> RunRecord:
    run = run_store.load_run(run_id=run_id)
    assert run is not None
    return run


def wait_dispatch_status(
    dispatch_id: str, status: DispatchStatus, *, timeout: float = 20.0
) -> DispatchRecord:
    def reached() -> DispatchRecord | None:
        dispatch = store.load_dispatch(dispatch_id)
        return dispatch if dispatch is not None and dispatch.status is status else None

    found = wait_until(reached, timeout=timeout, what=f"dispatch {dispatch_id} {status.value}")
    assert found is not None
    return found


def wait_run_status(run_id: str, status: RunStatus, *, timeout: float = 20.0) -> RunRecord:
    def reached() -> RunRecord | None:
        run = run_store.load_run(run_id=run_id)
        return run if run is not None and run.status is status else None

    found = wait_until(reached, timeout=timeout, what=f"run {run_id} {status.value}")
    assert found is not None
    return found


def sweep_until(dispatch_id: str, status: DispatchStatus, *, timeout: float) -> DispatchRecord:
    """Play celery beat: sweep every 100 ms until the dispatch reaches `status`."""

    def swept() -> DispatchRecord | None:
        maintenance.sweep()
        dispatch = store.load_dispatch(dispatch_id)
        return dispatch if dispatch is not None and dispatch.status is status else None

    found = wait_until(swept, timeout=timeout, interval=0.1, what=f"sweep: {dispatch_id} {status.value}")
    assert found is not None
    return found


def probe_workers() -> None:
    """A no-op dispatch acked by a worker proves it reads and writes the test database."""
    probe = mailbox.submit_background(echo_request(f"t-probe-{now_ms()}", "probe", agent_id="noop"))
    wait_dispatch_status(probe.dispatch_id, DispatchStatus.ACKED, timeout=30)
