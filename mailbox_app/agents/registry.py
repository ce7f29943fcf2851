"""Agent registry: `AWAKEN_AGENTS` maps agent ids to import paths of `RunExecutor` classes or factories."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.checks import CheckMessage, Error, register
from django.utils.module_loading import import_string

from mailbox_app.agents.base import AgentNotFound, ResolveFailed, RunExecutor
from mailbox_app.conf import awaken_settings

BUILTIN_AGENTS: dict[str, str] = {
    "echo": "mailbox_app.agents.echo.EchoAgent",
    "default": "mailbox_app.agents.echo.EchoAgent",
}
DEFAULT_AGENT_ID = "echo"


def configured_agents() -> Mapping[str, str]:
    return {**BUILTIN_AGENTS, **awaken_settings.AGENTS}


def resolve_agent(agent_id: str | None) -> RunExecutor:
    """Instantiate the executor for `agent_id`; AgentNotFound / ResolveFailed are permanent errors."""
    key = (agent_id or DEFAULT_AGENT_ID).strip() or DEFAULT_AGENT_ID
    path = configured_agents().get(key)
    if path is None:
        raise AgentNotFound(key)
    try:
        factory: Any = import_string(path)
        executor = factory()
    except Exception as exc:
        raise ResolveFailed(f"agent {key!r} ({path}) failed to load: {exc}") from exc
    if not isinstance(executor, RunExecutor):
        raise ResolveFailed(f"agent {key!r} ({path}) does not implement RunExecutor.run")
    return executor


@register()
def check_agents_import(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """`manage.py check` fails when a configured agent does not import."""
    errors: list[CheckMessage] = []
    for agent_id, path in configured_agents().items():
        try:
            import_string(path)
        except ImportError as exc:
            errors.append(
                Error(f"AWAKEN_AGENTS[{agent_id!r}] = {path!r} does not import: {exc}", id="mailbox.E001")
            )
    return errors
