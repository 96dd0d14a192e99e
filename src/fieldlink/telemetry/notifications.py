"""Use cases of alarm notifications: signed webhooks with retries and history, and alarm e-mails.

The alarm side calls ``queue_alarm_event(alarm, event)`` inside the transaction that changed
the alarm (an ``alarm_services.ALARM_EVENT_HOOKS`` entry). It only inserts rows: one pending
``Delivery`` per enabled webhook of the organisation, holding the exact JSON bytes that will be
signed and sent (unchanged on every retry, so receivers can deduplicate by delivery id). After
commit it enqueues the delivery task(s) and, for the events that need a person, the e-mail task.
A rolled-back transaction therefore sends nothing.

A delivery is attempted in three steps, so no database transaction (on SQLite: the one write
lock) is held while talking HTTP: a short transaction *claims* it (counts the attempt and leases
it for ``CLAIM_LEASE``, so a second worker or the periodic sweep leaves it alone), the request
goes out with a fresh signature, and a second short transaction records the attempt and either
marks it delivered, schedules the next try (``webhooks.next_delay``) or, after
``webhooks.MAX_ATTEMPTS``, marks it failed. A worker that dies mid-attempt leaves a lease that
runs out; the sweep (``deliver_due``) then tries again. The URL is checked again at each attempt
(``webhooks.check_url``): a host that now resolves to a private address is not contacted.

Decisions where the issue was silent:

- A disabled webhook sends nothing: no new events, no test pings, no redeliveries, and a pending
  delivery found disabled at its next attempt is closed as failed with a note in its history.
- E-mails go out for "alarm.opened" and "alarm.escalated" only — what needs a person now. A
  cleared alarm needs nobody; mailing it too would double the mail of a chattering limit. The
  webhooks get every event.
- A redelivery resends the same delivery (same id, same bytes, fresh signature) with a fresh
  retry budget; its earlier attempts stay in the history.
- The audit trail records a webhook's origin (scheme, host, port), not its full URL: receivers
  often put a token in the path, and the trail outlives the webhook.
"""

from __future__ import annotations

import math
import random
import smtplib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final
from urllib.parse import urlsplit
from uuid import UUID

from django.conf import settings
from django.core.mail import EmailMessage, get_connection
from django.db import transaction
from django.db.models import Prefetch, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone

from fieldlink.accounts.access import Permission, PermissionDeniedError, Scope
from fieldlink.accounts.services import audit
from fieldlink.kit.logging import get_logger
from fieldlink.telemetry import webhooks
from fieldlink.telemetry.errors import WebhookInvalidError, WebhookLimitError, WebhookStateError
from fieldlink.telemetry.models import (
    Alarm,
    AlarmSubscription,
    Delivery,
    DeliveryAttempt,
    DeliveryState,
    Severity,
    Webhook,
)

__all__ = [
    "ALARM_EVENTS",
    "MAIL_EVENTS",
    "AlarmEmails",
    "DeliveryPage",
    "IssuedWebhook",
    "alarm_emails_of",
    "attempt_delivery",
    "create_webhook",
    "delete_webhook",
    "deliver_due",
    "deliveries_of",
    "get_webhook",
    "prune_deliveries",
    "queue_alarm_event",
    "redeliver",
    "rotate_secret",
    "send_alarm_emails",
    "send_test",
    "set_alarm_emails",
    "update_webhook",
    "webhooks_of",
]

log = get_logger(__name__)

ALARM_EVENTS: Final = frozenset(
    {
        "alarm.opened",
        "alarm.escalated",
        "alarm.deescalated",
        "alarm.acknowledged",
        "alarm.cleared",
    }
)
PING_EVENT: Final = "ping"
MAIL_EVENTS: Final = frozenset({"alarm.opened", "alarm.escalated"})
MAX_WEBHOOKS: Final = 20
NAME_MAX_LENGTH: Final = 100
URL_MAX_LENGTH: Final = 500  # the model's column
ERROR_MAX_LENGTH: Final = 200  # DeliveryAttempt.error
# Longer than one attempt can take (connect + read timeouts), so a lease never runs out while
# its worker is still talking to the receiver.
CLAIM_LEASE: Final = timedelta(seconds=6 * webhooks.TOTAL_TIMEOUT)
DELIVERY_RETENTION: Final = timedelta(days=30)
SWEEP_LIMIT: Final = 100
SWEEP_BUDGET_SECONDS: Final = 45.0  # the sweep runs every minute; it yields before the next
MAX_PAGE: Final = 100
# A Django setting, not a FIELDLINK_* variable: no deployment can turn it on, tests can.
ALLOW_LOOPBACK_SETTING: Final = "WEBHOOKS_ALLOW_LOOPBACK"

