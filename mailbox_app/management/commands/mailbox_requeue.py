from typing import Any

from django.core.management.base import CommandError, CommandParser

from mailbox_app.management.commands._base import MailboxCommand
from mailbox_app.services.operator import requeue_dead_letters


class Command(MailboxCommand):
    help = "Move dead-lettered dispatches back to queued with fresh attempts."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("dispatch_ids", nargs="*")
        parser.add_argument("--thread", dest="thread_id")
        parser.add_argument("--all-dead-letter", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        ids: list[str] = options["dispatch_ids"]
        if not ids and not options["thread_id"] and not options["all_dead_letter"]:
            raise CommandError("give dispatch ids, --thread THREAD_ID or --all-dead-letter")
        outcome = requeue_dead_letters(
            dispatch_ids=ids or None, thread_id=options["thread_id"], everything=options["all_dead_letter"]
        )
        self.summary("requeue", {"requeued": len(outcome.requeued)})
        if outcome.refused:
            # left dead-lettered: their run finished naturally or by another dispatch (contract/lifecycle.py)
            self.summary("refused", outcome.refused)
        missing = len(ids) - len(outcome.requeued) - len(outcome.refused)
        if ids and missing > 0:
            raise CommandError(f"{missing} of the given dispatches are not dead-lettered")
        if ids and outcome.refused:  # asked for by id: say it failed. A bulk requeue reports and succeeds
            # (a scheduled `--all-dead-letter` must not fail until GC purges a row it may never move)
            raise CommandError(
                f"{len(outcome.refused)} dead-lettered dispatches were left as they are: their run is done"
            )
