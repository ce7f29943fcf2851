"""mailbox_app.conf: one settings object for both apps, read live, with the project's own defaults."""

from __future__ import annotations

import os
import re
import runpy
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings

from mailbox_app.conf import AwakenSettings, awaken_settings
from mailbox_app.contract.config import ClaimPolicy, MailboxConfig

REPO = Path(__file__).resolve().parents[2]
# AWAKEN_* settings the project reads itself (awaken_project/asgi.py), not the apps
PROJECT_ONLY = {
    "AWAKEN_WEB_MAX_CONCURRENT_VIEWS",
    "AWAKEN_BODY_READ_TIMEOUT_MS",
    "AWAKEN_BODY_BUFFER_MAX_BYTES",
}


def _project_settings_without_environment(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """awaken_project/settings.py evaluated with an empty environment: the project's defaults."""
    monkeypatch.setattr(os, "environ", {})
    return runpy.run_path(str(REPO / "awaken_project" / "settings.py"))


def test_every_default_equals_the_projects_default(monkeypatch):
    project = _project_settings_without_environment(monkeypatch)
    declared = AwakenSettings.declared()
    project_names = {name for name in project if name.startswith("AWAKEN_")} - PROJECT_ONLY
    assert project_names == {setting.setting_name for setting in declared.values()}
    for name, setting in declared.items():
        assert setting.default() == project[f"AWAKEN_{name}"], name


def test_structured_defaults_are_the_default_instances():
    assert AwakenSettings.MAILBOX.default() == MailboxConfig()
    assert AwakenSettings.CLAIM_POLICY.default() == ClaimPolicy()


def test_a_host_setting_wins_and_is_read_live(settings):
    settings.AWAKEN_REMOTE_CANCEL_WAIT_MS = 1_234
    assert awaken_settings.REMOTE_CANCEL_WAIT_MS == 1_234
    settings.AWAKEN_MAILBOX = MailboxConfig(lease_ms=40_000)
    assert awaken_settings.MAILBOX.lease_ms == 40_000
    with override_settings(AWAKEN_REMOTE_CANCEL_WAIT_MS=7):
        assert awaken_settings.REMOTE_CANCEL_WAIT_MS == 7
    assert awaken_settings.REMOTE_CANCEL_WAIT_MS == 1_234


def test_an_unset_setting_falls_back_to_its_default(settings):
    del settings.AWAKEN_CLAIM_POLICY
    del settings.AWAKEN_AGENTS
    assert ClaimPolicy() == awaken_settings.CLAIM_POLICY
    assert awaken_settings.AGENTS == {}
    awaken_settings.AGENTS["mine"] = "x.Y"  # a mutable default is a fresh copy each time
    assert awaken_settings.AGENTS == {}


def test_an_unknown_name_is_an_attribute_error_naming_it():
    with pytest.raises(AttributeError, match="NO_SUCH_THING"):
        _ = awaken_settings.NO_SUCH_THING  # type: ignore[attr-defined]


def test_the_apps_read_awaken_settings_only_through_it():
    direct = re.compile(r"settings\.AWAKEN_|getattr\(settings|settings\.REDIS_URL")
    offenders = [
        f"{path.relative_to(REPO)}:{number}"
        for app in ("mailbox_app", "runs_app")
        for path in sorted((REPO / app).rglob("*.py"))
        if path.name != "conf.py" or path.parent.name != "mailbox_app"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if direct.search(line) and "awaken_settings." not in line
    ]
    assert offenders == []
