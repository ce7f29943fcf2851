"""One decision per suspended tool call (mailbox_app/store/runs_tables/decisions.py): one row per (run,
tool call), deleted with its run. A second decision for the same call finds the row: `already_decided`."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("runs_app", "0008_thread_status_view"),
    ]

    operations = [
        migrations.CreateModel(
            name="RunDecision",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("tool_call_id", models.CharField(max_length=255)),
                ("decision_id", models.CharField(max_length=64)),
                ("action", models.CharField(max_length=32)),
                ("via", models.CharField(choices=[("live", "live"), ("queued", "queued")], max_length=8)),
                ("dispatch_id", models.CharField(blank=True, max_length=64, null=True)),
                ("decided_at", models.BigIntegerField()),
                (
                    "run",
                    models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="decisions",
                        to="runs_app.run",
                    ),
                ),
            ],
            options={
                "db_table": "runs_decision",
                "ordering": ["run", "id"],
                "constraints": [
                    models.UniqueConstraint(fields=("run", "tool_call_id"), name="run_decision_once"),
                    models.CheckConstraint(
                        condition=models.Q(("via__in", ["live", "queued"])), name="run_decision_via"
                    ),
                ],
            },
        ),
        # as runs_step's (0004): the database cascades too, so a run deleted by raw SQL (a thread's
        # delete, the TTL) cannot leave its decisions behind or fail on them
        migrations.RunSQL(
            "ALTER TABLE runs_decision ADD CONSTRAINT runs_decision_run_fk FOREIGN KEY (run_id) "
            "REFERENCES runs_run (run_id) ON DELETE CASCADE",
            reverse_sql="ALTER TABLE runs_decision DROP CONSTRAINT runs_decision_run_fk",
        ),
    ]
