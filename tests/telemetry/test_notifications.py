"""Alarm notifications: signed webhook deliveries with retries, delivery history, alarm e-mails.

Alarms are raised through real ingestion; deliveries go over real HTTP to a loopback receiver
that checks the signature the way the docs tell customers to; e-mails go through a real SMTP
server (aiosmtpd). Retry schedules use an injected clock and transport: nothing sleeps.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
from django.db import transaction
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone

from fieldlink.accounts import access
from fieldlink.accounts.access import PermissionDeniedError, Principal, Scope
from fieldlink.accounts.models import Membership, Role, User
from fieldlink.audit.models import AuditEntry
from fieldlink.kit.errors import NotFoundError
from fieldlink.ops.tasks import PERIODIC
from fieldlink.telemetry import alarm_services, notification_tasks, notifications, webhooks
from fieldlink.telemetry.alarms import Thresholds
from fieldlink.telemetry.errors import WebhookStateError
from fieldlink.telemetry.models import Alarm, Delivery, DeliveryAttempt, DeliveryState, Webhook
from fieldlink.telemetry.webhooks import MAX_ATTEMPTS, RETRY_DELAYS, Outcome, Outgoing
from tests.accounts.conftest import MakeUser, SecureClient
from tests.accounts.test_mail import _Collector, _text_of, smtp_server
from tests.devices.conftest import Team, rival, team
from tests.plugins.log_canary import register_canary
from tests.telemetry.ingest_support import Plant, make_plant
from tests.telemetry.test_alarms import Sender

__all__ = ["rival", "smtp_server", "team"]

pytestmark = [pytest.mark.django_db, pytest.mark.backend]

LIMITS = Thresholds(low_low=0.0, low=10.0, high=80.0, high_high=90.0, hysteresis=2.0)
Callbacks = Callable[..., AbstractContextManager[Any]]


# -- a customer's receiver -----------------------------------------------------------------------


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    valid: bool


class Receiver(BaseHTTPRequestHandler):
    """A customer's endpoint: verifies the signature as the docs say, answers as told."""

    secret: ClassVar[str] = ""
    answers: ClassVar[list[int]] = []
    seen: ClassVar[list[Received]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        header = self.headers.get(webhooks.SIGNATURE_HEADER, "")
        valid = webhooks.verify(self.secret, header, body, now=time.time())
        self.seen.append(Received(dict(self.headers.items()), body, valid))
        status = self.answers.pop(0) if self.answers else (204 if valid else 401)
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[Receiver]]]:
    Receiver.secret, Receiver.answers, Receiver.seen = "", [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hooks/fieldlink", Receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def notify() -> Iterator[None]:
    """queue_alarm_event registered as the alarm side's hook (as the app registry does)."""
    added = notifications.queue_alarm_event not in alarm_services.ALARM_EVENT_HOOKS
    if added:
        alarm_services.ALARM_EVENT_HOOKS.append(notifications.queue_alarm_event)
    yield
    if added:
        alarm_services.ALARM_EVENT_HOOKS.remove(notifications.queue_alarm_event)


@pytest.fixture
def loopback(settings: Any) -> None:
    settings.WEBHOOKS_ALLOW_LOOPBACK = True


@pytest.fixture
def immediate_tasks(settings: Any) -> None:
    # Tasks run in-process when enqueued, i.e. when the transaction commits.
    settings.TASKS = {"default": {"BACKEND": "django_tasks.backends.immediate.ImmediateBackend"}}


@pytest.fixture
def plant(team: Team) -> Plant:
    plant = make_plant("notify", org=team.org, points=1)
    with transaction.atomic():
        alarm_services.set_thresholds(team.scope(Role.ENGINEER), plant.points[0].pk, LIMITS)
    return plant


@pytest.fixture
def sender(plant: Plant) -> Sender:
    return Sender(plant)


def add_webhook(team: Team, url: str, name: str = "Control room") -> notifications.IssuedWebhook:
    with transaction.atomic():
        issued = notifications.create_webhook(team.scope(Role.ADMIN), name=name, url=url)
    register_canary(issued.secret)
    return issued


class Clock:
    def __init__(self) -> None:
        self.now = timezone.now()

    def __call__(self) -> datetime:
        return self.now


@dataclass
class FakeTransport:
    statuses: list[int | None]
    calls: list[Outgoing] = field(default_factory=list)

    def __call__(self, request: Outgoing) -> Outcome:
        self.calls.append(request)
        status = self.statuses.pop(0) if self.statuses else 204
        error = "" if status is not None and status < 300 else f"HTTP {status}"
        return Outcome(status, 12, error=error)


def public_resolver(host: str, port: int) -> list[str]:
    return ["93.184.215.14"]


def queue_ping(team: Team, webhook: Webhook) -> Delivery:
    with transaction.atomic():
        return notifications.send_test(team.scope(Role.ADMIN), webhook.pk)


# -- delivery end to end -------------------------------------------------------------------------


@pytest.mark.usefixtures("notify", "loopback", "immediate_tasks")
def test_alarm_is_delivered_to_a_real_receiver_that_verifies_the_creation_secret(
    team: Team,
    sender: Sender,
    receiver: tuple[str, type[Receiver]],
    django_capture_on_commit_callbacks: Callbacks,
) -> None:
    url, seen = receiver
    issued = add_webhook(team, url)
    Receiver.secret = issued.secret  # what the admin pasted into the receiver at creation
    with django_capture_on_commit_callbacks(execute=True):
        sender.send(50.0, 85.0)  # crosses "high": an alarm opens
    (got,) = seen.seen
    assert got.valid, "the receiver could not verify the signature with the creation secret"
    alarm = Alarm.objects.get()
    delivery = Delivery.objects.get()
    assert got.headers[webhooks.EVENT_HEADER] == "alarm.opened"
    assert got.headers[webhooks.DELIVERY_HEADER] == str(delivery.pk)
    assert got.body == bytes(delivery.body)  # the stored bytes are what was signed and sent
    payload = json.loads(got.body)
    assert payload["event"] == "alarm.opened"
    assert payload["delivery_id"] == str(delivery.pk)
    assert payload["alarm"]["id"] == str(alarm.pk)
    assert payload["alarm"]["organisation_id"] == str(team.org.pk)
    assert payload["alarm"]["asset"] == {"id": str(sender.plant.asset.pk), "tag": "FIT-notify"}
    assert payload["alarm"]["point"]["key"] == sender.plant.points[0].key
    assert (payload["alarm"]["level"], payload["alarm"]["severity"]) == ("high", "warning")
    assert payload["alarm"]["value"] == 85.0
    assert payload["alarm"]["state"] == "open"
    text = got.body.decode()
    assert not [u.email for u in team.users.values() if u.email in text], "an e-mail leaked"
    delivery.refresh_from_db()
    assert delivery.state == DeliveryState.DELIVERED
    assert delivery.attempts == 1
    (attempt,) = delivery.attempt_log.all()
    assert attempt.status_code == 204
    assert attempt.error == ""


def test_tampered_body_and_old_timestamp_are_refused_by_verify(
    team: Team, receiver: tuple[str, type[Receiver]], loopback: None
) -> None:
    url, seen = receiver
    issued = add_webhook(team, url)
    Receiver.secret = issued.secret
    delivery = queue_ping(team, issued.webhook)
    notifications.attempt_delivery(delivery.pk)
    (got,) = seen.seen
    assert got.valid
    header = got.headers[webhooks.SIGNATURE_HEADER]
    signed_at = int(header.split(",")[0].removeprefix("t="))
    tampered = got.body.replace(b'"ping"', b'"alarm.cleared"')
    assert tampered != got.body
    assert not webhooks.verify(issued.secret, header, tampered, now=signed_at)
    assert not webhooks.verify(issued.secret, header, got.body, now=signed_at + 301)
    assert webhooks.verify(issued.secret, header, got.body, now=signed_at + 299)


def test_receiver_answering_500_then_200_gets_two_attempts_and_the_delivery_is_delivered(
    team: Team, receiver: tuple[str, type[Receiver]], loopback: None
) -> None:
    url, seen = receiver
    issued = add_webhook(team, url)
    Receiver.secret, Receiver.answers = issued.secret, [500, 200]
    delivery = queue_ping(team, issued.webhook)
    clock = Clock()
    after_first = notifications.attempt_delivery(delivery.pk, clock=clock)
    assert after_first is not None
    assert after_first.state == DeliveryState.PENDING
    assert after_first.next_attempt_at is not None
    wait = (after_first.next_attempt_at - clock.now).total_seconds()
    assert RETRY_DELAYS[0] * 0.8 <= wait <= RETRY_DELAYS[0] * 1.2
    clock.now += timedelta(seconds=wait - 1)
    assert notifications.deliver_due(clock=clock) == 0, "retried before it was due"
    clock.now += timedelta(seconds=1)
    assert notifications.deliver_due(clock=clock) == 1
    delivery.refresh_from_db()
    assert delivery.state == DeliveryState.DELIVERED
    assert delivery.attempts == 2
    assert [a.status_code for a in delivery.attempt_log.all()] == [500, 200]
    assert [a.error for a in delivery.attempt_log.all()] == ["HTTP 500", ""]
    # Same bytes and delivery id on the retry (receivers deduplicate), each signed afresh.
    assert [r.valid for r in seen.seen] == [True, True]
    assert seen.seen[0].body == seen.seen[1].body
    assert {r.headers[webhooks.DELIVERY_HEADER] for r in seen.seen} == {str(delivery.pk)}


def test_always_failing_receiver_is_given_up_after_max_attempts_on_the_backoff_schedule(
    team: Team, loopback: None
) -> None:
    issued = add_webhook(team, "http://127.0.0.1:9/hook")
    delivery = queue_ping(team, issued.webhook)
    transport = FakeTransport([503] * (MAX_ATTEMPTS + 2))
    clock = Clock()
    waits = []
    for attempt in range(1, MAX_ATTEMPTS + 1):
        assert notifications.deliver_due(transport=transport, clock=clock, rng=random.Random(1))  # noqa: S311 -- reproducible jitter
        delivery.refresh_from_db()
        assert delivery.attempts == attempt
        if attempt < MAX_ATTEMPTS:
            assert delivery.state == DeliveryState.PENDING
            assert delivery.next_attempt_at is not None
            waits.append((delivery.next_attempt_at - clock.now).total_seconds())
            clock.now = delivery.next_attempt_at
    assert len(waits) == len(RETRY_DELAYS)
    for wait, base in zip(waits, RETRY_DELAYS, strict=True):
        assert base * 0.8 <= wait <= base * 1.2
    assert waits == sorted(waits), "the backoff must grow"
    assert delivery.state == DeliveryState.FAILED
    assert delivery.next_attempt_at is None
    assert delivery.finished_at == clock.now
    assert delivery.attempt_log.count() == MAX_ATTEMPTS
    clock.now += timedelta(days=1)
    assert notifications.deliver_due(transport=transport, clock=clock) == 0
    assert len(transport.calls) == MAX_ATTEMPTS


def test_second_worker_does_not_attempt_a_delivery_already_under_way(
    team: Team, loopback: None
) -> None:
    issued = add_webhook(team, "http://127.0.0.1:9/hook")
    delivery = queue_ping(team, issued.webhook)
    during: list[Delivery | None] = []

    def slow_receiver(request: Outgoing) -> Outcome:
        # Meanwhile the periodic sweep (or a second replica) looks at the same delivery.
        during.append(notifications.attempt_delivery(delivery.pk, transport=slow_receiver))
        return Outcome(204, 3)

    done = notifications.attempt_delivery(delivery.pk, transport=slow_receiver)
    assert during == [None]
    assert done is not None
    assert done.state == DeliveryState.DELIVERED
    assert done.attempt_log.count() == 1


def test_url_that_resolves_privately_at_delivery_time_is_not_contacted(
    team: Team, settings: Any
) -> None:
    with transaction.atomic():
        issued = notifications.create_webhook(
            team.scope(Role.ADMIN),
            name="Rebinding",
            url="https://hooks.customer.example/in",
            resolver=public_resolver,
        )
    register_canary(issued.secret)
    delivery = queue_ping(team, issued.webhook)
    transport = FakeTransport([204])
    # DNS rebinding: the name now points at the cloud metadata service.
    done = notifications.attempt_delivery(
        delivery.pk, transport=transport, resolver=lambda host, port: ["169.254.169.254"]
    )
    assert transport.calls == []
    assert done is not None
    (attempt,) = done.attempt_log.all()
    assert attempt.status_code is None
    assert attempt.error.startswith("Not sent:")
    assert done.state == DeliveryState.PENDING  # retried later: the name may be fixed


# -- SSRF at creation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8443/hook",
        "https://127.0.0.1/hook",
        "https://10.0.0.1/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::1]/hook",
        "http://93.184.215.14/hook",
        "ftp://93.184.215.14/hook",
        "https://user:pass@93.184.215.14/hook",
    ],
)
def test_ssrf_webhook_to_private_or_plain_http_target_is_refused(team: Team, url: str) -> None:
    client = _client(team, Role.ADMIN)
    response = client.post(
        f"{team.api}/webhooks", {"name": "x", "url": url}, content_type="application/json"
    )
    assert response.status_code == 422, response.content
    assert response.json()["code"] == "webhook_url_refused"
    assert not Webhook.objects.exists()
    assert not AuditEntry.objects.filter(action="webhook.created").exists()


