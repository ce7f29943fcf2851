"""Shared shape of the operator commands: one service call, a one-line summary, an exit code."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand


class MailboxCommand(BaseCommand):
    def summary(self, label: str, data: Any) -> None:
        self.stdout.write(f"{label}: {json.dumps(data, sort_keys=True, default=str)}")
