"""`manage.py mailbox_resume`: resume a paused thread, agent or everything, and ring what it held
(services/pauses.py, docs/inbox.md)."""

from typing import Any

from django.core.management.base import CommandError, CommandParser

from mailbox_app.management.commands._base import MailboxCommand
from mailbox_app.management.commands._pause_scope import add_scope_arguments, scope_of
from mailbox_app.services import pauses


class Command(MailboxCommand):
    help = (
        "Resume a thread, an agent or everything paused by `mailbox_pause`, the admin or the API: its "
        "queued work is claimed again in its order (every thread of the scope with queued work is rung). "
        "Resumes only the pause of that very scope (a thread stays held while its agent is paused). "
        "Exits 1 when the scope was not paused."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        add_scope_arguments(parser, "resume")

    def handle(self, *args: Any, **options: Any) -> None:
        scope, key = scope_of(options)
        done = pauses.resume(scope, key, by_operator=True)
        if done.pause is None:
            raise CommandError(f"{scope.value} {key} is not paused".replace("  ", " "))
        self.summary(
            "resume",
            {
                "scope": done.pause.scope.value,
                "key": done.pause.key,
                "paused_by": done.pause.paused_by,
                "paused_since": done.pause.since,
                "rung_threads": done.rung_threads,
            },
        )
