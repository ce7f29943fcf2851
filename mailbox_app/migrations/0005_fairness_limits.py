from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("mailbox_app", "0004_webhook_outbox"),
    ]

    operations = [
        migrations.AddField(
            model_name="threadepoch",
            name="owner_key",
            field=models.CharField(blank=True, db_default="", default="", max_length=64),
        ),
        migrations.AddField(
            model_name="dispatch",
            name="agent_key",
            field=models.CharField(blank=True, db_default="", default="", max_length=128),
        ),
        migrations.AddIndex(
            model_name="dispatch",
            index=models.Index(
                condition=models.Q(("status", "claimed")),
                fields=["agent_key"],
                name="dispatch_claimed_agent_idx",
            ),
        ),
        migrations.CreateModel(
            name="FairGroup",
            fields=[
                ("owner_key", models.CharField(max_length=64, primary_key=True, serialize=False)),
                ("served_at", models.BigIntegerField(db_default=0, default=0)),
            ],
            options={"db_table": "mailbox_fair_group"},
        ),
    ]
