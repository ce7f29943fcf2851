from __future__ import annotations

from django.urls import path

from bench.http_floor.views import submit

urlpatterns = [path("api/v1/threads/<str:thread_id>/mailbox", submit)]
