"""REST endpoints of the updates context (thin: parse, call one service, render).

- ``GET /api/v1/releases``: the published agent versions (platform-wide, signed by the release
  engineers; any signed-in caller may list them, they hold no customer data).
- ``/api/v1/orgs/{org_id}/rollouts`` (list, create, one with per-wave and per-device progress,
  pause, resume, cancel).
- ``/api/v1/orgs/{org_id}/devices/{device_id}/configuration`` (GET desired + applied + status,
  PUT new TOML: a validation error is a 422 ``configuration_invalid`` whose message names the
  key, e.g. ``sources[0].port``).
- ``GET /api/v1/orgs/{org_id}/update-alerts``: devices whose last update check failed, whose
  update failed, or whose configuration failed or drifted.

Who may do what: every member reads; engineers and above (``data.configure``) edit a device's
configuration, as they edit its sources in the plant pages; creating, pausing, resuming and
cancelling a rollout changes the software of the whole fleet, so it is for admins and owners
(``rollouts.manage``, checked here before the body is read and again by the services).

The helpers that summarise rollouts and alerts for a response are shared with the pages
(``updates.views``), so the API and the UI show the same numbers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import Final, Literal
from uuid import UUID

from django.db import transaction
from django.db.models import Count
from django.http import HttpRequest
from ninja import Router, Status

from fieldlink.accounts.access import Permission, Scope
from fieldlink.accounts.auth import scope as scope_of
from fieldlink.devices.models import EdgeDevice
from fieldlink.updates import services
from fieldlink.updates.models import Rollout, RolloutDevice
from fieldlink.updates.schemas import (
    AlertOut,
    AppliedConfigurationOut,
    ConfigurationIn,
    ConfigurationOut,
    DesiredConfigurationOut,
    ProgressOut,
    ReleaseOut,
    RolloutDetailOut,
    RolloutDeviceOut,
    RolloutIn,
    RolloutOut,
    WaveOut,
)

router = Router(tags=["updates"])

# Admins and owners: a rollout replaces the software of many devices at once. Checked here
# before the body is read (a refusal outranks a validation error); the services check it too.
ROLLOUT_PERMISSION: Final = Permission.ROLLOUTS_MANAGE
MEMBER_STATES: Final = ("pending", "offered", "succeeded", "failed")

ConfigStatus = Literal["unset", "in_sync", "pending", "failed", "drift"]


# -- summaries shared with the pages ------------------------------------------------------------


def progress_of(states: Iterable[str]) -> ProgressOut:
    counts = Counter(states)
    return ProgressOut(
        total=sum(counts.values()), **{state: counts.get(state, 0) for state in MEMBER_STATES}
    )


def progress_of_rollouts(scope: Scope, rollouts: Sequence[Rollout]) -> dict[UUID, ProgressOut]:
    """Member counts per rollout, in one query for the whole list."""
    rows = (
        scope.filter(RolloutDevice.objects.filter(rollout__in=[r.pk for r in rollouts]))
        .values("rollout_id", "state")
        .annotate(n=Count("id"))
        .order_by()
    )
    states: dict[UUID, list[str]] = {r.pk: [] for r in rollouts}
    for row in rows:
        states[row["rollout_id"]].extend([row["state"]] * row["n"])
    return {pk: progress_of(found) for pk, found in states.items()}


def waves_of(rollout: Rollout, members: Sequence[RolloutDevice]) -> list[WaveOut]:
    by_wave: dict[int, list[str]] = {i: [] for i in range(len(rollout.waves))}
    for member in members:
        by_wave.setdefault(member.wave, []).append(member.state)
    return [
        WaveOut(
            index=index,
            percent=rollout.waves[index] if index < len(rollout.waves) else 100,
            **progress_of(states).dict(),
        )
        for index, states in sorted(by_wave.items())
    ]


def _minutes(value: timedelta) -> int:
    return int(value.total_seconds() // 60)


def rollout_out(rollout: Rollout, progress: ProgressOut) -> RolloutOut:
    return RolloutOut(
        id=rollout.pk,
        version=rollout.release.version,
        state=rollout.state,
        waves=list(rollout.waves),
        current_wave=rollout.current_wave,
        failure_threshold_pct=rollout.failure_threshold_pct,
        silent_timeout_minutes=_minutes(rollout.silent_timeout),
        window_start=rollout.window_start,
        window_end=rollout.window_end,
        force=rollout.force,
        group=rollout.group,
        reason=rollout.reason,
        created_by=rollout.created_by,
        created_at=rollout.created_at,
        updated_at=rollout.updated_at,
        finished_at=rollout.finished_at,
        progress=progress,
    )


def rollout_detail(scope: Scope, rollout_id: UUID) -> RolloutDetailOut:
    rollout = services.get_rollout(scope, rollout_id)
    members = services.rollout_members(scope, rollout_id)
    summary = rollout_out(rollout, progress_of(m.state for m in members))
    return RolloutDetailOut(
        **summary.dict(),
        per_wave=waves_of(rollout, members),
        devices=[
            RolloutDeviceOut(
                device_id=m.device_id,
                name=m.device.name,
                wave=m.wave,
                state=m.state,
                reason=m.reason,
                software_version=m.device.software_version,
                offered_at=m.offered_at,
                finished_at=m.finished_at,
            )
            for m in members
        ],
    )


def config_status(drift: services.ConfigurationDrift) -> ConfigStatus:
    if drift.desired_version == 0:
        return "unset"
    if drift.in_sync:
        return "in_sync"
    if drift.error:
        return "failed"
    if drift.applied_version >= drift.desired_version:
        # The device says it runs this (or a later) version, with other bytes than we signed.
        return "drift"
    return "pending"


def configuration_out(scope: Scope, device_id: UUID) -> ConfigurationOut:
    desired = services.device_configuration(scope, device_id)  # checks data.view, 404s
    device = scope.get(EdgeDevice.objects.all(), device_id, what="edge device")
    drift = services.configuration_drift(device)
    return ConfigurationOut(
        device_id=device.pk,
        desired=None
        if desired is None
        else DesiredConfigurationOut(
            version=desired.version,
            sha256=desired.sha256,
            toml=desired.source,
            updated_by=desired.updated_by,
            created_at=desired.created_at,
        ),
        applied=AppliedConfigurationOut(
            version=drift.applied_version, sha256=drift.applied_sha256, error=drift.error
        ),
        status=config_status(drift),
    )


def _alert_out(alert: services.Alert) -> AlertOut:
    return AlertOut(
        device_id=alert.device.pk,
        device_name=alert.device.name,
        kind=alert.kind,
        code=alert.code,
        message=alert.message,
        at=alert.at,
    )


# -- releases ------------------------------------------------------------------------------------


@router.get(
    "/releases", response=list[ReleaseOut], summary="Published agent versions, newest first"
)
def list_releases(request: HttpRequest) -> list[ReleaseOut]:
    return [
        ReleaseOut(
            version=r.version,
            sha256=r.sha256,
            length=r.length,
            allow_downgrade=r.allow_downgrade,
            published_at=r.published_at,
        )
        for r in services.releases()
    ]


# -- rollouts ------------------------------------------------------------------------------------


@router.get("/orgs/{org_id}/rollouts", response=list[RolloutOut], summary="Rollouts, newest first")
def list_rollouts(request: HttpRequest, org_id: UUID) -> list[RolloutOut]:
    scope = scope_of(request, org_id)
    found = services.rollouts_of(scope)
    progress = progress_of_rollouts(scope, found)
    return [rollout_out(r, progress[r.pk]) for r in found]


@router.post(
    "/orgs/{org_id}/rollouts",
    response={201: RolloutDetailOut},
    summary="Start a staged rollout of a release (admins; its first wave is offered at once)",
)
def create_rollout(
    request: HttpRequest, org_id: UUID, payload: RolloutIn
) -> Status[RolloutDetailOut]:
    scope = scope_of(request, org_id)
    scope.require(ROLLOUT_PERMISSION)
    with transaction.atomic():
        rollout = services.create_rollout(
            scope,
            version=payload.version,
            device_ids=payload.device_ids,
            group=payload.group,
            waves=payload.waves,
            failure_threshold_pct=payload.failure_threshold_pct,
            silent_timeout=timedelta(minutes=payload.silent_timeout_minutes),
            window_start=payload.window_start,
            window_end=payload.window_end,
            force=payload.force,
            request=request,
        )
    return Status(201, rollout_detail(scope, rollout.pk))


@router.get(
    "/orgs/{org_id}/rollouts/{rollout_id}",
    response=RolloutDetailOut,
    summary="One rollout with its progress per wave and per device",
)
def get_rollout(request: HttpRequest, org_id: UUID, rollout_id: UUID) -> RolloutDetailOut:
    return rollout_detail(scope_of(request, org_id), rollout_id)


def _change_rollout(
    request: HttpRequest,
    org_id: UUID,
    rollout_id: UUID,
    change: Callable[..., object],
) -> RolloutDetailOut:
    scope = scope_of(request, org_id)
    scope.require(ROLLOUT_PERMISSION)
    with transaction.atomic():
        change(scope, rollout_id, request=request)
    return rollout_detail(scope, rollout_id)


@router.post(
    "/orgs/{org_id}/rollouts/{rollout_id}/pause",
    response=RolloutDetailOut,
    summary="Pause a running rollout (no new offers; devices already offered keep theirs)",
)
def pause_rollout(request: HttpRequest, org_id: UUID, rollout_id: UUID) -> RolloutDetailOut:
    return _change_rollout(request, org_id, rollout_id, services.pause_rollout)


@router.post(
    "/orgs/{org_id}/rollouts/{rollout_id}/resume",
    response=RolloutDetailOut,
    summary="Resume a paused rollout (a halted one stays halted)",
)
def resume_rollout(request: HttpRequest, org_id: UUID, rollout_id: UUID) -> RolloutDetailOut:
    return _change_rollout(request, org_id, rollout_id, services.resume_rollout)


@router.post(
    "/orgs/{org_id}/rollouts/{rollout_id}/cancel",
    response=RolloutDetailOut,
    summary="Cancel a rollout for good (every offer not yet done is withdrawn)",
)
def cancel_rollout(request: HttpRequest, org_id: UUID, rollout_id: UUID) -> RolloutDetailOut:
    return _change_rollout(request, org_id, rollout_id, services.cancel_rollout)


# -- configuration -------------------------------------------------------------------------------


@router.get(
    "/orgs/{org_id}/devices/{device_id}/configuration",
    response=ConfigurationOut,
    summary="A device's desired configuration, what it applied, and whether they match",
)
def get_configuration(request: HttpRequest, org_id: UUID, device_id: UUID) -> ConfigurationOut:
    return configuration_out(scope_of(request, org_id), device_id)


@router.put(
    "/orgs/{org_id}/devices/{device_id}/configuration",
    response=ConfigurationOut,
    summary="Set a device's configuration (TOML; validated, signed, then fetched by the device)",
)
def put_configuration(
    request: HttpRequest, org_id: UUID, device_id: UUID, payload: ConfigurationIn
) -> ConfigurationOut:
    scope = scope_of(request, org_id)
    with transaction.atomic():
        services.set_device_configuration(scope, device_id, payload.toml, request=request)
    return configuration_out(scope, device_id)


# -- alerts --------------------------------------------------------------------------------------


@router.get(
    "/orgs/{org_id}/update-alerts",
    response=list[AlertOut],
    summary="Devices whose update check or update failed, or whose configuration failed/drifted",
)
def list_update_alerts(request: HttpRequest, org_id: UUID) -> list[AlertOut]:
    return [_alert_out(a) for a in services.update_alerts(scope_of(request, org_id))]
