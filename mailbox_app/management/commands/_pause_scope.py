"""The scope options `mailbox_pause` and `mailbox_resume` share: exactly one of `--thread`, `--agent`,
`--all` (docs/inbox.md)."""

from __future__ import annotations

import getpass
import os
from typing import Any

from django.core.management.base import CommandError, CommandParser

from mailbox_app.contract.inbox import PauseScope


def add_scope_arguments(parser: CommandParser, verb: str) -> None:
    scope = parser.add_mutually_exclusive_group(required=True)
    scope.add_argument("--thread", metavar="THREAD_ID", help=f"{verb} one thread")
    scope.add_argument(
        "--agent", metavar="AGENT_ID", help=f"{verb} every dispatch of one agent, on every thread"
    )
    scope.add_argument("--all", action="store_true", help=f"{verb} everything")


def scope_of(options: dict[str, Any]) -> tuple[PauseScope, str]:
    if options.get("all"):
        return PauseScope.ALL, ""
    for name, scope in (("thread", PauseScope.THREAD), ("agent", PauseScope.AGENT)):
        value = (options.get(name) or "").strip()
        if options.get(name) is not None:
            if not value:
                raise CommandError(f"--{name} must not be empty")
            return scope, value
    raise CommandError("give --thread THREAD_ID, --agent AGENT_ID or --all")


def operator_name() -> str:
    """Who runs the command, as the pause records it: `operator:<login>`."""
    try:
        login = getpass.getuser()
    except (OSError, KeyError):
        login = os.environ.get("USER", "") or "unknown"
    return f"operator:{login}"