def test_loopback_is_refused_unless_the_test_only_setting_allows_it(
    team: Team, settings: Any
) -> None:
    assert not getattr(settings, notifications.ALLOW_LOOPBACK_SETTING, False)
    with pytest.raises(webhooks.WebhookUrlRefusedError):
        notifications.create_webhook(
            team.scope(Role.ADMIN), name="x", url="http://127.0.0.1:9/hook"
        )
    settings.WEBHOOKS_ALLOW_LOOPBACK = True
    with transaction.atomic():
        issued = notifications.create_webhook(
            team.scope(Role.ADMIN), name="x", url="http://127.0.0.1:9/hook"
        )
    register_canary(issued.secret)
    # Even then, private networks stay closed.
    with pytest.raises(webhooks.WebhookUrlRefusedError):
        notifications.create_webhook(team.scope(Role.ADMIN), name="y", url="http://10.0.0.1/")


# -- secrets -------------------------------------------------------------------------------------


def _client(team: Team, role: Role) -> SecureClient:
    client = SecureClient(HTTP_USER_AGENT="notifications-test", REMOTE_ADDR="127.0.0.1")
    client.force_login(team.users[role])
    return client


def test_secret_appears_only_in_the_create_and_rotate_responses(team: Team, loopback: None) -> None:
    admin = _client(team, Role.ADMIN)
    created = admin.post(
        f"{team.api}/webhooks",
        {"name": "Control room", "url": "http://127.0.0.1:9/hook"},
        content_type="application/json",
    )
    assert created.status_code == 201
    secret = register_canary(created.json()["secret"])
    assert secret.startswith("flw_")
    hook = created.json()["id"]
    queue_ping(team, Webhook.objects.get())
    rotated = admin.post(f"{team.api}/webhooks/{hook}/rotate-secret")
    assert rotated.status_code == 200
    new_secret = register_canary(rotated.json()["secret"])
    assert new_secret != secret
    pages = [
        f"{team.api}/webhooks",
        f"{team.api}/webhooks/{hook}",
        f"{team.api}/webhooks/{hook}/deliveries",
        reverse("notifications:index", kwargs={"org_id": team.org.pk}),
        reverse("notifications:webhook", kwargs={"org_id": team.org.pk, "webhook_id": hook}),
    ]
    for path in pages:
        response = admin.get(path)
        assert response.status_code == 200, path
        text = response.content.decode()
        assert secret not in text, f"secret shown by {path}"
        assert new_secret not in text, f"rotated secret shown by {path}"
    assert "secret" not in admin.get(f"{team.api}/webhooks/{hook}").json()
    for entry in AuditEntry.objects.filter(chain=str(team.org.pk)):
        stored = json.dumps([entry.before, entry.after, entry.target_id, entry.client])
        assert secret not in stored, entry.action
        assert new_secret not in stored, entry.action
    actions = set(AuditEntry.objects.values_list("action", flat=True))
    assert {"webhook.created", "webhook.secret_rotated", "webhook.tested"} <= actions


