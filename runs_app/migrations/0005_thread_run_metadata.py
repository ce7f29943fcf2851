# Placeholder reserved for: thread/run metadata, run timeout (filled in by the change that needs it).
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("runs_app", "0004_run_steps"),
    ]

    operations: list[migrations.operations.base.Operation] = []
