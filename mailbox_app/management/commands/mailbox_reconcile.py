from typing import Any

from mailbox_app.maintenance import reconcile_terminal
from mailbox_app.management.commands._base import MailboxCommand


class Command(MailboxCommand):
    help = "Terminalize runs whose dispatch ended cancelled / superseded / dead-lettered."

    def handle(self, *args: Any, **options: Any) -> None:
        self.summary("reconcile", {"runs_terminalized": reconcile_terminal()})
