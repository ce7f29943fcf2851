"""Worker-side experiments for `e2e_bench.py --variants a,b`: candidate optimizations applied as
monkeypatches inside the bench's worker processes only (`celery -A bench.variants`), so their gain can be
measured before anyone changes the real code. Nothing here is used by the application.

  db_reuse     Celery's Django fixup closes every DB connection before and after every task unless
               CELERY_DB_REUSE_MAX is set, so each mailbox task reconnects to PostgreSQL. This sets it
               (what `CELERY_DB_REUSE_MAX = ...` in awaken_project/settings.py would do); Django's own
               CONN_MAX_AGE / health checks (close_old_connections in drain_thread) still apply.
  live_nojoin  LiveSubscription.close() joins a listener thread that polls with a 50 ms timeout, so
               every run waits ~25 ms (up to 50) after the agent returned. Here close() refuses further
               commands at once (the sender then falls back to the durable path) and returns; the
               listener thread closes its own pubsub when its poll ends.
  live_off     No live subscription at all: the upper bound of what a shared per-process listener
               (one pubsub connection per worker, channels added/removed per run) could save.
  no_webhook   No webhook outbox statement in the transactions that end a run (what skipping it when
               no subscription and no AWAKEN_WEBHOOK_URL applies could save).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from awaken_project.celery import app

VARIANTS = frozenset(v.strip() for v in os.environ.get("BENCH_VARIANTS", "").split(",") if v.strip())
KNOWN = frozenset({"db_reuse", "live_nojoin", "live_off", "no_webhook"})


def _refuse(command: dict[str, Any]) -> bool:
    return False


def _apply() -> None:
    unknown = VARIANTS - KNOWN
    if unknown:
        raise SystemExit(f"unknown BENCH_VARIANTS: {sorted(unknown)}; known: {sorted(KNOWN)}")
    if "db_reuse" in VARIANTS:
        from django.conf import settings

        settings.CELERY_DB_REUSE_MAX = 1_000_000  # read by celery.fixups.django at worker start
    if "live_nojoin" in VARIANTS:
        from mailbox_app.realtime import live

        original_loop = live.LiveSubscription._loop

        def loop(self: Any) -> None:
            try:
                original_loop(self)
            finally:
                with contextlib.suppress(Exception):
                    self._pubsub.unsubscribe()
                    self._pubsub.close()

        def close(self: Any) -> None:
            self._handler = _refuse
            self._stop.set()

        live.LiveSubscription._loop = loop  # type: ignore[method-assign]
        live.LiveSubscription.close = close  # type: ignore[method-assign]
    if "live_off" in VARIANTS:
        from mailbox_app.worker import execution

        class NoSubscription:
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                pass

            def close(self) -> None:
                pass

        execution.LiveSubscription = NoSubscription  # type: ignore[attr-defined,assignment,misc]
    if "no_webhook" in VARIANTS:
        from mailbox_app.webhooks import outbox

        outbox.record_run_event = lambda run: None  # type: ignore[assignment]


_apply()

__all__ = ["app"]
