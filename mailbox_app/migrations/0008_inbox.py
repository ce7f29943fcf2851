"""The inbox (docs/inbox.md): pauses by scope, which every claim checks in its own statement
(mailbox_app/store/claims.sql, claims.py); each thread's open debounce window; and schedules on a thread,
each backed by a django-celery-beat PeriodicTask (mailbox_app/services/schedules.py)."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("django_celery_beat", "0019_alter_periodictasks_options"),
        ("mailbox_app", "0006_subscriber_secrets"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="InboxWindow",
            fields=[
                ("thread_id", models.CharField(max_length=128, primary_key=True, serialize=False)),
                ("dispatch_id", models.CharField(max_length=64)),
                ("opened_at", models.BigIntegerField()),
                ("last_message_at", models.BigIntegerField()),
                ("messages", models.IntegerField(default=0)),
            ],
            options={
                "db_table": "mailbox_inbox_window",
            },
        ),
        migrations.CreateModel(
            name="Pause",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                (
                    "scope",
                    models.CharField(
                        choices=[("thread", "thread"), ("agent", "agent"), ("all", "all")], max_length=8
                    ),
                ),
                ("key", models.CharField(blank=True, default="", max_length=128)),
                ("paused_by", models.CharField(max_length=255)),
                ("by_operator", models.BooleanField(default=False)),
                ("reason", models.TextField(blank=True, default="")),
                ("created_at", models.BigIntegerField()),
            ],
            options={
                "db_table": "mailbox_pause",
                "ordering": ["created_at", "id"],
                "constraints": [
                    models.UniqueConstraint(fields=("scope", "key"), name="pause_scope_key_unique"),
                    models.CheckConstraint(
                        condition=models.Q(("scope__in", ["thread", "agent", "all"])),
                        name="pause_scope_valid",
                    ),
                    models.CheckConstraint(
                        condition=models.Q(
                            models.Q(("key", ""), ("scope", "all")),
                            models.Q(
                                models.Q(("scope", "all"), _negated=True),
                                models.Q(("key", ""), _negated=True),
                            ),
                            _connector="OR",
                        ),
                        name="pause_key_iff_scoped",
                    ),
                ],
            },
        ),
        migrations.CreateModel(
            name="Schedule",
            fields=[
                ("schedule_id", models.CharField(max_length=64, primary_key=True, serialize=False)),
                ("thread_id", models.CharField(db_index=True, max_length=128)),
                ("cron", models.CharField(blank=True, max_length=255, null=True)),
                ("timezone", models.CharField(default="UTC", max_length=64)),
                ("interval_s", models.IntegerField(blank=True, null=True)),
                ("messages", models.JSONField()),
                ("metadata", models.JSONField(blank=True, default=dict)),
                ("agent_id", models.CharField(blank=True, max_length=128, null=True)),
                (
                    "if_busy",
                    models.CharField(
                        choices=[("skip", "skip"), ("enqueue", "enqueue")], default="skip", max_length=8
                    ),
                ),
                ("enabled", models.BooleanField(default=True)),
                ("anchor_at", models.BigIntegerField()),
                ("next_run_at", models.BigIntegerField()),
                ("last_fired_at", models.BigIntegerField(blank=True, null=True)),
                ("last_outcome", models.CharField(blank=True, default="", max_length=32)),
                ("last_dispatch_id", models.CharField(blank=True, max_length=64, null=True)),
                ("last_run_id", models.CharField(blank=True, max_length=64, null=True)),
                ("firings", models.IntegerField(default=0)),
                ("created_at", models.BigIntegerField()),
                ("updated_at", models.BigIntegerField()),
                (
                    "owner",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                (
                    "periodic_task",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="django_celery_beat.periodictask",
                    ),
                ),
            ],
            options={
                "db_table": "mailbox_schedule",
                "ordering": ["created_at", "schedule_id"],
                "constraints": [
                    models.CheckConstraint(
                        condition=models.Q(
                            models.Q(("cron__isnull", False), ("interval_s__isnull", True)),
                            models.Q(("cron__isnull", True), ("interval_s__gte", 1)),
                            _connector="OR",
                        ),
                        name="schedule_cron_xor_interval",
                    ),
                    models.CheckConstraint(
                        condition=models.Q(("if_busy__in", ["skip", "enqueue"])),
                        name="schedule_if_busy_valid",
                    ),
                ],
            },
        ),
    ]
