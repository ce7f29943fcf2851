"""The floor's one view: authenticate, validate, INSERT in a transaction, one Celery message on commit."""

from __future__ import annotations

import json
import time
import uuid
from functools import partial
from typing import Any

from celery import Celery
from django.conf import settings
from django.db import connection, transaction
from rest_framework import serializers
from rest_framework.decorators import api_view
from rest_framework.request import Request
from rest_framework.response import Response

from bench.http_floor import QUEUE

INSERT = (
    "INSERT INTO bench_http_floor_job (id, thread_id, owner_id, payload, created_at)"
    " VALUES (%s, %s, %s, %s, %s)"
)
celery = Celery("http-floor", broker=settings.BROKER_URL)


class Message(serializers.Serializer[dict[str, Any]]):
    role = serializers.ChoiceField(choices=["user", "assistant", "system"])
    content = serializers.CharField(max_length=100_000)


class Submit(serializers.Serializer[dict[str, Any]]):
    messages = Message(many=True, allow_empty=False)
    agent_id = serializers.CharField(max_length=200, required=False)


@api_view(["POST"])
def submit(request: Request, thread_id: str) -> Response:
    body = Submit(data=request.data)
    body.is_valid(raise_exception=True)
    job_id = uuid.uuid4()
    with transaction.atomic(), connection.cursor() as cursor:
        payload = json.dumps(body.validated_data)
        cursor.execute(INSERT, [job_id, thread_id, request.user.pk, payload, time.time_ns()])
        transaction.on_commit(partial(celery.send_task, "bench.http_floor", [str(job_id)], queue=QUEUE))
    return Response({"dispatch_id": str(job_id), "thread_id": thread_id, "status": "queued"}, status=201)
