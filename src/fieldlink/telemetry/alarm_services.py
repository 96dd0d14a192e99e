"""Use cases of thresholds and alarms.

Two things raise alarms, both inside the transaction that brought the news:

- a measuring point's limits (``Threshold``), evaluated by the hysteresis core
  (``telemetry.alarms``) on every stored batch (``on_samples``, an ingestion hook);
- an asset's NE 107 health leaving "ok" (``on_health_change``, a devices hook).

So a batch and the alarms it raises commit together, and a batch that is rolled back raises
nothing. Late (backfill) samples older than the last evaluated one are stored but not evaluated:
replaying history must not reopen today's alarms. Notifications (webhooks, e-mail) are
``ALARM_EVENT_HOOKS``: they insert their rows in the same transaction and send after commit.

People act on alarms through a ``Scope``: every member may acknowledge (the operator on shift is
often a viewer; acknowledging configures nothing) and it is audited; engineers set limits.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from uuid import UUID

from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.utils import timezone

from fieldlink.accounts.access import Permission, Scope
from fieldlink.accounts.services import audit
from fieldlink.devices.models import Asset, EdgeDevice, Health, HealthChange, MeasuringPoint
from fieldlink.kit.errors import ValidationFailedError
from fieldlink.protocol.telemetry import QUALITY_GOOD
from fieldlink.telemetry import alarms
from fieldlink.telemetry.alarms import Action, Level, Thresholds
from fieldlink.telemetry.errors import ThresholdsInvalidError
from fieldlink.telemetry.ingest import StoredSample
from fieldlink.telemetry.models import (
    Alarm,
    AlarmKind,
    AlarmState,
    LatestValue,
    Severity,
    Threshold,
)
from fieldlink.telemetry.querying import now_ms

__all__ = [
    "ALARM_EVENT_HOOKS",
    "AlarmFilter",
    "AlarmPage",
    "acknowledge",
    "active_counts",
    "get_alarm",
    "get_thresholds",
    "list_alarms",
    "on_health_change",
    "on_samples",
    "remove_thresholds",
    "set_thresholds",
]

AlarmEventHook = Callable[[Alarm, str], None]
# Called with (alarm, event) inside the transaction that changed the alarm; event is one of
# "alarm.opened", "alarm.escalated", "alarm.deescalated", "alarm.acknowledged", "alarm.cleared".
ALARM_EVENT_HOOKS: list[AlarmEventHook] = []

LEVEL_LABEL: Final[dict[str, str]] = {
    Level.LOW_LOW: "low low",
    Level.LOW: "low",
    Level.HIGH: "high",
    Level.HIGH_HIGH: "high high",
}
# The trip levels and a failed instrument need someone now; the rest is a warning.
CRITICAL: Final = frozenset({Level.LOW_LOW, Level.HIGH_HIGH, Health.FAILURE})
HEALTH_ALARMING: Final = frozenset(
    {
        Health.FAILURE,
        Health.FUNCTION_CHECK,
        Health.OUT_OF_SPECIFICATION,
        Health.MAINTENANCE_REQUIRED,
    }
)
MAX_PAGE: Final = 200
EVENT_OF_ACTION: Final[dict[Action, str]] = {
    Action.OPEN: "alarm.opened",
    Action.ESCALATE: "alarm.escalated",
    Action.DEESCALATE: "alarm.deescalated",
    Action.CLEAR: "alarm.cleared",
}


def _severity(level: str) -> str:
    return Severity.CRITICAL if level in CRITICAL else Severity.WARNING


def _emit(alarm: Alarm, event: str) -> None:
    for hook in ALARM_EVENT_HOOKS:
        hook(alarm, event)


def _at(ts_ms: int) -> datetime:
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC)


# -- thresholds -------------------------------------------------------------------------------


def _limits(threshold: Threshold) -> Thresholds:
    return Thresholds(
        low_low=threshold.low_low,
        low=threshold.low,
        high=threshold.high,
        high_high=threshold.high_high,
        hysteresis=threshold.hysteresis,
    )


def _threshold_fields(threshold: Threshold | None) -> dict[str, Any] | None:
    if threshold is None:
        return None
    return {
        "low_low": threshold.low_low,
        "low": threshold.low,
        "high": threshold.high,
        "high_high": threshold.high_high,
        "hysteresis": threshold.hysteresis,
    }


def get_thresholds(scope: Scope, point_id: UUID | str) -> tuple[MeasuringPoint, Threshold | None]:
    scope.require(Permission.DATA_VIEW)
    point = scope.get(MeasuringPoint.objects.select_related("asset"), point_id, what="point")
    return point, Threshold.objects.filter(point=point).first()


def set_thresholds(
    scope: Scope,
    point_id: UUID | str,
    limits: Thresholds,
    *,
    request: HttpRequest | None = None,
) -> Threshold:
    """Replace a point's limits; the alarm state is re-evaluated against its latest value.

    Re-evaluating from "normal" means a limit that the present value already violates opens
    its alarm now, not at the next crossing, and a limit that was widened clears it.
    """
    scope.require(Permission.DATA_CONFIGURE)
    try:
        limits.validate()
    except alarms.ThresholdsInvalidError as exc:
        raise ThresholdsInvalidError(str(exc), details={"field": exc.field}) from exc
    if not limits.limits():
        raise ThresholdsInvalidError(
            "Set at least one limit, or remove the thresholds.", details={"field": "high"}
        )
    point = scope.get(
        MeasuringPoint.objects.select_for_update().select_related("asset"), point_id, what="point"
    )
    threshold = Threshold.objects.select_for_update().filter(point=point).first()
    before = _threshold_fields(threshold)
    if threshold is None:
        threshold = Threshold(point=point, organisation=scope.organisation)
    threshold.low_low, threshold.low = limits.low_low, limits.low
    threshold.high, threshold.high_high = limits.high, limits.high_high
    threshold.hysteresis = limits.hysteresis
    threshold.updated_at = timezone.now()
    threshold.updated_by = scope.principal.user
    latest = LatestValue.objects.filter(series__point=point).first()
    if latest is not None and latest.quality >= QUALITY_GOOD:
        new_level = alarms.raw_level(limits, latest.value)
        _move(threshold, point, Level(threshold.state), new_level, value=latest.value, ts=latest.ts)
        threshold.state_ts = latest.ts
    elif threshold.state != Level.NORMAL:
        # No good value to judge by: the old state has no basis under the new limits.
        _move(threshold, point, Level(threshold.state), Level.NORMAL, value=None, ts=now_ms())
    threshold.save()
    audit(
        scope,
        "thresholds.set",
        target=point,
        before=before,
        after=_threshold_fields(threshold),
        request=request,
    )
    return threshold


def remove_thresholds(
    scope: Scope, point_id: UUID | str, *, request: HttpRequest | None = None
) -> None:
    """Drop a point's limits; its active limit alarm, if any, is cleared."""
    scope.require(Permission.DATA_CONFIGURE)
    point = scope.get(
        MeasuringPoint.objects.select_for_update().select_related("asset"), point_id, what="point"
    )
    threshold = Threshold.objects.select_for_update().filter(point=point).first()
    if threshold is None:
        return
    before = _threshold_fields(threshold)
    if threshold.state != Level.NORMAL:
        _move(threshold, point, Level(threshold.state), Level.NORMAL, value=None, ts=now_ms())
    threshold.delete()
    audit(scope, "thresholds.removed", target=point, before=before, request=request)


