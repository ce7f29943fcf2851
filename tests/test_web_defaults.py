"""What a new user meets (issue 8, item 5): static files from the web process, `/`, the API docs behind
the admin login, and settings that refuse a published SECRET_KEY with DEBUG off."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.wsgi import get_wsgi_application
from django.test import Client

ROOT = Path(__file__).resolve().parent.parent


def _wsgi_get(path: str, **environ: str) -> tuple[str, dict[str, str], bytes]:
    """GET through a freshly built WSGI application (the whole middleware stack, whitenoise first)."""
    app = get_wsgi_application()
    captured: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None, /) -> Any:
        captured["status"], captured["headers"] = status, dict(headers)
        return lambda data: None

    env: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "HTTP_HOST": "localhost",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        **environ,
    }
    result = app(env, start_response)
    try:
        content = b"".join(result)
    finally:
        getattr(result, "close", lambda: None)()
    return captured["status"], captured["headers"], content


def test_collected_static_files_are_served_compressed(db: None, settings: Any, tmp_path: Path) -> None:
    settings.STATIC_ROOT = tmp_path / "static"
    call_command("collectstatic", "--noinput", verbosity=0)
    assert (settings.STATIC_ROOT / "admin" / "css" / "base.css.gz").exists()
    status, headers, content = _wsgi_get("/static/admin/css/base.css")
    assert status.startswith("200") and headers["Content-Type"].startswith("text/css")
    assert b"body" in content and "max-age" in headers["Cache-Control"] and headers["ETag"]
    status, headers, _ = _wsgi_get("/static/admin/css/base.css", HTTP_ACCEPT_ENCODING="gzip")
    assert status.startswith("200") and headers["Content-Encoding"] == "gzip"
    # the API docs' assets are local too (no CDN)
    status, _, _ = _wsgi_get("/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js")
    assert status.startswith("200")
    assert _wsgi_get("/static/admin/css/nope.css")[0].startswith("404")


def test_static_files_through_finders_without_collectstatic(settings: Any, tmp_path: Path) -> None:
    settings.STATIC_ROOT = tmp_path / "empty"
    settings.WHITENOISE_USE_FINDERS = True
    settings.WHITENOISE_AUTOREFRESH = True
    response = Client().get("/static/admin/css/base.css")
    assert response.status_code == 200
    assert b"body" in b"".join(response.streaming_content)  # type: ignore[attr-defined]


def test_landing_page_links_docs_admin_demo_metrics_and_health(db: None) -> None:
    response = Client().get("/")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/html")
    html = response.content.decode()
    for href in ("/api/v1/docs/", "/api/v1/schema/", "/admin/", "/demo/", "/metrics", "/readyz", "/healthz"):
        assert f'href="{href}"' in html, href


def test_api_docs_after_admin_login(db: None) -> None:
    browser = Client()
    response = browser.get("/api/v1/docs/")
    assert response.status_code == 302
    assert response["Location"] == "/admin/login/?next=/api/v1/docs/"
    assert browser.get("/api/v1/schema/").status_code == 401  # the schema stays an API answer
    get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    login = browser.post(
        "/admin/login/?next=/api/v1/docs/", {"username": "root", "password": "pw", "next": "/api/v1/docs/"}
    )
    assert login.status_code == 302 and login["Location"] == "/api/v1/docs/"
    docs = browser.get("/api/v1/docs/")
    assert docs.status_code == 200 and b"swagger-ui" in docs.content
    assert b"/static/drf_spectacular_sidecar/" in docs.content and b"cdn.jsdelivr" not in docs.content
    schema = browser.get("/api/v1/schema/")
    assert schema.status_code == 200 and b"/api/v1/threads/{thread_id}/mailbox" in schema.content


def _setup_django(**env: str) -> subprocess.CompletedProcess[str]:
    """`django.setup()` in a fresh interpreter with only the given DEBUG / SECRET_KEY / ALLOWED_HOSTS."""
    base = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "SECRET_KEY", "ALLOWED_HOSTS"}}
    code = "import django; django.setup(); from django.conf import settings; print(settings.ALLOWED_HOSTS)"
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**base, "DJANGO_SETTINGS_MODULE": "awaken_project.settings", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    "env",
    [
        {"DEBUG": "0"},
        {"DEBUG": "0", "SECRET_KEY": ""},
        {"DEBUG": "0", "SECRET_KEY": "change-me"},  # .env.example's placeholder
        {"DEBUG": "0", "SECRET_KEY": "dev-insecure-awaken-mailbox-secret-key-change-me"},
        {"ALLOWED_HOSTS": "api.example.com"},  # a deployment, DEBUG off by default
    ],
)
def test_settings_refuse_a_published_secret_key_with_debug_off(env: dict[str, str]) -> None:
    result = _setup_django(**env)
    assert result.returncode == 2
    assert result.stderr.startswith("awaken-mailbox configuration error: SECRET_KEY is unset or a published")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_settings_allowed_hosts_from_the_environment() -> None:
    key = "x" * 50
    local = _setup_django(DEBUG="0", SECRET_KEY=key)
    assert local.returncode == 0, local.stderr
    assert local.stdout.strip() == "['localhost', '127.0.0.1', '[::1]']"  # never `*` by default
    named = _setup_django(DEBUG="0", SECRET_KEY=key, ALLOWED_HOSTS=" api.example.com, .example.org ")
    assert named.returncode == 0, named.stderr
    assert named.stdout.strip() == "['api.example.com', '.example.org']"
    debug = _setup_django(DEBUG="1")  # local development: the dev key is fine
    assert debug.returncode == 0, debug.stderr