def test_rotation_invalidates_the_old_secret_for_signing(
    team: Team, receiver: tuple[str, type[Receiver]], loopback: None
) -> None:
    url, seen = receiver
    issued = add_webhook(team, url)
    delivery = queue_ping(team, issued.webhook)  # queued before the rotation
    with transaction.atomic():
        rotated = notifications.rotate_secret(team.scope(Role.ADMIN), issued.webhook.pk)
    register_canary(rotated.secret)
    Receiver.secret = issued.secret  # a receiver that still has the old secret
    Receiver.answers = [204]
    notifications.attempt_delivery(delivery.pk)
    (got,) = seen.seen
    assert not got.valid, "signed with the rotated-out secret"
    header = got.headers[webhooks.SIGNATURE_HEADER]
    assert webhooks.verify(rotated.secret, header, got.body, now=time.time())


# -- who may ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", [Role.VIEWER, Role.ENGINEER])
def test_viewer_and_engineer_cannot_manage_or_read_webhooks(team: Team, role: Role) -> None:
    hook = Webhook.objects.create(
        organisation=team.org, name="Existing", url="https://93.184.215.14/h", secret="flw_x"
    )
    client = _client(team, role)
    calls = [
        ("post", f"{team.api}/webhooks", {"name": "x", "url": "https://93.184.215.14/h"}),
        ("get", f"{team.api}/webhooks", None),
        ("get", f"{team.api}/webhooks/{hook.pk}", None),
        ("patch", f"{team.api}/webhooks/{hook.pk}", {"enabled": False}),
        ("post", f"{team.api}/webhooks/{hook.pk}/rotate-secret", None),
        ("post", f"{team.api}/webhooks/{hook.pk}/test", None),
        ("get", f"{team.api}/webhooks/{hook.pk}/deliveries", None),
        ("delete", f"{team.api}/webhooks/{hook.pk}", None),
    ]
    for method, path, body in calls:
        kwargs = {"data": body, "content_type": "application/json"} if body else {}
        response = getattr(client, method)(path, **kwargs)
        assert response.status_code == 403, f"{method} {path}: {response.status_code}"
        assert response.json()["code"] == "permission_denied"
    hook.refresh_from_db()
    assert (hook.enabled, hook.secret) == (True, "flw_x")
    assert not Delivery.objects.exists()
    page = _client(team, role).get(
        reverse("notifications:webhook", kwargs={"org_id": team.org.pk, "webhook_id": hook.pk})
    )
    assert page.status_code == 403


