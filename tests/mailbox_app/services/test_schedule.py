"""The beat schedule (mailbox_app/services/schedule.py): periodic task rows follow the config and keep an
operator's
switch.
"""

from __future__ import annotations

from typing import Any

import pytest
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from awaken_project.celery import app
from mailbox_app.contract.config import MailboxConfig
from mailbox_app.services.schedule import PERIODIC_TASKS, sync_periodic_tasks


@pytest.mark.django_db
def test_beat_schedule_rows_follow_config_and_keep_operator_switch(settings: Any) -> None:
    """seed: maintenance_callback_runs_on_gc_tick"""

    settings.AWAKEN_MAILBOX = MailboxConfig(sweep_interval_ms=7_000, gc_interval_ms=11_000)
    sync_periodic_tasks()
    rows = {p.name: p for p in PeriodicTask.objects.filter(name__in=list(PERIODIC_TASKS))}
    assert set(rows) == set(PERIODIC_TASKS)
    expected_every = {
        "mailbox.sweep": 7,
        "mailbox.reconcile": 7,
        "mailbox.gc": 11,
        "mailbox.redrive_webhooks": 7,
    }
    for row in rows.values():
        assert row.task in app.tasks, f"{row.task} must be a registered Celery task"
        assert row.interval is not None and row.interval.period == IntervalSchedule.SECONDS
        assert row.interval.every == expected_every[row.task]
        assert row.enabled
    assert sync_periodic_tasks() == 0, "idempotent"
    assert PeriodicTask.objects.filter(name__in=list(PERIODIC_TASKS)).count() == len(PERIODIC_TASKS) == 4

    gc_name = next(name for name, (task, _) in PERIODIC_TASKS.items() if task == "mailbox.gc")
    PeriodicTask.objects.filter(name=gc_name).update(enabled=False)
    settings.AWAKEN_MAILBOX = MailboxConfig(sweep_interval_ms=7_000, gc_interval_ms=13_000)
    assert sync_periodic_tasks() == 1
    gc_row = PeriodicTask.objects.get(name=gc_name)
    assert gc_row.interval is not None and gc_row.interval.every == 13
    assert gc_row.enabled is False, "an operator's switch survives a sync"
