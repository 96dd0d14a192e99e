"""Use cases of the updates context: the only place that changes its state.

Releases are platform-wide: ``publish_release`` stores offline-signed metadata and bundles
through ``repository.publish`` (which verifies them against the trusted root first) and records
one ``Release`` per agent version, audited in the platform chain.

Rollouts and configurations belong to an organisation and take the caller's ``Scope``:
``data.configure`` (engineer and above) is needed to change them, ``data.view`` to look.
Devices are found with ``scope.get``/``scope.filter``, so another tenant's device is a 404.
The rules of a staged rollout are the pure ``updates.rollouts``; here they meet the database:

- offering = setting ``EdgeDevice.desired_software_version``, which every telemetry ``Ack`` and
  every ``ReportAck`` carries as ``update_available``; withdrawing = clearing it (only if it
  still names this rollout's version). A device that failed loses the offer too, so an agent
  that rolled back is not told to try the same version again and again.
- a device is in at most one active (running or paused) rollout; a second one is refused with
  ``rollout_device_busy`` instead of silently superseding the first.
- a release older than what a device runs is refused (``downgrade_refused``) unless ``force``;
  with ``force`` it must also be signed with ``allow_downgrade``, because agents refuse a
  downgrade the release engineers did not sign for.
- pause stops new offers and timeouts; resume continues a paused rollout only (a halted one
  stays halted, see ``rollouts``); cancel withdraws every offer not yet done.
- ``advance_rollouts`` (a periodic task, every minute) owns one short transaction per rollout,
  like the telemetry retention run: one transaction for all would hold SQLite's write lock.

Device reports (``record_report``) arrive through the edge endpoint, whose request owns the
transaction; the device is the audit actor. Every state change writes an audit entry in the
organisation's chain in the same transaction; what a device reports is audited when it changes
(not on every report).

Configuration: the engineer writes TOML (``log_level`` and ``[[sources]]``), validated by the
edge's own rules (``edge.device_config.parse_desired_config``), stored as canonical JSON and
signed by the online config key as the device's TUF target; ``desired_config_version`` tells
the device to fetch it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Final, Literal
from uuid import UUID

from django.db import transaction
from django.db.models import F, OuterRef, Q, Subquery
from django.http import HttpRequest
from django.utils import timezone

from fieldlink.accounts.access import Permission, Principal, Scope
from fieldlink.accounts.services import audit
from fieldlink.audit import services as audit_services
from fieldlink.audit.models import PLATFORM_CHAIN, ActorType
from fieldlink.devices.edge_services import audit_by_device
from fieldlink.devices.errors import DeviceRevokedError
from fieldlink.devices.models import EdgeDevice
from fieldlink.edge.config import ConfigError
from fieldlink.edge.device_config import MAX_CONFIG_BYTES, TARGET_FORMAT, parse_desired_config
from fieldlink.protocol.updates import DeviceReport, ReportAck
from fieldlink.updates import repository, rollouts
from fieldlink.updates.errors import (
    ConfigurationInvalidError,
    DowngradeRefusedError,
    PublicationRefusedError,
    ReleaseNotPublishedError,
    RolloutDeviceBusyError,
    RolloutInvalidError,
    RolloutStateError,
)
from fieldlink.updates.models import (
    ACTIVE_ROLLOUT_STATES,
    DeviceConfiguration,
    Release,
    Rollout,
    RolloutDevice,
    RolloutDeviceState,
    RolloutState,
)
from fieldlink.updates.rollouts import (
    DEFAULT_FAILURE_THRESHOLD_PCT,
    DEFAULT_SILENT_TIMEOUT,
    DEFAULT_WAVES,
    SILENT_REASON,
    MemberState,
)

__all__ = [
    "AuditActor",
    "ConfigurationDrift",
    "advance_rollout",
    "advance_rollouts",
    "cancel_rollout",
    "configuration_drift",
    "create_rollout",
    "device_configuration",
    "get_rollout",
    "pause_rollout",
    "publish_release",
    "record_report",
    "releases",
    "resume_rollout",
    "rollout_members",
    "rollouts_of",
    "set_device_configuration",
]

MAX_ROLLOUT_DEVICES: Final = 10_000
PROGRESS_STATES: Final = frozenset({"downloading", "installing", "restarting"})
# Reported update states worth an audit entry: outcomes, not progress.
# A key path in the agent's configuration errors ("sources[0].port: …").
_CONFIG_KEY: Final = re.compile(r"^[a-z_][a-z0-9_]*(?:\[[0-9]+\]|\.[a-z_][a-z0-9_]*)*$")
OUTCOME_STATES: Final = frozenset({"running", *rollouts.FAILED_UPDATE_STATES})
_NOT_DONE: Final = (RolloutDeviceState.PENDING, RolloutDeviceState.OFFERED)


@dataclass(frozen=True)
class AuditActor:
    """Who publishes a release: platform staff (web/API) or an operator's command (CLI)."""

    actor_type: str
    actor_id: str
    label: str

    @classmethod
    def command(cls, label: str) -> AuditActor:
        return cls(ActorType.SYSTEM, "cli", label[:200])

    @classmethod
    def of(cls, principal: Principal) -> AuditActor:
        user = principal.user
        kind = ActorType.STAFF if user.is_platform_staff else ActorType.USER
        return cls(kind, str(user.pk), user.email)