def test_cross_tenant_webhook_is_404(team: Team, rival: Team) -> None:
    theirs = Webhook.objects.create(
        organisation=rival.org, name="Theirs", url="https://93.184.215.14/r", secret="flw_r"
    )
    client = _client(team, Role.OWNER)
    for path in (
        f"{team.api}/webhooks/{theirs.pk}",
        f"{rival.api}/webhooks/{theirs.pk}",
        f"{team.api}/webhooks/{theirs.pk}/deliveries",
    ):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "Theirs" not in response.content.decode()
    response = client.post(f"{team.api}/webhooks/{theirs.pk}/rotate-secret")
    assert response.status_code == 404
    with pytest.raises(NotFoundError):
        notifications.delete_webhook(team.scope(Role.OWNER), theirs.pk)
    theirs.refresh_from_db()
    assert theirs.secret == "flw_r"


# -- e-mails -------------------------------------------------------------------------------------


def _subscribe(team: Team, role: Role, *, critical_only: bool = False) -> None:
    with transaction.atomic():
        notifications.set_alarm_emails(
            team.scope(role), subscribed=True, critical_only=critical_only
        )


@pytest.mark.usefixtures("notify", "immediate_tasks")
def test_alarm_emails_go_to_subscribed_members_only_and_respect_critical_only(
    team: Team,
    sender: Sender,
    smtp_server: tuple[_Collector, int],
    make_user: MakeUser,
    django_capture_on_commit_callbacks: Callbacks,
) -> None:
    collector, port = smtp_server
    _subscribe(team, Role.VIEWER)
    _subscribe(team, Role.ENGINEER, critical_only=True)
    leaver = make_user("leaver@acme-water.example")
    membership = Membership.objects.create(organisation=team.org, user=leaver, role=Role.VIEWER)
    with transaction.atomic():
        notifications.set_alarm_emails(
            _scope_of(team, leaver), subscribed=True, critical_only=False
        )
    membership.delete()  # removed from the organisation after subscribing
    smtp = {
        "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        "EMAIL_HOST": "127.0.0.1",
        "EMAIL_PORT": port,
        "EMAIL_USE_TLS": False,
        "EMAIL_USE_SSL": False,
        "EMAIL_HOST_USER": "",
        "EMAIL_HOST_PASSWORD": "",
        "EMAIL_TIMEOUT": 10,
    }
    with override_settings(**smtp):
        with django_capture_on_commit_callbacks(execute=True):
            sender.send(50.0, 85.0)  # "high": a warning
        warning_to = [rcpt for _, rcpt in collector.envelopes]
        assert warning_to == [[team.users[Role.VIEWER].email]]
        with django_capture_on_commit_callbacks(execute=True):
            sender.send(95.0)  # "high high": escalated to critical
        critical_to = sorted(rcpt[0] for _, rcpt in collector.envelopes[1:])
        assert all(len(rcpt) == 1 for _, rcpt in collector.envelopes), "one person per message"
        assert critical_to == sorted(
            [team.users[Role.VIEWER].email, team.users[Role.ENGINEER].email]
        )
        with django_capture_on_commit_callbacks(execute=True):
            sender.send(50.0)  # back to normal: cleared, not mailed
        assert len(collector.messages) == 3
    every = " ".join(str(m["To"]) for m in collector.messages)
    assert leaver.email not in every
    assert team.users[Role.OWNER].email not in every
    alarm = Alarm.objects.get()
    message = collector.messages[-1]
    assert "CRITICAL alarm escalated" in str(message["Subject"])
    text = _text_of(message)
    link = reverse("alarms:detail", kwargs={"org_id": team.org.pk, "alarm_id": alarm.pk})
    assert f"https://localhost:8443{link}" in text
    assert "FIT-notify" in text


