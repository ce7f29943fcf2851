"""Per-subscriber webhook signing (mailbox_app/webhooks/secret_store.py): a secret per user, and the owner of
each subscription and outbox row, so a delivery is signed with its subscriber's secret — never with the
project's AWAKEN_WEBHOOK_SECRET unless it goes to AWAKEN_WEBHOOK_URL. Rows written before this have no
owner: they are delivered unsigned (docs/webhooks.md)."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
        ("mailbox_app", "0005_fairness_limits"),
    ]

    operations = [
        migrations.CreateModel(
            name="WebhookSecret",
            fields=[
                (
                    "user",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        primary_key=True,
                        related_name="+",
                        serialize=False,
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                ("secret", models.CharField(max_length=128)),
                ("previous_secret", models.CharField(blank=True, max_length=128, null=True)),
                ("previous_valid_until", models.BigIntegerField(blank=True, null=True)),
                ("created_at", models.BigIntegerField()),
            ],
            options={
                "db_table": "mailbox_webhook_secret",
            },
        ),
        migrations.AddField(
            model_name="webhookdelivery",
            name="owner_id",
            field=models.BigIntegerField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="webhooksubscription",
            name="owner_id",
            field=models.BigIntegerField(blank=True, null=True),
        ),
    ]