Clock = Callable[[], datetime]


def allow_loopback() -> bool:
    return bool(getattr(settings, ALLOW_LOOPBACK_SETTING, False))


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _one_line(text: str, limit: int) -> str:
    return " ".join(text.split())[:limit]


# -- after commit --------------------------------------------------------------------------------


def _enqueue_deliveries(delivery_ids: list[str]) -> None:
    # The tasks module imports this one; importing it at call time keeps the cycle harmless.
    from fieldlink.telemetry import notification_tasks  # noqa: PLC0415

    def enqueue() -> None:
        for delivery_id in delivery_ids:
            notification_tasks.deliver_webhook.enqueue(delivery_id)

    # robust: the change is committed whatever happens here; the sweep delivers what is missed.
    transaction.on_commit(enqueue, robust=True)


def _enqueue_mails(alarm_id: str, event: str) -> None:
    from fieldlink.telemetry import notification_tasks  # noqa: PLC0415

    transaction.on_commit(
        lambda: notification_tasks.send_alarm_emails.enqueue(alarm_id, event), robust=True
    )


# -- alarm events (the alarm side's hook) -------------------------------------------------------


def alarm_payload(alarm: Alarm) -> dict[str, Any]:
    """The alarm as webhooks see it: no user names or e-mail addresses."""
    point = alarm.point
    value = alarm.value
    return {
        "id": str(alarm.pk),
        "organisation_id": str(alarm.organisation_id),
        "asset": {"id": str(alarm.asset_id), "tag": alarm.asset.tag},
        "point": (
            None if point is None else {"id": str(point.pk), "key": point.key, "unit": point.unit}
        ),
        "kind": alarm.kind,
        "level": alarm.level,
        "severity": alarm.severity,
        "state": alarm.state,
        "message": alarm.message,
        # JSON has no NaN or infinity: such a value would make the body unparseable.
        "value": value if value is not None and math.isfinite(value) else None,
        "raised_at": _iso(alarm.raised_at),
        "acknowledged_at": _iso(alarm.acknowledged_at),
        "cleared_at": _iso(alarm.cleared_at),
    }


def _webhooks_to_notify(alarm: Alarm) -> list[Webhook]:
    # A system fan-out with no acting principal: the alarm itself names the organisation.
    return list(Webhook.objects.filter(organisation_id=alarm.organisation_id, enabled=True))


def _subscribers(alarm: Alarm) -> QuerySet[AlarmSubscription]:
    """Subscriptions that get this alarm's e-mail: still members, active, severity wanted."""
    # A system notice with no acting principal: the alarm itself names the organisation, and
    # a subscription counts only while its user is still a member there.
    rows = AlarmSubscription.objects.filter(
        organisation_id=alarm.organisation_id,
        user__memberships__organisation_id=alarm.organisation_id,
        user__is_active=True,
    )
    if alarm.severity != Severity.CRITICAL:
        rows = rows.filter(critical_only=False)
    return rows


def queue_alarm_event(alarm: Alarm, event: str) -> None:
    """Queue the notifications of one alarm event, inside the caller's transaction.

    Inserts one pending delivery per enabled webhook of the alarm's organisation; everything
    that leaves the process (HTTP, SMTP) is enqueued on commit.
    """
    if event not in ALARM_EVENTS:
        raise ValueError(f"unknown alarm event {event!r}")
    now = timezone.now()
    targets = _webhooks_to_notify(alarm)
    if targets:
        fields = alarm_payload(alarm)
        rows = []
        for webhook in targets:
            delivery_id = uuid.uuid4()
            body = webhooks.encode_body(
                {
                    "event": event,
                    "delivery_id": str(delivery_id),
                    "occurred_at": _iso(now),
                    "alarm": fields,
                }
            )
            rows.append(
                Delivery(
                    id=delivery_id,
                    organisation_id=alarm.organisation_id,
                    webhook=webhook,
                    alarm=alarm,
                    event=event,
                    body=body,
                    next_attempt_at=now,
                    created_at=now,
                )
            )
        Delivery.objects.bulk_create(rows)
        _enqueue_deliveries([str(row.pk) for row in rows])
    if event in MAIL_EVENTS and _subscribers(alarm).exists():
        _enqueue_mails(str(alarm.pk), event)


