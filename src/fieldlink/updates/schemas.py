"""Request and response shapes of the updates API.

Request bodies derive from ``StrictInput`` (unknown fields are a 422, never silently dropped).
A rollout's silent timeout travels as whole minutes, not as an ISO 8601 duration: the mobile
apps and scripts send a number, and the service bounds it (``rollouts.check_policy``).
"""

from __future__ import annotations

from datetime import datetime, time
from typing import Literal
from uuid import UUID

from ninja import Field, Schema

from fieldlink.accounts.schemas import StrictInput
from fieldlink.edge.device_config import MAX_CONFIG_TEXT
from fieldlink.updates.rollouts import (
    DEFAULT_FAILURE_THRESHOLD_PCT,
    DEFAULT_SILENT_TIMEOUT,
    DEFAULT_WAVES,
    MAX_SILENT_TIMEOUT,
    MAX_WAVES,
)
from fieldlink.updates.services import MAX_ROLLOUT_DEVICES

__all__ = [
    "AlertOut",
    "AppliedConfigurationOut",
    "ConfigurationIn",
    "ConfigurationOut",
    "DesiredConfigurationOut",
    "ProgressOut",
    "ReleaseOut",
    "RolloutDetailOut",
    "RolloutDeviceOut",
    "RolloutIn",
    "RolloutOut",
    "WaveOut",
]

MAX_TIMEOUT_MINUTES = int(MAX_SILENT_TIMEOUT.total_seconds() // 60)
DEFAULT_TIMEOUT_MINUTES = int(DEFAULT_SILENT_TIMEOUT.total_seconds() // 60)


class ReleaseOut(Schema):
    version: str
    sha256: str
    length: int
    allow_downgrade: bool = Field(description="Signed to allow installing over a newer version")
    published_at: datetime


class RolloutIn(StrictInput):
    version: str = Field(min_length=1, max_length=100, description="A published release")
    device_ids: list[UUID] | None = Field(
        default=None,
        max_length=MAX_ROLLOUT_DEVICES,
        description="The devices; or leave it out and name a group",
    )
    group: str = Field(
        default="", max_length=100, description="Every enrolled, live device of this group now"
    )
    waves: list[int] = Field(
        default_factory=lambda: list(DEFAULT_WAVES),
        min_length=1,
        max_length=MAX_WAVES,
        description="Cumulative percentages, strictly increasing, ending at 100",
    )
    failure_threshold_pct: int = Field(
        default=DEFAULT_FAILURE_THRESHOLD_PCT,
        ge=0,
        le=100,
        description="Halt when more than this share of the finished devices failed",
    )
    silent_timeout_minutes: int = Field(
        default=DEFAULT_TIMEOUT_MINUTES,
        ge=1,
        le=MAX_TIMEOUT_MINUTES,
        description="A device offered the release that reports nothing this long has failed",
    )
    window_start: time | None = Field(
        default=None, description="Daily maintenance window start (UTC); new offers only inside"
    )
    window_end: time | None = Field(default=None, description="Window end (UTC, excluded)")
    force: bool = Field(
        default=False,
        description="Downgrade on purpose (the release must be signed to allow it)",
    )


class ProgressOut(Schema):
    total: int
    pending: int
    offered: int
    succeeded: int
    failed: int


class WaveOut(ProgressOut):
    index: int
    percent: int = Field(description="Cumulative share of the devices once this wave is done")


class RolloutOut(Schema):
    id: UUID
    version: str
    state: str = Field(description="running, paused, halted, completed or cancelled")
    waves: list[int]
    current_wave: int
    failure_threshold_pct: int
    silent_timeout_minutes: int
    window_start: time | None
    window_end: time | None
    force: bool
    group: str
    reason: str = Field(description="Why it halted or was cancelled")
    created_by: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    progress: ProgressOut


class RolloutDeviceOut(Schema):
    device_id: UUID
    name: str
    wave: int
    state: str = Field(description="pending, offered, succeeded or failed")
    reason: str
    software_version: str = Field(description="What the device last reported running")
    offered_at: datetime | None
    finished_at: datetime | None


class RolloutDetailOut(RolloutOut):
    per_wave: list[WaveOut]
    devices: list[RolloutDeviceOut]


class ConfigurationIn(StrictInput):
    toml: str = Field(
        max_length=MAX_CONFIG_TEXT,
        description='The device configuration: log_level = "info" and [[sources]] tables',
    )


class DesiredConfigurationOut(Schema):
    version: int
    sha256: str = Field(description="SHA-256 of the signed configuration target")
    toml: str
    updated_by: str
    created_at: datetime


class AppliedConfigurationOut(Schema):
    version: int
    sha256: str
    error: str = Field(description="Why the device did not apply the desired version")


class ConfigurationOut(Schema):
    device_id: UUID
    desired: DesiredConfigurationOut | None
    applied: AppliedConfigurationOut
    status: Literal["unset", "in_sync", "pending", "failed", "drift"] = Field(
        description=(
            "in_sync: the device runs the desired version; pending: not applied yet; failed: "
            "the device refused it; drift: it reports another configuration than the one signed"
        )
    )


class AlertOut(Schema):
    device_id: UUID
    device_name: str
    kind: Literal["check_failed", "update_failed", "config_failed", "config_drift"]
    code: str = Field(description="The device's error code, when it gave one")
    message: str
    at: datetime | None = Field(description="When the device checked (for check_failed)")
