"""A thread's inbox policy (mailbox_app/contract/inbox.py, docs/inbox.md): null means the agent's or the
project's default, if any."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("runs_app", "0009_run_decisions"),
    ]

    operations = [
        migrations.AddField(
            model_name="thread",
            name="inbox",
            field=models.JSONField(blank=True, null=True),
        ),
    ]
