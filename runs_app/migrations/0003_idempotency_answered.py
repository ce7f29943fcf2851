"""Idempotency keys are written with their answer (never "in progress") and expire: rows left unanswered
by the old two-step write are dropped (their submission's outcome is unknown, and the key never answered
a client), the answer columns become NOT NULL, and an index on created_at serves the GC purge."""

from typing import Any

from django.db import migrations, models


def drop_unanswered(apps: Any, schema_editor: Any) -> None:
    record = apps.get_model("runs_app", "IdempotencyRecord")
    record.objects.filter(models.Q(status_code__isnull=True) | models.Q(response__isnull=True)).delete()


class Migration(migrations.Migration):
    dependencies = [("runs_app", "0002_idempotency")]

    operations = [
        migrations.RunPython(drop_unanswered, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="idempotencyrecord", name="status_code", field=models.IntegerField()
        ),
        migrations.AlterField(model_name="idempotencyrecord", name="response", field=models.JSONField()),
        migrations.AddIndex(
            model_name="idempotencyrecord",
            index=models.Index(fields=["created_at"], name="idempotency_created_idx"),
        ),
    ]
