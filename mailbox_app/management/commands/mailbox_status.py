from typing import Any

from mailbox_app.management.commands._base import MailboxCommand
from mailbox_app.services.selectors import mailbox_overview


class Command(MailboxCommand):
    help = (
        "Read only: counts by status, the oldest queued dispatch's age, and every claim with its holder "
        "and lease left (one JSON line each)."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        overview = mailbox_overview()
        self.summary("counts", overview.counts)
        self.summary("oldest_queued_age_ms", overview.oldest_queued_age_ms)
        for claim in overview.claims:
            self.summary("claim", claim)
