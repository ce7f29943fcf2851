"""`manage.py mailbox_gc`: one GC tick (services/maintenance.py), its dispatch purge in batches."""

from typing import Any

from django.core.management.base import CommandParser

from mailbox_app.conf import awaken_settings
from mailbox_app.contract.ids import now_ms
from mailbox_app.management.commands._base import MailboxCommand
from mailbox_app.services.maintenance import gc_counts
from mailbox_app.services.operator import old_terminal_count, purge_terminal_in_batches


class Command(MailboxCommand):
    help = (
        "One GC tick: terminal dispatches older than AWAKEN_MAILBOX's gc_ttl_ms (purged first, in batches "
        "of their own transaction), then orphaned epoch rows, old step journals, expired idempotency keys "
        "and threads (other apps' purges)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        self.add_batch_arguments(
            parser,
            "terminal dispatches",
            dry_run="count the terminal dispatches older than the TTL (the rest of the tick is not counted); "
            "changes nothing",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        now = now_ms()
        older_than = now - awaken_settings.MAILBOX.gc_ttl_ms
        if options["dry_run"]:
            self.summary("gc", {"dry_run": True, "dispatches_to_purge": old_terminal_count(older_than)})
            return
        purged = 0
        for number, deleted in enumerate(
            purge_terminal_in_batches(
                older_than=older_than, limit=options["limit"], batch_size=options["batch_size"]
            ),
            start=1,
        ):
            purged += deleted
            self.progress(f"batch {number}: purged {deleted} terminal dispatches ({purged} so far)")
        if options["limit"] is not None and old_terminal_count(older_than) > 0:
            # the tick's own purge would delete the rest at once: stop here, as --limit asked
            self.progress(
                "stopped at --limit: the rest of the tick (epochs, journals, other apps) did not run"
            )
            self.summary("gc", {"dispatches": purged, "stopped_at_limit": True})
            return
        counts = gc_counts(now=now)
        self.summary("gc", counts | {"dispatches": counts["dispatches"] + purged})