# -- evaluation (ingestion hook) --------------------------------------------------------------


def _limit_message(point: MeasuringPoint, level: str, value: float | None, t: Threshold) -> str:
    name = f"{point.asset.tag}/{point.key}"
    if level == Level.NORMAL or value is None:
        return f"{name} back within limits"
    limit = getattr(t, level)
    return f"{name} {LEVEL_LABEL[level]}: {value:g} {point.unit} (limit {limit:g})"


def _move(
    threshold: Threshold,
    point: MeasuringPoint,
    old: Level,
    new: Level,
    *,
    value: float | None,
    ts: int,
) -> None:
    """Carry the point's limit alarm from ``old`` to ``new``: open, escalate, clear."""
    threshold.state = new
    for event in alarms.transition(old, new):
        if event.action is Action.OPEN:
            alarm = Alarm.objects.create(
                organisation_id=point.organisation_id,
                asset_id=point.asset_id,
                point=point,
                kind=AlarmKind.LIMIT,
                level=event.level,
                severity=_severity(event.level),
                message=_limit_message(point, event.level, value, threshold),
                value=value,
                raised_at=_at(ts),
            )
            _emit(alarm, EVENT_OF_ACTION[event.action])
            continue
        active = (
            Alarm.objects.select_for_update()
            .filter(point=point, kind=AlarmKind.LIMIT, active=True)
            .first()
        )
        if active is None:  # the state said alarm, the table not: nothing to carry over
            continue
        now = timezone.now()
        if event.action is Action.CLEAR:
            active.active, active.state, active.cleared_at = False, AlarmState.CLEARED, now
        else:
            active.level, active.severity = event.level, _severity(event.level)
            active.message = _limit_message(point, event.level, value, threshold)
            active.value = value
            if event.action is Action.ESCALATE:
                # A trip level needs fresh attention even if the pre-alarm was acknowledged.
                active.state, active.acknowledged_at, active.acknowledged_by = (
                    AlarmState.OPEN,
                    None,
                    None,
                )
        active.updated_at = now
        active.save()
        _emit(active, EVENT_OF_ACTION[event.action])


