from typing import Any

from django.core.management.base import CommandError, CommandParser

from mailbox_app.admin_actions import requeue_dead_letters
from mailbox_app.management.commands._base import MailboxCommand


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
        requeued = requeue_dead_letters(
            dispatch_ids=ids or None, thread_id=options["thread_id"], everything=options["all_dead_letter"]
        )
        self.summary("requeue", {"requeued": len(requeued)})
        if ids and len(requeued) < len(ids):
            raise CommandError(f"{len(ids) - len(requeued)} of the given dispatches are not dead-lettered")
