"""One log format (awaken_project/logconfig.py): time, level, process, logger, message and the run and
thread ids bound by mailbox_app/observability/log_context.py; JSON with LOG_FORMAT=json; the same config
for gunicorn and Celery."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import weakref
from pathlib import Path
from typing import Any

import pytest
from celery.signals import setup_logging

from awaken_project import celery as celery_module
from awaken_project.gunicorn_conf import logconfig_dict
from awaken_project.logconfig import logging_config, process_name
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import RunRequest
from mailbox_app.observability.log_context import NO_RUN, bind_run, current
from mailbox_app.services import mailbox
from tests.support.agents import LOG_CONTEXTS
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = "awaken_project.settings"
TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (?P<level>[A-Z]+) +(?P<process>\S+) +(?P<logger>\S+): "
)


def capture(fmt: str) -> tuple[logging.Logger, io.StringIO]:
    """A logger with the handler the project's config describes (its formatter and filter), writing
    to a buffer (not dictConfig: that would close the test session's own handlers)."""
    config = logging_config(level="DEBUG", fmt=fmt)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(config["formatters"]["awaken"]["()"]())
    handler.addFilter(config["filters"]["context"]["()"]())
    logger = logging.getLogger(f"tests.logging.probe.{fmt}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


def test_a_text_line_names_time_level_process_logger_and_the_run() -> None:
    logger, out = capture("text")
    logger.warning("outside")
    with bind_run("run-1", "thread-1"):
        logger.warning("inside %s", "a run")
    assert current() == NO_RUN
    first, second = out.getvalue().splitlines()
    match = TEXT_LINE.match(first)
    assert match and match["level"] == "WARNING" and match["logger"] == "tests.logging.probe.text"
    assert match["process"] == process_name() and first.endswith(": outside")
    assert second.endswith(": inside a run run=run-1 thread=thread-1")


def test_json_is_one_object_a_line() -> None:
    logger, out = capture("json")
    with bind_run("run-2", "thread-2"):
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    (line,) = out.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["level"] == "ERROR" and entry["logger"] == "tests.logging.probe.json"
    assert entry["message"] == "failed" and entry["run_id"] == "run-2" and entry["thread_id"] == "thread-2"
    assert "ValueError: boom" in entry["exception"] and entry["time"].endswith("Z")


def test_bindings_nest_and_come_back() -> None:
    with bind_run("outer", "t"):
        with bind_run("inner"):
            assert current().run_id == "inner" and current().thread_id is None
        assert current().run_id == "outer"
    assert current() == NO_RUN


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["/venv/lib/python3.11/site-packages/gunicorn/__main__.py", "app"], "web"),
        (["/venv/lib/python3.11/site-packages/celery/__main__.py", "-A", "p", "worker"], "worker"),
        (["/venv/lib/python3.11/site-packages/celery/__main__.py", "-A", "p", "beat"], "beat"),
        (["manage.py", "migrate", "--noinput"], "migrate"),
        (["-c"], "python"),
    ],
)
def test_the_process_name(argv: list[str], name: str) -> None:
    assert process_name(argv) == name


def test_gunicorn_and_celery_use_the_projects_config() -> None:
    # gunicorn: its own loggers and uvicorn's get the project's handler and do not propagate (no twice)
    for name in ("gunicorn.error", "gunicorn.access", "uvicorn.access", "uvicorn.error"):
        assert logconfig_dict["loggers"][name]["handlers"] == ["console"], name
        assert logconfig_dict["loggers"][name]["propagate"] is False
    # Celery installs no format of its own when setup_logging has a receiver
    receivers = [r() if isinstance(r, weakref.ReferenceType) else r for _, r in setup_logging.receivers]
    assert celery_module._log_like_the_web in receivers


def test_a_management_command_logs_in_json_with_log_format_json() -> None:
    env = dict(os.environ) | {"LOG_FORMAT": "json", "LOG_LEVEL": "DEBUG"}
    code = "import django, logging; django.setup(); logging.getLogger('probe').info('hello')"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env | {"DJANGO_SETTINGS_MODULE": SETTINGS},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    entries = [json.loads(line) for line in done.stderr.splitlines()]
    assert {"logger": "probe", "message": "hello", "level": "INFO", "process": "python"}.items() <= entries[
        -1
    ].items()


def test_a_real_workers_attempt_binds_its_run_and_thread_for_every_record(
    mailbox_worker: Any, engine_settings: Any
) -> None:
    """The worker binds the attempt it runs (mailbox_app/worker/execution.py): what the agent logs names
    the run and the thread; outside the attempt nothing is bound."""
    LOG_CONTEXTS.clear()
    submitted = mailbox.submit_background(
        RunRequest(thread_id="t-logged", agent_id="log-context", messages=[ChatMessage.user("hi")])
    )
    wait_until(lambda: LOG_CONTEXTS, timeout=30, what="the agent to run")
    assert [(submitted.run_id, "t-logged")] == LOG_CONTEXTS
    assert current() == NO_RUN
