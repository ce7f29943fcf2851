"""API test clients: a user with a token, and a DRF client that sends it."""

from __future__ import annotations

import json
from typing import Any

from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient


def new_user(username: str) -> Any:
    return get_user_model().objects.create_user(username=username, password="pw")


def token_client(user: Any) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def user_client(username: str) -> APIClient:
    """A new user and a client authenticated as them."""
    return token_client(new_user(username))


def post_json(client: APIClient, path: str, data: Any, **extra: Any) -> Any:
    return client.post(path, data=json.dumps(data), content_type="application/json", **extra)
