"""`make run` and the admin commands that reach its servers.

    python -m awaken_project.devrun run  [--data DIR] [--port N]   # what `make run` runs
    python -m awaken_project.devrun exec [--data DIR] -- COMMAND…  # `make manage`, `make shell`, …

`run` runs the Procfile: its `release` line once, then `web`, `worker`, `webhooks` and `beat` under honcho
(the Procfile's own runner, used as a library), each output line labelled with its process. Before anything
it takes the data directory (a lock, awaken_project/embedded.py) and checks the port, so a second
`make run` on either says which is in use and touches nothing; it starts the embedded PostgreSQL and
Redis only when DATABASE_URL / REDIS_URL are unset and the servers are not already running, and on the
way out stops only the servers it started. It prints "is up", the dev user's token and a curl line once
`/readyz` answers. Ctrl-C (or SIGTERM) sends SIGTERM to each service's main process only — gunicorn's
master, Celery's main process (a warm shutdown: the pool children are its to stop) and beat — and
SIGKILL to whatever is left of a service's process group 5 s later (honcho's wait).

`exec` runs a command with the environment of the servers `make run` uses under the data directory
(their URLs, the same SECRET_KEY and metrics directory) and starts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from types import FrameType
from typing import IO

from honcho.environ import parse_procfile  # type: ignore[import-untyped]
from honcho.manager import Manager  # type: ignore[import-untyped]
from honcho.printer import Message  # type: ignore[import-untyped]

from awaken_project.embedded import (
    PROJECT_ROOT,
    DataDirInUse,
    ensure_postgres,
    ensure_redis,
    hold_data_dir,
    postgres_url_if_running,
    redis_url_if_running,
    stop_postgres,
    stop_redis,
)
from awaken_project.environment import ConfigurationErrors, load

SERVICES = ("web", "worker", "webhooks", "beat")
DEFAULT_DATA = Path(".data/dev")
READY_TIMEOUT_S = 180.0
PROGRAM = "awaken-mailbox"
DESCRIPTION = "`make run` and the admin commands that reach its servers."


def say(text: str) -> None:
    print(f"{PROGRAM}: {text}", file=sys.stderr, flush=True)


class LabelPrinter:
    """honcho's printer without its clock (every log line has its own time): `web    | line`."""

    def __init__(self, output: IO[str]) -> None:
        self.output = output
        self.width = 0

    def write(self, message: Message) -> None:
        data = message.data
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
        for line in text.splitlines():
            print(f"{(message.name or '').ljust(self.width)} | {line}", file=self.output, flush=True)


