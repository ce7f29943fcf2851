"""`make run` (awaken_project/devrun.py) as an operator meets it: it says "is up" once /readyz answers and
prints the dev token after that; a second one on the same data directory or port refuses and leaves the
first alone; admin commands reach its servers; Ctrl-C stops everything within seconds, with a warm
Celery shutdown, no traceback, no process left, and only the servers it started stopped. And
`python -m awaken_project.embedded`: real subcommands, where --help and an unknown word start nothing."""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil  # type: ignore[import-untyped]
import pytest

from awaken_project import embedded
from tests.support.servers import free_port
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
# what the test session exports for its own servers; a `make run` of a fresh checkout has none of it
SESSION_ONLY = {
    "DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "SECRET_KEY", "PROMETHEUS_MULTIPROC_DIR",
    "CELERY_DB_REUSE_MAX", "AWAKEN_METRICS_DIR", "STATIC_ROOT", "DJANGO_SETTINGS_MODULE",
}  # fmt: skip
STOP_WITHIN_S = 15.0


@pytest.fixture
def data_root(tmp_path: Path) -> Iterator[Path]:
    """A directory under the checkout's .data/ (as the harness's .data/test): pgserver runs PostgreSQL as
    an unprivileged user under root, which cannot enter pytest's private tmp directories."""
    root = ROOT / ".data" / f"test-run-{tmp_path.name[-40:]}-{os.getpid()}"
    root.mkdir(parents=True)
    try:
        yield root
    finally:
        for data in root.iterdir():
            embedded.stop_services(data.resolve())
        shutil.rmtree(root, ignore_errors=True)


def run_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SESSION_ONLY}
    return env | {"WEB_CONCURRENCY": "1", "CELERY_CONCURRENCY": "1", "PYTHONUNBUFFERED": "1"}


def devrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "awaken_project.devrun", *args]


