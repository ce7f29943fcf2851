from typing import Any

from mailbox_app.management.commands._base import MailboxCommand
from mailbox_app.services.maintenance import sweep


class Command(MailboxCommand):
    help = "Reclaim expired leases, reconcile what was reclaimed, re-drive claimable threads."

    def handle(self, *args: Any, **options: Any) -> None:
        self.summary("sweep", sweep().as_dict())
