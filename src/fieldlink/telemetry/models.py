"""Persistent state of the telemetry context.

The samples themselves are not Django models: they live in tables shaped for the hot path
(see ``fieldlink.telemetry.storage``), created by raw SQL in the migrations. Django models keep
what is small and relational: the compact series id of each measuring point, the latest value
per series, and the batch receipts that make ingestion exactly-once.
"""

from __future__ import annotations

import uuid
from typing import Any, ClassVar

from django.db import models
from django.db.models import Q
from django.utils import timezone

from fieldlink.accounts.models import Organisation, User
from fieldlink.devices.models import Asset, EdgeDevice, MeasuringPoint


class Series(models.Model):
    """A measuring point's compact integer id, used in the sample tables instead of its UUID."""

    organisation_lookup: ClassVar[str] = "organisation"

    id = models.AutoField(primary_key=True)
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="+")
    point = models.OneToOneField(MeasuringPoint, on_delete=models.CASCADE, related_name="series")
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"series {self.pk} of {self.point_id}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        # A series belongs to its point's organisation; callers need not repeat it.
        if getattr(self, "organisation_id", None) is None:
            self.organisation_id = self.point.organisation_id
        super().save(*args, **kwargs)


class LatestValue(models.Model):
    """The newest sample of each series (by device timestamp), kept at ingestion.

    A table of its own because finding the newest row per series in the time-ordered sample
    tables would be a scan; here it is one primary-key read per series.
    """

    organisation_lookup: ClassVar[str] = "series__organisation"

    series = models.OneToOneField(
        Series,
        primary_key=True,
        on_delete=models.CASCADE,
        related_name="latest",
        db_column="series",
    )
    ts = models.BigIntegerField()  # UTC milliseconds
    value = models.FloatField()
    quality = models.SmallIntegerField()

    def __str__(self) -> str:
        return f"{self.series_id}@{self.ts}"


