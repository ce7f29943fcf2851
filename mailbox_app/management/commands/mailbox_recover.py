from dataclasses import asdict
from typing import Any

from mailbox_app.management.commands._base import MailboxCommand
from mailbox_app.services.maintenance import recover_with_retry


class Command(MailboxCommand):
    help = (
        "Startup recovery, as a worker runs it when it starts: a sweep, a reconcile, a ring for every "
        "thread with queued work, a wake for runs waiting on background tasks that nothing will wake. "
        "Safe to run again (every step is idempotent); no options."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        self.summary("recover", asdict(recover_with_retry()))
