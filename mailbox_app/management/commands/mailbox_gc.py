from typing import Any

from mailbox_app.management.commands._base import MailboxCommand
from mailbox_app.services.maintenance import gc_counts


class Command(MailboxCommand):
    help = "One GC tick: old terminal dispatches, orphaned epoch rows, expired keys and threads, ..."

    def handle(self, *args: Any, **options: Any) -> None:
        self.summary("gc", gc_counts())
