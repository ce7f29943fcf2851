"""The Procfile follows the conventions of honcho/foreman and Heroku-style platforms, and its `web`
line really starts the server: run by bash as a process manager would, with the venv's `python` first
on PATH, `PORT` set, against the test database and Redis."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings

from tests.support.servers import database_url_of_test_db, free_port, healthy

ROOT = Path(__file__).resolve().parent.parent


def _entries() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip() and not line.startswith("#"))


def test_the_procfile_declares_release_web_worker_webhooks_beat_without_local_paths() -> None:
    entries = _entries()
    assert set(entries) == {"release", "web", "worker", "webhooks", "beat"}
    assert "migrate" in entries["release"]
    assert ".venv" not in "".join(entries.values()), "a platform's python is on PATH, not a local venv"
    assert "--bind ${WEB_HOST:-0.0.0.0}:${PORT:-8000}" in entries["web"]
    # a process manager's SIGTERM reaches the service's main process (gunicorn's master, Celery's main
    # process: a warm shutdown), not a shell that would die and leave it running
    for name in ("web", "worker", "beat"):
        assert entries[name].split("&& ")[-1].startswith("exec "), name
    # one log format (awaken_project/logconfig.py): gunicorn takes it from its config module
    assert "-c python:awaken_project.gunicorn_conf" in entries["web"]


def test_make_run_runs_the_procfiles_lines() -> None:
    """One process story: `make run` (awaken_project/devrun.py) runs the release line, then these."""
    from awaken_project.devrun import SERVICES  # noqa: PLC0415 - honcho is a `make run` dependency

    assert set(SERVICES) | {"release"} == set(_entries())
    makefile = (ROOT / "Makefile").read_text()
    assert "awaken_project.devrun run" in makefile.split("\nrun:", 1)[1].split("\n\n", 1)[0]


@pytest.mark.django_db(transaction=True)
def test_the_procfiles_web_line_serves_on_port(tmp_path: Path) -> None:
    port = free_port()
    env = dict(os.environ) | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PORT": str(port),
        "WEB_CONCURRENCY": "1",
        "DATABASE_URL": database_url_of_test_db(),
        "REDIS_URL": settings.REDIS_URL,
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
    }
    log = tmp_path / "web.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["bash", "-c", _entries()["web"]], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            if healthy(port):
                break
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
