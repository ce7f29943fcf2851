"""App wiring: beat schedule sync after migrate, startup recovery when a Celery worker is ready."""

from __future__ import annotations

import logging
from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate

log = logging.getLogger(__name__)


def _recover_on_worker_ready(**_: Any) -> None:
    from mailbox_app.maintenance import recover_with_retry

    report = recover_with_retry()
    log.info("mailbox startup recovery: %s", report)


class MailboxAppConfig(AppConfig):
    name = "mailbox_app"
    verbose_name = "Mailbox"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from celery.signals import worker_ready

        from mailbox_app import agents  # noqa: F401 - registers the system check
        from mailbox_app.maintenance import gc_ran
        from mailbox_app.schedule import sync_periodic_tasks
        from mailbox_app.webhook_delivery import purge_on_gc

        def _sync(sender: AppConfig, **kwargs: Any) -> None:
            if sender.name == self.name:
                sync_periodic_tasks()

        post_migrate.connect(_sync, weak=False, dispatch_uid="mailbox_sync_periodic_tasks")
        worker_ready.connect(_recover_on_worker_ready, weak=False, dispatch_uid="mailbox_recover")
        # the mailbox GC purges delivered webhook outbox rows too (bounded per tick)
        gc_ran.connect(purge_on_gc, weak=False, dispatch_uid="mailbox_purge_webhook_outbox")
