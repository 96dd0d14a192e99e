"""Persistent state of the devices context: the plant hierarchy, assets, measuring points,
their NE 107 health, and edge devices.

Every model belongs to one organisation and declares ``organisation_lookup`` so that
``fieldlink.accounts.access.Scope`` can narrow it; nothing reads these tables unscoped except the
edge ingestion path, which starts from the device credential.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import ClassVar, Final

from django.db import models
from django.utils import timezone

from fieldlink.accounts.models import Organisation
from fieldlink.devices.units import UNIT_CHOICES


class Site(models.Model):
    organisation_lookup: ClassVar[str] = "organisation"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="+")
    name = models.CharField(max_length=100)
    description = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering: ClassVar[list[str]] = ["name"]
        constraints: ClassVar[list[models.BaseConstraint]] = [
            models.UniqueConstraint(fields=["organisation", "name"], name="site_name_unique"),
        ]

    def __str__(self) -> str:
        return self.name


class Area(models.Model):
    """A part of a site; areas nest (building → hall → line)."""

    organisation_lookup: ClassVar[str] = "organisation"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="+")
    site = models.ForeignKey(Site, on_delete=models.CASCADE, related_name="areas")
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="children"
    )
    name = models.CharField(max_length=100)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering: ClassVar[list[str]] = ["name"]

    def __str__(self) -> str:
        return self.name


class Health(models.TextChoices):
    """NAMUR NE 107 status signals (plus "unknown" before the first report)."""

    OK = "ok", "OK"
    FAILURE = "failure", "Failure"
    FUNCTION_CHECK = "function_check", "Function check"
    OUT_OF_SPECIFICATION = "out_of_specification", "Out of specification"
    MAINTENANCE_REQUIRED = "maintenance_required", "Maintenance required"
    UNKNOWN = "unknown", "Unknown"


class Asset(models.Model):
    """An instrument in the field."""

    organisation_lookup: ClassVar[str] = "organisation"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="+")
    # RESTRICT, not PROTECT: a site or area holding assets cannot be deleted on its own, but an
    # organisation's purge deletes all three together.
    site = models.ForeignKey(Site, on_delete=models.RESTRICT, related_name="assets")
    area = models.ForeignKey(
        Area, null=True, blank=True, on_delete=models.RESTRICT, related_name="assets"
    )
    tag = models.CharField(max_length=64)  # the plant's own name, e.g. "FIT-101"
    manufacturer = models.CharField(max_length=100, blank=True)
    product_code = models.CharField(max_length=100, blank=True)
    serial_number = models.CharField(max_length=100, blank=True)
    firmware_version = models.CharField(max_length=50, blank=True)
    description = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    # Current NE 107 health; its history is HealthChange.
    health = models.CharField(max_length=24, choices=Health.choices, default=Health.UNKNOWN)
    health_code = models.CharField(max_length=32, blank=True)
    health_cause = models.CharField(max_length=500, blank=True)
    health_remedy = models.CharField(max_length=500, blank=True)
    health_changed_at = models.DateTimeField(null=True, blank=True)
    # Discovery: the tag the edge device announced and still uses in its point names. An admin
    # may rename the asset (``tag``) without breaking the device's uplink, or hide it.
    edge_ref = models.CharField(max_length=64, blank=True)
    discovered_by = models.ForeignKey(
        "EdgeDevice", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    hidden = models.BooleanField(default=False)

    class Meta:
        ordering: ClassVar[list[str]] = ["tag"]
        constraints: ClassVar[list[models.BaseConstraint]] = [
            models.UniqueConstraint(fields=["organisation", "tag"], name="asset_tag_unique"),
        ]

    def __str__(self) -> str:
        return self.tag


class HealthChange(models.Model):
    organisation_lookup: ClassVar[str] = "organisation"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="+")
    asset = models.ForeignKey(Asset, on_delete=models.CASCADE, related_name="health_changes")
    health = models.CharField(max_length=24, choices=Health.choices)
    code = models.CharField(max_length=32, blank=True)
    cause = models.CharField(max_length=500, blank=True)
    remedy = models.CharField(max_length=500, blank=True)
    at = models.DateTimeField(default=timezone.now)  # when the instrument reported it (UTC)
    source = models.CharField(max_length=32, blank=True)  # "device", "user", …

    class Meta:
        ordering: ClassVar[list[str]] = ["-at"]
        indexes: ClassVar[list[models.Index]] = [
            models.Index(fields=["asset", "-at"], name="health_asset_time"),
        ]

    def __str__(self) -> str:
        return f"{self.asset_id} {self.health} at {self.at:%Y-%m-%d %H:%M}"


class MeasuringPoint(models.Model):
    """One measured quantity of an asset, e.g. ``volume_flow`` in m3/h."""

    organisation_lookup: ClassVar[str] = "organisation"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="+")
    asset = models.ForeignKey(Asset, on_delete=models.CASCADE, related_name="points")
    key = models.SlugField(max_length=64)
    unit = models.CharField(max_length=16, choices=UNIT_CHOICES)
    description = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering: ClassVar[list[str]] = ["key"]
        constraints: ClassVar[list[models.BaseConstraint]] = [
            models.UniqueConstraint(fields=["asset", "key"], name="point_key_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.asset_id}/{self.key}"


# An agent with nothing to send still reports its status at least once a minute.
ONLINE_WINDOW: Final = timedelta(minutes=2)


class EdgeDevice(models.Model):
    """An edge agent's record: its credential (hash only), the assets it serves, its uplink state.

    The credential is a random ``fld_`` token of 256 bits, stored as SHA-256 (no bcrypt on the
    ingestion path: the token's entropy makes a slow hash pointless). Rotation keeps the previous
    digest valid until the device has used the new one once.
    """

    organisation_lookup: ClassVar[str] = "organisation"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="+")
    name = models.CharField(max_length=100)
    assets = models.ManyToManyField(Asset, blank=True, related_name="edge_devices")
    created_at = models.DateTimeField(default=timezone.now)
    # One-time enrollment code (fle_…), exchanged by the agent for the credential.
    enrollment_digest = models.CharField(max_length=64, blank=True)
    enrollment_expires_at = models.DateTimeField(null=True, blank=True)
    enrolled_at = models.DateTimeField(null=True, blank=True)
    credential_prefix = models.CharField(max_length=24, blank=True)
    credential_digest = models.CharField(max_length=64, blank=True, db_index=True)
    previous_credential_digest = models.CharField(max_length=64, blank=True, db_index=True)
    credential_rotated_at = models.DateTimeField(null=True, blank=True)
    rotate_credential = models.BooleanField(default=False)  # told to the device in responses
    revoked_at = models.DateTimeField(null=True, blank=True)
    # Uplink state: the highest batch sequence below which every batch has been stored.
    acked_sequence = models.BigIntegerField(default=0)
    desired_config_version = models.PositiveIntegerField(default=0)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    last_seen_ip = models.CharField(max_length=45, blank=True)
    # What the agent last said about itself (protocol AgentStatus), for the device page.
    software_version = models.CharField(max_length=100, blank=True)
    buffer_values = models.BigIntegerField(default=0)
    buffer_oldest_age_s = models.BigIntegerField(default=0)
    dropped_total = models.BigIntegerField(default=0)
    last_error = models.CharField(max_length=300, blank=True)
    status_at = models.DateTimeField(null=True, blank=True)
    # Updates (fieldlink.updates): free-text group for choosing rollout targets, the version a
    # rollout offers (told in every ack), and what the device last reported about its
    # configuration, its update and its last TUF check (protocol DeviceReport).
    group = models.CharField(max_length=100, blank=True, db_index=True)
    desired_software_version = models.CharField(max_length=100, blank=True)
    applied_config_version = models.PositiveIntegerField(default=0)
    applied_config_hash = models.CharField(max_length=64, blank=True)
    config_error = models.CharField(max_length=300, blank=True)
    update_state = models.CharField(max_length=16, blank=True)
    update_version = models.CharField(max_length=100, blank=True)
    update_error = models.CharField(max_length=300, blank=True)
    update_check_ok = models.BooleanField(default=True)
    update_check_error_code = models.CharField(max_length=32, blank=True)
    update_check_error = models.CharField(max_length=300, blank=True)
    update_checked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering: ClassVar[list[str]] = ["name"]
        constraints: ClassVar[list[models.BaseConstraint]] = [
            models.UniqueConstraint(
                fields=["organisation", "name"], name="edge_device_name_unique"
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def online(self) -> bool:
        """Seen within ``ONLINE_WINDOW``: agents post at least every few seconds when healthy."""
        seen = self.last_seen_at
        return seen is not None and timezone.now() - seen <= ONLINE_WINDOW


class DataGap(models.Model):
    """Values an edge device had to drop (its buffer was full), as it reported them.

    Loss that cannot be avoided is shown, never silent: the device page and the asset charts
    can say "no data here, and this is why".
    """

    organisation_lookup: ClassVar[str] = "organisation"

    id = models.BigAutoField(primary_key=True)
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="+")
    device = models.ForeignKey(EdgeDevice, on_delete=models.CASCADE, related_name="gaps")
    from_ts = models.BigIntegerField()  # UTC ms
    to_ts = models.BigIntegerField()
    count = models.BigIntegerField()
    reason = models.CharField(max_length=32)
    reported_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering: ClassVar[list[str]] = ["-from_ts"]

    def __str__(self) -> str:
        return f"{self.count} values lost by {self.device_id}"
