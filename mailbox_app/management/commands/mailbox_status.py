from typing import Any

from mailbox_app.management.commands._base import MailboxCommand
from mailbox_app.services.selectors import mailbox_overview


class Command(MailboxCommand):
    help = "Counts by status, oldest queued age, current claims with holder and lease left."

    def handle(self, *args: Any, **options: Any) -> None:
        overview = mailbox_overview()
        self.summary("counts", overview.counts)
        self.summary("oldest_queued_age_ms", overview.oldest_queued_age_ms)
        for claim in overview.claims:
            self.summary("claim", claim)
