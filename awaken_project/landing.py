"""What a browser meets: `/` (links to the docs, admin, demo, metrics, health) and the API docs behind
the admin login."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from drf_spectacular.views import SpectacularSwaggerView

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>awaken-mailbox</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem}}
li{{margin:.3rem 0}}code{{background:#f3f3f3;padding:0 .2rem}}</style></head>
<body><h1>awaken-mailbox</h1>
<p>A durable per-thread run queue for AI agents. The API lives under <code>/api/v1/</code>; every
route needs <code>Authorization: Token &lt;key&gt;</code> or an admin session.</p>
<ul>{}</ul></body></html>"""

LINKS = (
    ("api-docs", "API docs (Swagger UI; log in to the admin first)"),
    ("schema", "OpenAPI schema"),
    ("admin:index", "Admin"),
    ("demo", "Demo chat with the echo agent (log in to the admin first)"),
    ("metrics", "Metrics (/metrics: Prometheus; from this machine or with the metrics token)"),
    ("readyz", "Readiness (/readyz)"),
    ("healthz", "Liveness (/healthz)"),
)


def landing(request: HttpRequest) -> HttpResponse:
    items = format_html_join(
        "", '<li><a href="{}">{}</a></li>', ((reverse(name), label) for name, label in LINKS)
    )
    return HttpResponse(format_html(_PAGE, items))


class DocsView(SpectacularSwaggerView):
    """The Swagger UI; a browser without a session (and without a token) is sent to the admin login
    and back, instead of a bare 401."""

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        user = getattr(request, "user", None)
        anonymous = user is None or not user.is_authenticated
        if anonymous and "HTTP_AUTHORIZATION" not in request.META:
            return redirect_to_login(request.get_full_path())
        return super().dispatch(request, *args, **kwargs)
