"""REST endpoints for thresholds and alarms (thin: parse, call one service, render).

``/api/v1/orgs/{org_id}/points/{point_id}/thresholds`` (GET, PUT, DELETE) and
``/api/v1/orgs/{org_id}/alarms`` (list, one, acknowledge, counts). The services check the
permission (engineers set limits; every member may acknowledge) and audit in the transaction
the handler owns.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from django.db import transaction
from django.http import HttpRequest
from ninja import Field, Query, Router, Schema, Status

from fieldlink.accounts.auth import scope as scope_of
from fieldlink.accounts.schemas import StrictInput
from fieldlink.telemetry import alarm_services
from fieldlink.telemetry.alarm_services import AlarmFilter
from fieldlink.telemetry.alarms import Thresholds
from fieldlink.telemetry.models import Alarm, Threshold

router = Router(tags=["alarms"])

# Limits are process values: finite, and within what a float carries without surprises.
LIMIT_BOUND = 1e15


def _limit(description: str) -> float | None:
    return Field(
        default=None,
        ge=-LIMIT_BOUND,
        le=LIMIT_BOUND,
        allow_inf_nan=False,
        strict=True,  # "80" is a client bug, not a number
        description=description,
    )


class ThresholdsIn(StrictInput):
    low_low: float | None = _limit("Trip level below (critical)")
    low: float | None = _limit("Pre-alarm below (warning)")
    high: float | None = _limit("Pre-alarm above (warning)")
    high_high: float | None = _limit("Trip level above (critical)")
    hysteresis: float = Field(
        default=0.0,
        ge=0,
        le=LIMIT_BOUND,
        allow_inf_nan=False,
        strict=True,
        description="Deadband in the point's unit: a level is left only this far past its limit",
    )


class ThresholdsOut(Schema):
    point_id: UUID
    low_low: float | None
    low: float | None
    high: float | None
    high_high: float | None
    hysteresis: float
    state: str = Field(description="normal, low_low, low, high or high_high")
    updated_at: datetime


class AssetRef(Schema):
    id: UUID
    tag: str


class PointRef(Schema):
    id: UUID
    key: str
    unit: str


class AlarmOut(Schema):
    id: UUID
    kind: str = Field(description="limit or health")
    level: str = Field(description="A limit level or an NE 107 status")
    severity: str
    state: str = Field(description="open, acknowledged or cleared")
    active: bool = Field(description="The condition still holds")
    message: str
    value: float | None
    asset: AssetRef
    point: PointRef | None
    raised_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str | None = Field(description="Name or e-mail of who acknowledged it")
    cleared_at: datetime | None


class AlarmPageOut(Schema):
    items: list[AlarmOut]
    page: int
    per_page: int
    has_next: bool


class AlarmQuery(Schema):
    state: Literal["active", "open", "acknowledged", "cleared", "all"] = "active"
    asset_id: UUID | None = None
    severity: Literal["critical", "warning"] | None = None
    page: int = Field(default=1, ge=1, le=10_000)
    per_page: int = Field(default=50, ge=1, le=alarm_services.MAX_PAGE)


class AlarmCountsOut(Schema):
    open: int = Field(description="Active and not yet acknowledged")
    acknowledged: int = Field(description="Active and acknowledged")


def _thresholds(threshold: Threshold) -> ThresholdsOut:
    return ThresholdsOut(
        point_id=threshold.point_id,
        low_low=threshold.low_low,
        low=threshold.low,
        high=threshold.high,
        high_high=threshold.high_high,
        hysteresis=threshold.hysteresis,
        state=threshold.state,
        updated_at=threshold.updated_at,
    )


def _who(alarm: Alarm) -> str | None:
    user = alarm.acknowledged_by
    if user is None:
        return None
    return user.get_full_name() or user.email


def alarm_out(alarm: Alarm) -> AlarmOut:
    point = alarm.point
    return AlarmOut(
        id=alarm.pk,
        kind=alarm.kind,
        level=alarm.level,
        severity=alarm.severity,
        state=alarm.state,
        active=alarm.active,
        message=alarm.message,
        value=alarm.value,
        asset=AssetRef(id=alarm.asset.pk, tag=alarm.asset.tag),
        point=PointRef(id=point.pk, key=point.key, unit=point.unit) if point else None,
        raised_at=alarm.raised_at,
        acknowledged_at=alarm.acknowledged_at,
        acknowledged_by=_who(alarm),
        cleared_at=alarm.cleared_at,
    )


# -- thresholds ----------------------------------------------------------------------------------


@router.get(
    "/orgs/{org_id}/points/{point_id}/thresholds",
    response={200: ThresholdsOut, 204: None},
    summary="A measuring point's limits (204 when it has none)",
)
def get_thresholds(
    request: HttpRequest, org_id: UUID, point_id: UUID
) -> ThresholdsOut | Status[None]:
    _point, threshold = alarm_services.get_thresholds(scope_of(request, org_id), point_id)
    return Status(204, None) if threshold is None else _thresholds(threshold)


@router.put(
    "/orgs/{org_id}/points/{point_id}/thresholds",
    response=ThresholdsOut,
    summary="Set a measuring point's limits (replaces them; re-evaluates the latest value)",
)
def put_thresholds(
    request: HttpRequest, org_id: UUID, point_id: UUID, payload: ThresholdsIn
) -> ThresholdsOut:
    scope = scope_of(request, org_id)
    limits = Thresholds(
        low_low=payload.low_low,
        low=payload.low,
        high=payload.high,
        high_high=payload.high_high,
        hysteresis=payload.hysteresis,
    )
    with transaction.atomic():
        threshold = alarm_services.set_thresholds(scope, point_id, limits, request=request)
    return _thresholds(threshold)


@router.delete(
    "/orgs/{org_id}/points/{point_id}/thresholds",
    response={204: None},
    summary="Remove a measuring point's limits (its active limit alarm clears)",
)
def delete_thresholds(request: HttpRequest, org_id: UUID, point_id: UUID) -> Status[None]:
    scope = scope_of(request, org_id)
    with transaction.atomic():
        alarm_services.remove_thresholds(scope, point_id, request=request)
    return Status(204, None)


# -- alarms --------------------------------------------------------------------------------------


@router.get("/orgs/{org_id}/alarms", response=AlarmPageOut, summary="Alarms, newest first")
def list_alarms(request: HttpRequest, org_id: UUID, query: Query[AlarmQuery]) -> AlarmPageOut:
    page = alarm_services.list_alarms(
        scope_of(request, org_id),
        AlarmFilter(
            state=query.state,
            asset_id=query.asset_id,
            severity=query.severity,
            page=query.page,
            per_page=query.per_page,
        ),
    )
    return AlarmPageOut(
        items=[alarm_out(a) for a in page.alarms],
        page=page.page,
        per_page=page.per_page,
        has_next=page.has_next,
    )


@router.get(
    "/orgs/{org_id}/alarms/counts", response=AlarmCountsOut, summary="Active alarms by state"
)
def alarm_counts(request: HttpRequest, org_id: UUID) -> AlarmCountsOut:
    return AlarmCountsOut(**alarm_services.active_counts(scope_of(request, org_id)))


@router.get("/orgs/{org_id}/alarms/{alarm_id}", response=AlarmOut, summary="One alarm")
def get_alarm(request: HttpRequest, org_id: UUID, alarm_id: UUID) -> AlarmOut:
    return alarm_out(alarm_services.get_alarm(scope_of(request, org_id), alarm_id))


@router.post(
    "/orgs/{org_id}/alarms/{alarm_id}/acknowledge",
    response=AlarmOut,
    summary="Acknowledge an alarm (idempotent: the first acknowledgement stands)",
)
def acknowledge(request: HttpRequest, org_id: UUID, alarm_id: UUID) -> AlarmOut:
    scope = scope_of(request, org_id)
    with transaction.atomic():
        alarm = alarm_services.acknowledge(scope, alarm_id, request=request)
    return alarm_out(alarm)
