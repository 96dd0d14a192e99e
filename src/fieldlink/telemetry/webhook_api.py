"""REST endpoints for alarm notifications: webhooks, their deliveries, e-mail subscriptions.

``/api/v1/orgs/{org_id}/webhooks…`` are for admins (``org.settings``), reading included: a
receiver's URL often carries a token of its own. The signing secret is in the responses that
create or rotate it and in no other response. ``/api/v1/orgs/{org_id}/alarm-emails`` is the
caller's own e-mail choice (every member). Thin: parse, call one service in the transaction
the handler owns, render.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from django.db import transaction
from django.http import HttpRequest
from ninja import Field, Query, Router, Schema, Status

from fieldlink.accounts.auth import scope as scope_of
from fieldlink.accounts.schemas import StrictInput
from fieldlink.telemetry import notifications
from fieldlink.telemetry.models import Delivery, DeliveryAttempt, Webhook

router = Router(tags=["alarms"])


class WebhookIn(StrictInput):
    name: str = Field(min_length=1, max_length=notifications.NAME_MAX_LENGTH)
    url: str = Field(
        min_length=1,
        max_length=notifications.URL_MAX_LENGTH,
        description="https:// to a public address; refused for private, loopback, link-local",
    )


class WebhookPatch(StrictInput):
    name: str | None = Field(default=None, min_length=1, max_length=notifications.NAME_MAX_LENGTH)
    enabled: bool | None = Field(default=None, strict=True)


class WebhookOut(Schema):
    id: UUID
    name: str
    url: str
    enabled: bool
    created_at: datetime


class WebhookSecretOut(WebhookOut):
    secret: str = Field(
        description="HMAC-SHA256 signing secret. Shown only in this response: store it now."
    )


class AttemptOut(Schema):
    at: datetime
    status_code: int | None = Field(description="None: no HTTP answer (see error)")
    error: str
    duration_ms: int


class DeliveryOut(Schema):
    id: UUID
    event: str
    alarm_id: UUID | None
    state: str = Field(description="pending, delivered or failed")
    attempts: int
    next_attempt_at: datetime | None
    created_at: datetime
    finished_at: datetime | None
    attempt_log: list[AttemptOut]


class DeliveryPageOut(Schema):
    items: list[DeliveryOut]
    page: int
    per_page: int
    has_next: bool


class DeliveryQuery(Schema):
    page: int = Field(default=1, ge=1, le=10_000)
    per_page: int = Field(default=20, ge=1, le=notifications.MAX_PAGE)


class AlarmEmailsIn(StrictInput):
    subscribed: bool = Field(strict=True)
    critical_only: bool = Field(default=False, strict=True, description="Only critical alarms")


class AlarmEmailsOut(Schema):
    subscribed: bool
    critical_only: bool


def _webhook(webhook: Webhook) -> WebhookOut:
    return WebhookOut(
        id=webhook.pk,
        name=webhook.name,
        url=webhook.url,
        enabled=webhook.enabled,
        created_at=webhook.created_at,
    )


def _issued(issued: notifications.IssuedWebhook) -> WebhookSecretOut:
    return WebhookSecretOut(**_webhook(issued.webhook).model_dump(), secret=issued.secret)


def _attempt(attempt: DeliveryAttempt) -> AttemptOut:
    return AttemptOut(
        at=attempt.at,
        status_code=attempt.status_code,
        error=attempt.error,
        duration_ms=attempt.duration_ms,
    )


def _delivery(delivery: Delivery, *, with_attempts: bool = True) -> DeliveryOut:
    return DeliveryOut(
        id=delivery.pk,
        event=delivery.event,
        alarm_id=delivery.alarm_id,
        state=delivery.state,
        attempts=delivery.attempts,
        next_attempt_at=delivery.next_attempt_at,
        created_at=delivery.created_at,
        finished_at=delivery.finished_at,
        attempt_log=[_attempt(a) for a in delivery.attempt_log.all()] if with_attempts else [],
    )


# -- webhooks ------------------------------------------------------------------------------------


@router.get("/orgs/{org_id}/webhooks", response=list[WebhookOut], summary="Webhooks")
def list_webhooks(request: HttpRequest, org_id: UUID) -> list[WebhookOut]:
    return [_webhook(w) for w in notifications.webhooks_of(scope_of(request, org_id))]


@router.post(
    "/orgs/{org_id}/webhooks",
    response={201: WebhookSecretOut},
    summary="Create a webhook (the signing secret is in this response only)",
)
def create_webhook(
    request: HttpRequest, org_id: UUID, payload: WebhookIn
) -> Status[WebhookSecretOut]:
    scope = scope_of(request, org_id)
    with transaction.atomic():
        issued = notifications.create_webhook(
            scope, name=payload.name, url=payload.url, request=request
        )
    return Status(201, _issued(issued))


@router.get("/orgs/{org_id}/webhooks/{webhook_id}", response=WebhookOut, summary="A webhook")
def get_webhook(request: HttpRequest, org_id: UUID, webhook_id: UUID) -> WebhookOut:
    return _webhook(notifications.get_webhook(scope_of(request, org_id), webhook_id))


@router.patch(
    "/orgs/{org_id}/webhooks/{webhook_id}",
    response=WebhookOut,
    summary="Rename, enable or disable a webhook",
)
def update_webhook(
    request: HttpRequest, org_id: UUID, webhook_id: UUID, payload: WebhookPatch
) -> WebhookOut:
    scope = scope_of(request, org_id)
    with transaction.atomic():
        webhook = notifications.update_webhook(
            scope, webhook_id, name=payload.name, enabled=payload.enabled, request=request
        )
    return _webhook(webhook)


@router.delete(
    "/orgs/{org_id}/webhooks/{webhook_id}",
    response={204: None},
    summary="Delete a webhook and its delivery history",
)
def delete_webhook(request: HttpRequest, org_id: UUID, webhook_id: UUID) -> Status[None]:
    scope = scope_of(request, org_id)
    with transaction.atomic():
        notifications.delete_webhook(scope, webhook_id, request=request)
    return Status(204, None)


@router.post(
    "/orgs/{org_id}/webhooks/{webhook_id}/rotate-secret",
    response=WebhookSecretOut,
    summary="Replace the signing secret (the old one stops at once; shown only here)",
)
def rotate_secret(request: HttpRequest, org_id: UUID, webhook_id: UUID) -> WebhookSecretOut:
    scope = scope_of(request, org_id)
    with transaction.atomic():
        issued = notifications.rotate_secret(scope, webhook_id, request=request)
    return _issued(issued)


@router.post(
    "/orgs/{org_id}/webhooks/{webhook_id}/test",
    response={202: DeliveryOut},
    summary="Queue a signed test event (event 'ping'); see the deliveries for its outcome",
)
def send_test(request: HttpRequest, org_id: UUID, webhook_id: UUID) -> Status[DeliveryOut]:
    scope = scope_of(request, org_id)
    with transaction.atomic():
        delivery = notifications.send_test(scope, webhook_id, request=request)
    return Status(202, _delivery(delivery, with_attempts=False))


@router.get(
    "/orgs/{org_id}/webhooks/{webhook_id}/deliveries",
    response=DeliveryPageOut,
    summary="A webhook's deliveries with their attempts, newest first",
)
def list_deliveries(
    request: HttpRequest, org_id: UUID, webhook_id: UUID, query: Query[DeliveryQuery]
) -> DeliveryPageOut:
    page = notifications.deliveries_of(
        scope_of(request, org_id), webhook_id, page=query.page, per_page=query.per_page
    )
    return DeliveryPageOut(
        items=[_delivery(d) for d in page.deliveries],
        page=page.page,
        per_page=page.per_page,
        has_next=page.has_next,
    )


@router.post(
    "/orgs/{org_id}/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver",
    response={202: DeliveryOut},
    summary="Send a failed delivery again (same id and body, fresh signature)",
)
def redeliver(
    request: HttpRequest, org_id: UUID, webhook_id: UUID, delivery_id: UUID
) -> Status[DeliveryOut]:
    scope = scope_of(request, org_id)
    with transaction.atomic():
        delivery = notifications.redeliver(scope, webhook_id, delivery_id, request=request)
    return Status(202, _delivery(delivery, with_attempts=False))


# -- the caller's own alarm e-mails --------------------------------------------------------------


@router.get(
    "/orgs/{org_id}/alarm-emails", response=AlarmEmailsOut, summary="Your alarm e-mail choice"
)
def get_alarm_emails(request: HttpRequest, org_id: UUID) -> AlarmEmailsOut:
    choice = notifications.alarm_emails_of(scope_of(request, org_id))
    return AlarmEmailsOut(subscribed=choice.subscribed, critical_only=choice.critical_only)


@router.put(
    "/orgs/{org_id}/alarm-emails",
    response=AlarmEmailsOut,
    summary="Subscribe yourself to alarm e-mails (all, or critical only), or unsubscribe",
)
def put_alarm_emails(request: HttpRequest, org_id: UUID, payload: AlarmEmailsIn) -> AlarmEmailsOut:
    scope = scope_of(request, org_id)
    with transaction.atomic():
        choice = notifications.set_alarm_emails(
            scope,
            subscribed=payload.subscribed,
            critical_only=payload.critical_only,
            request=request,
        )
    return AlarmEmailsOut(subscribed=choice.subscribed, critical_only=choice.critical_only)
