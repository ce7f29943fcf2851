"""The store's functions in the database (the `.sql` files beside the modules that call them), installed
by every `manage.py migrate` and checked by `manage.py check --database default`.

A function's text lives once, in its `.sql` file next to its caller; `install` runs each file after the
migrations (Django's `post_migrate`), with `CREATE OR REPLACE`, so a deploy's `migrate` (the Procfile's
`release` line, `make run`, the test database) brings the database's functions in line with the code.
The check (a warning) compares each installed function's body with its file: `manage.py check --database
default` says so when the database was not migrated since the code changed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from django.apps import AppConfig, apps
from django.core.checks import CheckMessage, Warning
from django.db import connections

HERE = Path(__file__).resolve().parent
# The budgets and the claims first, then the transitions that call them; those write runs_app's tables,
# so they are installed only where runs_app is (a host with a run store of its own takes the port's path).
MAILBOX_FILES = (HERE / "budgets.sql", HERE / "claims.sql")
RUNS_TABLES_FILES = (HERE / "runs_tables" / "submit.sql", HERE / "runs_tables" / "attempt.sql")


def sql_files() -> tuple[Path, ...]:
    return MAILBOX_FILES + (RUNS_TABLES_FILES if apps.is_installed("runs_app") else ())


_FUNCTION = re.compile(
    r"CREATE OR REPLACE FUNCTION (?P<name>\w+)\(.*?\$\$(?P<body>.*?)\$\$;", re.DOTALL | re.IGNORECASE
)


def definitions() -> Iterator[tuple[str, str, str]]:
    """(name, body, whole statement) of every function the files define."""
    for path in sql_files():
        for match in _FUNCTION.finditer(path.read_text()):
            yield match.group("name"), match.group("body"), match.group(0)


def install(using: str = "default", **_: Any) -> None:
    """Create or replace every function (after every migrate: the `post_migrate` receiver of this app)."""
    with connections[using].cursor() as cursor:
        for _name, _body, statement in definitions():
            cursor.execute(statement)


INSTALLED = "SELECT proname, prosrc FROM pg_proc WHERE proname = ANY(%s)"


def check_installed(
    app_configs: Sequence[AppConfig] | None = None, databases: Sequence[str] | None = None, **_: Any
) -> list[CheckMessage]:
    """W020: a function missing from the database, or installed with another body than its file's. A
    warning, not an error: `migrate` runs the database checks before it migrates, and must still run."""
    errors: list[CheckMessage] = []
    for using in databases or []:
        wanted = {name: body for name, body, _statement in definitions()}
        if "mailbox_dispatch" not in connections[using].introspection.table_names():
            continue  # a database not migrated yet: `migrate` creates the tables, then the functions
        with connections[using].cursor() as cursor:
            cursor.execute(INSTALLED, [list(wanted)])
            installed = dict(cursor.fetchall())
        for name, body in wanted.items():
            if installed.get(name) != body:
                problem = "is missing" if name not in installed else "differs from its file"
                errors.append(
                    Warning(
                        f"the database function {name}() {problem}",
                        hint="run `python manage.py migrate` (it installs mailbox_app/store/*.sql)",
                        id="mailbox_app.W020",
                    )
                )
    return errors
