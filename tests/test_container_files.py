"""The container files agree with the Procfile and name files that exist: the Dockerfile's CMD is the
Procfile's web line, compose.yaml's services run the Procfile's lines from the one image, and
`docker compose config` (when a compose CLI is installed; parsing needs no daemon) accepts the file
and refuses it without SECRET_KEY. No image is built here (there is no container engine)."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
APP_SERVICES = {
    "migrate": "release",
    "web": "web",
    "worker": "worker",
    "webhooks": "webhooks",
    "beat": "beat",
}
IMAGE_NEEDS = [
    "manage.py",
    "requirements/base.txt",
    "scripts/metrics-dir.sh",
    "awaken_project/asgi.py",
    "awaken_project/gunicorn_conf.py",
]


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip() and not line.startswith("#"))


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    pairs = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            instruction, _, arguments = line.strip().partition(" ")
            pairs.append((instruction.upper(), arguments.strip()))
    return pairs


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return loaded


def shell_command(command: list[str]) -> str:
    """A service's `["bash", "-c", line]` as the line the container's shell gets (`$$` is a `$`)."""
    assert command[:2] == ["bash", "-c"] and len(command) == 3, command
    return command[2].replace("$$", "$")


def test_dockerfile_runs_the_procfile_web_line_as_a_non_root_user() -> None:
    steps = dockerfile()
    assert steps[0] == ("FROM", "python:3.11-slim")
    cmd = [json.loads(args) for instruction, args in steps if instruction == "CMD"]
    assert cmd == [["bash", "-c", procfile()["web"]]]
    users = [args for instruction, args in steps if instruction == "USER"]
    assert users and users[-1] not in {"root", "0"}
    runs = [args for instruction, args in steps if instruction == "RUN"]
    assert any("pip install -r requirements/base.txt" in run for run in runs)
    user_at = max(i for i, (instruction, _) in enumerate(steps) if instruction == "USER")
    collect_at = next(i for i, (ins, args) in enumerate(steps) if ins == "RUN" and "collectstatic" in args)
    assert collect_at > user_at, "collectstatic runs as the user that serves (and re-collects) the files"
    healthcheck = [args for instruction, args in steps if instruction == "HEALTHCHECK"]
    assert len(healthcheck) == 1 and "/healthz" in healthcheck[0]


def test_dockerfile_copies_files_that_exist_and_dockerignore_keeps_them() -> None:
    for instruction, args in dockerfile():
        if instruction == "COPY":
            sources = [a for a in args.split() if not a.startswith("--")][:-1]
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: no such file"
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for needed in IMAGE_NEEDS:
        assert (ROOT / needed).exists(), needed
        assert not any(fnmatch.fnmatch(needed, p) for p in patterns), f".dockerignore drops {needed}"
    for local in (".venv", ".data", ".env", ".git"):
        assert local in patterns, f".dockerignore keeps {local} out of the build context"


def test_compose_services_run_the_procfile_lines_from_one_image() -> None:
    lines, spec = procfile(), compose()
    services = spec["services"]
    # prometheus, grafana: the `monitoring` profile (tests/mailbox_app/admin/test_monitoring_deploy.py)
    assert set(services) == {"postgres", "redis", *APP_SERVICES, "prometheus", "grafana"}
    for service, entry in APP_SERVICES.items():
        config = services[service]
        assert shell_command(config["command"]) == lines[entry], service
        assert config["build"] == "." and config["image"] == "awaken-mailbox:latest", service
        env = config["environment"]
        assert "${SECRET_KEY:?" in env["SECRET_KEY"], f"{service}: SECRET_KEY is required"
        for name in ("DATABASE_URL", "REDIS_URL", "ALLOWED_HOSTS"):
            assert name in env, f"{service}: {name}"
    for service in ("web", "worker", "webhooks", "beat"):
        depends = services[service]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", service
        assert depends["postgres"]["condition"] == depends["redis"]["condition"] == "service_healthy"
    assert services["migrate"]["restart"] == "no"
    for backing in ("postgres", "redis"):
        assert services[backing]["healthcheck"]["test"], backing
        volume = services[backing]["volumes"][0].split(":")[0]
        assert volume in spec["volumes"], backing
    assert (ROOT / "Dockerfile").exists()


def compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], check=False, capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_compose_config_accepts_the_file_and_requires_secret_key() -> None:
    cli = compose_cli()
    if cli is None:
        pytest.skip("no compose CLI (`docker compose` plugin or `docker-compose`) on this machine")
    env = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DATABASE_URL", "REDIS_URL"}}
    run = [*cli, "--project-directory", str(ROOT), "-f", str(ROOT / "compose.yaml"), "config"]
    missing = subprocess.run(run, check=False, capture_output=True, text=True, env=env, timeout=60)
    assert missing.returncode != 0 and "SECRET_KEY" in missing.stdout + missing.stderr
    done = subprocess.run(
        run, check=False, capture_output=True, text=True, env=env | {"SECRET_KEY": "k"}, timeout=60
    )
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)["services"]
    lines = procfile()
    for service, entry in APP_SERVICES.items():
        assert shell_command(resolved[service]["command"]) == lines[entry], service
        assert resolved[service]["environment"]["SECRET_KEY"] == "k"
    assert resolved["web"]["environment"]["DATABASE_URL"].endswith("@postgres:5432/awaken")