def _system_audit(
    chain: str,
    action: str,
    *,
    target_type: str,
    target_id: str,
    before: object = None,
    after: object = None,
) -> None:
    audit_services.record(
        chain,
        action=action,
        actor_type=ActorType.SYSTEM,
        actor_id="rollouts",
        actor_label="Staged rollout",
        target_type=target_type,
        target_id=target_id,
        before=before,
        after=after,
    )


# -- releases ------------------------------------------------------------------------------------


def releases() -> list[Release]:
    """Every published agent version, newest first (platform-wide: not customer data)."""
    return list(Release.objects.all())


def publish_release(
    files: Mapping[str, bytes],
    bundles: Mapping[str, Path],
    *,
    actor: AuditActor,
    now: datetime | None = None,
) -> list[Release]:
    """Publish offline-signed metadata (and the bundles it lists); the new releases.

    A version published again with other bytes is refused: devices that installed the first
    bytes would be told they run something they do not.
    """
    at = now or timezone.now()
    targets = repository.publish(files, bundles, now=at)
    created: list[Release] = []
    for target in repository.software_releases():
        existing = Release.objects.filter(version=target.version).first()
        if existing is not None:
            if existing.sha256 != target.sha256:
                raise PublicationRefusedError(
                    f"Version {target.version} is already published with other contents."
                )
            continue
        release = Release.objects.create(
            version=target.version,
            target_path=target.path,
            sha256=target.sha256,
            length=target.length,
            allow_downgrade=target.allow_downgrade,
            published_at=at,
            published_by=actor.label,
        )
        created.append(release)
    audit_services.record(
        PLATFORM_CHAIN,
        action="release.published",
        actor_type=actor.actor_type,
        actor_id=actor.actor_id,
        actor_label=actor.label,
        target_type="release",
        target_id=",".join(r.version for r in created)[:64],
        after={
            "metadata": sorted(files),
            "releases": [
                {"version": r.version, "sha256": r.sha256, "length": r.length} for r in created
            ],
            "targets": sorted(t.path for t in targets),
        },
    )
    return created


# -- rollouts ------------------------------------------------------------------------------------


def _rollout_fields(rollout: Rollout) -> dict[str, Any]:
    return {
        "release": rollout.release.version,
        "state": rollout.state,
        "waves": rollout.waves,
        "current_wave": rollout.current_wave,
        "failure_threshold_pct": rollout.failure_threshold_pct,
        "silent_timeout_s": int(rollout.silent_timeout.total_seconds()),
        "window": _window_text(rollout),
        "force": rollout.force,
        "group": rollout.group,
        "reason": rollout.reason,
    }


def _window_text(rollout: Rollout) -> str:
    if rollout.window_start is None or rollout.window_end is None:
        return ""
    return f"{rollout.window_start:%H:%M}-{rollout.window_end:%H:%M} UTC"


