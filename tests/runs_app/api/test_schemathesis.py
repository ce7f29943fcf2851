"""Property-based API check: requests generated from the served OpenAPI schema — bodies, query and path
parameters, and the declared request headers (`Idempotency-Key`, `Last-Event-ID`) — never get a 5xx."""

from __future__ import annotations

from typing import Any

import hypothesis
import pytest
import schemathesis

# schemathesis imports its OpenAPI machinery lazily, on the first `from_dict`; the test calls it while
# the in-process Celery worker's threads run, and CPython 3.11 can fail compiling a module while other
# threads compile ("AST constructor recursion depth mismatch"). Import it here, single-threaded.
import schemathesis.specs.openapi.schemas
from django.contrib.auth import get_user_model
from django.core.wsgi import get_wsgi_application
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck
from rest_framework.authtoken.models import Token
from schemathesis.generation import GenerationMode

MAX_EXAMPLES = 12


@pytest.mark.slow
def test_no_server_errors_for_generated_requests(mailbox_worker: Any, engine_settings: Any) -> None:
    engine_settings.AWAKEN_REMOTE_CANCEL_WAIT_MS = 100
    user = get_user_model().objects.create_user(username="fuzzer", password="pw")
    auth = {"Authorization": f"Token {Token.objects.create(user=user).key}"}
    raw = SchemaGenerator().get_schema(request=None, public=True)  # type: ignore[no-untyped-call]
    schema = schemathesis.openapi.from_dict(raw)
    app = get_wsgi_application()
    failures: list[str] = []
    skipped: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 19
    mailbox = raw["paths"]["/api/v1/threads/{thread_id}/mailbox"]["post"]
    assert {"in": "header", "name": "Idempotency-Key"}.items() <= next(
        p for p in mailbox["parameters"] if p["name"] == "Idempotency-Key"
    ).items()
    events = raw["paths"]["/api/v1/runs/{run_id}/events"]["get"]
    assert any(p["name"] == "Last-Event-ID" and p["in"] == "header" for p in events["parameters"])
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @hypothesis.settings(
                max_examples=MAX_EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            def check(case: Any) -> None:
                response = case.call(app=app, headers=auth)
                if response.status_code >= 500:
                    failures.append(
                        f"{case.method} {case.formatted_path} -> {response.status_code}: {case.body!r}"
                    )

            try:
                check()
            except hypothesis.errors.Unsatisfiable:
                # only possible for NEGATIVE: an operation whose every input accepts anything (no
                # parameters, or only free-form ones) has no invalid request to generate
                assert mode is GenerationMode.NEGATIVE, f"{operation.label}: no valid request generated"
                skipped.append(operation.label)
    # most operations take typed inputs, so most can be made invalid
    assert len(skipped) <= len(operations) // 2, skipped
    assert failures == []