def _scope_of(team: Team, user: User) -> Scope:
    return access.resolve(Principal(user, "session"), team.org.pk)


@pytest.mark.usefixtures("notify", "loopback", "immediate_tasks")
def test_rolled_back_alarm_sends_nothing(
    team: Team,
    sender: Sender,
    receiver: tuple[str, type[Receiver]],
    mailoutbox: list[Any],
    django_capture_on_commit_callbacks: Callbacks,
) -> None:
    url, seen = receiver
    add_webhook(team, url)
    _subscribe(team, Role.VIEWER)
    queued_inside: list[int] = []

    def failing_batch() -> None:
        with transaction.atomic():
            sender.send(50.0, 95.0)
            queued_inside.append(Delivery.objects.count())
            raise RuntimeError("the batch fails after the alarm opened")

    with (
        django_capture_on_commit_callbacks(execute=True) as callbacks,
        pytest.raises(RuntimeError),
    ):
        failing_batch()
    assert queued_inside == [1]  # queued inside the transaction…
    assert callbacks == []
    assert not Alarm.objects.exists()
    assert not Delivery.objects.exists()  # …and gone with it
    assert seen.seen == []
    assert mailoutbox == []


def test_unknown_event_is_a_programming_error(team: Team, plant: Plant) -> None:
    alarm = Alarm.objects.create(
        organisation=team.org,
        asset=plant.asset,
        kind="limit",
        level="high",
        severity="warning",
        message="m",
        raised_at=timezone.now(),
    )
    with pytest.raises(ValueError, match="unknown alarm event"):
        notifications.queue_alarm_event(alarm, "alarm.deleted")


