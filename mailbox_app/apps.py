from django.apps import AppConfig


class MailboxAppConfig(AppConfig):
    name = "mailbox_app"
    verbose_name = "Mailbox"
    default_auto_field = "django.db.models.BigAutoField"
