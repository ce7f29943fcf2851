"""`manage.py mailbox_reconcile`: end the runs of ended dispatches (services/operator.py), in batches."""

from typing import Any

from django.core.management.base import CommandParser

from mailbox_app.management.commands._base import MailboxCommand
from mailbox_app.services.operator import DRY_RUN_LIST, reconcile_candidates, reconcile_in_batches


class Command(MailboxCommand):
    help = (
        "Terminalize runs whose dispatch ended cancelled / superseded / dead-lettered but are not done yet "
        "(the beat does one batch per tick; this goes on until none is left). One transaction per batch."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        self.add_batch_arguments(
            parser,
            "runs",
            dry_run=f"list the dispatches whose run would be ended (at most --limit, else {DRY_RUN_LIST}); "
            "changes nothing",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["dry_run"]:
            candidates = reconcile_candidates(options["limit"] or DRY_RUN_LIST)
            for dispatch_id in candidates:
                self.progress(f"would end the run of dispatch {dispatch_id}")
            self.summary("reconcile", {"dry_run": True, "runs_to_terminalize": len(candidates)})
            return
        ended = 0
        for batch in reconcile_in_batches(limit=options["limit"], batch_size=options["batch_size"]):
            ended += len(batch.ended)
            self.progress(
                f"batch {batch.number}: ended {len(batch.ended)} of {len(batch.looked_at)} runs "
                f"({ended} so far)"
            )
        self.summary("reconcile", {"runs_terminalized": ended})
