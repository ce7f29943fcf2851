"""The host's URLs: the admin and the run API, included."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include("runs_app.api.urls")),
]