def test_alarm_email_choice_is_ones_own_and_audited(team: Team) -> None:
    viewer = _client(team, Role.VIEWER)
    path = f"{team.api}/alarm-emails"
    assert viewer.get(path).json() == {"subscribed": False, "critical_only": False}
    response = viewer.put(
        path, {"subscribed": True, "critical_only": True}, content_type="application/json"
    )
    assert response.status_code == 200
    assert response.json() == {"subscribed": True, "critical_only": True}
    assert viewer.get(path).json() == {"subscribed": True, "critical_only": True}
    assert _client(team, Role.OWNER).get(path).json()["subscribed"] is False
    assert AuditEntry.objects.filter(action="alarm_emails.subscribed").count() == 1
    viewer.put(path, {"subscribed": False}, content_type="application/json")
    assert viewer.get(path).json() == {"subscribed": False, "critical_only": False}
    assert AuditEntry.objects.filter(action="alarm_emails.unsubscribed").count() == 1


# -- webhook life cycle --------------------------------------------------------------------------


def test_disabled_webhook_sends_nothing(
    team: Team, sender: Sender, notify: None, loopback: None
) -> None:
    issued = add_webhook(team, "http://127.0.0.1:9/hook")
    pending = queue_ping(team, issued.webhook)
    with transaction.atomic():
        notifications.update_webhook(team.scope(Role.ADMIN), issued.webhook.pk, enabled=False)
    sender.send(50.0, 95.0)
    assert list(Delivery.objects.values_list("pk", flat=True)) == [pending.pk]  # no new event
    with pytest.raises(WebhookStateError):
        queue_ping(team, issued.webhook)
    transport = FakeTransport([204])
    assert notifications.attempt_delivery(pending.pk, transport=transport) is None
    assert transport.calls == []
    pending.refresh_from_db()
    assert pending.state == DeliveryState.FAILED
    assert "disabled" in pending.attempt_log.get().error


