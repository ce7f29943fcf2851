"""App wiring: the system check of the agents, beat schedule sync after migrate, the GC's extra purges,
the service's view of this process's running runs, and startup recovery when a Celery worker is ready.

The imports inside `ready` are the one place function-level imports are allowed (ruff's PLC0415 is off
for `apps.py` alone): Django loads this module before the app registry is ready, so nothing that
imports a model may be imported at its top.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_ready
from django.apps import AppConfig
from django.core import checks
from django.db.models.signals import post_migrate

log = logging.getLogger(__name__)


class MailboxAppConfig(AppConfig):
    name = "mailbox_app"
    verbose_name = "Mailbox"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from mailbox_app.agents import registry as agents  # noqa: F401 - registers the system check
        from mailbox_app.realtime import live
        from mailbox_app.services import inbox
        from mailbox_app.services.maintenance import gc_ran, recover_with_retry
        from mailbox_app.services.schedule import sync_periodic_tasks
        from mailbox_app.store import install, ports
        from mailbox_app.webhooks.delivery import purge_on_gc
        from mailbox_app.worker import registry

        def _sync(sender: AppConfig, **kwargs: Any) -> None:
            if sender.name == self.name:
                install.install(kwargs.get("using", "default"))
                sync_periodic_tasks()

        def _recover_on_worker_ready(**_: Any) -> None:
            log.info("mailbox startup recovery: %s", recover_with_retry())

        checks.register(ports.check_run_store)
        checks.register(install.check_installed, checks.Tags.database)
        live.use_local_runs(registry.find_local_run)
        post_migrate.connect(_sync, weak=False, dispatch_uid="mailbox_sync_periodic_tasks")
        worker_ready.connect(_recover_on_worker_ready, weak=False, dispatch_uid="mailbox_recover")
        # the mailbox GC purges delivered webhook outbox rows too (bounded per tick)
        gc_ran.connect(purge_on_gc, weak=False, dispatch_uid="mailbox_purge_webhook_outbox")
        # and the debounce windows whose dispatch was claimed or ended (docs/inbox.md)
        gc_ran.connect(inbox.purge_on_gc, weak=False, dispatch_uid="mailbox_purge_inbox_windows")
