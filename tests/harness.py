"""pytest plugin (loaded with `-p tests.harness`): real PostgreSQL and Redis for the suite.

When DATABASE_URL / REDIS_URL are unset it starts the embedded servers under `.data/test` (or
`$AWAKEN_TEST_DATA_DIR`; `-2`, `-3`, … beside it while another session holds it) before
Django's settings are imported, and stops them when the session ends.

Under pytest-xdist (`make test` runs `-n 3`: the suite mostly waits on servers and workers, so three
processes share two cores well) each worker process starts servers of its own the same way: its own
PostgreSQL, its own Redis (pub/sub channels, which no Redis database number separates, included) and
its own metrics directory, so no test sees another's rows, keys, messages or figures.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from awaken_project import embedded


def _own_data_dir(base: Path) -> Path:
    """`base`, or `base-2`, `base-3`, … when another session holds it: a second `make test` (or one
    test file run beside the suite) gets servers of its own instead of stopping the first's at its end.
    Held (awaken_project/embedded.py's flock) until this process ends."""
    for n in range(1, 10):
        candidate = base if n == 1 else base.with_name(f"{base.name}-{n}")
        hold = embedded.hold_data_dir(candidate)
        try:
            hold.__enter__()
        except embedded.DataDirInUse:
            continue
        _held.append(hold)  # never exited: the lock goes with the process
        return candidate
    raise RuntimeError(f"{base} and 8 more test data directories are in use")


_held: list[object] = []
_DATA_DIR = Path(os.environ.get("AWAKEN_TEST_DATA_DIR", embedded.PROJECT_ROOT / ".data" / "test"))
_started = False

if os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get("AWAKEN_TEST_SERVICES_PID"):
    # a worker of a session whose controller started the servers: this process starts its own instead
    for _inherited in ("DATABASE_URL", "REDIS_URL", "PROMETHEUS_MULTIPROC_DIR", "AWAKEN_TEST_SERVICES_PID"):
        os.environ.pop(_inherited, None)

if not os.environ.get("DATABASE_URL") or not os.environ.get("REDIS_URL"):
    _DATA_DIR = _own_data_dir(_DATA_DIR)
    _services = embedded.ensure_services(_DATA_DIR)
    os.environ.setdefault("DATABASE_URL", _services.database_url)
    os.environ.setdefault("REDIS_URL", _services.redis_url)
    _started = os.environ.get("AWAKEN_KEEP_TEST_SERVICES", "") != "1"
    os.environ["AWAKEN_TEST_SERVICES_PID"] = str(os.getpid())

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "awaken_project.settings")
# prometheus_client's multiprocess mode, as in production: set before anything imports it, emptied per
# session; the servers and workers the tests start inherit it, so a scrape sees their figures too.
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    _metrics_dir = _DATA_DIR / "prometheus"
    shutil.rmtree(_metrics_dir, ignore_errors=True)
    _metrics_dir.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_metrics_dir)
# In-process test workers run tasks on pool threads whose DB connections must not outlive the test
# (pytest-django drops the test database at the end): close them around every task, as Celery's default.
os.environ.setdefault("CELERY_DB_REUSE_MAX", "0")


def pytest_unconfigure(config: object) -> None:
    if _started:  # each process stops the servers it started (a worker its own)
        embedded.stop_services(_DATA_DIR)
