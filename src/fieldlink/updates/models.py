"""Persistent state of the updates context.

Two kinds of state live here:

- The TUF repository itself (``TufMetadata``, ``TufTarget``): platform-wide, written only by
  ``fieldlink.updates.repository``. Metadata rows hold the exact signed bytes served to devices;
  target rows hold small targets (device configurations) in the database and name large ones
  (agent bundles) by file under ``var/tuf/targets``.
- What the platform and the organisations decided: ``Release`` (a published agent version,
  platform-wide), ``Rollout`` and ``RolloutDevice`` (an organisation's staged offer of a release
  to its devices), ``DeviceConfiguration`` (a device's desired configuration, every version kept).

Organisation-owned models declare ``organisation_lookup`` so ``Scope`` can narrow them.
"""

from __future__ import annotations

import uuid
from typing import ClassVar, Final

from django.db import models
from django.utils import timezone

from fieldlink.accounts.models import Organisation
from fieldlink.devices.models import EdgeDevice
from fieldlink.updates.rollouts import DEFAULT_FAILURE_THRESHOLD_PCT, DEFAULT_SILENT_TIMEOUT


class TufMetadata(models.Model):
    """One signed metadata file, exactly as served (``<version>.<role>.json``)."""

    role = models.CharField(max_length=64)  # root, targets, snapshot, timestamp, config-bins-0a …
    version = models.PositiveIntegerField()
    data = models.BinaryField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints: ClassVar[list[models.BaseConstraint]] = [
            models.UniqueConstraint(fields=["role", "version"], name="tuf_metadata_version_unique"),
        ]
        indexes: ClassVar[list[models.Index]] = [
            models.Index(fields=["role", "-version"], name="tuf_metadata_role_latest"),
        ]

    def __str__(self) -> str:
        return f"{self.version}.{self.role}.json"


