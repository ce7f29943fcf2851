"""The front-end protocols read by their official clients: Node scripts in tests/frontends/ use the
Vercel AI SDK (`ai`) and AG-UI (`@ag-ui/client`) against the real ASGI server and a real worker, and
assert the messages those clients rebuild. `npm ci --prefix tests/frontends` installs the clients
(`.ci/run` does); without them these tests skip, saying so."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

from tests.support.servers import PROJECT_ROOT, WebServer, asgi_server

FRONTENDS = PROJECT_ROOT / "tests" / "frontends"
NODE = shutil.which("node")
SCRIPT_TIMEOUT_S = 120

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(NODE is None, reason="node is not installed (Node 20+ runs the front-end clients)"),
    pytest.mark.skipif(
        not (FRONTENDS / "node_modules").is_dir(),
        reason="tests/frontends/node_modules is missing: run `npm ci --prefix tests/frontends`",
    ),
]


@pytest.fixture
def token(transactional_db: None) -> str:
    user = get_user_model().objects.create_user(username="frontend-user", password="pw")
    return str(Token.objects.create(user=user).key)


@pytest.fixture
def server(transactional_db: None, tmp_path: Path) -> Iterator[WebServer]:
    with asgi_server(tmp_path) as web:
        yield web
        log = web.log_tail()
    assert "Traceback" not in log, log


def _run_script(name: str, server: WebServer, token: str) -> str:
    assert NODE is not None
    env = dict(os.environ) | {
        "AWAKEN_BASE_URL": f"http://127.0.0.1:{server.port}",
        "AWAKEN_TOKEN": token,
        "SUPPRESS_TRANSFORMATION_WARNINGS": "true",
    }
    done = subprocess.run(
        [NODE, str(FRONTENDS / name)],
        cwd=FRONTENDS,
        env=env,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{name} failed:\n{output}\n--- server log ---\n{server.log_tail()}"
    return done.stdout


def test_ai_sdk_client_rebuilds_the_runs_messages(mailbox_worker: Any, server: WebServer, token: str) -> None:
    out = _run_script("ai_sdk.mjs", server, token)
    assert out.count("ok ") == 9, out


def test_ag_ui_client_rebuilds_the_runs_messages(mailbox_worker: Any, server: WebServer, token: str) -> None:
    out = _run_script("ag_ui.mjs", server, token)
    assert out.count("ok ") == 9, out
