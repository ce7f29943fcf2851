# Placeholder reserved for: history repair on cancel (filled in by the change that needs it).
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("runs_app", "0005_thread_run_metadata"),
    ]

    operations: list[migrations.operations.base.Operation] = []
