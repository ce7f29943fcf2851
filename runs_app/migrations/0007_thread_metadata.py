"""Thread search and TTL: a GIN index for metadata containment (`@>`), the owner's threads by activity,
and threads by last activity (the GC's TTL scan)."""

import django.contrib.postgres.indexes
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("runs_app", "0006_partial_messages")]

    operations = [
        migrations.AddIndex(
            model_name="thread",
            index=django.contrib.postgres.indexes.GinIndex(
                fields=["metadata"], name="thread_metadata_gin", opclasses=["jsonb_path_ops"]
            ),
        ),
        migrations.AddIndex(
            model_name="thread",
            index=models.Index(fields=["owner", "-updated_at", "id"], name="thread_owner_updated_idx"),
        ),
        migrations.AddIndex(
            model_name="thread", index=models.Index(fields=["updated_at"], name="thread_updated_idx")
        ),
    ]
