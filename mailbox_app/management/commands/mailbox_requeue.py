"""`manage.py mailbox_requeue`: dead letters back to queued (services/operator.py), in batches."""

from typing import Any

from django.core.management.base import CommandError, CommandParser

from mailbox_app.management.commands._base import MailboxCommand
from mailbox_app.services.operator import Requeued, requeue_in_batches


class Command(MailboxCommand):
    help = (
        "Move dead-lettered dispatches back to queued: available now, attempts counted from 0, and the run "
        "each ended reopened so the work's new result lands on it (a run that ended otherwise keeps its "
        "dead letter: 'refused'). Works in batches, one transaction each, printing a line per batch."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "dispatch_ids", nargs="*", metavar="DISPATCH_ID", help="requeue these dead-lettered dispatches"
        )
        parser.add_argument(
            "--thread", dest="thread_id", metavar="THREAD_ID", help="every dead letter of a thread"
        )
        parser.add_argument(
            "--all-dead-letter", action="store_true", help="every dead letter (use --limit to take fewer)"
        )
        self.add_batch_arguments(
            parser,
            "dead letters",
            dry_run="do every batch and roll it back: prints what would be requeued and refused, "
            "changes nothing",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        ids: list[str] = options["dispatch_ids"]
        if not ids and not options["thread_id"] and not options["all_dead_letter"]:
            raise CommandError("give dispatch ids, --thread THREAD_ID or --all-dead-letter")
        dry = options["dry_run"]
        total = Requeued()
        for batch in requeue_in_batches(
            dispatch_ids=ids or None,
            thread_id=options["thread_id"],
            limit=options["limit"],
            batch_size=options["batch_size"],
            dry_run=dry,
        ):
            done = batch.outcome
            total = Requeued(total.requeued + done.requeued, total.refused | done.refused)
            self.progress(
                f"batch {batch.number}: {'would requeue' if dry else 'requeued'} {len(done.requeued)} "
                f"of {len(batch.looked_at)}, refused {len(done.refused)} "
                f"({len(total.requeued)} {'would be ' if dry else ''}requeued so far)"
            )
        self._finish(ids, total, dry)

    def _finish(self, ids: list[str], total: Requeued, dry: bool) -> None:
        self.summary("requeue", {"requeued": len(total.requeued), **({"dry_run": True} if dry else {})})
        if total.refused:
            # left dead-lettered: their run finished naturally or by another dispatch (contract/lifecycle.py)
            self.summary("refused", total.refused)
        missing = len(ids) - len(total.requeued) - len(total.refused)
        if ids and missing > 0:
            raise CommandError(f"{missing} of the given dispatches are not dead-lettered")
        if ids and total.refused:  # asked for by id: say it failed. A bulk requeue reports and succeeds
            # (a scheduled `--all-dead-letter` must not fail until GC purges a row it may never move)
            raise CommandError(
                f"{len(total.refused)} dead-lettered dispatches were left as they are: their run is done"
            )
