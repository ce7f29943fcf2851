from typing import Any

from mailbox_app.maintenance import gc
from mailbox_app.management.commands._base import MailboxCommand


class Command(MailboxCommand):
    help = "Delete terminal dispatches older than AWAKEN_MAILBOX_GC_TTL_MS."

    def handle(self, *args: Any, **options: Any) -> None:
        self.summary("gc", {"purged": gc()})
