"""`/demo/`: a small chat page for the `echo` agent over the AI SDK UI message stream (static/demo/)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.csrf import ensure_csrf_cookie

AGENT_ID = "echo"


@ensure_csrf_cookie
def demo(request: HttpRequest) -> HttpResponse:
    """The page; it talks to the API with the admin session (its CSRF token is in the page) or a token."""
    context = {
        "logged_in": request.user.is_authenticated,
        "username": request.user.get_username() if request.user.is_authenticated else "",
        "login_url": f"{reverse('admin:login')}?next={reverse('demo')}",
        "agent_id": AGENT_ID,
    }
    return render(request, "demo/chat.html", context)