# -- webhooks (admins) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class IssuedWebhook:
    webhook: Webhook
    secret: str  # shown once, in the response that created or rotated it


def _webhooks(scope: Scope) -> QuerySet[Webhook]:
    return scope.filter(Webhook.objects.all())


def _origin(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def _fields(webhook: Webhook) -> dict[str, Any]:
    return {"name": webhook.name, "url": _origin(webhook.url), "enabled": webhook.enabled}


def _name(value: str) -> str:
    value = value.strip()
    if not value or len(value) > NAME_MAX_LENGTH:
        raise WebhookInvalidError(
            f"The name must be 1 to {NAME_MAX_LENGTH} characters.", details={"field": "name"}
        )
    return value


def _checked_url(value: str, resolver: webhooks.Resolver) -> str:
    value = value.strip()
    if not value or len(value) > URL_MAX_LENGTH:
        raise WebhookInvalidError(
            f"The URL must be 1 to {URL_MAX_LENGTH} characters.", details={"field": "url"}
        )
    webhooks.check_url(value, allow_loopback=allow_loopback(), resolver=resolver)
    return value


def webhooks_of(scope: Scope) -> list[Webhook]:
    # Admins only, reading too: receivers' URLs often carry a token of their own.
    scope.require(Permission.ORG_SETTINGS)
    return list(_webhooks(scope))


def get_webhook(scope: Scope, webhook_id: UUID | str) -> Webhook:
    scope.require(Permission.ORG_SETTINGS)
    return scope.get(Webhook.objects.all(), webhook_id, what="webhook")


def create_webhook(
    scope: Scope,
    *,
    name: str,
    url: str,
    request: HttpRequest | None = None,
    resolver: webhooks.Resolver = webhooks.system_resolver,
) -> IssuedWebhook:
    scope.require(Permission.ORG_SETTINGS)
    name = _name(name)
    url = _checked_url(url, resolver)
    if _webhooks(scope).count() >= MAX_WEBHOOKS:
        raise WebhookLimitError(f"An organisation may have at most {MAX_WEBHOOKS} webhooks.")
    secret = webhooks.generate_secret()
    webhook = Webhook.objects.create(
        organisation=scope.organisation,
        name=name,
        url=url,
        secret=secret,
        created_by=scope.user,
    )
    audit(scope, "webhook.created", target=webhook, after=_fields(webhook), request=request)
    return IssuedWebhook(webhook, secret)


def update_webhook(
    scope: Scope,
    webhook_id: UUID | str,
    *,
    name: str | None = None,
    enabled: bool | None = None,
    request: HttpRequest | None = None,
) -> Webhook:
    """Rename, enable or disable (None leaves a field as it is)."""
    scope.require(Permission.ORG_SETTINGS)
    webhook = scope.get(Webhook.objects.select_for_update(), webhook_id, what="webhook")
    before = _fields(webhook)
    if name is not None:
        webhook.name = _name(name)
    if enabled is not None:
        webhook.enabled = enabled
    after = _fields(webhook)
    if after != before:
        webhook.save(update_fields=["name", "enabled"])
        audit(scope, "webhook.updated", target=webhook, before=before, after=after, request=request)
    return webhook


def rotate_secret(
    scope: Scope, webhook_id: UUID | str, *, request: HttpRequest | None = None
) -> IssuedWebhook:
    """A new signing secret, at once: the next attempt of every delivery is signed with it."""
    scope.require(Permission.ORG_SETTINGS)
    webhook = scope.get(Webhook.objects.select_for_update(), webhook_id, what="webhook")
    secret = webhooks.generate_secret()
    webhook.secret = secret
    webhook.save(update_fields=["secret"])
    audit(scope, "webhook.secret_rotated", target=webhook, request=request)
    return IssuedWebhook(webhook, secret)


def delete_webhook(
    scope: Scope, webhook_id: UUID | str, *, request: HttpRequest | None = None
) -> Webhook:
    """Delete a webhook with its delivery history; a delivery under way is not recorded."""
    scope.require(Permission.ORG_SETTINGS)
    webhook = scope.get(Webhook.objects.select_for_update(), webhook_id, what="webhook")
    audit(scope, "webhook.deleted", target=webhook, before=_fields(webhook), request=request)
    webhook.delete()
    return webhook


def send_test(
    scope: Scope, webhook_id: UUID | str, *, request: HttpRequest | None = None
) -> Delivery:
    """Queue a signed "ping" to the webhook; its outcome shows in the delivery history."""
    scope.require(Permission.ORG_SETTINGS)
    webhook = scope.get(Webhook.objects.select_for_update(), webhook_id, what="webhook")
    if not webhook.enabled:
        raise WebhookStateError("The webhook is disabled; enable it to send a test.")
    # One ping at a time: a button held down must not queue a burst at someone's server.
    if webhook.deliveries.filter(event=PING_EVENT, state=DeliveryState.PENDING).exists():
        raise WebhookStateError("A test for this webhook is still under way.")
    now = timezone.now()
    delivery_id = uuid.uuid4()
    body = webhooks.encode_body(
        {
            "event": PING_EVENT,
            "delivery_id": str(delivery_id),
            "occurred_at": _iso(now),
            "webhook": {"id": str(webhook.pk), "name": webhook.name},
            "alarm": None,
        }
    )
    delivery = Delivery.objects.create(
        id=delivery_id,
        organisation=scope.organisation,
        webhook=webhook,
        event=PING_EVENT,
        body=body,
        next_attempt_at=now,
        created_at=now,
    )
    audit(scope, "webhook.tested", target=webhook, request=request)
    _enqueue_deliveries([str(delivery.pk)])
    return delivery


@dataclass(frozen=True)
class DeliveryPage:
    deliveries: list[Delivery]  # newest first, each with ``attempt_log`` prefetched
    page: int
    per_page: int
    has_next: bool


def deliveries_of(
    scope: Scope, webhook_id: UUID | str, *, page: int = 1, per_page: int = 20
) -> DeliveryPage:
    scope.require(Permission.ORG_SETTINGS)
    webhook = scope.get(Webhook.objects.all(), webhook_id, what="webhook")
    per_page = max(1, min(per_page, MAX_PAGE))
    page = max(1, page)
    start = (page - 1) * per_page
    rows = (
        scope.filter(Delivery.objects.filter(webhook=webhook))
        .prefetch_related(Prefetch("attempt_log", DeliveryAttempt.objects.order_by("at", "id")))
        .order_by("-created_at", "-id")
    )
    found = list(rows[start : start + per_page + 1])
    return DeliveryPage(found[:per_page], page, per_page, len(found) > per_page)


def redeliver(
    scope: Scope,
    webhook_id: UUID | str,
    delivery_id: UUID | str,
    *,
    request: HttpRequest | None = None,
) -> Delivery:
    """Send a failed delivery again: same id and bytes, a fresh signature and retry budget."""
    scope.require(Permission.ORG_SETTINGS)
    webhook = scope.get(Webhook.objects.all(), webhook_id, what="webhook")
    delivery = scope.get(
        Delivery.objects.select_for_update().filter(webhook=webhook), delivery_id, what="delivery"
    )
    if not webhook.enabled:
        raise WebhookStateError("The webhook is disabled; enable it to send again.")
    if delivery.state != DeliveryState.FAILED:
        raise WebhookStateError(
            "Only a failed delivery can be sent again.", details={"state": delivery.state}
        )
    now = timezone.now()
    delivery.state = DeliveryState.PENDING
    delivery.attempts = 0
    delivery.next_attempt_at = now
    delivery.finished_at = None
    delivery.save(update_fields=["state", "attempts", "next_attempt_at", "finished_at"])
    audit(
        scope,
        "webhook.redelivered",
        target=delivery,
        after={"webhook": str(webhook.pk), "event": delivery.event},
        request=request,
    )
    _enqueue_deliveries([str(delivery.pk)])
    return delivery


# -- delivering (tasks) --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Claim:
    delivery_id: UUID
    event: str
    body: bytes
    url: str
    secret: str


def _claim(delivery_id: UUID | str, now: datetime) -> _Claim | None:
    delivery = (
        Delivery.objects.select_for_update().select_related("webhook").filter(pk=delivery_id)
    ).first()
    if delivery is None or delivery.state != DeliveryState.PENDING:
        return None
    if delivery.next_attempt_at is not None and delivery.next_attempt_at > now:
        return None  # not due yet, or another worker holds the lease
    webhook = delivery.webhook
    if not webhook.enabled:
        DeliveryAttempt.objects.create(
            delivery=delivery, at=now, error="Not sent: the webhook is disabled."
        )
        delivery.state, delivery.finished_at, delivery.next_attempt_at = (
            DeliveryState.FAILED,
            now,
            None,
        )
        delivery.save(update_fields=["state", "finished_at", "next_attempt_at"])
        return None
    delivery.attempts += 1
    delivery.next_attempt_at = now + CLAIM_LEASE
    delivery.save(update_fields=["attempts", "next_attempt_at"])
    return _Claim(delivery.pk, delivery.event, bytes(delivery.body), webhook.url, webhook.secret)


def _send(
    claim: _Claim,
    *,
    now: datetime,
    transport: webhooks.Transport,
    resolver: webhooks.Resolver,
) -> webhooks.Outcome:
    try:
        target = webhooks.check_url(claim.url, allow_loopback=allow_loopback(), resolver=resolver)
    except webhooks.WebhookUrlRefusedError as exc:
        return webhooks.Outcome(None, 0, error=f"Not sent: {exc.message}")
    headers = webhooks.headers_for(
        secret=claim.secret,
        event=claim.event,
        delivery_id=str(claim.delivery_id),
        body=claim.body,
        now=now.timestamp(),
    )
    try:
        return transport(webhooks.Outgoing(target=target, headers=headers, body=claim.body))
    except Exception as exc:  # noqa: BLE001 -- any transport failure is a failed attempt, recorded
        log.warning(
            "webhook_transport_error", delivery=str(claim.delivery_id), error=type(exc).__name__
        )
        return webhooks.Outcome(None, 0, error=f"Transport error: {type(exc).__name__}")


def _record(
    claim: _Claim, outcome: webhooks.Outcome, now: datetime, rng: random.Random | None
) -> Delivery | None:
    delivery = Delivery.objects.select_for_update().filter(pk=claim.delivery_id).first()
    if delivery is None:
        return None  # the webhook was deleted meanwhile, its history with it
    DeliveryAttempt.objects.create(
        delivery=delivery,
        at=now,
        status_code=outcome.status,
        error=outcome.error[:ERROR_MAX_LENGTH],
        duration_ms=max(0, outcome.duration_ms),
    )
    if outcome.ok:
        delivery.state, delivery.finished_at, delivery.next_attempt_at = (
            DeliveryState.DELIVERED,
            now,
            None,
        )
    else:
        delay = webhooks.next_delay(delivery.attempts, rng)
        if delay is None:
            delivery.state, delivery.finished_at, delivery.next_attempt_at = (
                DeliveryState.FAILED,
                now,
                None,
            )
            log.info(
                "webhook_delivery_failed", delivery=str(delivery.pk), attempts=delivery.attempts
            )
        else:
            delivery.next_attempt_at = now + timedelta(seconds=delay)
    delivery.save(update_fields=["state", "finished_at", "next_attempt_at"])
    return delivery


def attempt_delivery(
    delivery_id: UUID | str,
    *,
    transport: webhooks.Transport = webhooks.http_transport,
    clock: Clock = timezone.now,
    resolver: webhooks.Resolver = webhooks.system_resolver,
    rng: random.Random | None = None,
) -> Delivery | None:
    """One attempt of a pending delivery that is due; None when there was nothing to attempt.

    Owns its transactions (claim, then record) so that none is open during the request.
    """
    with transaction.atomic():
        claim = _claim(delivery_id, clock())
    if claim is None:
        return None
    outcome = _send(claim, now=clock(), transport=transport, resolver=resolver)
    with transaction.atomic():
        return _record(claim, outcome, clock(), rng)


def deliver_due(
    *,
    transport: webhooks.Transport = webhooks.http_transport,
    clock: Clock = timezone.now,
    resolver: webhooks.Resolver = webhooks.system_resolver,
    rng: random.Random | None = None,
    limit: int = SWEEP_LIMIT,
    budget_seconds: float = SWEEP_BUDGET_SECONDS,
) -> int:
    """Attempt the deliveries that are due (retries, and first tries whose task was lost)."""
    due = list(
        Delivery.objects.filter(state=DeliveryState.PENDING, next_attempt_at__lte=clock())
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )
    started = time.monotonic()
    attempted = 0
    for delivery_id in due:
        if time.monotonic() - started > budget_seconds:
            break
        done = attempt_delivery(
            delivery_id, transport=transport, clock=clock, resolver=resolver, rng=rng
        )
        attempted += done is not None
    return attempted


def prune_deliveries(now: datetime | None = None) -> int:
    cutoff = (now or timezone.now()) - DELIVERY_RETENTION
    deleted, _ = Delivery.objects.filter(finished_at__lt=cutoff).delete()
    return deleted


# -- e-mail --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlarmEmails:
    subscribed: bool
    critical_only: bool


def _own_subscription(scope: Scope) -> QuerySet[AlarmSubscription]:
    return scope.filter(AlarmSubscription.objects.filter(user=scope.user))


def alarm_emails_of(scope: Scope) -> AlarmEmails:
    scope.require(Permission.ORG_VIEW)
    found = _own_subscription(scope).first()
    return AlarmEmails(found is not None, found.critical_only if found else False)


def set_alarm_emails(
    scope: Scope,
    *,
    subscribed: bool,
    critical_only: bool = False,
    request: HttpRequest | None = None,
) -> AlarmEmails:
    """Subscribe or unsubscribe oneself (members only: the mail goes to one's own address)."""
    scope.require(Permission.ALARMS_RESPOND)
    if scope.role is None:
        raise PermissionDeniedError("Only members of the organisation get its alarm e-mails.")
    found = _own_subscription(scope).select_for_update().first()
    before = None if found is None else {"critical_only": found.critical_only}
    if not subscribed:
        if found is not None:
            found.delete()
            audit(scope, "alarm_emails.unsubscribed", before=before, request=request)
        return AlarmEmails(subscribed=False, critical_only=False)
    if found is None:
        AlarmSubscription.objects.create(
            organisation=scope.organisation, user=scope.user, critical_only=critical_only
        )
        audit(
            scope,
            "alarm_emails.subscribed",
            after={"critical_only": critical_only},
            request=request,
        )
    elif found.critical_only != critical_only:
        found.critical_only = critical_only
        found.save(update_fields=["critical_only"])
        audit(
            scope,
            "alarm_emails.changed",
            before=before,
            after={"critical_only": critical_only},
            request=request,
        )
    return AlarmEmails(subscribed=True, critical_only=critical_only)


def public_url(path: str) -> str:
    """An absolute https URL for a link in an e-mail (no request to build it from)."""
    hosts = [h.lstrip(".") for h in settings.ALLOWED_HOSTS if h.lstrip(".") and h != "*"]
    host = hosts[0] if hosts else "localhost"
    port = settings.FIELDLINK.effective_public_https_port
    return f"https://{host}{'' if port == 443 else f':{port}'}{path}"


_VERB: Final = {"alarm.opened": "raised", "alarm.escalated": "escalated"}


def _mail(alarm: Alarm, event: str) -> tuple[str, str]:
    org = alarm.organisation
    org_id, verb = str(org.pk), _VERB[event]
    link = public_url(reverse("alarms:detail", kwargs={"org_id": org_id, "alarm_id": alarm.pk}))
    settings_link = public_url(reverse("notifications:index", kwargs={"org_id": org_id}))
    subject = _one_line(f"[Fieldlink] {alarm.severity.upper()} alarm {verb}: {alarm.message}", 200)
    lines = [
        f"An alarm was {verb} in {org.name}.",
        "",
        alarm.message,
        "",
        f"Asset: {alarm.asset.tag}",
    ]
    if alarm.point is not None:
        lines.append(f"Measuring point: {alarm.point.key} ({alarm.point.unit})")
    lines += [f"Level: {alarm.level} ({alarm.severity})"]
    if alarm.value is not None:
        lines.append(f"Value: {alarm.value:g}")
    lines += [
        f"Raised: {alarm.raised_at:%Y-%m-%d %H:%M:%S} UTC",
        f"State: {alarm.state}",
        "",
        f"Open the alarm: {link}",
        "",
        f"You get this because you chose alarm e-mails of {org.name}. Change that here: "
        f"{settings_link}",
    ]
    return subject, "\n".join(lines)


def send_alarm_emails(alarm_id: UUID | str, event: str) -> int:
    """Mail an alarm event to the subscribed members; returns how many messages went out."""
    if event not in MAIL_EVENTS:
        return 0
    alarm = (
        Alarm.objects.select_related("organisation", "asset", "point").filter(pk=alarm_id).first()
    )
    if alarm is None:
        return 0
    addresses = sorted(set(_subscribers(alarm).values_list("user__email", flat=True)))
    if not addresses:
        return 0
    subject, body = _mail(alarm, event)
    # One message per person: no member learns another's address from the To line.
    messages = [EmailMessage(subject, body, None, [address]) for address in addresses]
    try:
        with get_connection(fail_silently=False) as connection:
            sent = connection.send_messages(messages) or 0
    except (OSError, smtplib.SMTPException) as exc:
        log.warning(
            "alarm_mail_failed",
            alarm=str(alarm.pk),
            recipients=len(addresses),
            error=type(exc).__name__,
        )
        return 0
    return int(sent)
