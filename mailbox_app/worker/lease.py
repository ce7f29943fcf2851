"""Lease renewal, one renewer per worker process (the reference's `spawn_lease_renewal`, which runs one
task per execution): every attempt this process runs is held here, and each one whose renewal is due
has its PostgreSQL lease renewed — all of them in one fenced statement — and its Redis thread lock
extended — all of them in one pipeline — every `lease_renewal_interval_ms`.

An attempt that finishes before its first renewal is due (most do) costs nothing here. Errors from
PostgreSQL or Redis are counted per attempt and retried within the lease (sooner than the interval); an
attempt's run is cancelled only when its lease is really gone: the fenced renewal matched no row for
it, or its last successful renewal's lease has run out. The renewer never dies silently: an unexpected
error is logged and every attempt it holds is treated as having lost its lease.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field

from django.db import connection

from mailbox_app import store
from mailbox_app.conf import awaken_settings
from mailbox_app.contract.ids import now_ms
from mailbox_app.contract.mailbox import DispatchRecord
from mailbox_app.observability import metrics
from mailbox_app.realtime.locks import ThreadLock, extend_all
from mailbox_app.worker.runtime import ActiveRun

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Held:
    """One attempt's lease as the renewer holds it."""

    dispatch: DispatchRecord
    lock: ThreadLock
    active: ActiveRun
    lease_until: int  # the lease the last successful renewal (or the claim) gave
    due_at: int  # when its next renewal is due
    failures: int = 0  # renewals (PostgreSQL or Redis) that raised
    renewals: int = 0  # renewals that held


@dataclass
class Renewer:
    """The process's renewer: a daemon thread (with its own DB connection) started on the first hold."""

    _held: dict[str, Held] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)
    _wake: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _pid: int = 0

    def hold(self, dispatch: DispatchRecord, lock: ThreadLock, active: ActiveRun) -> Held:
        config = awaken_settings.MAILBOX
        now = now_ms()
        held = Held(
            dispatch=dispatch,
            lock=lock,
            active=active,
            lease_until=dispatch.lease_until or now + config.lease_ms,
            due_at=now + config.lease_renewal_interval_ms,
        )
        with self._guard:
            self._held[dispatch.dispatch_id] = held
            self._ensure_running()
        self._wake.set()  # the loop recomputes when the next renewal is due
        return held

    def release(self, held: Held) -> None:
        with self._guard:
            if self._held.get(held.dispatch.dispatch_id) is held:
                del self._held[held.dispatch.dispatch_id]

    def _ensure_running(self) -> None:
        if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._loop, name="mailbox-lease-renewer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        try:
            while True:
                self._wake.wait(self._seconds_to_next())
                self._wake.clear()
                try:
                    self.renew_due(now_ms())
                finally:
                    # renewals are seconds apart: no connection is held between them (a test database
                    # can be dropped, a pooler can reuse it)
                    connection.close()
        except BaseException:
            log.exception("the lease renewer died; treating every lease it held as lost")
            for held in self._snapshot():
                _lose(held)

    def _seconds_to_next(self) -> float:
        held = self._snapshot()
        interval_s = awaken_settings.MAILBOX.lease_renewal_interval_ms / 1000
        if not held:
            return interval_s
        return max(min(h.due_at for h in held) - now_ms(), 0) / 1000

    def _snapshot(self) -> list[Held]:
        with self._guard:
            return list(self._held.values())

    def renew_due(self, now: int) -> None:
        """Renew every held attempt whose renewal is due at `now` (one statement, one pipeline)."""
        due = [h for h in self._snapshot() if h.due_at <= now]
        if not due:
            return
        config = awaken_settings.MAILBOX
        leases = {
            h.dispatch.dispatch_id: config.suspended_lease_ms
            if h.active.suspended.is_set()
            else config.lease_ms
            for h in due
        }
        try:
            renewed = _renew_leases(due, leases, now)
        except Exception:
            log.warning("lease renewal of %d attempts failed", len(due), exc_info=True)
            connection.close()  # a broken connection is re-opened by the next attempt
            for held in due:
                held.failures += 1
                if now_ms() >= held.lease_until:
                    self._lost(held)
                else:  # retry within the lease, sooner than the interval
                    held.due_at = now + min(
                        config.lease_renewal_interval_ms, max((held.lease_until - now) // 4, 50)
                    )
            return
        metrics.EXTEND_LEASE.inc(len(renewed))
        metrics.EXTEND_LEASE.inc(len(due) - len(renewed), "lost")
        for held in due:
            if held.dispatch.dispatch_id not in renewed:
                self._lost(held)
                continue
            held.lease_until = now + leases[held.dispatch.dispatch_id]
            held.due_at = now + config.lease_renewal_interval_ms
            held.renewals += 1
        self._extend_locks([h for h in due if h.dispatch.dispatch_id in renewed], leases)

    def _extend_locks(self, renewed: list[Held], leases: dict[str, int]) -> None:
        if not renewed:
            return
        try:
            extend_all([(h.lock, leases[h.dispatch.dispatch_id]) for h in renewed])
        except Exception:  # the lock only saves work; PostgreSQL's fence decides
            for held in renewed:
                held.failures += 1
            log.warning("thread lock renewal of %d attempts failed", len(renewed), exc_info=True)

    def _lost(self, held: Held) -> None:
        self.release(held)
        _lose(held)


def _renew_leases(due: list[Held], leases: dict[str, int], now: int) -> set[str]:
    return store.extend_leases(
        [
            (h.dispatch.dispatch_id, h.dispatch.claim_token or "", now + leases[h.dispatch.dispatch_id])
            for h in due
        ],
        now,
    )


def _lease_ms(held: Held) -> int:
    """A run waiting for a live decision (suspended) holds its claim longer."""
    config = awaken_settings.MAILBOX
    return config.suspended_lease_ms if held.active.suspended.is_set() else config.lease_ms


def _lose(held: Held) -> None:
    log.warning("lease lost for dispatch %s; cancelling its run", held.dispatch.dispatch_id)
    held.active.lease_lost.set()
    held.active.cancel_event.set()


RENEWER = Renewer()
