"""Bench agents, registered through AWAKEN_AGENTS (e2e_bench.py sets it for itself and its workers):
AWAKEN_AGENTS='{"noop": "bench.agents.NoopAgent", "stamp": "bench.agents.StampAgent"}'.
"""

from __future__ import annotations

import os
import time

from mailbox_app.agents.base import RunContext, RunResult
from mailbox_app.contract.requests import RunRequest
from mailbox_app.realtime.redis_client import get_redis

# The mailbox latency samples: "<run_id> <unix seconds at agent entry>" pushed by StampAgent.
MAILBOX_START_KEY = "bench:lat:mailbox"


class NoopAgent:
    """Does nothing: what is left is the mailbox's own cost per dispatch."""

    def run(self, request: RunRequest, context: RunContext) -> RunResult:
        return RunResult()


class StampAgent:
    """A no-op that first records when it was entered (the run's start as the agent sees it)."""

    def run(self, request: RunRequest, context: RunContext) -> RunResult:
        entered = time.time()
        get_redis().rpush(MAILBOX_START_KEY, f"{context.run_id} {entered:.6f}")
        return RunResult()


# Each NapAgent entry: "<run_id> <agent id> <unix seconds at entry>".
NAP_START_KEY = "bench:nap:start"


class NapAgent:
    """Records when it was entered, then sleeps BENCH_NAP_S (default 0.2 s): a run that holds a slot."""

    def run(self, request: RunRequest, context: RunContext) -> RunResult:
        get_redis().rpush(NAP_START_KEY, f"{context.run_id} {request.agent_id} {time.time():.6f}")
        time.sleep(float(os.environ.get("BENCH_NAP_S", "0.2")))
        return RunResult()


# How many dispatches the counting agent ran: the throughput benches wait on it (a Redis counter, as the
# durable floor's jobs count themselves: the same cost on both sides, and no polling of PostgreSQL).
MAILBOX_DONE_KEY = "bench:mailbox:done"


class CountingAgent:
    """A no-op that counts itself (one INCR)."""

    def run(self, request: RunRequest, context: RunContext) -> RunResult:
        get_redis().incr(MAILBOX_DONE_KEY)
        return RunResult()
