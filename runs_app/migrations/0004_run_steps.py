# Placeholder reserved for: the durable step journal (filled in by the change that needs it).
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("runs_app", "0003_idempotency_answered"),
    ]

    operations: list[migrations.operations.base.Operation] = []