def on_samples(device: EdgeDevice, samples: Sequence[StoredSample]) -> None:
    """Evaluate a stored batch against the limits of its points (an ``INGEST_HOOKS`` entry)."""
    by_point: dict[UUID, list[StoredSample]] = defaultdict(list)
    for sample in samples:
        if sample.limited:  # ingestion knows which points have limits: no query for the rest
            by_point[sample.point_id].append(sample)
    if not by_point:
        return
    thresholds = (
        Threshold.objects.select_for_update(of=("self",))  # not the points and assets joined
        .filter(point_id__in=list(by_point))
        .select_related("point", "point__asset")
        .order_by("point_id")  # one lock order for every writer
    )
    for threshold in thresholds:
        limits = _limits(threshold)
        level = Level(threshold.state)
        last_ts = threshold.state_ts
        for sample in sorted(by_point[threshold.point_id], key=lambda s: s.ts):
            if sample.ts <= last_ts:
                continue  # backfill: stored, not evaluated
            new, events = alarms.evaluate(
                limits, level, sample.value, good=sample.quality >= QUALITY_GOOD
            )
            if events:
                _move(threshold, threshold.point, level, new, value=sample.value, ts=sample.ts)
            level, last_ts = new, sample.ts
        if (level, last_ts) != (threshold.state, threshold.state_ts):
            threshold.state, threshold.state_ts = level, last_ts
            threshold.save(update_fields=["state", "state_ts"])


# -- health (devices hook) --------------------------------------------------------------------


def _health_message(asset: Asset, change: HealthChange) -> str:
    text = f"{asset.tag}: {Health(change.health).label}"
    if change.code:
        text += f" ({change.code})"
    if change.cause:
        text += f" - {change.cause}"
    return text[:300]


def on_health_change(change: HealthChange) -> None:
    """Open, update or clear an asset's health alarm (a ``HEALTH_CHANGE_HOOKS`` entry)."""
    asset = change.asset
    active = (
        Alarm.objects.select_for_update()
        .filter(asset=asset, kind=AlarmKind.HEALTH, active=True)
        .first()
    )
    if change.health == Health.UNKNOWN:
        return  # no news about the instrument: leave whatever is there
    if change.health not in HEALTH_ALARMING:
        if active is not None:
            active.active, active.state = False, AlarmState.CLEARED
            active.cleared_at = active.updated_at = timezone.now()
            active.save()
            _emit(active, "alarm.cleared")
        return
    if active is None:
        alarm = Alarm.objects.create(
            organisation_id=asset.organisation_id,
            asset=asset,
            kind=AlarmKind.HEALTH,
            level=change.health,
            severity=_severity(change.health),
            message=_health_message(asset, change),
            raised_at=change.at,
        )
        _emit(alarm, "alarm.opened")
        return
    severity = _severity(change.health)
    worse = severity == Severity.CRITICAL and active.severity != Severity.CRITICAL
    active.level, active.severity = change.health, severity
    active.message = _health_message(asset, change)
    if worse:
        active.state, active.acknowledged_at, active.acknowledged_by = AlarmState.OPEN, None, None
    active.updated_at = timezone.now()
    active.save()
    _emit(active, "alarm.escalated" if worse else "alarm.deescalated")


