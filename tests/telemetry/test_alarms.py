"""Thresholds and alarms: crossings through real ingestion, health changes, acknowledgement."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from django.db import transaction

from fieldlink.accounts.access import PermissionDeniedError
from fieldlink.accounts.models import Role
from fieldlink.audit.models import AuditEntry
from fieldlink.devices.models import Health
from fieldlink.devices.services import report_health
from fieldlink.kit.errors import NotFoundError, ValidationFailedError
from fieldlink.protocol.telemetry import QUALITY_BAD, Batch, Value
from fieldlink.telemetry import alarm_services, ingest
from fieldlink.telemetry.alarm_services import AlarmFilter
from fieldlink.telemetry.alarms import Thresholds
from fieldlink.telemetry.errors import ThresholdsInvalidError
from fieldlink.telemetry.models import Alarm, AlarmState, Threshold
from tests.devices.conftest import Team, rival, team
from tests.telemetry.ingest_support import Plant, make_plant, now_ms

__all__ = ["rival", "team"]

pytestmark = [pytest.mark.django_db, pytest.mark.backend]

T0 = now_ms() - 600_000
LIMITS = Thresholds(low_low=0.0, low=10.0, high=80.0, high_high=90.0, hysteresis=2.0)


@pytest.fixture
def events() -> Iterator[list[tuple[str, str]]]:
    seen: list[tuple[str, str]] = []

    def record(alarm: Alarm, event: str) -> None:
        seen.append((event, alarm.level))

    alarm_services.ALARM_EVENT_HOOKS.append(record)
    yield seen
    alarm_services.ALARM_EVENT_HOOKS.remove(record)


@pytest.fixture
def plant(team: Team) -> Plant:
    return make_plant("alarm", org=team.org, points=2)


class Sender:
    def __init__(self, plant: Plant) -> None:
        self.plant = plant
        self.sequence = 0
        self.ts = T0

    def send(self, *values: float, quality: int = 192, point: int = 0) -> None:
        """One batch per value, one second apart, for one point."""
        for value in values:
            self.sequence += 1
            self.ts += 1000
            self.at(self.ts, value, quality=quality, point=point)

    def at(self, ts: int, value: float, *, quality: int = 192, point: int = 0) -> None:
        name = f"{self.plant.asset.tag}/{self.plant.points[point].key}"
        batch = Batch(sequence=self.sequence, values=[Value(name, ts, value, quality)])
        with transaction.atomic():
            ingest.ingest_batch(self.plant.device, batch)


@pytest.fixture
def sender(plant: Plant) -> Sender:
    return Sender(plant)


def limit(team: Team, plant: Plant, limits: Thresholds = LIMITS) -> Threshold:
    with transaction.atomic():
        return alarm_services.set_thresholds(team.scope(Role.ENGINEER), plant.points[0].pk, limits)


def alarms_of(plant: Plant) -> list[Alarm]:
    return list(Alarm.objects.filter(asset=plant.asset).order_by("raised_at", "id"))


# -- limits ------------------------------------------------------------------------------------


def test_engineer_sets_thresholds_and_the_change_is_audited(team: Team, plant: Plant) -> None:
    threshold = limit(team, plant)
    assert (threshold.low_low, threshold.high_high, threshold.hysteresis) == (0.0, 90.0, 2.0)
    entry = AuditEntry.objects.get(chain=str(team.org.pk), action="thresholds.set")
    assert entry.after["high"] == 80.0
    assert entry.before is None


def test_viewer_cannot_set_thresholds(team: Team, plant: Plant) -> None:
    with pytest.raises(PermissionDeniedError):
        alarm_services.set_thresholds(team.scope(Role.VIEWER), plant.points[0].pk, LIMITS)


@pytest.mark.parametrize(
    ("limits", "field"),
    [
        (Thresholds(low=50.0, high=40.0), "high"),
        (Thresholds(high=80.0, high_high=80.0), "high_high"),
        (Thresholds(high=float("nan")), "high"),
        (Thresholds(high=1.0, hysteresis=-1.0), "hysteresis"),
        (Thresholds(low=10.0, high=12.0, hysteresis=5.0), "hysteresis"),
        (Thresholds(), "high"),
    ],
)
def test_invalid_thresholds_name_the_field_and_store_nothing(
    team: Team, plant: Plant, limits: Thresholds, field: str
) -> None:
    with pytest.raises(ThresholdsInvalidError) as caught:
        alarm_services.set_thresholds(team.scope(Role.ENGINEER), plant.points[0].pk, limits)
    assert caught.value.details["field"] == field
    assert not Threshold.objects.exists()


def test_another_organisations_point_is_not_found(team: Team, rival: Team) -> None:
    theirs = make_plant("theirs", org=rival.org)
    with pytest.raises(NotFoundError):
        alarm_services.set_thresholds(team.scope(), theirs.points[0].pk, LIMITS)


def test_crossing_opens_one_alarm_and_the_deadband_does_not_chatter(
    team: Team, plant: Plant, sender: Sender, events: list[tuple[str, str]]
) -> None:
    limit(team, plant)
    sender.send(50, 81, 79, 80.5, 78.5, 81, 79)  # all above high - hysteresis (78)
    assert events == [("alarm.opened", "high")]
    [alarm] = alarms_of(plant)
    assert (alarm.kind, alarm.level, alarm.severity, alarm.state) == (
        "limit",
        "high",
        "warning",
        "open",
    )
    assert alarm.value == 81
    assert alarm.raised_at == datetime.fromtimestamp((T0 + 2000) / 1000, tz=UTC)
    assert "FIT-alarm/p0 high: 81" in alarm.message

    sender.send(77.9)
    assert events[-1] == ("alarm.cleared", "high")
    alarm.refresh_from_db()
    assert (alarm.active, alarm.state) == (False, AlarmState.CLEARED)
    assert alarm.cleared_at is not None
    assert Threshold.objects.get(point=plant.points[0]).state == "normal"


def test_escalation_updates_the_same_alarm_and_needs_a_fresh_acknowledgement(
    team: Team, plant: Plant, sender: Sender, events: list[tuple[str, str]]
) -> None:
    limit(team, plant)
    sender.send(85)
    [alarm] = alarms_of(plant)
    alarm_services.acknowledge(team.scope(Role.VIEWER), alarm.pk)
    sender.send(95)
    alarm.refresh_from_db()
    assert (alarm.level, alarm.severity, alarm.state) == ("high_high", "critical", "open")
    assert alarm.acknowledged_at is None
    sender.send(85)  # back to the pre-alarm: same alarm, de-escalated
    sender.send(5)  # to the other side: the high alarm clears, a low one opens
    assert [e for e, _ in events] == [
        "alarm.opened",
        "alarm.acknowledged",
        "alarm.escalated",
        "alarm.deescalated",
        "alarm.cleared",
        "alarm.opened",
    ]
    assert [(a.level, a.active) for a in alarms_of(plant)] == [("high", False), ("low", True)]


def test_backfill_older_than_the_last_value_is_stored_but_opens_nothing(
    team: Team, plant: Plant, sender: Sender
) -> None:
    limit(team, plant)
    sender.send(50)
    sender.sequence += 1
    sender.at(T0 - 3_600_000, 99.0)  # an hour-old value from a drained backlog
    assert alarms_of(plant) == []


def test_values_of_bad_quality_do_not_move_the_state(
    team: Team, plant: Plant, sender: Sender
) -> None:
    limit(team, plant)
    sender.send(99, quality=QUALITY_BAD)
    assert alarms_of(plant) == []


def test_a_batch_rolled_back_after_evaluation_leaves_no_alarm(
    team: Team, plant: Plant, sender: Sender
) -> None:
    limit(team, plant)

    def fail(*_: object) -> None:
        raise RuntimeError("later hook fails")

    ingest.INGEST_HOOKS.append(fail)
    try:
        with pytest.raises(RuntimeError):
            sender.send(99)
    finally:
        ingest.INGEST_HOOKS.remove(fail)
    assert alarms_of(plant) == []
    assert Threshold.objects.get(point=plant.points[0]).state == "normal"


def test_limits_set_below_the_present_value_open_the_alarm_at_once(
    team: Team, plant: Plant, sender: Sender
) -> None:
    sender.send(85)
    limit(team, plant)
    [alarm] = alarms_of(plant)
    assert (alarm.level, alarm.value) == ("high", 85)
    with transaction.atomic():
        alarm_services.remove_thresholds(team.scope(Role.ENGINEER), plant.points[0].pk)
    alarm.refresh_from_db()
    assert alarm.state == AlarmState.CLEARED
    assert not Threshold.objects.exists()
    assert AuditEntry.objects.filter(action="thresholds.removed").count() == 1


# -- acknowledgement ---------------------------------------------------------------------------


def test_viewer_acknowledges_with_who_and_when_audited_and_idempotent(
    team: Team, plant: Plant, sender: Sender
) -> None:
    limit(team, plant)
    sender.send(85)
    [alarm] = alarms_of(plant)
    viewer = team.users[Role.VIEWER]
    with transaction.atomic():
        acked = alarm_services.acknowledge(team.scope(Role.VIEWER), alarm.pk)
    assert (acked.state, acked.acknowledged_by) == (AlarmState.ACKNOWLEDGED, viewer)
    first = acked.acknowledged_at
    with transaction.atomic():
        again = alarm_services.acknowledge(team.scope(Role.OWNER), alarm.pk)
    assert (again.acknowledged_by, again.acknowledged_at) == (viewer, first)
    assert AuditEntry.objects.filter(action="alarm.acknowledged").count() == 1


def test_alarm_cleared_unacknowledged_stays_visible_and_can_be_acknowledged(
    team: Team, plant: Plant, sender: Sender
) -> None:
    limit(team, plant)
    sender.send(85, 50)
    [alarm] = alarms_of(plant)
    assert (alarm.state, alarm.acknowledged_at) == (AlarmState.CLEARED, None)
    page = alarm_services.list_alarms(team.scope(Role.VIEWER), AlarmFilter(state="cleared"))
    assert [a.pk for a in page.alarms] == [alarm.pk]
    acked = alarm_services.acknowledge(team.scope(Role.VIEWER), alarm.pk)
    assert acked.state == AlarmState.CLEARED
    assert acked.acknowledged_at is not None


def test_acknowledging_another_organisations_alarm_is_not_found(
    team: Team, rival: Team, sender: Sender
) -> None:
    limit(team, sender.plant)
    sender.send(95)
    [alarm] = alarms_of(sender.plant)
    with pytest.raises(NotFoundError):
        alarm_services.acknowledge(rival.scope(Role.OWNER), alarm.pk)
    alarm.refresh_from_db()
    assert alarm.acknowledged_at is None


def test_list_filters_pages_and_counts(team: Team, plant: Plant, sender: Sender) -> None:
    limit(team, plant)
    with transaction.atomic():
        alarm_services.set_thresholds(
            team.scope(Role.ENGINEER), plant.points[1].pk, Thresholds(high=1.0)
        )
    sender.send(85)
    sender.send(5.0, point=1)
    scope = team.scope(Role.VIEWER)
    assert alarm_services.active_counts(scope) == {"open": 2, "acknowledged": 0}
    first = alarm_services.list_alarms(scope, AlarmFilter(per_page=1))
    second = alarm_services.list_alarms(scope, AlarmFilter(per_page=1, page=2))
    assert (len(first.alarms), first.has_next, second.has_next) == (1, True, False)
    assert first.alarms[0].pk != second.alarms[0].pk
    with pytest.raises(ValidationFailedError):
        alarm_services.list_alarms(scope, AlarmFilter(state="bogus"))


# -- health ------------------------------------------------------------------------------------


def test_health_failure_opens_a_critical_alarm_that_ok_clears(
    plant: Plant, events: list[tuple[str, str]]
) -> None:
    def report(status: str, code: str = "") -> None:
        with transaction.atomic():
            report_health(plant.asset, status, code=code, cause="Sensor broken", source="device")

    report(Health.MAINTENANCE_REQUIRED, "M12")
    report(Health.FAILURE, "F270")
    report(Health.UNKNOWN)
    report(Health.OK)
    assert [e for e, _ in events] == ["alarm.opened", "alarm.escalated", "alarm.cleared"]
    [alarm] = alarms_of(plant)
    assert (alarm.kind, alarm.level, alarm.severity) == ("health", "failure", "critical")
    assert "F270" in alarm.message
    assert alarm.state == AlarmState.CLEARED
