"""Issue 18 #10: a production-like environment can pass `manage.py check --deploy` without a warning,
through environment variables only; behind the SSL redirect /healthz (the image's HEALTHCHECK) still
answers over plain HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from django.test import Client

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = {
    "DEBUG": "0",
    "SECRET_KEY": "k7Qv2pX9-3nLwR8sTz0yHc4bJm6fGd1aUe5iKo7qNh2jVx4B_rYw",
    "ALLOWED_HOSTS": "api.example.com",
    "SESSION_COOKIE_SECURE": "1",
    "CSRF_COOKIE_SECURE": "true",
    "SECURE_SSL_REDIRECT": "on",
    "SECURE_HSTS_SECONDS": "31536000",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": "yes",
    "SECURE_HSTS_PRELOAD": "1",
    "SECURE_PROXY_SSL_HEADER": "HTTP_X_FORWARDED_PROTO,https",
    "CSRF_TRUSTED_ORIGINS": "https://api.example.com",
}


def _check_deploy(env: dict[str, str]) -> subprocess.Popen[str]:
    base = {k: v for k, v in os.environ.items() if k not in PRODUCTION}
    return subprocess.Popen(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"], cwd=ROOT,
        env=base | env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_check_deploy_is_clean_with_the_knobs_and_warns_without_them() -> None:
    knobs = {
        name
        for name in PRODUCTION
        if name.startswith(("SESSION_", "CSRF_COOKIE", "SECURE_SSL", "SECURE_HSTS"))
    }
    bare = {k: v for k, v in PRODUCTION.items() if k not in knobs}
    clean, warned = _check_deploy(PRODUCTION), _check_deploy(bare)
    out, err = clean.communicate(timeout=180)
    assert clean.returncode == 0, out + err
    assert "System check identified no issues" in out
    out, err = warned.communicate(timeout=180)
    assert warned.returncode != 0
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning in out + err, warning


def test_the_ssl_redirect_spares_the_health_probes(settings: Any) -> None:
    settings.SECURE_SSL_REDIRECT = True
    settings.ALLOWED_HOSTS = ["api.example.com"]
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    browser = Client(HTTP_HOST="api.example.com")
    landing = browser.get("/")
    assert landing.status_code == 301 and landing["Location"] == "https://api.example.com/"
    assert browser.get("/healthz").status_code == 200  # the container's HEALTHCHECK speaks HTTP
    # behind the proxy, a request it received over HTTPS is not redirected again
    assert browser.get("/", HTTP_X_FORWARDED_PROTO="https").status_code == 200
