"""One log format for every process: the web server (gunicorn, uvicorn's access lines, Django), the
Celery worker and beat, and the management commands.

A text line is `time level process logger: message [run=… thread=…]`; with LOG_FORMAT=json each record
is one JSON object with the same fields. `process` says which service wrote it (web, worker, beat, or
the management command), the run and thread ids come from mailbox_app/observability/log_context.py
when the record was logged inside `bind_run`. settings.LOGGING is `logging_config(...)`; gunicorn uses
it as its `logconfig_dict` (awaken_project/gunicorn_conf.py) and Celery answers its `setup_logging`
signal with it (awaken_project/celery.py), so none of them installs its own format.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any

from mailbox_app.observability.log_context import current


def process_name(argv: list[str] | None = None) -> str:
    """The service this process is: web (gunicorn/uvicorn), worker, beat, or the management command."""
    argv = sys.argv if argv is None else argv
    program = os.path.basename(os.path.dirname(argv[0]) if argv[0].endswith("__main__.py") else argv[0])
    if program in {"gunicorn", "uvicorn"}:
        return "web"
    if program == "celery":
        return next((word for word in argv[1:] if word in {"worker", "beat", "flower"}), "celery")
    if program == "manage.py" and len(argv) > 1:
        return argv[1]
    return program.removesuffix(".py") if program not in {"", "-c", "-m"} else "python"


class ContextFilter(logging.Filter):
    """Adds `service`, `run_id` and `thread_id` to every record (the ids are None outside a run)."""

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        self.service = process_name()

    def filter(self, record: logging.LogRecord) -> bool:
        context = current()
        record.service = self.service
        record.run_id = context.run_id
        record.thread_id = context.thread_id
        return True


def _timestamp(record: logging.LogRecord) -> str:
    return (
        datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


class TextFormatter(logging.Formatter):
    """`2026-12-07T14:22:01.123Z INFO    web    django.request: message run=… thread=…`"""

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{_timestamp(record)} {record.levelname:<7} {getattr(record, 'service', '-'):<6} "
            f"{record.name}: {record.getMessage()}"
        )
        run_id, thread_id = getattr(record, "run_id", None), getattr(record, "thread_id", None)
        if run_id:
            line += f" run={run_id}"
        if thread_id:
            line += f" thread={thread_id}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, process, logger, message, run_id/thread_id, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname,
            "process": getattr(record, "service", None),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("run_id", "thread_id"):
            if getattr(record, key, None):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def logging_config(level: str = "INFO", fmt: str = "text") -> dict[str, Any]:
    """A `logging.config.dictConfig` dict: one handler on stderr with the chosen format, for the root and
    for the servers' own loggers (which do not propagate, so each line is written once)."""
    formatter = JsonFormatter if fmt == "json" else TextFormatter
    own = {"handlers": ["console"], "level": level, "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": ContextFilter}},
        "formatters": {"awaken": {"()": formatter}},
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "awaken",
                "filters": ["context"],
            }
        },
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            "gunicorn.error": own,
            "gunicorn.access": own,
            "uvicorn.error": own,
            "uvicorn.access": own,
        },
    }
