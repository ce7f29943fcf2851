"""Bench agents, registered through AWAKEN_AGENTS (e2e_bench.py sets it for itself and its workers):
AWAKEN_AGENTS='{"noop": "bench.agents.NoopAgent", "stamp": "bench.agents.StampAgent"}'.
"""

from __future__ import annotations

import time

from mailbox_app.executor import RunContext, RunResult
from mailbox_app.redis_client import get_redis
from mailbox_app.requests import RunRequest

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