def _policy(rollout: Rollout) -> rollouts.Policy:
    window = None
    if rollout.window_start is not None and rollout.window_end is not None:
        window = rollouts.Window(rollout.window_start, rollout.window_end)
    return rollouts.Policy(
        waves=tuple(rollout.waves),
        failure_threshold_pct=rollout.failure_threshold_pct,
        silent_timeout=rollout.silent_timeout,
        window=window,
    )


def rollouts_of(scope: Scope) -> list[Rollout]:
    scope.require(Permission.DATA_VIEW)
    return list(scope.filter(Rollout.objects.select_related("release")))


def get_rollout(scope: Scope, rollout_id: UUID | str) -> Rollout:
    scope.require(Permission.DATA_VIEW)
    return scope.get(Rollout.objects.select_related("release"), rollout_id, what="rollout")


def rollout_members(scope: Scope, rollout_id: UUID | str) -> list[RolloutDevice]:
    rollout = get_rollout(scope, rollout_id)
    return list(rollout.members.select_related("device"))


def _published(version: str) -> Release:
    release = Release.objects.filter(version=version).first()
    signed = {t.version for t in repository.software_releases()} if release else set()
    if release is None or version not in signed:
        raise ReleaseNotPublishedError(
            f"Version {version!r} is not a published release.", details={"field": "version"}
        )
    return release


def _rollout_devices(
    scope: Scope, device_ids: Iterable[UUID | str] | None, group: str
) -> list[EdgeDevice]:
    if device_ids is not None and group:
        raise RolloutInvalidError(
            "Choose devices either by id or by group, not both.", details={"field": "group"}
        )
    if device_ids is not None:
        wanted = list(dict.fromkeys(str(pk) for pk in device_ids))
        if len(wanted) > MAX_ROLLOUT_DEVICES:
            raise RolloutInvalidError(
                f"A rollout has at most {MAX_ROLLOUT_DEVICES} devices.",
                details={"field": "device_ids"},
            )
        devices = [scope.get(EdgeDevice.objects.all(), pk, what="edge device") for pk in wanted]
        for device in devices:
            if device.revoked_at is not None:
                raise DeviceRevokedError(f"The edge device {device.name!r} is revoked.")
            if not device.credential_digest:
                raise RolloutInvalidError(
                    f"The edge device {device.name!r} has not enrolled yet.",
                    details={"field": "device_ids"},
                )
    else:
        if not group.strip():
            raise RolloutInvalidError(
                "Choose the devices: by id or by group.", details={"field": "device_ids"}
            )
        # A group is "its enrolled, live devices now": later members are not added.
        devices = list(
            scope.filter(EdgeDevice.objects.filter(group=group.strip(), revoked_at__isnull=True))
            .exclude(credential_digest="")
            .order_by("pk")[: MAX_ROLLOUT_DEVICES + 1]
        )
        if len(devices) > MAX_ROLLOUT_DEVICES:
            raise RolloutInvalidError(
                f"A rollout has at most {MAX_ROLLOUT_DEVICES} devices.", details={"field": "group"}
            )
    if not devices:
        raise RolloutInvalidError(
            "No enrolled device to roll out to.", details={"field": "device_ids"}
        )
    return devices


def _check_downgrade(release: Release, devices: Sequence[EdgeDevice], *, force: bool) -> None:
    older = [d for d in devices if rollouts.is_downgrade(release.version, d.software_version)]
    if not older:
        return
    names = sorted(str(d.pk) for d in older)
    if not force:
        raise DowngradeRefusedError(
            f"{release.version} is older than what {len(older)} device(s) run; "
            "force the rollout to downgrade on purpose.",
            details={"devices": names, "reason": "force_required"},
        )
    if not release.allow_downgrade:
        raise DowngradeRefusedError(
            f"{release.version} is not signed to allow a downgrade; agents would refuse it.",
            details={"devices": names, "reason": "not_signed_for_downgrade"},
        )


def _check_not_busy(devices: Sequence[EdgeDevice]) -> None:
    busy = sorted(
        str(pk)
        for pk in RolloutDevice.objects.filter(
            device__in=devices,
            rollout__state__in=ACTIVE_ROLLOUT_STATES,
            state__in=_NOT_DONE,
        ).values_list("device_id", flat=True)
    )
    if busy:
        raise RolloutDeviceBusyError(
            f"{len(busy)} device(s) are already in an active rollout; pause or cancel it first.",
            details={"devices": busy},
        )