class TufTarget(models.Model):
    """One target file: its hashes and length as listed in the signed metadata, and its bytes."""

    path = models.CharField(
        max_length=200
    )  # "software/fieldlink-agent-1.2.0.tar", "config/<id>.json"
    sha256 = models.CharField(max_length=64)
    length = models.BigIntegerField()
    data = models.BinaryField(null=True)  # small targets (configurations)
    file = models.CharField(max_length=300, blank=True)  # large targets: name under var/tuf/targets
    # Configuration targets: the one device allowed to download it.
    device = models.ForeignKey(
        EdgeDevice, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints: ClassVar[list[models.BaseConstraint]] = [
            models.UniqueConstraint(fields=["path", "sha256"], name="tuf_target_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.sha256[:12]}.{self.path}"


class Release(models.Model):
    """A published agent version: its bundle is a ``release``-signed TUF target."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    version = models.CharField(max_length=100, unique=True)
    target_path = models.CharField(max_length=200)
    sha256 = models.CharField(max_length=64)
    length = models.BigIntegerField()
    allow_downgrade = models.BooleanField(default=False)
    published_at = models.DateTimeField(default=timezone.now)
    published_by = models.CharField(max_length=254, blank=True)  # the actor's label

    class Meta:
        ordering: ClassVar[list[str]] = ["-published_at"]

    def __str__(self) -> str:
        return self.version


class RolloutState(models.TextChoices):
    RUNNING = "running", "Running"
    PAUSED = "paused", "Paused"
    HALTED = "halted", "Halted"  # the failure threshold was crossed
    COMPLETED = "completed", "Completed"
    CANCELLED = "cancelled", "Cancelled"


ACTIVE_ROLLOUT_STATES: Final = frozenset({RolloutState.RUNNING, RolloutState.PAUSED})


class Rollout(models.Model):
    """An organisation's staged offer of one release to a set of its devices.

    ``waves`` are cumulative percentages of the devices (e.g. [5, 25, 100]); ``current_wave``
    is the index of the wave being offered. ``fieldlink.updates.rollouts`` holds the rules.
    """

    organisation_lookup: ClassVar[str] = "organisation"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="+")
    release = models.ForeignKey(Release, on_delete=models.PROTECT, related_name="rollouts")
    group = models.CharField(max_length=100, blank=True)  # how the devices were chosen, if so
    waves = models.JSONField(default=list)
    failure_threshold_pct = models.PositiveSmallIntegerField(default=DEFAULT_FAILURE_THRESHOLD_PCT)
    silent_timeout = models.DurationField(default=DEFAULT_SILENT_TIMEOUT)
    # Optional daily maintenance window (UTC); start > end wraps midnight.
    window_start = models.TimeField(null=True, blank=True)
    window_end = models.TimeField(null=True, blank=True)
    force = models.BooleanField(default=False)  # a downgrade was asked for on purpose
    state = models.CharField(
        max_length=16, choices=RolloutState.choices, default=RolloutState.RUNNING
    )
    current_wave = models.PositiveSmallIntegerField(default=0)
    reason = models.CharField(max_length=300, blank=True)  # why it halted or was cancelled
    created_by = models.CharField(max_length=254, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering: ClassVar[list[str]] = ["-created_at"]
        indexes: ClassVar[list[models.Index]] = [
            models.Index(fields=["state"], name="rollout_state"),
        ]

    def __str__(self) -> str:
        return f"rollout of {self.release_id} ({self.state})"


class RolloutDeviceState(models.TextChoices):
    PENDING = "pending", "Pending"  # its wave has not been offered yet
    OFFERED = "offered", "Offered"  # desired_software_version is set; waiting for its report
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class RolloutDevice(models.Model):
    organisation_lookup: ClassVar[str] = "organisation"

    id = models.BigAutoField(primary_key=True)
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="+")
    rollout = models.ForeignKey(Rollout, on_delete=models.CASCADE, related_name="members")
    device = models.ForeignKey(EdgeDevice, on_delete=models.CASCADE, related_name="+")
    wave = models.PositiveSmallIntegerField()
    state = models.CharField(
        max_length=16, choices=RolloutDeviceState.choices, default=RolloutDeviceState.PENDING
    )
    reason = models.CharField(max_length=300, blank=True)
    offered_at = models.DateTimeField(null=True, blank=True)
    # The device's last report about this release (downloading, installing …): the silent
    # timeout counts from here or from the offer, whichever is later.
    progress_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering: ClassVar[list[str]] = ["wave", "id"]
        constraints: ClassVar[list[models.BaseConstraint]] = [
            models.UniqueConstraint(fields=["rollout", "device"], name="rollout_device_unique"),
        ]
        indexes: ClassVar[list[models.Index]] = [
            models.Index(fields=["device", "state"], name="rollout_device_state"),
        ]

    def __str__(self) -> str:
        return f"{self.device_id} in {self.rollout_id}: {self.state}"


class DeviceConfiguration(models.Model):
    """One version of a device's desired configuration; the newest is the one signed and served.

    ``source`` is the TOML an engineer wrote, ``document`` the canonical JSON built from it
    (the bytes of the device's TUF config target), ``sha256`` the hash of ``document``.
    """

    organisation_lookup: ClassVar[str] = "organisation"

    id = models.BigAutoField(primary_key=True)
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="+")
    device = models.ForeignKey(EdgeDevice, on_delete=models.CASCADE, related_name="configurations")
    version = models.PositiveIntegerField()
    source = models.TextField()
    document = models.TextField()
    sha256 = models.CharField(max_length=64)
    target_path = models.CharField(max_length=200)
    updated_by = models.CharField(max_length=254, blank=True)  # the actor's label
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering: ClassVar[list[str]] = ["-version"]
        constraints: ClassVar[list[models.BaseConstraint]] = [
            models.UniqueConstraint(
                fields=["device", "version"], name="device_configuration_version_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"configuration {self.version} of {self.device_id}"
