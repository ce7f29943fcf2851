"""Run metadata (a JSON object searched by containment: GIN jsonb_path_ops for `@>`) and the run timeout:
each activation's budget (`timeout_ms`) and the current activation's deadline, with a partial index the
sweep scans for running runs whose deadline passed."""

import django.contrib.postgres.indexes
from django.db import migrations, models
from django.db.models import Q


class Migration(migrations.Migration):
    dependencies = [
        ("runs_app", "0004_run_steps"),
    ]

    operations = [
        migrations.AddField(
            model_name="run", name="metadata", field=models.JSONField(blank=True, default=dict)
        ),
        migrations.AddField(
            model_name="run", name="timeout_ms", field=models.BigIntegerField(blank=True, null=True)
        ),
        migrations.AddField(
            model_name="run", name="deadline_at", field=models.BigIntegerField(blank=True, null=True)
        ),
        migrations.AddIndex(
            model_name="run",
            index=django.contrib.postgres.indexes.GinIndex(
                fields=["metadata"], name="run_metadata_gin", opclasses=["jsonb_path_ops"]
            ),
        ),
        migrations.AddIndex(
            model_name="run",
            index=models.Index(
                condition=Q(status="running"), fields=["deadline_at"], name="run_running_deadline_idx"
            ),
        ),
        migrations.AddConstraint(
            model_name="run",
            constraint=models.CheckConstraint(
                condition=Q(timeout_ms__isnull=True) | Q(timeout_ms__gt=0), name="run_timeout_positive"
            ),
        ),
    ]