def create_rollout(
    scope: Scope,
    *,
    version: str,
    device_ids: Iterable[UUID | str] | None = None,
    group: str = "",
    waves: Sequence[int] = DEFAULT_WAVES,
    failure_threshold_pct: int = DEFAULT_FAILURE_THRESHOLD_PCT,
    silent_timeout: timedelta = DEFAULT_SILENT_TIMEOUT,
    window_start: time | None = None,
    window_end: time | None = None,
    force: bool = False,
    request: HttpRequest | None = None,
    now: datetime | None = None,
) -> Rollout:
    """A running rollout of ``version`` to the chosen devices; its first wave is offered now."""
    scope.require(Permission.ROLLOUTS_MANAGE)
    if (window_start is None) != (window_end is None):
        raise RolloutInvalidError(
            "A maintenance window needs both a start and an end.", details={"field": "window"}
        )
    window = None
    if window_start is not None and window_end is not None:
        window = rollouts.Window(_naive(window_start), _naive(window_end))
    policy = rollouts.Policy(
        waves=tuple(waves),
        failure_threshold_pct=failure_threshold_pct,
        silent_timeout=silent_timeout,
        window=window,
    )
    problem = rollouts.check_policy(policy)
    if problem is not None:
        field, message = problem
        raise RolloutInvalidError(message, details={"field": field})
    # The devices first: another organisation's device id is a 404 whatever the version.
    devices = _rollout_devices(scope, device_ids, group)
    release = _published(version)
    _check_downgrade(release, devices, force=force)
    # Lock the devices' rows in id order (no deadlock between two creators), then re-check.
    locked = list(
        EdgeDevice.objects.select_for_update().filter(pk__in=[d.pk for d in devices]).order_by("pk")
    )
    _check_not_busy(locked)
    at = now or timezone.now()
    rollout = Rollout.objects.create(
        organisation=scope.organisation,
        release=release,
        group=group.strip(),
        waves=list(policy.waves),
        failure_threshold_pct=failure_threshold_pct,
        silent_timeout=silent_timeout,
        window_start=window.start if window else None,
        window_end=window.end if window else None,
        force=force,
        created_by=scope.user.email,
        created_at=at,
        updated_at=at,
    )
    assigned = rollouts.assign_waves(
        (str(d.pk) for d in locked), policy.waves, salt=str(rollout.pk)
    )
    rows = []
    for device in locked:
        # A device already running the release has nothing to do: it counts as a success.
        done = device.software_version == release.version
        rows.append(
            RolloutDevice(
                organisation=scope.organisation,
                rollout=rollout,
                device=device,
                wave=assigned[str(device.pk)],
                state=RolloutDeviceState.SUCCEEDED if done else RolloutDeviceState.PENDING,
                reason="already running" if done else "",
                finished_at=at if done else None,
            )
        )
    RolloutDevice.objects.bulk_create(rows)
    audit(
        scope,
        "rollout.created",
        target=rollout,
        after={**_rollout_fields(rollout), "devices": len(rows)},
        request=request,
    )
    _advance(rollout, at)
    return rollout


def _naive(value: time) -> time:
    # The window is UTC by definition; an aware time is converted, a naive one taken as UTC.
    if value.tzinfo is None:
        return value
    offset = value.utcoffset() or timedelta(0)
    return (datetime.combine(date(2000, 1, 3), value.replace(tzinfo=None)) - offset).time()