# -- people -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlarmFilter:
    state: str = "active"  # active | open | acknowledged | cleared | all
    asset_id: UUID | None = None
    severity: str | None = None
    page: int = 1
    per_page: int = 50


@dataclass(frozen=True)
class AlarmPage:
    alarms: list[Alarm]
    page: int
    per_page: int
    has_next: bool


STATE_FILTERS: Final[Mapping[str, Mapping[str, Any]]] = {
    "active": {"active": True},
    "open": {"state": AlarmState.OPEN},
    "acknowledged": {"state": AlarmState.ACKNOWLEDGED},
    "cleared": {"state": AlarmState.CLEARED},
    "all": {},
}


def _alarms(scope: Scope) -> QuerySet[Alarm]:
    return scope.filter(Alarm.objects.select_related("asset", "point", "acknowledged_by"))


def list_alarms(scope: Scope, wanted: AlarmFilter) -> AlarmPage:
    """Alarms of the organisation, newest first; ``has_next`` tells whether a next page exists."""
    scope.require(Permission.DATA_VIEW)
    if wanted.state not in STATE_FILTERS:
        raise ValidationFailedError(
            "Unknown state filter.", details={"field": "state", "allowed": list(STATE_FILTERS)}
        )
    rows = _alarms(scope).filter(**STATE_FILTERS[wanted.state])
    if wanted.asset_id is not None:
        rows = rows.filter(asset_id=wanted.asset_id)
    if wanted.severity is not None:
        rows = rows.filter(severity=wanted.severity)
    per_page = max(1, min(wanted.per_page, MAX_PAGE))
    start = (max(1, wanted.page) - 1) * per_page
    found = list(rows.order_by("-raised_at", "-id")[start : start + per_page + 1])
    return AlarmPage(found[:per_page], max(1, wanted.page), per_page, len(found) > per_page)


def get_alarm(scope: Scope, alarm_id: UUID | str) -> Alarm:
    scope.require(Permission.DATA_VIEW)
    return scope.get(_alarms(scope), alarm_id, what="alarm")


def active_counts(scope: Scope) -> dict[str, int]:
    """Active alarms by state (open = not yet acknowledged), for badges."""
    scope.require(Permission.DATA_VIEW)
    rows = _alarms(scope).filter(active=True).values("state").annotate(n=Count("id"))
    counts = {"open": 0, "acknowledged": 0}
    for row in rows:
        counts[str(row["state"])] = int(row["n"])
    return counts


def acknowledge(scope: Scope, alarm_id: UUID | str, *, request: HttpRequest | None = None) -> Alarm:
    """Record that a person has seen the alarm. Idempotent: the first acknowledgement stands.

    A cleared alarm that nobody acknowledged may still be acknowledged (it stays cleared).
    """
    scope.require(Permission.ALARMS_RESPOND)
    alarm = scope.get(
        Alarm.objects.select_for_update(of=("self",)).select_related("asset", "point"),
        alarm_id,
        what="alarm",
    )
    if alarm.acknowledged_at is not None:
        return alarm
    now = timezone.now()
    alarm.acknowledged_at, alarm.acknowledged_by = now, scope.principal.user
    if alarm.state == AlarmState.OPEN:
        alarm.state = AlarmState.ACKNOWLEDGED
    alarm.updated_at = now
    alarm.save()
    audit(
        scope,
        "alarm.acknowledged",
        target=alarm,
        after={"level": alarm.level, "state": alarm.state},
        request=request,
    )
    _emit(alarm, "alarm.acknowledged")
    return alarm
