"""`manage.py mailbox_sweep`: one sweep (services/maintenance.py)."""

from typing import Any

from django.core.management.base import CommandParser

from mailbox_app.contract.ids import now_ms
from mailbox_app.management.commands._base import MailboxCommand
from mailbox_app.services.maintenance import sweep
from mailbox_app.services.operator import DRY_RUN_LIST, expired_leases


class Command(MailboxCommand):
    help = (
        "One sweep: reclaim expired leases (requeued, or dead-lettered at max attempts; already in batches "
        "of 100, one transaction each), reconcile what was reclaimed, time out overdue runs, re-drive "
        "claimable threads. No --limit: a partial sweep would leave expired claims holding their threads."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help=f"list the claims whose lease has expired (at most {DRY_RUN_LIST}); changes nothing",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["dry_run"]:
            expired = expired_leases(now_ms())
            for dispatch_id in expired:
                self.progress(f"would reclaim dispatch {dispatch_id} (lease expired)")
            self.summary("sweep", {"dry_run": True, "expired_leases": len(expired)})
            return
        self.summary("sweep", sweep().as_dict())
