"""URL wiring."""

from django.contrib import admin
from django.urls import include, path

from awaken_project.admin_login import limited_login
from awaken_project.health import healthz, readyz
from awaken_project.landing import DocsView, landing
from mailbox_app.observability.view import metrics_endpoint
from runs_app.demo import demo

urlpatterns = [
    path("", landing, name="landing"),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("metrics", metrics_endpoint, name="metrics"),
    # before the admin's own login: failed attempts are counted (awaken_project/admin_login.py)
    path("admin/login/", limited_login),
    path("admin/", admin.site.urls),
    path("demo/", demo, name="demo"),  # a chat page for the echo agent (AI SDK UI message stream)
    # before the API's own `docs` route, which answers 401 to a browser without a session
    path("api/v1/docs/", DocsView.as_view(url_name="schema"), name="api-docs"),
    path("api/v1/", include("runs_app.api.urls")),
]
