"""The agent registry (mailbox_app/agents/registry.py): any object with `run(request, context)` is an
agent."""

from __future__ import annotations

from typing import Any

import pytest

from mailbox_app.agents.base import AgentNotFound, ResolveFailed, RunContext, RunExecutor, RunResult
from mailbox_app.agents.registry import resolve_agent
from mailbox_app.contract.requests import RunRequest


class PlainExecutor:
    """Any object with `run(request, context)`: no base class, no knowledge of the mailbox."""

    def run(self, request: RunRequest, context: RunContext) -> RunResult:
        return RunResult(final_output="plain")


class NotAnExecutor:
    def execute(self) -> None:
        return None


def test_any_run_executor_can_be_configured_as_an_agent(settings: Any) -> None:
    """seed: mailbox_construction_depends_on_runtime_boundary_not_agent_runtime"""

    settings.AWAKEN_AGENTS = {
        "plain": f"{__name__}.PlainExecutor",
        "broken": f"{__name__}.NotAnExecutor",
    }
    executor = resolve_agent("plain")
    assert isinstance(executor, PlainExecutor)
    assert isinstance(executor, RunExecutor)
    with pytest.raises(ResolveFailed, match=r"does not implement RunExecutor\.run"):
        resolve_agent("broken")
    with pytest.raises(AgentNotFound, match="nope"):
        resolve_agent("nope")
