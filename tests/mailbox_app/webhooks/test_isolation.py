"""Isolation: webhook deliveries run on a Celery queue of their own, consumed by the Procfile's
`webhooks` worker, so receivers that answer one byte a second hold webhook slots only — dispatches on
the Procfile's `worker` run at full speed meanwhile — and each slow delivery is cut at its deadline.

Live on loopback: the Procfile's lines as real processes (bash, celery), a hostile receiver in this
process, real PostgreSQL and Redis. The `shared` layout (the dispatch worker consuming the webhook queue
too, as before the route) is the control: there the same dispatches wait for a slow delivery's cut."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings
from django.db import transaction

from awaken_project.celery import app as celery_app
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.models import WebhookDelivery
from mailbox_app.services import mailbox
from mailbox_app.webhooks import outbox, secret_store
from tests.mailbox_app.webhooks.receivers import (
    TrickleReceiver,
    procfile_line,
    spawn_worker_line,
)
from tests.support.api import new_user
from tests.support.waiting import wait_until
from tests.support.worker_farm import WorkerFarm, echo_request, wait_run_status

pytestmark = pytest.mark.django_db(transaction=True)

DEADLINE_MS = 8_000
SLOW = 6  # slow receivers: three times the dispatch worker's slots
BATCH = 6  # dispatches timed with and without them
SLACK_S = 1.0


def test_deliveries_are_routed_to_the_webhook_queue_and_only_the_webhooks_line_consumes_it(
    engine_settings: Any, clean_redis: redis.Redis
) -> None:
    route = settings.CELERY_TASK_ROUTES
    assert route[outbox.DELIVER_TASK] == route[outbox.REDRIVE_TASK] == {"queue": outbox.QUEUE}
    outbox.ring("a-delivery-id")  # no worker runs: the message waits in its queue
    assert clean_redis.llen(outbox.QUEUE) == 1
    assert clean_redis.llen(celery_app.conf.task_default_queue) == 0
    assert f"--queues {outbox.QUEUE} " in procfile_line("webhooks")
    assert "--pool threads" in procfile_line("webhooks")
    assert "--queues" not in procfile_line("worker")  # the default queue only: no webhook slot there


def _batch(label: str) -> float:
    """Seconds for BATCH echo dispatches on their own threads to finish."""
    started = time.monotonic()
    runs = [
        mailbox.submit_background(echo_request(f"t-{label}-{k}", f"{label} {k}")).run_id for k in range(BATCH)
    ]
    for run_id in runs:
        wait_run_status(run_id, RunStatus.DONE, timeout=60)
    return time.monotonic() - started


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["procfile", "shared"])
def test_slow_receivers_cannot_stall_dispatches_and_are_cut_at_the_deadline(
    farm: WorkerFarm, mp_settings: Any, tmp_path: Path, trickle: TrickleReceiver, layout: str
) -> None:
    mp_settings.AWAKEN_WEBHOOK_ALLOW_PRIVATE = True
    farm.env |= {
        "AWAKEN_WEBHOOK_ALLOW_PRIVATE": "1",
        "AWAKEN_WEBHOOK_TIMEOUT_MS": str(DEADLINE_MS),
        "AWAKEN_WEBHOOK_RETRY_DELAY_MS": "600000",  # one attempt each within this test
        "CELERY_CONCURRENCY": "2",
    }
    metrics = tmp_path / "metrics"
    if layout == "procfile":
        workers = [
            spawn_worker_line(farm, procfile_line("worker"), "celery", metrics),
            spawn_worker_line(farm, procfile_line("webhooks"), "webhooks", metrics),
        ]
        in_flight = SLOW
    else:  # the dispatch worker's two slots serve the webhook queue too
        shared = procfile_line("worker") + f" --queues {celery_app.conf.task_default_queue},{outbox.QUEUE}"
        workers = [spawn_worker_line(farm, shared, "celery", metrics)]
        in_flight = 2
    farm.wait_ready(*workers)
    baseline_s = _batch("baseline")

    owner = new_user("slow-receivers")
    secret_store.issue(owner.pk)
    slow_runs = []
    for k in range(SLOW):
        with transaction.atomic():
            submitted = mailbox.submit_background(echo_request(f"t-slow-{k}", "slow"))
            outbox.subscribe(submitted.run_id, trickle.url(f"/slow/{k}"), owner_id=owner.pk)
        slow_runs.append(submitted.run_id)
    wait_until(
        lambda: trickle.open_count() == in_flight, timeout=60, what=f"{in_flight} slow deliveries held"
    )
    first_held = min(h.accepted_at for h in trickle.connections())

    loaded_s = _batch("loaded")
    done_at = time.monotonic()
    cut_before_done = [h for h in trickle.connections() if h.closed_at is not None and h.closed_at <= done_at]
    print(
        f"\n[{layout}] {BATCH} dispatches: {baseline_s:.2f} s alone, {loaded_s:.2f} s beside {SLOW} "
        f"receivers answering 1 byte/s; {len(cut_before_done)} slow deliveries cut before they finished "
        f"({done_at - first_held:.2f} s after the first was held; deadline {DEADLINE_MS / 1000:.0f} s)"
    )
    if layout == "shared":
        # the control: with shared slots the dispatches could only run once a slow delivery was cut
        assert cut_before_done, "the control did not stall: the test could not tell isolation from luck"
        return
    # isolated: every dispatch finished while all slow deliveries were still held
    assert cut_before_done == [] and trickle.open_count() == SLOW
    assert done_at - first_held < DEADLINE_MS / 1000

    def all_cut() -> list[WebhookDelivery]:
        rows = list(WebhookDelivery.objects.filter(run_id__in=slow_runs))
        return rows if len(rows) == SLOW and all(r.last_error for r in rows) else []

    rows = wait_until(all_cut, timeout=DEADLINE_MS / 1000 + 30, what="every slow delivery cut")
    for row in rows:
        assert row.attempts == 1 and row.status == "pending" and row.owner_id == owner.pk
        assert f"deadline of {DEADLINE_MS} ms" in (row.last_error or ""), row.last_error
    held = [h.held_s for h in trickle.connections()]
    assert all(h is not None and h <= DEADLINE_MS / 1000 + SLACK_S for h in held), held
    print(f"[{layout}] slow deliveries held {min(held):.2f}-{max(held):.2f} s each")  # type: ignore[type-var]
