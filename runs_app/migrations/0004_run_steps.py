"""The durable step journal (mailbox_app/store/runs_tables/steps.py): one row per (run, key), deleted with its run."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("runs_app", "0003_idempotency_answered"),
    ]

    operations = [
        migrations.CreateModel(
            name="RunStep",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("key", models.CharField(max_length=255)),
                ("dispatch_id", models.CharField(max_length=64)),
                ("session_id", models.CharField(max_length=64)),
                ("attempt", models.IntegerField()),
                ("result", models.JSONField()),
                ("messages", models.JSONField(blank=True, null=True)),
                ("state", models.JSONField(blank=True, null=True)),
                ("result_bytes", models.IntegerField()),
                ("recorded_at", models.BigIntegerField()),
                (
                    "run",
                    models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="journal",
                        to="runs_app.run",
                    ),
                ),
            ],
            options={
                "db_table": "runs_step",
                "ordering": ["run", "id"],
                "constraints": [
                    models.UniqueConstraint(fields=("run", "key"), name="run_step_run_key_unique"),
                    models.CheckConstraint(
                        condition=models.Q(("attempt__gte", 1), ("result_bytes__gte", 0)),
                        name="run_step_counters",
                    ),
                ],
            },
        ),
        # Django's FK constraint has no ON DELETE action (the ORM cascades); this one cascades in the
        # database too, so a run deleted by raw SQL (a GC) cannot leave its journal behind or fail.
        migrations.RunSQL(
            "ALTER TABLE runs_step ADD CONSTRAINT runs_step_run_fk FOREIGN KEY (run_id) "
            "REFERENCES runs_run (run_id) ON DELETE CASCADE",
            reverse_sql="ALTER TABLE runs_step DROP CONSTRAINT runs_step_run_fk",
        ),
    ]