def _change_state(
    scope: Scope,
    rollout_id: UUID | str,
    *,
    action: str,
    allowed: frozenset[str],
    new_state: RolloutState,
    request: HttpRequest | None,
    now: datetime | None,
) -> Rollout:
    scope.require(Permission.ROLLOUTS_MANAGE)
    rollout = scope.get(
        Rollout.objects.select_for_update().select_related("release"), rollout_id, what="rollout"
    )
    if rollout.state not in allowed:
        raise RolloutStateError(
            f"A {rollout.state} rollout cannot be {action}.",
            details={"state": rollout.state},
        )
    before = _rollout_fields(rollout)
    at = now or timezone.now()
    rollout.state = new_state
    rollout.updated_at = at
    if new_state == RolloutState.CANCELLED:
        rollout.finished_at = at
        rollout.reason = "cancelled"
        _withdraw(rollout, rollout.members.filter(state__in=_NOT_DONE))
    rollout.save()
    audit(
        scope,
        f"rollout.{action}",
        target=rollout,
        before=before,
        after=_rollout_fields(rollout),
        request=request,
    )
    return rollout


def pause_rollout(
    scope: Scope,
    rollout_id: UUID | str,
    *,
    request: HttpRequest | None = None,
    now: datetime | None = None,
) -> Rollout:
    """No new offers; devices already offered keep their offer (they may be installing)."""
    return _change_state(
        scope,
        rollout_id,
        action="paused",
        allowed=frozenset({RolloutState.RUNNING}),
        new_state=RolloutState.PAUSED,
        request=request,
        now=now,
    )


def resume_rollout(
    scope: Scope,
    rollout_id: UUID | str,
    *,
    request: HttpRequest | None = None,
    now: datetime | None = None,
) -> Rollout:
    """Continue a paused rollout (a halted one is final: start a new rollout instead)."""
    rollout = _change_state(
        scope,
        rollout_id,
        action="resumed",
        allowed=frozenset({RolloutState.PAUSED}),
        new_state=RolloutState.RUNNING,
        request=request,
        now=now,
    )
    _advance(rollout, now or timezone.now())
    return rollout


def cancel_rollout(
    scope: Scope,
    rollout_id: UUID | str,
    *,
    request: HttpRequest | None = None,
    now: datetime | None = None,
) -> Rollout:
    """Stop for good: every offer not yet done is withdrawn."""
    return _change_state(
        scope,
        rollout_id,
        action="cancelled",
        allowed=frozenset({RolloutState.RUNNING, RolloutState.PAUSED, RolloutState.HALTED}),
        new_state=RolloutState.CANCELLED,
        request=request,
        now=now,
    )


def _withdraw(rollout: Rollout, members: Iterable[RolloutDevice]) -> None:
    device_ids = [m.device_id for m in members]
    if device_ids:
        # Only where it still names this release: never clear another rollout's offer.
        EdgeDevice.objects.filter(
            pk__in=device_ids, desired_software_version=rollout.release.version
        ).update(desired_software_version="")


def advance_rollouts(now: datetime | None = None) -> dict[str, int]:
    """Periodic: one step of every running rollout, each in its own short transaction."""
    at = now or timezone.now()
    counts = {"rollouts": 0, "offered": 0, "timed_out": 0, "halted": 0, "completed": 0}
    running = list(Rollout.objects.filter(state=RolloutState.RUNNING).values_list("pk", flat=True))
    for rollout_id in running:
        with transaction.atomic():
            step = advance_rollout(rollout_id, at)
        if step is None:
            continue
        counts["rollouts"] += 1
        counts["offered"] += len(step.offer)
        counts["timed_out"] += len(step.timed_out)
        counts["halted"] += int(step.halt)
        counts["completed"] += int(step.completed)
    return counts


def advance_rollout(rollout_id: UUID | str, now: datetime) -> rollouts.Step | None:
    """One step of one rollout, in the caller's transaction; None when it is not running."""
    rollout = (
        Rollout.objects.select_for_update().select_related("release").filter(pk=rollout_id).first()
    )
    if rollout is None or rollout.state != RolloutState.RUNNING:
        return None
    return _advance(rollout, now)


