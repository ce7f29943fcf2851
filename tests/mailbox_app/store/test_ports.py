"""The run-store plug-in boundary: `AWAKEN_RUN_STORE` is checked against the `RunStore` protocol by a
system check, so a wrong path or a store missing an operation fails `manage.py check`, not a run."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from mailbox_app.store import ports
from runs_app import store as run_store_module


def test_the_default_run_store_defines_every_operation_of_the_protocol() -> None:
    operations = ports.run_store_operations()
    assert {"start_run", "finish_run", "terminalize_run", "checkpoint"} <= set(operations)
    assert ports.check_run_store(None) == []
    assert all(callable(getattr(run_store_module, name)) for name in operations)


def test_a_store_missing_an_operation_is_an_error_naming_it(settings: Any, monkeypatch: Any) -> None:
    partial = types.ModuleType("partial_run_store")
    for name in ports.run_store_operations():
        if name != "finish_run":
            setattr(partial, name, getattr(run_store_module, name))
    monkeypatch.setitem(sys.modules, "partial_run_store", partial)
    settings.AWAKEN_RUN_STORE = "partial_run_store"
    [error] = ports.check_run_store(None)
    assert error.id == "mailbox_app.E011"
    assert "finish_run" in error.msg
    assert "start_run" not in error.msg


def test_a_store_path_that_does_not_import_fails_manage_py_check(settings: Any) -> None:
    settings.AWAKEN_RUN_STORE = "no_such_package.store"
    [error] = ports.check_run_store(None)
    assert error.id == "mailbox_app.E010"
    assert "no_such_package.store" in error.msg
    with pytest.raises(SystemCheckError, match=r"mailbox_app\.E010"):
        call_command("check")


def test_a_store_whose_operation_takes_other_parameters_is_an_error_naming_them(
    settings: Any, monkeypatch: Any
) -> None:
    """An older store's `reopen_run(run_id, now)` (before it took the dispatch id) is caught here, not by
    a TypeError on the first requeue."""
    stale = types.ModuleType("stale_run_store")
    for name in ports.run_store_operations():
        setattr(stale, name, getattr(run_store_module, name))

    def reopen_run(*, run_id: str, now: int) -> bool:
        return False

    stale.reopen_run = reopen_run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "stale_run_store", stale)
    settings.AWAKEN_RUN_STORE = "stale_run_store"
    [error] = ports.check_run_store(None)
    assert error.id == "mailbox_app.E012"
    assert "reopen_run(dispatch_id)" in error.msg