class BatchReceipt(models.Model):
    """One stored batch of a device: the idempotency key (device, sequence).

    Written in the same transaction as the batch's samples, so a batch is either stored with its
    receipt or not at all; a replay finds the receipt and stores nothing. Receipts at or below
    the device's ``acked_sequence`` are only kept for the record and may be pruned: every
    sequence up to it is known to be stored.
    """

    organisation_lookup: ClassVar[str] = "organisation"

    id = models.BigAutoField(primary_key=True)
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="+")
    device = models.ForeignKey(EdgeDevice, on_delete=models.CASCADE, related_name="+")
    sequence = models.BigIntegerField()
    value_count = models.PositiveIntegerField()
    backlog = models.BooleanField(default=False)
    received_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints: ClassVar[list[models.BaseConstraint]] = [
            models.UniqueConstraint(fields=["device", "sequence"], name="batch_receipt_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.device_id}#{self.sequence}"


# -- thresholds and alarms ----------------------------------------------------------------------


class Threshold(models.Model):
    """The limits of one measuring point and where its evaluation stands.

    ``state`` is the level the hysteresis core (``telemetry.alarms``) last arrived at, and
    ``state_ts`` the device time of the sample that put it there: a late (backfill) sample older
    than that is stored but does not move the state, so history cannot reopen today's alarms.
    """

    organisation_lookup: ClassVar[str] = "organisation"

    point = models.OneToOneField(
        MeasuringPoint, primary_key=True, on_delete=models.CASCADE, related_name="threshold"
    )
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="+")
    low_low = models.FloatField(null=True, blank=True)
    low = models.FloatField(null=True, blank=True)
    high = models.FloatField(null=True, blank=True)
    high_high = models.FloatField(null=True, blank=True)
    hysteresis = models.FloatField(default=0.0)
    state = models.CharField(max_length=16, default="normal")
    state_ts = models.BigIntegerField(default=0)  # UTC ms of the last evaluated sample
    updated_at = models.DateTimeField(default=timezone.now)
    updated_by = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    def __str__(self) -> str:
        return f"thresholds of {self.point_id}"


class AlarmKind(models.TextChoices):
    LIMIT = "limit", "Limit"
    HEALTH = "health", "Device health"


class AlarmState(models.TextChoices):
    OPEN = "open", "Open"
    ACKNOWLEDGED = "acknowledged", "Acknowledged"
    CLEARED = "cleared", "Cleared"


class Severity(models.TextChoices):
    CRITICAL = "critical", "Critical"
    WARNING = "warning", "Warning"


class Alarm(models.Model):
    """One alarm: a limit crossing of a point, or an asset's health leaving "ok".

    open → acknowledged → cleared, each step with who and when. An alarm is *active* until the
    condition goes away (``cleared_at``); acknowledging says a person has seen it. A condition
    may clear before anyone acknowledged it: the alarm is then cleared unacknowledged, and stays
    visible as such in the history. At most one active alarm per point (limits) and per asset
    (health) — escalation updates the level of the active one instead of opening another.
    """

    organisation_lookup: ClassVar[str] = "organisation"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="+")
    asset = models.ForeignKey(Asset, on_delete=models.CASCADE, related_name="alarms")
    point = models.ForeignKey(
        MeasuringPoint, null=True, blank=True, on_delete=models.CASCADE, related_name="alarms"
    )
    kind = models.CharField(max_length=8, choices=AlarmKind.choices)
    level = models.CharField(max_length=24)  # a limit level or an NE 107 status
    severity = models.CharField(max_length=8, choices=Severity.choices)
    state = models.CharField(max_length=16, choices=AlarmState.choices, default=AlarmState.OPEN)
    message = models.CharField(max_length=300)
    value = models.FloatField(null=True, blank=True)  # the value that raised or escalated it
    raised_at = models.DateTimeField()  # device time of the crossing / report
    active = models.BooleanField(default=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    cleared_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering: ClassVar[list[str]] = ["-raised_at"]
        indexes: ClassVar[list[models.Index]] = [
            models.Index(fields=["organisation", "state", "-raised_at"], name="alarm_org_state"),
            models.Index(fields=["asset", "-raised_at"], name="alarm_asset_time"),
        ]
        constraints: ClassVar[list[models.BaseConstraint]] = [
            models.UniqueConstraint(
                fields=["point"],
                condition=Q(active=True, kind="limit"),
                name="alarm_one_active_per_point",
            ),
            models.UniqueConstraint(
                fields=["asset"],
                condition=Q(active=True, kind="health"),
                name="alarm_one_active_health_per_asset",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} alarm {self.level} on {self.asset_id} ({self.state})"


class AlarmSubscription(models.Model):
    """A member who wants alarm e-mails from an organisation (opt-in, per member)."""

    organisation_lookup: ClassVar[str] = "organisation"

    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="+")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="+")
    critical_only = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints: ClassVar[list[models.BaseConstraint]] = [
            models.UniqueConstraint(fields=["organisation", "user"], name="alarm_sub_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.user_id} subscribed to {self.organisation_id}"


class Webhook(models.Model):
    """An HTTPS endpoint that receives alarm events, signed with HMAC-SHA256 (``webhooks``).

    The secret is kept in clear: signing needs it, and a hash could not sign. It is shown to the
    admin once at creation or rotation and never returned by the API afterwards.
    """

    organisation_lookup: ClassVar[str] = "organisation"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="+")
    name = models.CharField(max_length=100)
    url = models.URLField(max_length=500)
    secret = models.CharField(max_length=80)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering: ClassVar[list[str]] = ["name"]

    def __str__(self) -> str:
        return self.name


class DeliveryState(models.TextChoices):
    PENDING = "pending", "Pending"
    DELIVERED = "delivered", "Delivered"
    FAILED = "failed", "Failed"  # gave up after the last retry


class Delivery(models.Model):
    """One event for one webhook, with its attempts: the delivery history an admin sees."""

    organisation_lookup: ClassVar[str] = "organisation"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="+")
    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    alarm = models.ForeignKey(
        Alarm, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    event = models.CharField(max_length=40)  # e.g. "alarm.opened"
    body = models.BinaryField()  # the exact bytes signed and sent, resent unchanged on retry
    state = models.CharField(
        max_length=12, choices=DeliveryState.choices, default=DeliveryState.PENDING
    )
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering: ClassVar[list[str]] = ["-created_at"]
        indexes: ClassVar[list[models.Index]] = [
            models.Index(fields=["state", "next_attempt_at"], name="delivery_due"),
        ]

    def __str__(self) -> str:
        return f"{self.event} to {self.webhook_id} ({self.state})"


class DeliveryAttempt(models.Model):
    organisation_lookup: ClassVar[str] = "delivery__organisation"

    id = models.BigAutoField(primary_key=True)
    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="attempt_log")
    at = models.DateTimeField(default=timezone.now)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.CharField(max_length=200, blank=True)
    duration_ms = models.PositiveIntegerField(default=0)

    class Meta:
        ordering: ClassVar[list[str]] = ["at"]

    def __str__(self) -> str:
        return f"attempt of {self.delivery_id} at {self.at:%H:%M:%S}"
