"""Keep django-celery-beat's PeriodicTask rows for sweep / reconcile / GC in step with the
AWAKEN_MAILBOX_* intervals. Idempotent; an operator's `enabled` switch in the admin is left alone."""

from __future__ import annotations

from typing import Any

from django_celery_beat.models import IntervalSchedule, PeriodicTask

from mailbox_app.conf import awaken_settings

PERIODIC_TASKS = {
    "mailbox: sweep expired leases": ("mailbox.sweep", "sweep_interval_ms"),
    "mailbox: reconcile terminal dispatches": ("mailbox.reconcile", "sweep_interval_ms"),
    "mailbox: garbage-collect terminal dispatches": ("mailbox.gc", "gc_interval_ms"),
    "mailbox: re-drive undelivered webhooks": ("mailbox.redrive_webhooks", "sweep_interval_ms"),
}


def sync_periodic_tasks(**_: Any) -> int:
    """Create or update the periodic tasks; returns how many rows were created or changed."""
    config = awaken_settings.MAILBOX
    changed = 0
    for name, (task, interval_field) in PERIODIC_TASKS.items():
        every_ms = int(getattr(config, interval_field))
        schedule, _ = IntervalSchedule.objects.get_or_create(
            every=max(every_ms // 1000, 1), period=IntervalSchedule.SECONDS
        )
        periodic, created = PeriodicTask.objects.get_or_create(
            name=name, defaults={"task": task, "interval": schedule}
        )
        if created:
            changed += 1
        elif periodic.task != task or periodic.interval_id != schedule.id:
            periodic.task, periodic.interval = task, schedule
            periodic.save(update_fields=["task", "interval"])
            changed += 1
    return changed