def _advance(rollout: Rollout, now: datetime) -> rollouts.Step:
    members = list(rollout.members.all())
    by_key = {str(m.device_id): m for m in members}
    step = rollouts.plan(
        _policy(rollout),
        [
            rollouts.Member(
                key,
                m.wave,
                MemberState(m.state),
                offered_at=m.offered_at,
                progress_at=m.progress_at,
            )
            for key, m in by_key.items()
        ],
        rollout.current_wave,
        now,
    )
    chain = str(rollout.organisation_id)
    before = _rollout_fields(rollout)
    version = rollout.release.version
    if step.timed_out:
        gone = [by_key[key] for key in step.timed_out]
        RolloutDevice.objects.filter(pk__in=[m.pk for m in gone]).update(
            state=RolloutDeviceState.FAILED, reason=SILENT_REASON, finished_at=now
        )
        _withdraw(rollout, gone)
        _system_audit(
            chain,
            "rollout.devices_timed_out",
            target_type="rollout",
            target_id=str(rollout.pk),
            after={"devices": sorted(step.timed_out), "release": version},
        )
    if step.offer:
        offered = [by_key[key] for key in step.offer]
        RolloutDevice.objects.filter(pk__in=[m.pk for m in offered]).update(
            state=RolloutDeviceState.OFFERED, offered_at=now
        )
        EdgeDevice.objects.filter(pk__in=[m.device_id for m in offered]).update(
            desired_software_version=version
        )
        _system_audit(
            chain,
            "rollout.devices_offered",
            target_type="rollout",
            target_id=str(rollout.pk),
            after={"devices": sorted(step.offer), "release": version, "wave": step.current_wave},
        )
    rollout.current_wave = step.current_wave
    if step.halt:
        action = "rollout.halted"
        rollout.state = RolloutState.HALTED
        rollout.reason = (
            f"{step.failed} of {step.failed + step.succeeded} finished devices failed, "
            f"above the {rollout.failure_threshold_pct} % threshold"
        )
        rollout.finished_at = now
        _withdraw(rollout, [m for m in members if m.state in _NOT_DONE])
    elif step.completed:
        action = "rollout.completed"
        rollout.state = RolloutState.COMPLETED
        rollout.finished_at = now
    elif rollout.current_wave != before["current_wave"]:
        action = "rollout.wave_advanced"
    else:
        return step
    rollout.updated_at = now
    rollout.save()
    _system_audit(
        chain,
        action,
        target_type="rollout",
        target_id=str(rollout.pk),
        before=before,
        after={
            **_rollout_fields(rollout),
            "succeeded": step.succeeded,
            "failed": step.failed,
        },
    )
    return step


# -- device reports ------------------------------------------------------------------------------