class MainProcessFirst:
    """honcho's process manager signals a service's whole process group. SIGTERM goes to the main
    process only (the Procfile's lines `exec` it): the Celery pool children must not get it, or they
    die under their running task (a WorkerLostError) instead of finishing it in a warm shutdown.
    SIGKILL, honcho's last resort, still takes the whole group."""

    def terminate(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)

    def kill(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


class Supervisor(Manager):  # type: ignore[misc]
    """honcho's Manager with the signalling above, and a hook once every service was started."""

    def __init__(self, printer: LabelPrinter, on_started: threading.Thread) -> None:
        super().__init__(printer)
        self._procmgr = MainProcessFirst()
        self._on_started = on_started

    def _start(self) -> None:
        super()._start()
        self._on_started.start()  # after honcho's forks: no thread is running when it forks

    def announce(self, lines: list[str]) -> None:
        for line in lines:
            self.events.put(Message("line", line + "\n", datetime.datetime.now(), "run", None))

    def pids(self) -> list[int]:
        return [p["pid"] for p in self._processes.values() if p.get("pid")]


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds it
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return int(answer.status) == 200
    except OSError:
        return False


def secret_key(data_dir: Path, *, create: bool = True) -> str:
    """SECRET_KEY if set, else this data directory's own (generated once, kept so sessions survive)."""
    if os.environ.get("SECRET_KEY", "").strip():
        return os.environ["SECRET_KEY"]
    path = data_dir / "secret_key"
    if not create:
        return path.read_text().strip() if path.exists() else ""
    if not path.exists() or not path.read_text().strip():
        import secrets  # noqa: PLC0415 - only when a key is made

        old = os.umask(0o077)
        try:
            path.write_text(secrets.token_urlsafe(50) + "\n")
        finally:
            os.umask(old)
    return path.read_text().strip()


def base_env(data_dir: Path, *, create_key: bool = True) -> dict[str, str]:
    """What every process of this data directory shares (the servers' URLs come on top)."""
    return dict(os.environ) | {
        "SECRET_KEY": secret_key(data_dir, create=create_key),
        "AWAKEN_METRICS_DIR": os.environ.get("AWAKEN_METRICS_DIR") or str(data_dir / "metrics"),
        "STATIC_ROOT": os.environ.get("STATIC_ROOT") or str(data_dir / "static"),
        # the Procfile says `python`: this interpreter's
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
    }


def run_once(name: str, command: str, env: dict[str, str], printer: LabelPrinter) -> tuple[int, str]:
    """A one-shot line (the release step, the dev user), labelled; returns its exit code and output."""
    proc = subprocess.Popen(
        command, shell=True, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    lines: list[str] = []
    assert proc.stdout is not None
    try:
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            lines.append(line)
            if name:
                printer.write(Message("line", line, datetime.datetime.now(), name, None))
        return proc.wait(), "\n".join(lines)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(data_dir: Path, port: int, host: str) -> int:
    try:
        load(os.environ)  # a bad variable: one line each, before anything starts
    except ConfigurationErrors as exc:
        for line in exc.lines:
            say(f"configuration error: {line}")
        return 2
    try:
        with hold_data_dir(data_dir):
            if port_in_use(host, port):
                say(f"port {port} is in use on {host} (another `make run`?): stop it, or choose "
                    f"another port: make run PORT={port + 1}")  # fmt: skip
                return 1
            return _run_holding(data_dir, port, host)
    except DataDirInUse as exc:
        say(f"{exc}: stop it first, or give this one its own: make run DATA=.data/other PORT={port + 1}")
        return 1


def _run_holding(data_dir: Path, port: int, host: str) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    started: list[str] = []
    printer = LabelPrinter(sys.stdout)
    printer.width = len("release")
    try:
        env = base_env(data_dir) | {"PORT": str(port), "WEB_HOST": host}
        if not os.environ.get("DATABASE_URL"):
            url = postgres_url_if_running(data_dir)
            if url is None:
                url = ensure_postgres(data_dir)
                started.append("postgresql")
            env["DATABASE_URL"] = url
        if not os.environ.get("REDIS_URL"):
            url = redis_url_if_running(data_dir)
            if url is None:
                url = ensure_redis(data_dir)
                started.append("redis")
            env["REDIS_URL"] = url
        procfile = parse_procfile((PROJECT_ROOT / "Procfile").read_text()).processes
        code, _ = run_once("release", procfile["release"], env, printer)
        if code:
            say(f"the release step (`{procfile['release']}`) failed with exit code {code}")
            return code
        code, dev_user = run_once("", f"python manage.py ensure_dev_user --port {port}", env, printer)
        if code:
            say(f"creating the dev user failed:\n{dev_user}")
            return code
        base = f"http://{host}:{port}"
        return _serve(procfile, env, printer, base=base, data_dir=data_dir, dev_user=dev_user)
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        if "redis" in started:
            stop_redis(data_dir)
        if "postgresql" in started:
            stop_postgres(data_dir)


def _serve(
    procfile: dict[str, str], env: dict[str, str], printer: LabelPrinter, *, base: str, data_dir: Path,
    dev_user: str,
) -> int:  # fmt: skip
    manager: Supervisor

    def announce_when_ready() -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not manager._terminating:
            if ready(f"{base}/readyz"):
                manager.announce(up_lines(base, data_dir, dev_user))
                return
            if time.monotonic() > deadline:
                manager.announce([f"{base}/readyz has not answered in {READY_TIMEOUT_S:.0f} s"])
                return
            time.sleep(0.2)

    manager = Supervisor(printer, threading.Thread(target=announce_when_ready, daemon=True))
    for name in SERVICES:
        manager.add_process(name, procfile[name], env=env, cwd=str(PROJECT_ROOT))
    try:
        manager.loop()
    finally:
        for pid in manager.pids():  # anything left in a service's process group (none, normally)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
    # stopped by Ctrl-C / SIGTERM: a clean exit; else a service ended on its own (its exit code)
    code = manager.returncode
    return 0 if code in (None, 130, 143) else int(code) or 1


def up_lines(base: str, data_dir: Path, dev_user: str) -> list[str]:
    data = "" if data_dir.resolve() == (PROJECT_ROOT / DEFAULT_DATA).resolve() else f" DATA={data_dir}"
    return [
        f"{PROGRAM} is up: {base}/  (readiness: {base}/readyz; Ctrl-C stops it)",
        *dev_user.splitlines(),
        f'admin commands against these servers: make manage{data} ARGS="mailbox_status", '
        f'make shell{data}, make celery{data} ARGS="inspect active"',
    ]


def exec_command(data_dir: Path, command: list[str]) -> int:
    env = base_env(data_dir, create_key=False)  # (an empty SECRET_KEY counts as unset)
    missing = []
    for name, url in (
        ("DATABASE_URL", os.environ.get("DATABASE_URL") or postgres_url_if_running(data_dir)),
        ("REDIS_URL", os.environ.get("REDIS_URL") or redis_url_if_running(data_dir)),
    ):
        if url:
            env[name] = url
        else:
            missing.append(name)
    if missing:
        say(
            f"no server for {' and '.join(missing)}: the embedded servers under {data_dir} are not "
            "running. Start `make run` (or `make services`) first, or set the variable."
        )
        return 1
    if not command:
        say("no command given (e.g. -- python manage.py mailbox_status)")
        return 2
    os.chdir(PROJECT_ROOT)
    os.execvpe(command[0], command, env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m awaken_project.devrun", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run_parser = commands.add_parser("run", help="run the Procfile's services (what `make run` runs)")
    run_parser.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 8000))
    run_parser.add_argument(
        "--host", default="127.0.0.1", help="the web server's address (default: loopback)"
    )
    exec_parser = commands.add_parser("exec", help="run a command against `make run`'s servers")
    exec_parser.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND")
    for sub in (run_parser, exec_parser):
        sub.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the data directory (.data/dev)")
    args = parser.parse_args(argv)
    data_dir: Path = args.data.resolve()
    if args.command == "run":
        return run(data_dir, args.port, args.host)
    command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    return exec_command(data_dir, command)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C before the services started: nothing of ours is left running
        sys.exit(130)
