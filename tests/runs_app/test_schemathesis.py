"""Property-based API check: requests generated from the served OpenAPI schema never get a 5xx."""

from __future__ import annotations

from typing import Any

import hypothesis
import pytest
import schemathesis
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
    skipped = 0
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 19
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
                skipped += 1  # e.g. no way to make an operation without inputs "negative"
    assert skipped < len(operations)
    assert failures == []
