"""App wiring: the mailbox GC also purges expired idempotency keys and expires threads past
AWAKEN_THREAD_TTL_MS (runs_app depends on mailbox_app, never back). Imports inside `ready` only, as in
mailbox_app/apps.py: this module loads before the app registry is ready."""

from __future__ import annotations

from django.apps import AppConfig


class RunsAppConfig(AppConfig):
    name = "runs_app"
    verbose_name = "Threads and runs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from mailbox_app.services.maintenance import gc_ran
        from runs_app.api.auth import connect_revocation
        from runs_app.api.idempotency import purge_on_gc
        from runs_app.store.threads import expire_on_gc

        gc_ran.connect(purge_on_gc, weak=False, dispatch_uid="runs_purge_idempotency_keys")
        gc_ran.connect(expire_on_gc, weak=False, dispatch_uid="runs_expire_threads")
        connect_revocation()  # a token deleted anywhere (admin, shell, command) leaves every token cache