def test_failed_delivery_can_be_redelivered_once_failed_only(
    team: Team, receiver: tuple[str, type[Receiver]], loopback: None
) -> None:
    url, seen = receiver
    issued = add_webhook(team, url)
    Receiver.secret = issued.secret
    delivery = queue_ping(team, issued.webhook)
    scope = team.scope(Role.ADMIN)
    with pytest.raises(WebhookStateError):
        notifications.redeliver(scope, issued.webhook.pk, delivery.pk)  # still pending
    Delivery.objects.filter(pk=delivery.pk).update(
        state=DeliveryState.FAILED, attempts=MAX_ATTEMPTS, finished_at=timezone.now()
    )
    DeliveryAttempt.objects.create(delivery=delivery, status_code=500, error="HTTP 500")
    response = _client(team, Role.ADMIN).post(
        f"{team.api}/webhooks/{issued.webhook.pk}/deliveries/{delivery.pk}/redeliver"
    )
    assert response.status_code == 202
    assert response.json()["state"] == "pending"
    done = notifications.attempt_delivery(delivery.pk)
    assert done is not None
    assert done.state == DeliveryState.DELIVERED
    assert done.attempts == 1
    assert [a.status_code for a in done.attempt_log.all()] == [500, 204]  # history kept
    assert [r.valid for r in seen.seen] == [True]
    listed = _client(team, Role.ADMIN).get(f"{team.api}/webhooks/{issued.webhook.pk}/deliveries")
    (item,) = listed.json()["items"]
    assert [a["status_code"] for a in item["attempt_log"]] == [500, 204]
    assert {"error", "duration_ms", "at"} <= set(item["attempt_log"][0])


