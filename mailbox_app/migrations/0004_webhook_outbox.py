# Placeholder reserved for: the webhook outbox (filled in by the change that needs it).
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("mailbox_app", "0003_dispatch_request_fillfactor"),
    ]

    operations: list[migrations.operations.base.Operation] = []
