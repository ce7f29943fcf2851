from typing import Any

from mailbox_app.management.commands._base import MailboxCommand
from mailbox_app.services.maintenance import reconcile_terminal


class Command(MailboxCommand):
    help = "Terminalize runs whose dispatch ended cancelled / superseded / dead-lettered."

    def handle(self, *args: Any, **options: Any) -> None:
        self.summary("reconcile", {"runs_terminalized": reconcile_terminal()})
