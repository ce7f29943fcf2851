"""The Celery application; tasks are discovered in the Django apps."""

from __future__ import annotations

import logging.config
import os
from typing import Any

from celery import Celery
from celery.signals import setup_logging
from django.conf import settings

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
