"""`manage.py mailbox_pause`: pause a thread, an agent or everything (services/pauses.py, docs/inbox.md)."""

from typing import Any

from django.core.management.base import CommandParser

from mailbox_app.management.commands._base import MailboxCommand
from mailbox_app.management.commands._pause_scope import add_scope_arguments, operator_name, scope_of
from mailbox_app.services import pauses


class Command(MailboxCommand):
    help = (
        "Pause a thread, an agent or everything: from the moment this returns nothing of that scope is "
        "claimed (submits are still accepted and queued) until `mailbox_resume`. The pause is a row in "
        "PostgreSQL: it survives every restart. Prints the pause as JSON."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        add_scope_arguments(parser, "pause")
        parser.add_argument(
            "--interrupt",
            action="store_true",
            help="also stop the runs of the scope in progress (queued work stays)",
        )
        parser.add_argument(
            "--reason", default="", help="shown with the pause (the admin, the why-blocked view)"
        )
        parser.add_argument("--by", metavar="NAME", help="who pauses (default: operator:<your login>)")

    def handle(self, *args: Any, **options: Any) -> None:
        scope, key = scope_of(options)
        done = pauses.pause(
            scope,
            key,
            paused_by=options["by"] or operator_name(),
            by_operator=True,
            reason=options["reason"],
            interrupt=options["interrupt"],
        )
        pause = done.pause
        self.summary(
            "pause",
            {
                "scope": pause.scope.value,
                "key": pause.key,
                "paused_by": pause.paused_by,
                "since": pause.since,
                "reason": pause.reason,
                "already_paused": not done.created,
                "stopped_runs": done.stopped_runs,
            },
        )
