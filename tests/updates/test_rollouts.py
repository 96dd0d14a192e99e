"""Releases and staged rollouts against the database: offers, waves, halts, refusals, audit.

Releases are published through the real repository (offline-signed metadata verified against
the trusted root), so a rollout can only name what a device could really install.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest

from fieldlink.accounts.models import Role
from fieldlink.audit.models import PLATFORM_CHAIN, AuditEntry
from fieldlink.devices.models import EdgeDevice
from fieldlink.kit.errors import NotFoundError
from fieldlink.ops.tasks import PERIODIC
from fieldlink.protocol.updates import DeviceReport
from fieldlink.updates import services, tasks
from fieldlink.updates.errors import (
    DowngradeRefusedError,
    PublicationRefusedError,
    ReleaseNotPublishedError,
    RolloutDeviceBusyError,
    RolloutInvalidError,
    RolloutStateError,
)
from fieldlink.updates.models import Release, Rollout, RolloutDevice, RolloutState
from tests.devices.conftest import Team
from tests.updates.conftest import Publisher, enrolled

pytestmark = [pytest.mark.django_db, pytest.mark.backend]

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def fleet(team: Team, n: int, **kw: Any) -> list[EdgeDevice]:
    return [enrolled(team, f"edge {i:02d}", **kw)[0] for i in range(n)]


def desired(devices: list[EdgeDevice]) -> dict[str, str]:
    return {
        str(pk): v
        for pk, v in EdgeDevice.objects.filter(pk__in=[d.pk for d in devices]).values_list(
            "pk", "desired_software_version"
        )
    }


def report(device: EdgeDevice, at: datetime, **fields: Any) -> None:
    services.record_report(device, DeviceReport(**fields), now=at)


def actions(team: Team) -> list[str]:
    return list(
        AuditEntry.objects.filter(chain=str(team.org.pk))
        .order_by("sequence")
        .values_list("action", flat=True)
    )


def states(rollout: Rollout) -> dict[str, str]:
    return {str(m.device_id): m.state for m in RolloutDevice.objects.filter(rollout=rollout)}


# -- releases


def test_publishing_creates_a_release_audited_in_the_platform_chain(
    publisher: Publisher,
) -> None:
    created = publisher.publish("1.2.0")
    assert [r.version for r in created] == ["1.2.0"]
    release = Release.objects.get(version="1.2.0")
    assert release.target_path == "software/fieldlink-agent-1.2.0.tar"
    assert release.allow_downgrade is False
    entry = AuditEntry.objects.filter(chain=PLATFORM_CHAIN).order_by("-sequence").first()
    assert entry is not None
    assert entry.action == "release.published"
    assert entry.actor_label == "test"
    assert entry.after is not None
    assert entry.after["releases"][0]["version"] == "1.2.0"
    # Publishing another version leaves the first as it was.
    assert [r.version for r in publisher.publish("1.3.0")] == ["1.3.0"]
    assert set(Release.objects.values_list("version", flat=True)) == {"1.2.0", "1.3.0"}


def test_republishing_a_version_with_other_bytes_refused(publisher: Publisher) -> None:
    publisher.publish("1.2.0", b"first bytes")
    with pytest.raises(PublicationRefusedError):
        publisher.publish("1.2.0", b"other bytes")
    assert Release.objects.get(version="1.2.0").length == len(b"first bytes")


# -- creating


def test_rollout_offers_the_canary_wave_first(publisher: Publisher, team: Team) -> None:
    publisher.publish("1.2.0")
    devices = fleet(team, 10)
    rollout = services.create_rollout(
        team.scope(Role.ADMIN), version="1.2.0", device_ids=[d.pk for d in devices], now=T0
    )
    assert rollout.state == RolloutState.RUNNING
    assert rollout.waves == [5, 25, 100]
    offered = {k for k, v in desired(devices).items() if v == "1.2.0"}
    # 5 % of 10 rounds up to one canary.
    assert len(offered) == 1
    assert {k for k, s in states(rollout).items() if s == "offered"} == offered
    assert actions(team)[-2:] == ["rollout.created", "rollout.devices_offered"]


def test_waves_advance_on_success_and_the_rollout_completes(
    publisher: Publisher, team: Team
) -> None:
    publisher.publish("1.2.0")
    devices = fleet(team, 4)
    rollout = services.create_rollout(
        team.scope(),
        version="1.2.0",
        device_ids=[d.pk for d in devices],
        waves=[25, 50, 100],
        now=T0,
    )
    at = T0
    for expected in (1, 2, 4):
        offered = [d for d in devices if desired([d])[str(d.pk)] == "1.2.0"]
        assert len(offered) == expected
        for device in offered:
            report(
                device, at, software_version="1.2.0", update_state="running", update_version="1.2.0"
            )
        at += timedelta(minutes=1)
        services.advance_rollouts(at)
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.COMPLETED
    assert set(states(rollout).values()) == {"succeeded"}
    assert "rollout.completed" in actions(team)
    assert actions(team).count("rollout.wave_advanced") == 2  # to 50 %, then to 100 %


def test_unpublished_version_refused(publisher: Publisher, team: Team) -> None:
    device, _ = enrolled(team, "edge")
    with pytest.raises(ReleaseNotPublishedError) as caught:
        services.create_rollout(team.scope(), version="9.9.9", device_ids=[device.pk])
    assert caught.value.code == "release_not_published"
    assert not Rollout.objects.exists()


def test_downgrade_attack_refused_without_force(publisher: Publisher, team: Team) -> None:
    publisher.publish("1.1.0")
    device, _ = enrolled(team, "edge", version="1.2.0")
    with pytest.raises(DowngradeRefusedError) as caught:
        services.create_rollout(team.scope(), version="1.1.0", device_ids=[device.pk])
    assert caught.value.code == "downgrade_refused"
    assert caught.value.details == {"devices": [str(device.pk)], "reason": "force_required"}
    # Forcing is not enough when the release engineers did not sign the downgrade.
    with pytest.raises(DowngradeRefusedError) as caught:
        services.create_rollout(team.scope(), version="1.1.0", device_ids=[device.pk], force=True)
    assert caught.value.details["reason"] == "not_signed_for_downgrade"
    assert desired([device]) == {str(device.pk): ""}


def test_forced_downgrade_of_a_release_signed_for_it(publisher: Publisher, team: Team) -> None:
    publisher.publish("1.1.1", allow_downgrade=True)
    device, _ = enrolled(team, "edge", version="1.2.0")
    rollout = services.create_rollout(
        team.scope(), version="1.1.1", device_ids=[device.pk], force=True, now=T0
    )
    assert rollout.force
    assert desired([device]) == {str(device.pk): "1.1.1"}


def test_device_already_in_an_active_rollout_refused(publisher: Publisher, team: Team) -> None:
    publisher.publish("1.2.0")
    publisher.publish("1.3.0")
    device, _ = enrolled(team, "edge")
    services.create_rollout(team.scope(), version="1.2.0", device_ids=[device.pk], now=T0)
    with pytest.raises(RolloutDeviceBusyError):
        services.create_rollout(team.scope(), version="1.3.0", device_ids=[device.pk], now=T0)
    assert desired([device]) == {str(device.pk): "1.2.0"}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"waves": [50, 40, 100]}, "waves"),
        ({"waves": [50]}, "waves"),
        ({"failure_threshold_pct": 101}, "failure_threshold_pct"),
        ({"silent_timeout": timedelta(seconds=5)}, "silent_timeout"),
        ({"window_start": time(2)}, "window"),
        ({"window_start": time(2), "window_end": time(2)}, "window"),
    ],
)
def test_invalid_rollout_parameters_name_the_field(
    publisher: Publisher, team: Team, kwargs: dict[str, Any], field: str
) -> None:
    publisher.publish("1.2.0")
    device, _ = enrolled(team, "edge")
    with pytest.raises(RolloutInvalidError) as caught:
        services.create_rollout(team.scope(), version="1.2.0", device_ids=[device.pk], **kwargs)
    assert caught.value.details == {"field": field}


def test_group_selects_its_enrolled_live_devices(publisher: Publisher, team: Team) -> None:
    publisher.publish("1.2.0")
    members = fleet(team, 3, group="north")
    enrolled(team, "south box", group="south")
    EdgeDevice.objects.create(organisation=team.org, name="never enrolled", group="north")
    revoked, _ = enrolled(team, "revoked box", group="north")
    EdgeDevice.objects.filter(pk=revoked.pk).update(revoked_at=T0, credential_digest="")
    rollout = services.create_rollout(
        team.scope(), version="1.2.0", group="north", waves=[100], now=T0
    )
    assert set(states(rollout)) == {str(d.pk) for d in members}
    assert rollout.group == "north"


@pytest.mark.parametrize("role", [Role.VIEWER, Role.ENGINEER])
def test_below_admin_cannot_start_a_rollout(publisher: Publisher, team: Team, role: Role) -> None:
    publisher.publish("1.2.0")
    device, _ = enrolled(team, "edge")
    with pytest.raises(Exception) as caught:  # noqa: PT011 - the code is what matters
        services.create_rollout(team.scope(role), version="1.2.0", device_ids=[device.pk])
    assert getattr(caught.value, "code", "") == "permission_denied"
    assert not Rollout.objects.exists()


def test_cross_tenant_device_in_a_rollout_is_not_found(
    publisher: Publisher, team: Team, rival: Team
) -> None:
    publisher.publish("1.2.0")
    theirs, _ = enrolled(rival, "their edge")
    with pytest.raises(NotFoundError):
        services.create_rollout(team.scope(), version="1.2.0", device_ids=[theirs.pk])
    assert desired([theirs]) == {str(theirs.pk): ""}
    with pytest.raises(NotFoundError):
        services.create_rollout(team.scope(), version="1.2.0", group="", device_ids=[theirs.pk])


def test_cross_tenant_rollout_cannot_be_paused(
    publisher: Publisher, team: Team, rival: Team
) -> None:
    publisher.publish("1.2.0")
    device, _ = enrolled(team, "edge")
    rollout = services.create_rollout(team.scope(), version="1.2.0", device_ids=[device.pk])
    for change in (services.pause_rollout, services.cancel_rollout, services.get_rollout):
        with pytest.raises(NotFoundError):
            change(rival.scope(), rollout.pk)
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.RUNNING


# -- failures and halting


def test_silent_canary_halts_the_rollout_and_withdraws_every_offer(
    publisher: Publisher, team: Team
) -> None:
    publisher.publish("1.2.0")
    devices = fleet(team, 3)
    rollout = services.create_rollout(
        team.scope(),
        version="1.2.0",
        device_ids=[d.pk for d in devices],
        waves=[33, 100],
        now=T0,
    )
    canary = next(d for d in devices if desired([d])[str(d.pk)] == "1.2.0")
    services.advance_rollouts(T0 + timedelta(minutes=29))
    assert Rollout.objects.get(pk=rollout.pk).state == RolloutState.RUNNING
    counts = services.advance_rollouts(T0 + timedelta(minutes=30))
    assert counts["timed_out"] == 1
    assert counts["halted"] == 1
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.HALTED
    assert "1 of 1 finished devices failed" in rollout.reason
    assert states(rollout)[str(canary.pk)] == "failed"
    assert set(desired(devices).values()) == {""}
    assert actions(team)[-2:] == ["rollout.devices_timed_out", "rollout.halted"]
    # Halted is final: a new decision is a new rollout.
    with pytest.raises(RolloutStateError):
        services.resume_rollout(team.scope(), rollout.pk)


def test_rolled_back_device_fails_and_is_not_told_to_retry(
    publisher: Publisher, team: Team
) -> None:
    publisher.publish("1.2.0")
    devices = fleet(team, 20)
    rollout = services.create_rollout(
        team.scope(),
        version="1.2.0",
        device_ids=[d.pk for d in devices],
        waves=[10, 100],
        failure_threshold_pct=50,
        now=T0,
    )
    first, second = (d for d in devices if desired([d])[str(d.pk)] == "1.2.0")
    report(
        first,
        T0,
        software_version="1.0.0",
        update_version="1.2.0",
        update_state="rolled_back",
        update_error="health check timed out",
    )
    report(second, T0, software_version="1.2.0", update_state="running", update_version="1.2.0")
    assert desired([first]) == {str(first.pk): ""}
    member = RolloutDevice.objects.get(rollout=rollout, device=first)
    assert (member.state, member.reason) == ("failed", "health check timed out")
    # 1 of 2 = 50 %: not above the threshold, the next wave goes out.
    services.advance_rollouts(T0 + timedelta(minutes=1))
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.RUNNING
    assert rollout.current_wave == 1
    assert "rollout.device_failed" in actions(team)


def test_progress_reports_keep_a_slow_device_from_counting_as_silent(
    publisher: Publisher, team: Team
) -> None:
    publisher.publish("1.2.0")
    device, _ = enrolled(team, "edge")
    rollout = services.create_rollout(team.scope(), version="1.2.0", device_ids=[device.pk], now=T0)
    report(
        device,
        T0 + timedelta(minutes=25),
        software_version="1.0.0",
        update_version="1.2.0",
        update_state="downloading",
    )
    services.advance_rollouts(T0 + timedelta(minutes=40))
    assert states(rollout) == {str(device.pk): "offered"}
    services.advance_rollouts(T0 + timedelta(minutes=55))
    assert states(rollout) == {str(device.pk): "failed"}


# -- pause, resume, cancel, window


def test_pause_stops_new_offers_and_resume_continues(publisher: Publisher, team: Team) -> None:
    publisher.publish("1.2.0")
    devices = fleet(team, 2)
    rollout = services.create_rollout(
        team.scope(),
        version="1.2.0",
        device_ids=[d.pk for d in devices],
        waves=[50, 100],
        now=T0,
    )
    canary = next(d for d in devices if desired([d])[str(d.pk)] == "1.2.0")
    services.pause_rollout(team.scope(), rollout.pk)
    report(canary, T0, software_version="1.2.0", update_state="running", update_version="1.2.0")
    services.advance_rollouts(T0 + timedelta(hours=2))
    assert list(desired(devices).values()).count("1.2.0") == 1
    with pytest.raises(RolloutStateError):
        services.pause_rollout(team.scope(), rollout.pk)
    services.resume_rollout(team.scope(), rollout.pk, now=T0 + timedelta(hours=2))
    assert set(desired(devices).values()) == {"1.2.0"}
    assert actions(team).count("rollout.paused") == 1
    assert actions(team).count("rollout.resumed") == 1


def test_cancel_withdraws_offers_not_yet_done(publisher: Publisher, team: Team) -> None:
    publisher.publish("1.2.0")
    devices = fleet(team, 2)
    rollout = services.create_rollout(
        team.scope(), version="1.2.0", device_ids=[d.pk for d in devices], waves=[100], now=T0
    )
    done, waiting = devices
    report(done, T0, software_version="1.2.0", update_state="running", update_version="1.2.0")
    services.cancel_rollout(team.scope(), rollout.pk)
    assert desired(devices) == {str(done.pk): "1.2.0", str(waiting.pk): ""}
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.CANCELLED
    with pytest.raises(RolloutStateError):
        services.cancel_rollout(team.scope(), rollout.pk)
    # The device is free for the next rollout.
    services.create_rollout(team.scope(), version="1.2.0", device_ids=[waiting.pk], now=T0)


def test_no_offer_outside_the_maintenance_window(publisher: Publisher, team: Team) -> None:
    publisher.publish("1.2.0")
    device, _ = enrolled(team, "edge")
    rollout = services.create_rollout(
        team.scope(),
        version="1.2.0",
        device_ids=[device.pk],
        window_start=time(22),
        window_end=time(2),
        now=T0,
    )
    assert desired([device]) == {str(device.pk): ""}
    services.advance_rollouts(T0.replace(hour=21, minute=59))
    assert states(rollout) == {str(device.pk): "pending"}
    services.advance_rollouts(T0.replace(hour=23, minute=30))
    assert desired([device]) == {str(device.pk): "1.2.0"}


def test_device_already_running_the_release_counts_as_done(
    publisher: Publisher, team: Team
) -> None:
    publisher.publish("1.2.0")
    device, _ = enrolled(team, "edge", version="1.2.0")
    rollout = services.create_rollout(team.scope(), version="1.2.0", device_ids=[device.pk], now=T0)
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.COMPLETED
    assert states(rollout) == {str(device.pk): "succeeded"}


def test_periodic_tasks_are_registered_and_run(publisher: Publisher) -> None:
    registered: dict[Any, timedelta] = {task: interval for interval, task in PERIODIC}
    assert registered[tasks.advance_rollouts] == timedelta(minutes=1)
    assert registered[tasks.refresh_tuf_metadata] == timedelta(hours=1)
    run: Callable[[], Any] = tasks.advance_rollouts.func
    assert run()["rollouts"] == 0
    assert tasks.refresh_tuf_metadata.func() == []  # just published: nothing is half-expired