def start(data: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            devrun("run", "--data", str(data), "--port", str(port)), cwd=ROOT, env=run_env(),
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def http_status(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except OSError:
        return 0
    finally:
        conn.close()


@contextlib.contextmanager
def cleanup(proc: subprocess.Popen[bytes], data: Path) -> Iterator[None]:
    try:
        yield
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        embedded.stop_services(data)


def alive(process: psutil.Process) -> bool:
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
def test_make_run_twice_then_ctrl_c(tmp_path: Path, data_root: Path) -> None:
    data, other = data_root / "data", data_root / "other"
    port = free_port()
    # Redis already running under the data directory (as after `make services`): not this run's to stop
    redis_url = embedded.ensure_redis(data.resolve())
    log = tmp_path / "first.log"
    first = start(data, port, log)
    with cleanup(first, data.resolve()):
        wait_until(
            lambda: "is up" in log.read_text() or first.poll() is not None, timeout=120, interval=0.2,
            what="the first make run to say it is up",
        )  # fmt: skip
        text = log.read_text()
        assert first.poll() is None, text[-3000:]
        lines = text.splitlines()
        up = next(i for i, line in enumerate(lines) if "awaken-mailbox is up" in line)
        # "is up" is printed by devrun's readiness poll once its GET /readyz got a 200; that request is
        # in the web server's access log. The two lines come from two processes through two pipes, so
        # the access line may land after "is up" (seen once on a loaded machine: 4 lines after): the
        # witness is that the poll's request was answered 200, and that /readyz answers now (below).
        wait_until(
            lambda: '"GET /readyz HTTP/1.1" 200' in log.read_text(), timeout=10, interval=0.1,
            what="the readiness poll's request in the access log",
        )  # fmt: skip
        token = next(i for i, line in enumerate(lines) if "API token:" in line)
        assert token > up and "curl" in lines[token + 1], "the token and the curl line come after 'is up'"
        assert http_status(port, "/readyz") == 200
        postgres_url = embedded.postgres_url_if_running(data.resolve())
        assert postgres_url is not None

        # the same data directory and port: refused, touching nothing
        second = subprocess.run(
            devrun("run", "--data", str(data), "--port", str(port)), cwd=ROOT, env=run_env(),
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert second.returncode == 1, second.stdout + second.stderr
        assert "is in use" in second.stderr and "Traceback" not in second.stderr
        # another data directory, the same port: refused before it starts any server there
        third = subprocess.run(
            devrun("run", "--data", str(other), "--port", str(port)), cwd=ROOT, env=run_env(),
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert third.returncode == 1 and f"port {port} is in use" in third.stderr, third.stderr
        assert not (other / "pg").exists() and not (other / "redis").exists()
        # `embedded stop` will not take the servers from under a running make run
        stop = subprocess.run(
            [sys.executable, "-m", "awaken_project.embedded", "stop", str(data)], cwd=ROOT,
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert stop.returncode == 1 and "in use" in stop.stderr, stop.stderr
        assert http_status(port, "/readyz") == 200, "the first one still answers"
        assert embedded.postgres_url_if_running(data.resolve()) == postgres_url

        # an admin command against make run's servers (`make manage ARGS=mailbox_status`)
        status = subprocess.run(
            devrun("exec", "--data", str(data), "--", sys.executable, "manage.py", "mailbox_status"),
            cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert status.returncode == 0, status.stdout + status.stderr

        # Ctrl-C: everything stops within seconds, Celery warm, nothing left behind
        descendants = psutil.Process(first.pid).children(recursive=True)
        assert len(descendants) >= 6  # honcho's readers, gunicorn + worker, celery + pool child, beat
        began = time.monotonic()
        os.kill(first.pid, signal.SIGINT)
        code = first.wait(timeout=60)
        took = time.monotonic() - began
        text = log.read_text()
        assert code == 0, text[-3000:]
        assert took < STOP_WITHIN_S, f"stopped in {took:.1f} s"
        assert "Traceback" not in text and "WorkerLostError" not in text, text[-5000:]
        assert "Warm shutdown" in text
        wait_until(lambda: not any(alive(p) for p in descendants), timeout=10, what="no process left")
        # it stopped the PostgreSQL it started, and left the Redis it found running
        assert embedded.postgres_url_if_running(data.resolve()) is None
        assert embedded.redis_url_if_running(data.resolve()) == redis_url
        print(f"make run: stopped {took:.1f} s after SIGINT")


def embedded_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "awaken_project.embedded", *args], cwd=ROOT, capture_output=True,
        text=True, timeout=timeout, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("args", [["--help"], ["bogus"], ["start", "--help"], ["env"], ["status"]])
def test_embedded_cli_starts_nothing_unless_told(tmp_path: Path, args: list[str]) -> None:
    data = tmp_path / "data"
    positional = [str(data)] if args[0] in {"env", "status"} else []
    done = embedded_cli(*args, *positional)
    if args[0] == "bogus":
        assert done.returncode == 2 and "invalid choice: 'bogus'" in done.stderr
    elif args[0] == "env":
        assert done.returncode == 1 and "not running" in done.stderr and done.stdout == ""
    elif args[0] == "status":
        assert done.returncode == 3 and "postgresql: stopped" in done.stdout
    else:
        assert done.returncode == 0 and "start" in done.stdout
    assert "Traceback" not in done.stderr
    assert not data.exists(), "no server (and no directory) was made"


def test_embedded_env_prints_the_running_servers(data_root: Path) -> None:
    data = data_root / "data"
    try:
        started = embedded_cli("start", str(data), timeout=120)
        assert started.returncode == 0, started.stderr
        env = embedded_cli("env", str(data))
        assert env.returncode == 0 and env.stdout.strip() == started.stdout.strip()
        assert "export DATABASE_URL='postgresql://" in env.stdout
        status = embedded_cli("status", str(data))
        assert status.returncode == 0 and "make run: none" in status.stdout
        stopped = embedded_cli("stop", str(data))
        assert stopped.returncode == 0
        assert embedded_cli("status", str(data)).returncode == 3
    finally:
        embedded.stop_services(data.resolve())


def test_make_run_with_a_bad_setting_says_so_and_starts_nothing(data_root: Path) -> None:
    data = data_root / "data"
    done = subprocess.run(
        devrun("run", "--data", str(data), "--port", str(free_port())), cwd=ROOT,
        env=run_env() | {"LOG_LEVEL": "LOUD"}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "awaken-mailbox: configuration error: LOG_LEVEL='LOUD': expected one of DEBUG, INFO, WARNING, "
        "ERROR, CRITICAL"
    ]
    assert not data.exists()


def test_an_admin_command_without_running_servers_says_what_to_start(data_root: Path) -> None:
    data = data_root / "data"
    done = subprocess.run(
        devrun("exec", "--data", str(data), "--", sys.executable, "manage.py", "mailbox_status"), cwd=ROOT,
        env=run_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "not running" in done.stderr and "make run" in done.stderr
    assert not (data / "pg").exists()
