from dataclasses import asdict
from typing import Any

from mailbox_app.management.commands._base import MailboxCommand
from mailbox_app.services.maintenance import recover_with_retry


class Command(MailboxCommand):
    help = "Startup recovery: reclaim, reconcile, re-drive queued threads, wake orphaned background waits."

    def handle(self, *args: Any, **options: Any) -> None:
        self.summary("recover", asdict(recover_with_retry()))