def test_pages_show_the_secret_once_and_list_the_delivery_history(
    team: Team, loopback: None
) -> None:
    admin = _client(team, Role.ADMIN)
    index = reverse("notifications:index", kwargs={"org_id": team.org.pk})
    response = admin.post(
        reverse("notifications:webhook-add", kwargs={"org_id": team.org.pk}),
        {"name": "Pager", "url": "http://127.0.0.1:9/pager"},
    )
    assert response.status_code == 200
    webhook = Webhook.objects.get()
    secret = register_canary(webhook.secret)
    assert secret in response.content.decode()
    detail = reverse(
        "notifications:webhook", kwargs={"org_id": team.org.pk, "webhook_id": webhook.pk}
    )
    assert secret not in admin.get(detail).content.decode()
    assert "Pager" in admin.get(index).content.decode()
    response = admin.post(
        reverse(
            "notifications:webhook-test", kwargs={"org_id": team.org.pk, "webhook_id": webhook.pk}
        )
    )
    assert response.status_code == 302
    delivery = Delivery.objects.get()
    notifications.attempt_delivery(delivery.pk, transport=FakeTransport([None]))
    page = admin.get(detail).content.decode()
    assert "ping" in page
    assert "no answer" in page
    refused = admin.post(
        reverse("notifications:webhook-add", kwargs={"org_id": team.org.pk}),
        {"name": "Metadata", "url": "http://169.254.169.254/latest/"},
    )
    assert refused.status_code == 422
    assert Webhook.objects.count() == 1
    viewer_page = _client(team, Role.VIEWER).get(index).content.decode()
    assert "Pager" not in viewer_page
    assert 'name="choice"' in viewer_page
    response = _client(team, Role.VIEWER).post(
        reverse("notifications:emails", kwargs={"org_id": team.org.pk}), {"choice": "critical"}
    )
    assert response.status_code == 302
    viewer_scope = team.scope(Role.VIEWER)
    assert notifications.alarm_emails_of(viewer_scope) == notifications.AlarmEmails(True, True)


def test_old_finished_deliveries_are_pruned_and_the_sweep_is_periodic(team: Team) -> None:
    assert notification_tasks.deliver_due_webhooks in [task for _, task in PERIODIC]
    hook = Webhook.objects.create(
        organisation=team.org, name="h", url="https://93.184.215.14/h", secret="flw_p"
    )
    now = timezone.now()
    old, recent = (
        Delivery.objects.create(
            organisation=team.org,
            webhook=hook,
            event="ping",
            body=b"{}",
            state=DeliveryState.DELIVERED,
            finished_at=now - age,
        )
        for age in (timedelta(days=31), timedelta(days=1))
    )
    assert notifications.prune_deliveries(now) == 1
    assert list(Delivery.objects.values_list("pk", flat=True)) == [recent.pk]
    assert old.pk is not None


def test_support_scope_without_membership_cannot_subscribe(team: Team) -> None:
    # Standing without a role (e.g. a support grant) has no own address in the organisation.
    scope = team.scope(Role.VIEWER)
    with pytest.raises(PermissionDeniedError):
        notifications.set_alarm_emails(replace(scope, role=None), subscribed=True)
