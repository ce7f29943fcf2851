"""Shared shape of the operator commands: one service call (or its batches), progress lines, a one-line
JSON summary per result (`label: {...}`, what scripts parse), an exit code.

The commands that can move many rows take the same three options: `--dry-run` (say what would change,
change nothing), `--limit N` (at most N rows) and `--batch-size N` (rows per transaction)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from mailbox_app.services.operator import BATCH_SIZE


def positive_int(text: str) -> int:
    """An option's value that must be a whole number >= 1 (argparse names the option in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


class MailboxCommand(BaseCommand):
    def summary(self, label: str, data: Any) -> None:
        self.stdout.write(f"{label}: {json.dumps(data, sort_keys=True, default=str)}")

    def progress(self, line: str) -> None:
        """One line per batch, flushed at once: a long run shows where it is."""
        self.stdout.write(line)
        self.stdout.flush()

    @staticmethod
    def add_batch_arguments(parser: CommandParser, rows: str, *, dry_run: str) -> None:
        parser.add_argument("--dry-run", action="store_true", help=dry_run)
        parser.add_argument(
            "--limit",
            type=positive_int,
            metavar="N",
            help=f"move at most N {rows} (default: every one)",
        )
        parser.add_argument(
            "--batch-size",
            type=positive_int,
            default=BATCH_SIZE,
            metavar="N",
            help=f"{rows} per batch; each batch is one transaction (default: {BATCH_SIZE})",
        )
