"""The webhook outbox: subscriptions written by a submit, deliveries written by the transaction that
ends or suspends a run (mailbox_app/webhooks/outbox.py)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("mailbox_app", "0003_dispatch_request_fillfactor"),
    ]

    operations = [
        migrations.CreateModel(
            name="WebhookSubscription",
            fields=[
                ("run_id", models.CharField(max_length=64, primary_key=True, serialize=False)),
                ("url", models.CharField(max_length=2048)),
                ("created_at", models.BigIntegerField()),
            ],
            options={
                "db_table": "mailbox_webhook_subscription",
            },
        ),
        migrations.CreateModel(
            name="WebhookDelivery",
            fields=[
                ("delivery_id", models.CharField(max_length=64, primary_key=True, serialize=False)),
                ("run_id", models.CharField(max_length=64)),
                ("thread_id", models.CharField(max_length=128)),
                ("event", models.CharField(max_length=32)),
                ("url", models.CharField(max_length=2048)),
                ("payload", models.JSONField()),
                (
                    "status",
                    models.CharField(
                        choices=[("pending", "Pending"), ("delivered", "Delivered"), ("failed", "Failed")],
                        default="pending",
                        max_length=16,
                    ),
                ),
                ("attempts", models.IntegerField(default=0)),
                ("next_attempt_at", models.BigIntegerField()),
                ("locked_until", models.BigIntegerField(blank=True, null=True)),
                ("last_error", models.TextField(blank=True, null=True)),
                ("last_status_code", models.IntegerField(blank=True, null=True)),
                ("created_at", models.BigIntegerField()),
                ("updated_at", models.BigIntegerField()),
                ("delivered_at", models.BigIntegerField(blank=True, null=True)),
            ],
            options={
                "verbose_name": "webhook delivery",
                "verbose_name_plural": "webhook deliveries",
                "db_table": "mailbox_webhook_outbox",
                "indexes": [
                    models.Index(
                        condition=models.Q(("status", "pending")),
                        fields=["next_attempt_at"],
                        name="webhook_due_idx",
                    ),
                    models.Index(
                        condition=models.Q(("status", "delivered")),
                        fields=["delivered_at"],
                        name="webhook_delivered_idx",
                    ),
                    models.Index(fields=["run_id"], name="webhook_run_idx"),
                ],
                "constraints": [
                    models.CheckConstraint(
                        condition=models.Q(("status__in", ["pending", "delivered", "failed"])),
                        name="webhook_status_valid",
                    ),
                    models.CheckConstraint(
                        condition=models.Q(("attempts__gte", 0)), name="webhook_attempts_non_negative"
                    ),
                ],
            },
        ),
    ]
