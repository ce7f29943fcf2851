"""`GET /metrics` after real runs on a real prefork Celery worker: the figures move exactly as much as was
done, and the ones only the worker's pool children record (ack, the start and completion histograms,
`active_runs`) reach a scrape served by this process — prometheus_client's multiprocess mode, with the
directory the test harness sets. Access: loopback by default, or the bearer token."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings as django_settings
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from awaken_project.celery import app as celery_app
from mailbox_app import store
from mailbox_app.contract.config import ConfigError, parse_networks
from mailbox_app.contract.lifecycle import RunStatus
from mailbox_app.contract.mailbox import DispatchStatus
from mailbox_app.realtime import doorbells
from mailbox_app.services import maintenance
from runs_app import store as run_store
from tests.support.api import post_json, user_client
from tests.support.servers import PROJECT_ROOT, database_url_of_test_db
from tests.support.waiting import wait_until
from tests.support.worker_farm import MAILBOX_ENV, MP_CONFIG, SIGNAL_ENV, WorkerFarm

Labels = frozenset[tuple[str, str]]
Figures = dict[tuple[str, Labels], float]


def scrape(client: Client, **extra: Any) -> Figures:
    response = client.get("/metrics", **extra)
    assert response.status_code == 200, response.content[:300]
    assert response["Content-Type"].startswith("text/plain; version=")
    figures: Figures = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            figures[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return figures


def figure(figures: Figures, name: str, **labels: str) -> float:
    return figures.get((name, frozenset(labels.items())), 0.0)


def moved(before: Figures, after: Figures, name: str, **labels: str) -> float:
    return figure(after, name, **labels) - figure(before, name, **labels)


def op(before: Figures, after: Figures, operation: str, result: str = "ok") -> float:
    return moved(before, after, "mailbox_operation_total", operation=operation, result=result)


@pytest.fixture
def worker_farm(
    transactional_db: None, engine_settings: Any, clean_redis: redis.Redis, tmp_path: Path
) -> Iterator[WorkerFarm]:
    """`celery worker` subprocesses on the test database and Redis, inheriting PROMETHEUS_MULTIPROC_DIR."""
    engine_settings.AWAKEN_MAILBOX = MP_CONFIG
    env = dict(os.environ) | MAILBOX_ENV | SIGNAL_ENV
    env |= {
        "DATABASE_URL": database_url_of_test_db(),
        "REDIS_URL": django_settings.REDIS_URL,
        "CELERY_BROKER_URL": django_settings.CELERY_BROKER_URL,
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("AWAKEN_FAULT_POINT", None)
    farm = WorkerFarm(tmp_path, env)
    try:
        yield farm
    finally:
        farm.stop_all()
        farm.print_logs()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_three_runs_on_a_prefork_worker_move_every_figure_by_three(worker_farm: WorkerFarm) -> None:
    worker = worker_farm.start("metrics", pool="prefork", concurrency=2)
    api, scraper = user_client("metrics-alice"), Client()
    before = scrape(scraper)
    submitted = [
        post_json(
            api, f"/api/v1/threads/metrics-{i}/mailbox", {"messages": [{"role": "user", "content": "hi"}]}
        )
        for i in range(3)
    ]
    assert [r.status_code for r in submitted] == [201] * 3, [r.content for r in submitted]
    run_ids = [r.json()["run_id"] for r in submitted]
    wait_until(
        lambda: all(run_store.load_run(run_id=r).status is RunStatus.DONE for r in run_ids),  # type: ignore[union-attr]
        timeout=30,
        what="three runs done",
    )
    # the completion figures are written right after the finish commits: wait for them, then compare
    wait_until(
        lambda: moved(before, scrape(scraper), "run_completion_seconds_count", outcome="completed") >= 3,
        timeout=10,
        what="the worker's completion figures in a scrape",
    )
    after = scrape(scraper)

    # the web side (this process): the durable enqueue and the inline claim of each idle thread; the
    # worker's pool children: each finish acked and made its next claim. A finish may take over another
    # thread's inline claim that its hand-over had not started yet (claim_next_fair's grace): then that
    # claim is an `ok` one and the hand-over finds nothing to do, so only the sum is fixed.
    assert op(before, after, "enqueue") == 3
    assert op(before, after, "ack") == 3
    assert op(before, after, "claim") >= 3
    assert op(before, after, "claim") + op(before, after, "claim", "empty") == 6
    for operation in ("nack", "dead_letter", "cancel", "mark_run_dead_letter"):
        assert op(before, after, operation) == 0, operation
    assert op(before, after, "ack", "lost") == 0
    for histogram in ("enqueue", "claim", "ack"):
        count = moved(before, after, "mailbox_operation_duration_seconds_count", operation=histogram)
        assert count == (6 if histogram == "claim" else 3), histogram
    for name in (
        "mailbox_dispatch_enqueue_to_start_seconds",
        "mailbox_dispatch_eligible_to_start_seconds",
        "mailbox_dispatch_claim_to_start_seconds",
    ):
        assert moved(before, after, f"{name}_count") == 3, name
        assert moved(before, after, f"{name}_bucket", le="+Inf") == 3, name
    for name in (
        "mailbox_dispatch_runtime_seconds",
        "mailbox_dispatch_enqueue_to_complete_seconds",
        "run_completion_seconds",
    ):
        assert moved(before, after, f"{name}_count", outcome="completed") == 3, name
        assert moved(before, after, f"{name}_count", outcome="transient_error") == 0, name
    # a dispatch is claimed after it was enqueued, and completes after it started
    enqueue_to_start = moved(before, after, "mailbox_dispatch_enqueue_to_start_seconds_sum")
    claim_to_start = moved(before, after, "mailbox_dispatch_claim_to_start_seconds_sum")
    assert 0 <= claim_to_start <= enqueue_to_start + 1e-9 < 30  # (sums of floats: 0.193 vs 0.19299…96)
    runtime = moved(before, after, "mailbox_dispatch_runtime_seconds_sum", outcome="completed")
    to_complete = moved(
        before, after, "mailbox_dispatch_enqueue_to_complete_seconds_sum", outcome="completed"
    )
    assert 0 <= runtime <= to_complete < 30
    assert figure(after, "active_runs") == 0

    # a doorbell for a thread with nothing to do: acknowledged
    runs_done = after
    celery_app.send_task(doorbells.DISPATCH_TASK, args=["metrics-0", None])
    wait_until(
        lambda: moved(before, scrape(scraper), "mailbox_dispatch_signal_ack_total") == 1,
        timeout=15,
        what="the doorbell's ack",
    )
    after = scrape(scraper)
    # it found nothing to claim (compared with the figures after the runs: those may hold 4 `ok` claims,
    # a take-over of an inline claim among them, as said above)
    assert op(runs_done, after, "claim", "ok") == 0
    assert moved(before, after, "mailbox_dispatch_signal_redelivery_total") == 0
    assert moved(before, after, "mailbox_dispatch_signal_nack_total", delayed="true") == 0

    # the depth gauges are the sweep's: after one, they are the table's counts
    maintenance.sweep()
    after = scrape(scraper)
    counts = store.count_by_status()
    assert counts.get(DispatchStatus.ACKED, 0) >= 3
    for status in DispatchStatus:
        assert figure(after, "mailbox_dispatch_depth", status=status.value) == counts.get(status, 0), status
    assert figure(after, "mailbox_queue_depth") == counts.get(DispatchStatus.QUEUED, 0) == 0

    # a run in progress counts in `active_runs` (a pool child's live gauge) and renews its lease
    running = post_json(
        api, "/api/v1/threads/metrics-9/mailbox", {"messages": [{"role": "user", "content": "sleep 30"}]}
    )
    assert running.status_code == 201, running.content
    wait_until(lambda: figure(scrape(scraper), "active_runs") == 1, timeout=20, what="active_runs = 1")
    wait_until(lambda: op(before, scrape(scraper), "extend_lease") >= 1, timeout=10, what="a lease renewal")
    # a worker killed mid-run: its pool child's live gauge stops counting at the next scrape
    worker.kill_group()
    assert figure(scrape(scraper), "active_runs") == 0
    # counters of dead processes stay (they never go down)
    assert op(before, scrape(scraper), "ack") == 3


def test_the_scrape_is_in_multiprocess_mode() -> None:
    directory = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    scrape(Client())
    assert list(directory.glob(f"*_{os.getpid()}.db")), "this process writes its figures to the directory"


def test_metrics_are_loopback_only_by_default_and_the_token_opens_them(settings: Any) -> None:
    client = Client()
    outside: dict[str, Any] = {"REMOTE_ADDR": "203.0.113.9"}
    assert client.get("/metrics", **outside).status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer anything", **outside).status_code == 403
    settings.AWAKEN_METRICS_TOKEN = "s3cret-token"
    assert client.get("/metrics", **outside).status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong", **outside).status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-token", **outside).status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="::ffff:127.0.0.1").status_code == 200
    settings.AWAKEN_METRICS_ALLOWED_NETWORKS = parse_networks("X", "")  # token only
    assert client.get("/metrics").status_code == 403
    settings.AWAKEN_METRICS_ALLOWED_NETWORKS = parse_networks("X", "203.0.113.0/24")
    assert client.get("/metrics", **outside).status_code == 200
    assert client.post("/metrics", **outside).status_code == 405


def test_a_bad_network_names_the_variable_and_stops_start_up() -> None:
    with pytest.raises(ConfigError, match="AWAKEN_METRICS_ALLOWED_NETWORKS: 'ten'"):
        parse_networks("AWAKEN_METRICS_ALLOWED_NETWORKS", "10.0.0.0/8, ten")
    env = dict(os.environ) | {"AWAKEN_METRICS_ALLOWED_NETWORKS": "10.0.0.0/8,ten"}
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "AWAKEN_METRICS_ALLOWED_NETWORKS" in result.stderr


def test_metric_names_are_the_reference_set() -> None:
    names = {
        family.name for family in text_string_to_metric_families(Client().get("/metrics").content.decode())
    }
    expected = {
        "mailbox_operation", "mailbox_operation_duration_seconds", "mailbox_dispatch_depth",
        "mailbox_queue_depth", "mailbox_dispatch_enqueue_to_start_seconds",
        "mailbox_dispatch_eligible_to_start_seconds", "mailbox_dispatch_claim_to_start_seconds",
        "mailbox_dispatch_runtime_seconds", "mailbox_dispatch_enqueue_to_complete_seconds",
        "run_completion_seconds", "active_runs", "mailbox_dispatch_signal_ack",
        "mailbox_dispatch_signal_nack", "mailbox_dispatch_signal_redelivery",
    }  # fmt: skip
    assert expected <= names, expected - names
