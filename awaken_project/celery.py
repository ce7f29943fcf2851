"""The Celery application; tasks are discovered in the Django apps."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "awaken_project.settings")

app = Celery("awaken_project")
# the default in every thread too: the apps send through `celery.current_app`, which is thread-local
# for an app that is only "current", and would be a fresh unconfigured app in a pool thread
app.set_default()
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
