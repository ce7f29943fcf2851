"""Fairness across owners and concurrency limits, through real Celery worker subprocesses.

    DATA=... bash scripts/with-services.sh .venv/bin/python bench/fairness_bench.py

Needs DATABASE_URL / REDIS_URL, treated as scratch like bench/e2e_bench.py (whose worker and helper
machinery it reuses: 2 workers × --pool threads --concurrency 8).

  (f) fairness, once with AWAKEN_FAIRNESS=off and once with the default (owner): owner A submits
      --backlog (2,000) `nap` runs (each sleeps --nap, 0.2 s) over 200 threads from 8 submitters,
      then owner B submits one. B's wait = its agent entry - its submit. Target: B's wait ≤ 2 × nap +
      the idle submit→start latency (measured first). A's throughput = its runs / (first submit -> all
      done); it should not change between the two modes beyond noise.
  (l) limits, AWAKEN_AGENT_LIMITS={"nap_limited": 2}: the unlimited `noop` agent's throughput over
      100 threads alone, and again while 100 threads of `nap_limited` (one nap run each) are queued;
      target ≥ 0.9 × alone. The limited agent's executing count is sampled every 5 ms: its maximum must
      be exactly 2, and its mean while it has a backlog close to 2.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
NAP_AGENTS = {"nap": "bench.agents.NapAgent", "nap_limited": "bench.agents.NapAgent"}
os.environ["AWAKEN_AGENTS"] = json.dumps(
    {**json.loads(os.environ.get("AWAKEN_AGENTS") or "{}"), **NAP_AGENTS}
)

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection

from bench.agents import NAP_START_KEY
from bench.e2e_bench import (
    Workers,
    in_threads,
    quiesce,
    reset_state,
    verdict,
    wait_until,
)
from mailbox_app.contract.config import ClaimPolicy
from mailbox_app.contract.ids import uuid7
from mailbox_app.contract.mailbox import DispatchStatus
from mailbox_app.contract.message import ChatMessage
from mailbox_app.contract.requests import RunRequest
from mailbox_app.models import Dispatch
from mailbox_app.realtime.redis_client import get_redis
from mailbox_app.services import mailbox
from mailbox_app.store import conformance


def _request(thread_id: str, agent: str) -> RunRequest:
    return RunRequest(thread_id=thread_id, messages=[ChatMessage.user("go")], agent_id=agent)


def _owner(name: str) -> int:
    user, _ = get_user_model().objects.get_or_create(username=f"bench-{name}")
    return int(user.pk)


def _entries() -> dict[str, float]:
    out: dict[str, float] = {}
    for raw in get_redis().lrange(NAP_START_KEY, 0, -1):
        run_id, _agent, at = raw.decode().split(" ")
        out[run_id] = float(at)
    return out


def _acked() -> int:
    return conformance.count_dispatches_by_status(DispatchStatus.ACKED)


def _start_workers(args: argparse.Namespace, env: dict[str, str], log_dir: Path) -> Workers:
    for key in ("AWAKEN_FAIRNESS", "AWAKEN_AGENT_LIMITS"):
        os.environ.pop(key, None)
    os.environ.update(env)
    os.environ["BENCH_NAP_S"] = str(args.nap)
    settings.AWAKEN_CLAIM_POLICY = ClaimPolicy.from_env(os.environ)
    workers = Workers(args.workers, "threads", args.concurrency, log_dir)
    workers.start()
    workers.wait_ready()
    return workers


def _idle_latency(owner: int) -> float:
    samples = []
    for _ in range(5):
        sent = time.time()
        run_id = mailbox.submit_background(_request(f"idle-{uuid7()}", "nap"), owner_id=owner).run_id
        wait_until(lambda r=run_id: r in _entries(), 10, "idle run start", 0.002)  # type: ignore[misc]
        samples.append(_entries()[run_id] - sent)
    return statistics.median(samples)


def fairness(args: argparse.Namespace, mode: str, log_dir: Path) -> tuple[float, float, float]:
    """(B's wait s, A's runs/s, idle submit→start s) with AWAKEN_FAIRNESS=mode."""
    reset_state()
    owner_a, owner_b = _owner("a"), _owner("b")
    workers = _start_workers(args, {"AWAKEN_FAIRNESS": mode}, log_dir)
    try:
        idle = _idle_latency(owner_a)
        quiesce(workers)
        base = _acked()
        threads = [f"fair-a-{i:03d}-{uuid7()}" for i in range(200)]
        per_thread = args.backlog // len(threads)

        submitted: list[int] = []

        def submit(k: int, stop: threading.Event) -> None:
            for _ in range(per_thread):
                for thread_id in threads[k::8]:
                    if stop.is_set():
                        return
                    mailbox.submit_background(_request(thread_id, "nap"), owner_id=owner_a)
            submitted.append(k)

        started = time.perf_counter()
        with in_threads(8, submit) as errors:
            wait_until(lambda: len(submitted) == 8 or bool(errors), 600, "A's submits", 0.01)
        if errors:
            raise RuntimeError(f"submit failed: {errors[0]!r}")
        backlog = conformance.count_dispatches_by_status(DispatchStatus.QUEUED)
        sent = time.time()
        b_run = mailbox.submit_background(_request(f"fair-b-{uuid7()}", "nap"), owner_id=owner_b).run_id
        wait_until(lambda: b_run in _entries(), 600, "B's run to start", 0.002)
        b_wait = _entries()[b_run] - sent
        n = per_thread * len(threads) + 1
        wait_until(lambda: _acked() - base >= n, 900, "A's backlog to drain", 0.05)
        a_rate = (n - 1) / (time.perf_counter() - started)
        print(
            f"  fairness={mode:5}: A backlog when B submitted {backlog:4d} queued; "
            f"B waited {b_wait * 1000:7.0f} ms; A {a_rate:6.1f} runs/s; "
            f"idle submit→start {idle * 1000:.0f} ms"
        )
        return b_wait, a_rate, idle
    finally:
        workers.stop()


def _noop_rate(per_thread: int, owner: int) -> float:
    threads = [f"lim-u-{i:03d}-{uuid7()}" for i in range(100)]
    base = _acked()

    def submit(k: int, stop: threading.Event) -> None:
        for _ in range(per_thread):
            for thread_id in threads[k::8]:
                if stop.is_set():
                    return
                mailbox.submit_background(_request(thread_id, "noop"), owner_id=owner)

    started = time.perf_counter()
    with in_threads(8, submit) as errors:
        wait_until(lambda: _acked() - base >= per_thread * 100, 300, "noop runs", 0.01)
    if errors:
        raise RuntimeError(f"submit failed: {errors[0]!r}")
    return per_thread * 100 / (time.perf_counter() - started)


def _sample_limited(samples: list[int], stop: threading.Event) -> None:
    """The limited agent's executing count every 5 ms, while it still has queued work."""
    try:
        while not stop.is_set():
            running = Dispatch.objects.filter(status="claimed", agent_key="nap_limited").count()
            if Dispatch.objects.filter(status="queued", agent_key="nap_limited").exists():
                samples.append(running)
            time.sleep(0.005)
    finally:
        connection.close()


