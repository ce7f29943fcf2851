"""The Celery application; tasks are discovered in the Django apps.

A warm shutdown (SIGTERM to the worker's main process: `make run`'s Ctrl-C, a container stop) hands
every running run back (mailbox_app/worker/execution.py `hand_back_local_runs`): its agent is cancelled
cooperatively and its claim given back, queued and due at once, so the next worker runs it now rather
than after its lease expires, and the worker exits as soon as its agents have stopped. Celery tells
only the main process (`worker_shutting_down`); with the prefork pool the runs are in the pool's
children, which the main process tells with HAND_BACK_SIGNAL.
"""

from __future__ import annotations

import logging.config
import os
import signal
import threading
from typing import Any

from celery import Celery
from celery.signals import beat_init, setup_logging, worker_init, worker_process_init, worker_shutting_down
from django.conf import settings

from awaken_project import telemetry

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "awaken_project.settings")

app = Celery("awaken_project")
# the default in every thread too: the apps send through `celery.current_app`, which is thread-local
# for an app that is only "current", and would be a fresh unconfigured app in a pool thread
app.set_default()
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@setup_logging.connect(weak=False)
def _log_like_the_web(**_: Any) -> None:
    """The worker and beat log in the project's format (settings.LOGGING, awaken_project/logconfig.py):
    with a receiver for this signal Celery installs no handler or format of its own."""
    logging.config.dictConfig(settings.LOGGING)


HAND_BACK_SIGNAL = signal.SIGUSR2  # main process -> pool child: hand your runs back (Celery leaves it alone)


def _hand_back_soon() -> None:
    """In a thread of its own: a signal handler must not wait for a lock the interrupted code holds."""

    def hand_back() -> None:
        from mailbox_app.worker.execution import hand_back_local_runs  # noqa: PLC0415 - Django is set up

        hand_back_local_runs()

    threading.Thread(target=hand_back, name="mailbox-hand-back", daemon=True).start()


@worker_shutting_down.connect(weak=False)
def _hand_back_on_shutdown(**_: Any) -> None:
    """The main process: its own runs (the threads and solo pools), then each prefork child's."""
    _hand_back_soon()
    from billiard.process import active_children  # noqa: PLC0415 - only a worker needs it

    for child in active_children():
        if child.pid is not None:
            try:
                os.kill(child.pid, HAND_BACK_SIGNAL)
            except ProcessLookupError:
                pass


@worker_process_init.connect(weak=False)
def _listen_for_hand_back(**_: Any) -> None:
    """A prefork child: the main process's HAND_BACK_SIGNAL hands this child's runs back; tracing (when
    configured) is set up here, after the fork, by each child for itself."""
    signal.signal(HAND_BACK_SIGNAL, lambda *_: _hand_back_soon())
    telemetry.configure("worker")


@worker_init.connect(weak=False)
def _trace_the_worker(sender: Any = None, **_: Any) -> None:
    """Tracing (when configured) in a worker whose tasks run in this process (threads, solo); a prefork
    worker's children set up their own (`_listen_for_hand_back`)."""
    if "prefork" not in str(getattr(sender, "pool_cls", "prefork")):
        telemetry.configure("worker")


@beat_init.connect(weak=False)
def _trace_beat(**_: Any) -> None:
    telemetry.configure("beat")  # the periodic tasks it sends start their traces
