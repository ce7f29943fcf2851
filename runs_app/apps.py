from __future__ import annotations

from typing import Any

from django.apps import AppConfig


def _purge_idempotency_keys(*, now: int, **_: Any) -> dict[str, int]:
    from runs_app.api.idempotency import purge_expired

    return {"idempotency_keys": purge_expired(now=now)}


class RunsAppConfig(AppConfig):
    name = "runs_app"
    verbose_name = "Threads and runs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from mailbox_app.maintenance import gc_ran

        # The mailbox GC purges expired idempotency keys too (runs_app depends on mailbox_app, never back).
        gc_ran.connect(_purge_idempotency_keys, weak=False, dispatch_uid="runs_purge_idempotency_keys")
        # ... and threads past AWAKEN_THREAD_TTL_MS (deleted like DELETE threads/{id} does)
        from runs_app.threads import expire_on_gc

        gc_ran.connect(expire_on_gc, weak=False, dispatch_uid="runs_expire_threads")