def limits(args: argparse.Namespace, log_dir: Path) -> tuple[float, float, int, float]:
    reset_state()
    owner = _owner("a")
    workers = _start_workers(args, {"AWAKEN_AGENT_LIMITS": '{"nap_limited": 2}'}, log_dir)
    try:
        _noop_rate(2, owner)  # warm-up
        quiesce(workers)
        alone, mixed, peaks, means = [], [], [], []
        for _ in range(args.reps):
            alone.append(_noop_rate(args.per_thread, owner))
            quiesce(workers)
            for i in range(100):
                mailbox.submit_background(_request(f"lim-l-{i:03d}-{uuid7()}", "nap_limited"), owner_id=owner)
            samples: list[int] = []
            stop = threading.Event()
            sampler = threading.Thread(target=_sample_limited, args=(samples, stop), daemon=True)
            sampler.start()
            mixed.append(_noop_rate(args.per_thread, owner))
            wait_until(
                lambda: (
                    not Dispatch.objects.filter(
                        agent_key="nap_limited", status__in=["queued", "claimed"]
                    ).exists()
                ),
                600,
                "limited runs",
                0.05,
            )
            stop.set()
            sampler.join()
            peaks.append(max(samples))
            means.append(statistics.mean(samples))
            quiesce(workers)
        ratio = statistics.median(mixed) / statistics.median(alone)
        print(
            f"  noop alone {[f'{r:.0f}' for r in alone]} /s, beside the limited backlog "
            f"{[f'{r:.0f}' for r in mixed]} /s; limited peak {peaks}, mean while backlogged "
            f"{[f'{m:.2f}' for m in means]}"
        )
        return statistics.median(alone), ratio, max(peaks), statistics.mean(means)
    finally:
        workers.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--backlog", type=int, default=2000)
    parser.add_argument("--nap", type=float, default=0.2)
    parser.add_argument("--per-thread", type=int, default=5, help="(l) noop runs per thread (× 100)")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--only", default="fl")
    args = parser.parse_args()
    began = time.monotonic()
    log_dir = Path(tempfile.mkdtemp(prefix="awaken-fairness-bench-"))
    print(
        f"fairness bench: {args.workers} workers × threads {args.concurrency}; {os.cpu_count()} CPUs; "
        f"nap {args.nap} s; load average {os.getloadavg()[0]:.2f}"
    )
    if "f" in args.only:
        off = fairness(args, "off", log_dir)
        on = fairness(args, "owner", log_dir)
        target = 2 * args.nap + on[2]
        print(
            f"(f) B waited {on[0] * 1000:.0f} ms with fairness (target ≤ {target * 1000:.0f} ms: "
            f"{verdict(on[0] <= target)}), {off[0] * 1000:.0f} ms without; "
            f"A's throughput with ÷ without: {on[1] / off[1]:.2f}"
        )
    if "l" in args.only:
        _alone, ratio, peak, mean = limits(args, log_dir)
        print(
            f"(l) unlimited agent beside a limited backlog ÷ alone: {ratio:.2f} (target ≥ 0.9: "
            f"{verdict(ratio >= 0.9)}); limited agent peak {peak} (limit 2: {verdict(peak == 2)}), "
            f"mean {mean:.2f} while backlogged"
        )
    print(f"total {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
