from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('mailbox_app', '0002_dispatch_verbose_name'),
    ]

    operations = [
        migrations.AddField(
            model_name='dispatch',
            name='request',
            field=models.JSONField(blank=True, null=True),
        ),
        # Every transition rewrites a dispatch row: leave room in each page for HOT updates.
        migrations.RunSQL(
            "ALTER TABLE mailbox_dispatch SET (fillfactor = 70)",
            "ALTER TABLE mailbox_dispatch RESET (fillfactor)",
        ),
        migrations.RunSQL(
            "ALTER TABLE mailbox_thread_epoch SET (fillfactor = 70)",
            "ALTER TABLE mailbox_thread_epoch RESET (fillfactor)",
        ),
    ]
