"""The operator admin of the dispatch queue. This module only registers: each page is a module of its own.

dispatches.py        the dispatch list and read-only form (dispatch_actions.py: its confirmed actions)
overview.py          the overview and why-blocked report (activity.py: its charts, drawn by charts.py)
epochs.py            thread epochs, read-only
webhooks.py          the webhook outbox (a confirmed retry of failed deliveries)
budgets.py           token budgets: the per-owner / per-agent overrides, each window's usage now
pauses.py            what is paused (add a pause; a confirmed resume), docs/inbox.md
schedules.py         thread schedules, read-only (their beat rows are django-celery-beat's)
confirm.py           the confirmation page every state-moving action goes through
display.py, links.py how times, waits, attempts and ids are shown; links between the two apps' pages
"""

from __future__ import annotations

from django.contrib import admin

from mailbox_app.admin import budgets, dispatches, epochs, pauses, schedules, webhooks

__all__ = ["budgets", "dispatches", "epochs", "pauses", "schedules", "webhooks"]

# Link the overview from the admin index (a documented AdminSite hook; kept if a project set its own).
if admin.site.index_template is None:
    admin.site.index_template = "admin/mailbox_app/site_index.html"
