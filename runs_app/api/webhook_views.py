"""The caller's webhook signing secret (mailbox_app/webhooks/secret_store.py): `POST webhooks/secret`
creates it, or rotates it, and is the only answer that ever shows it; `GET webhooks/secret` says when it
was made and whether a previous secret still signs, never the secret. The route names no id: a secret is
always the caller's own, so no other user's can be reached through it.

A submit naming a `webhook` is refused (400 naming `webhook`) until the caller has a secret
(`require_signing_secret`): every delivery to a user's URL is then signed with a key only that user
holds, and no receiver has to accept an unsigned one."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from mailbox_app.contract.wire import iso_ms
from mailbox_app.webhooks import secret_store
from runs_app.api.edge import EdgeCheckedView, user_id, validated
from runs_app.api.errors import ApiError
from runs_app.api.responses import errors

SECRET_ROUTE = "/api/v1/webhooks/secret"
DEFAULT_GRACE_S = secret_store.DEFAULT_GRACE_MS // 1000
MAX_GRACE_S = secret_store.MAX_GRACE_MS // 1000


class WebhookSecretIn(serializers.Serializer[dict[str, Any]]):
    previous_valid_for_s = serializers.IntegerField(
        required=False,
        default=DEFAULT_GRACE_S,
        min_value=0,
        max_value=MAX_GRACE_S,
        help_text=(
            "on a rotation, how long the secret it replaces keeps signing beside the new one (seconds; "
            "0 revokes it at once, for a leaked secret)"
        ),
    )


class WebhookSecretInfoOut(serializers.Serializer[dict[str, Any]]):
    created_at = serializers.DateTimeField(help_text="when the current secret was made")
    previous_valid_until = serializers.DateTimeField(
        allow_null=True, help_text="until when the secret it replaced still signs too (null: it does not)"
    )


class WebhookSecretOut(WebhookSecretInfoOut):
    secret = serializers.CharField(
        help_text="`whsec_` + base64 key; shown only in this answer: store it with the receiver"
    )


def _info_json(info: secret_store.SecretInfo) -> dict[str, Any]:
    return {"created_at": iso_ms(info.created_at), "previous_valid_until": iso_ms(info.previous_valid_until)}


def require_signing_secret(owner_id: int) -> None:
    """A submit's `webhook` needs the submitter's signing secret first."""
    if not secret_store.has_secret(owner_id):
        raise ApiError(
            f"no webhook signing secret: create one with POST {SECRET_ROUTE} first "
            "(deliveries to your URL are signed with it)",
            code="webhook_secret_required",
            field="webhook",
        )


class WebhookSecretView(EdgeCheckedView):
    @extend_schema(
        responses={200: WebhookSecretInfoOut, **errors(400, 404)}, operation_id="webhook_secret_read"
    )
    def get(self, request: Request) -> Response:
        info = secret_store.describe(user_id(request))
        if info is None:
            raise ApiError(
                f"no webhook signing secret yet: POST {SECRET_ROUTE} creates one",
                code="webhook_secret_not_found",
                status_code=404,
            )
        return Response(_info_json(info))

    @extend_schema(
        request=WebhookSecretIn,
        responses={201: WebhookSecretOut, **errors(400)},
        operation_id="webhook_secret_issue",
        description=(
            "Create the caller's webhook signing secret, or rotate it. The secret is in this answer only. "
            "Deliveries are signed with it (Standard Webhooks: webhook-id, webhook-timestamp, "
            "webhook-signature), and with the replaced one too for `previous_valid_for_s`."
        ),
    )
    def post(self, request: Request) -> Response:
        data = validated(WebhookSecretIn, request)  # an empty body is {}
        issued = secret_store.issue(user_id(request), grace_ms=int(data["previous_valid_for_s"]) * 1000)
        body = {"secret": issued.secret, **_info_json(issued.info)}
        return Response(body, status=201, headers={"Cache-Control": "no-store"})
