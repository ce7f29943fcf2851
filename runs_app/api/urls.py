"""Routes under /api/v1/."""

from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from runs_app.api import fork_views, inbox_views, run_wait, schedule_views, thread_views, views, webhook_views

urlpatterns = [
    path("runs", views.RunsView.as_view(), name="runs"),
    path("runs/<str:run_id>", views.RunDetailView.as_view(), name="run-detail"),
    path("runs/<str:run_id>/cancel", views.RunCancelView.as_view(), name="run-cancel"),
    path("runs/<str:run_id>/decision", views.RunDecisionView.as_view(), name="run-decision"),
    path("runs/<str:run_id>/inputs", views.RunInputsView.as_view(), name="run-inputs"),
    path("runs/<str:run_id>/events", views.RunEventsView.as_view(), name="run-events"),
    path("runs/<str:run_id>/join", run_wait.awaiting(run_wait.RunJoinView.as_view()), name="run-join"),
    path("runs/<str:run_id>/replay", fork_views.RunReplayView.as_view(), name="run-replay"),
    path("threads", thread_views.ThreadsView.as_view(), name="threads"),
    # before threads/{id}: a thread named "search" is reachable through every route but GET threads/{id}
    path("threads/search", thread_views.ThreadSearchView.as_view(), name="thread-search"),
    path("threads/<str:thread_id>", thread_views.ThreadDetailView.as_view(), name="thread-detail"),
    path("threads/<str:thread_id>/runs", views.ThreadRunsView.as_view(), name="thread-runs"),
    path(
        "threads/<str:thread_id>/runs/active", views.ThreadActiveRunView.as_view(), name="thread-active-run"
    ),
    path(
        "threads/<str:thread_id>/runs/latest", views.ThreadLatestRunView.as_view(), name="thread-latest-run"
    ),
    path(
        "threads/<str:thread_id>/runs/wait",
        run_wait.awaiting(run_wait.ThreadRunWaitView.as_view()),
        name="thread-run-wait",
    ),
    path("threads/<str:thread_id>/mailbox", views.ThreadMailboxView.as_view(), name="thread-mailbox"),
    path("threads/<str:thread_id>/messages", views.ThreadMessagesView.as_view(), name="thread-messages"),
    path("threads/<str:thread_id>/interrupt", views.ThreadInterruptView.as_view(), name="thread-interrupt"),
    path("threads/<str:thread_id>/cancel", views.ThreadCancelView.as_view(), name="thread-cancel"),
    path("threads/<str:thread_id>/fork", fork_views.ThreadForkView.as_view(), name="thread-fork"),
    path("threads/<str:thread_id>/decision", views.ThreadDecisionView.as_view(), name="thread-decision"),
    path("threads/<str:thread_id>/pause", inbox_views.ThreadPauseView.as_view(), name="thread-pause"),
    path("threads/<str:thread_id>/resume", inbox_views.ThreadResumeView.as_view(), name="thread-resume"),
    path(
        "threads/<str:thread_id>/schedules",
        schedule_views.ThreadSchedulesView.as_view(),
        name="thread-schedules",
    ),
    path("schedules/<str:schedule_id>", schedule_views.ScheduleDetailView.as_view(), name="schedule-detail"),
    path("dispatches/<str:dispatch_id>", views.DispatchDetailView.as_view(), name="dispatch-detail"),
    path("dispatches/<str:dispatch_id>/cancel", views.DispatchCancelView.as_view(), name="dispatch-cancel"),
    path("webhooks/secret", webhook_views.WebhookSecretView.as_view(), name="webhook-secret"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
]
