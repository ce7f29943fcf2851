"""The admin login, limited: after AWAKEN_ADMIN_LOGIN_MAX_FAILURES failed attempts for one username
from one client address, that pair is refused (429) until AWAKEN_ADMIN_LOGIN_LOCKOUT_S has passed since
the first failure of the window; a successful login clears its count.

Why a wrapper and not django-axes: axes adds tables, a middleware and an authentication backend that
every `authenticate()` call goes through (and refuses one without a request, as the test client's
`login()` makes); the API never authenticates by password. This wraps `admin.site.login` only and counts
in the Redis `throttle` cache the API's throttles use (awaken_project/throttling.py), so every web
process shares the count.

An attempt is counted before its password is checked: concurrent attempts each take a different count,
so no burst can try more than the limit, and a refused attempt costs no password hash.
"""

from __future__ import annotations

import hashlib
from typing import Any

from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.utils.html import format_html
from rest_framework.throttling import BaseThrottle

from awaken_project.throttling import count_in_window, throttle_cache

USERNAME_FIELD_MAX = 150
REFUSED = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Too many failed logins</title>
</head><body><h1>Too many failed logins</h1><p>Too many failed logins for this username from your
address. Try again in {} minutes.</p></body></html>"""


def client_address(request: HttpRequest) -> str:
    """The client's address as the API's throttles see it (REMOTE_ADDR, or X-Forwarded-For behind
    AWAKEN_API_NUM_PROXIES proxies)."""
    return str(BaseThrottle().get_ident(request))  # type: ignore[arg-type]


def failure_key(address: str, username: str) -> str:
    digest = hashlib.sha256(f"{address}\0{username.strip().lower()}".encode()).hexdigest()
    return f"admin-login:{digest}"


def limited_login(request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponseBase:
    """`admin.site.login`, refusing a (client address, username) pair past its failure limit."""
    if request.method != "POST":
        return admin.site.login(request, extra_context)
    lockout = int(settings.ADMIN_LOGIN_LOCKOUT_S)
    username = str(request.POST.get("username", ""))[:USERNAME_FIELD_MAX]
    key = failure_key(client_address(request), username)
    cache = throttle_cache()
    attempt = count_in_window(cache, key, timeout=lockout)
    if attempt > int(settings.ADMIN_LOGIN_MAX_FAILURES):
        minutes = max(1, -(-lockout // 60))
        response = HttpResponse(format_html(REFUSED, minutes), status=429)
        response["Retry-After"] = str(lockout)
        return response
    answer = admin.site.login(request, extra_context)
    if request.user.is_authenticated:
        cache.delete(key)  # a success forgets the failures (and this attempt)
    return answer