def _reported_at(ms: int) -> datetime | None:
    if ms <= 0:
        return None
    try:
        return datetime.fromtimestamp(ms / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None  # a clock far off: keep the report, not the nonsense time


def record_report(
    device: EdgeDevice,
    report: DeviceReport,
    *,
    client_ip: str = "",
    now: datetime | None = None,
) -> ReportAck:
    """Keep what the device says about its software, configuration and last update check.

    Its rollout membership follows: running the release is success, a failed, rolled-back or
    refused attempt at it is failure, progress restarts the silent timeout. Runs in the
    caller's transaction with the device row locked (reports and batches of one device are
    serialised).
    """
    at = now or timezone.now()
    locked = EdgeDevice.objects.select_for_update().get(pk=device.pk)
    before_update = (locked.update_version, locked.update_state)
    before_config = (locked.applied_config_version, locked.applied_config_hash, locked.config_error)
    locked.software_version = report.software_version
    locked.applied_config_version = report.config_version
    locked.applied_config_hash = report.config_hash
    locked.config_error = report.config_error
    locked.update_state = report.update_state
    locked.update_version = report.update_version
    locked.update_error = report.update_error
    locked.update_check_ok = report.check_ok
    locked.update_check_error_code = report.check_error_code
    locked.update_check_error = report.check_error
    locked.update_checked_at = _reported_at(report.checked_at_ms)
    locked.last_seen_at = at
    if client_ip:
        locked.last_seen_ip = client_ip[:45]
    _follow_rollouts(locked, report, at, client_ip)
    locked.save()
    after_update = (locked.update_version, locked.update_state)
    if after_update != before_update and report.update_state in OUTCOME_STATES:
        audit_by_device(
            locked,
            "device.update_reported",
            after={
                "software_version": report.software_version,
                "update_version": report.update_version,
                "update_state": report.update_state,
                "update_error": report.update_error,
            },
            ip=client_ip,
        )
    after_config = (locked.applied_config_version, locked.applied_config_hash, locked.config_error)
    if after_config != before_config:
        audit_by_device(
            locked,
            "device.configuration_reported",
            after={
                "config_version": report.config_version,
                "config_hash": report.config_hash,
                "config_error": report.config_error,
            },
            ip=client_ip,
        )
    return ReportAck(
        desired_config_version=locked.desired_config_version,
        update_available=locked.desired_software_version or None,
    )


def _follow_rollouts(
    device: EdgeDevice, report: DeviceReport, now: datetime, client_ip: str
) -> None:
    # Halted rollouts too: a device that finished after the halt still tells the truth.
    candidates = RolloutDevice.objects.filter(
        device=device,
        rollout__state__in=[*ACTIVE_ROLLOUT_STATES, RolloutState.HALTED],
    ).select_related("rollout__release")
    for member in candidates:
        version = member.rollout.release.version
        outcome = rollouts.outcome_of_report(
            version,
            software_version=report.software_version,
            update_version=report.update_version,
            update_state=report.update_state,
        )
        late_success = (
            member.state == RolloutDeviceState.FAILED
            and member.reason == SILENT_REASON
            and outcome == MemberState.SUCCEEDED
        )
        if member.state in _NOT_DONE or late_success:
            if outcome is None:
                if report.update_version == version and report.update_state in PROGRESS_STATES:
                    member.progress_at = now
                    member.save(update_fields=["progress_at"])
                continue
            member.state = outcome
            member.finished_at = now
            member.reason = (
                (report.update_error or report.update_state)[:300]
                if (outcome == MemberState.FAILED)
                else ""
            )
            member.save(update_fields=["state", "finished_at", "reason"])
            if outcome == MemberState.FAILED and device.desired_software_version == version:
                device.desired_software_version = ""
            audit_services.record(
                str(device.organisation_id),
                action=f"rollout.device_{outcome}",
                actor_type=ActorType.DEVICE,
                actor_id=str(device.pk),
                actor_label=device.name,
                target_type="rollout",
                target_id=str(member.rollout_id),
                after={"device": str(device.pk), "release": version, "reason": member.reason},
                ip=client_ip or None,
            )


# -- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigurationDrift:
    """The desired configuration against what the device last reported it applied."""

    desired_version: int
    desired_sha256: str
    applied_version: int
    applied_sha256: str
    in_sync: bool
    error: str  # why the device did not apply the desired version, as it reported


def _canonical(document: Mapping[str, Any]) -> bytes:
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def device_configuration(scope: Scope, device_id: UUID | str) -> DeviceConfiguration | None:
    """The device's desired configuration (newest version), or None when none was set."""
    scope.require(Permission.DATA_VIEW)
    device = scope.get(EdgeDevice.objects.all(), device_id, what="edge device")
    return device.configurations.order_by("-version").first()


def set_device_configuration(
    scope: Scope,
    device_id: UUID | str,
    toml_text: str,
    *,
    request: HttpRequest | None = None,
    now: datetime | None = None,
) -> DeviceConfiguration:
    """Validate, store and sign the device's next configuration version; the device is told."""
    scope.require(Permission.DATA_CONFIGURE)
    device = scope.get(EdgeDevice.objects.select_for_update(), device_id, what="edge device")
    if device.revoked_at is not None:
        raise DeviceRevokedError("This edge device is revoked; create a new one instead.")
    try:
        desired = parse_desired_config(toml_text)
    except ConfigError as exc:
        key, _, _ = exc.message.partition(":")
        details = {"field": "configuration"}
        if _CONFIG_KEY.match(key):
            details["key"] = key  # e.g. sources[0].port, for the form to point at
        raise ConfigurationInvalidError(exc.message, details=details) from exc
    previous = device.configurations.order_by("-version").first()
    version = max(device.desired_config_version, previous.version if previous else 0) + 1
    document = _canonical(
        {
            "format": TARGET_FORMAT,
            "device_id": str(device.pk),
            "version": version,
            "log_level": desired["log_level"],
            "sources": desired["sources"],
        }
    )
    if len(document) > MAX_CONFIG_BYTES:
        raise ConfigurationInvalidError(
            f"The configuration is larger than {MAX_CONFIG_BYTES // 1024} KiB once signed.",
            details={"field": "configuration"},
        )
    signed = repository.sign_device_config(device.pk, document, now=now)
    configuration = DeviceConfiguration.objects.create(
        organisation=scope.organisation,
        device=device,
        version=version,
        source=toml_text,
        document=document.decode(),
        sha256=signed.sha256,
        target_path=signed.path,
        updated_by=scope.user.email,
        created_at=now or timezone.now(),
    )
    before: dict[str, Any] = {"version": device.desired_config_version}
    if previous is not None:
        before["sha256"] = previous.sha256
    device.desired_config_version = version
    device.save(update_fields=["desired_config_version"])
    audit(
        scope,
        "device.configuration_set",
        target=device,
        before=before,
        after={"version": version, "sha256": signed.sha256, "sources": len(desired["sources"])},
        request=request,
    )
    return configuration


def configuration_drift(device: EdgeDevice) -> ConfigurationDrift:
    desired = device.configurations.order_by("-version").first()
    desired_sha256 = desired.sha256 if desired is not None else ""
    return ConfigurationDrift(
        desired_version=device.desired_config_version,
        desired_sha256=desired_sha256,
        applied_version=device.applied_config_version,
        applied_sha256=device.applied_config_hash,
        in_sync=(
            device.desired_config_version == device.applied_config_version
            and desired_sha256 == device.applied_config_hash
        ),
        error=device.config_error,
    )


# -- alerts --------------------------------------------------------------------------------------

MAX_ALERTS: Final = 200
AlertKind = Literal["check_failed", "update_failed", "config_failed", "config_drift"]


@dataclass(frozen=True)
class Alert:
    device: EdgeDevice
    kind: AlertKind
    code: str
    message: str
    at: datetime | None


def update_alerts(scope: Scope) -> list[Alert]:
    """What needs a person: failed update checks, failed updates, failed or drifted configs.

    A configuration the device has not fetched yet is not an alert (it is pending); one it
    reports at the desired version with another hash is (someone else's bytes are running).
    """
    scope.require(Permission.DATA_VIEW)
    desired_sha = DeviceConfiguration.objects.filter(
        device=OuterRef("pk"), version=OuterRef("desired_config_version")
    ).values("sha256")[:1]
    devices = (
        scope.filter(EdgeDevice.objects.filter(revoked_at__isnull=True))
        .filter(
            Q(update_check_ok=False)
            | ~Q(config_error="")
            | Q(update_state__in=sorted(rollouts.FAILED_UPDATE_STATES))
            | Q(
                desired_config_version__gt=0,
                applied_config_version__gte=F("desired_config_version"),
            )
        )
        .annotate(desired_sha256=Subquery(desired_sha))
        .order_by("name")
    )
    alerts: list[Alert] = []
    for device in devices[: MAX_ALERTS * 2]:
        alerts.extend(_alerts_of(device, getattr(device, "desired_sha256", None) or ""))
    return alerts[:MAX_ALERTS]


def _alerts_of(device: EdgeDevice, desired_sha256: str) -> list[Alert]:
    found = []
    if not device.update_check_ok:
        found.append(
            Alert(
                device,
                "check_failed",
                device.update_check_error_code,
                device.update_check_error or "The last update check failed.",
                device.update_checked_at,
            )
        )
    if device.update_state in rollouts.FAILED_UPDATE_STATES:
        found.append(
            Alert(
                device,
                "update_failed",
                device.update_state,
                device.update_error or f"The update to {device.update_version} did not run.",
                None,
            )
        )
    desired, applied = device.desired_config_version, device.applied_config_version
    if device.config_error and applied != desired:
        found.append(Alert(device, "config_failed", "", device.config_error, None))
    elif desired and applied >= desired and device.applied_config_hash != desired_sha256:
        found.append(
            Alert(
                device,
                "config_drift",
                "",
                f"The device reports configuration {applied} with another hash than the one "
                f"signed for version {desired}.",
                None,
            )
        )
    return found
