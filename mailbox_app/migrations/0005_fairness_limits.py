# Placeholder reserved for: fair claim order and concurrency limits (filled in by the change that needs it).
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("mailbox_app", "0004_webhook_outbox"),
    ]

    operations: list[migrations.operations.base.Operation] = []
