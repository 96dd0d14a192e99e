"""The updates REST API as each role sees it: releases, rollouts, configurations, alerts.

Releases are published through the real repository (``Publisher``), configurations are really
signed with the online config key, and devices report through the real service, so every
number the API shows comes from the same path a fleet takes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from django.utils import timezone

from fieldlink.accounts.models import Role, User
from fieldlink.audit.models import AuditEntry
from fieldlink.devices.models import EdgeDevice
from fieldlink.protocol.updates import DeviceReport
from fieldlink.updates import services
from fieldlink.updates.models import DeviceConfiguration, Rollout, TufTarget
from tests.accounts.conftest import SecureClient
from tests.devices.conftest import Team
from tests.updates.conftest import Publisher, enrolled

pytestmark = [pytest.mark.django_db, pytest.mark.backend]

SIM_TOML = (
    'log_level = "warning"\n'
    "[[sources]]\n"
    'name = "sim"\n'
    'kind = "simulator"\n'
    "[[sources.instruments]]\n"
    'tag = "FIT-1"\n'
    'model = "flow"\n'
)
BAD_PORT_TOML = '[[sources]]\nname = "l1"\nkind = "modbus"\nhost = "192.0.2.1"\nport = 70000\n'


def client_of(user: User) -> SecureClient:
    client = SecureClient(HTTP_USER_AGENT="updates-api", REMOTE_ADDR="127.0.0.1")
    client.force_login(user)
    return client


def send(client: SecureClient, method: str, url: str, body: Any = None) -> tuple[int, Any]:
    kwargs: dict[str, Any] = {}
    if body is not None:
        kwargs = {"data": body, "content_type": "application/json"}
    response = getattr(client, method)(url, **kwargs)
    return response.status_code, (response.json() if response.content else None)


def report(device: EdgeDevice, **fields: Any) -> None:
    services.record_report(
        EdgeDevice.objects.get(pk=device.pk), DeviceReport(**fields), now=timezone.now()
    )


def test_releases_listed_for_every_member(publisher: Publisher, team: Team) -> None:
    publisher.publish("1.2.0")
    publisher.publish("1.3.0", allow_downgrade=True)
    status, body = send(client_of(team.users[Role.VIEWER]), "get", "/api/v1/releases")
    assert status == 200
    assert [(r["version"], r["allow_downgrade"]) for r in body] == [
        ("1.3.0", True),
        ("1.2.0", False),
    ]
    assert all(len(r["sha256"]) == 64 and r["length"] > 0 for r in body)


def test_admin_rollout_progress_per_wave_and_device(publisher: Publisher, team: Team) -> None:
    publisher.publish("1.2.0")
    devices = [enrolled(team, f"edge {i}")[0] for i in range(4)]
    admin = client_of(team.users[Role.ADMIN])
    status, body = send(
        admin,
        "post",
        f"{team.api}/rollouts",
        {
            "version": "1.2.0",
            "device_ids": [str(d.pk) for d in devices],
            "waves": [25, 100],
            "silent_timeout_minutes": 45,
        },
    )
    assert status == 201, body
    rollout_id = body["id"]
    assert (body["state"], body["version"], body["silent_timeout_minutes"]) == (
        "running",
        "1.2.0",
        45,
    )
    assert [(w["index"], w["percent"], w["total"]) for w in body["per_wave"]] == [
        (0, 25, 1),
        (1, 100, 3),
    ]
    assert body["progress"] == {"total": 4, "pending": 3, "offered": 1, "succeeded": 0, "failed": 0}
    assert sorted(d["name"] for d in body["devices"]) == [d.name for d in devices]

    # A device that already reports the release running counts as succeeded at once.
    canary = next(d for d in body["devices"] if d["wave"] == 0)
    device = EdgeDevice.objects.get(pk=canary["device_id"])
    report(device, software_version="1.2.0", update_version="1.2.0", update_state="running")
    viewer = client_of(team.users[Role.VIEWER])
    status, detail = send(viewer, "get", f"{team.api}/rollouts/{rollout_id}")
    assert status == 200
    [done] = [d for d in detail["devices"] if d["device_id"] == canary["device_id"]]
    assert (done["state"], done["software_version"]) == ("succeeded", "1.2.0")
    assert detail["per_wave"][0]["succeeded"] == 1

    status, listing = send(viewer, "get", f"{team.api}/rollouts")
    assert status == 200
    assert [(r["id"], r["progress"]["succeeded"]) for r in listing] == [(rollout_id, 1)]

    for action, state in (("pause", "paused"), ("resume", "running"), ("cancel", "cancelled")):
        status, body = send(admin, "post", f"{team.api}/rollouts/{rollout_id}/{action}")
        assert (status, body["state"]) == (200, state), body
    status, body = send(admin, "post", f"{team.api}/rollouts/{rollout_id}/resume")
    assert (status, body["code"]) == (409, "rollout_state")
    actions = set(
        AuditEntry.objects.filter(chain=str(team.org.pk)).values_list("action", flat=True)
    )
    assert {"rollout.created", "rollout.paused", "rollout.resumed", "rollout.cancelled"} <= actions
    # Cancelling withdrew every offer not yet done.
    assert not EdgeDevice.objects.filter(
        organisation=team.org, desired_software_version="1.2.0"
    ).exclude(pk=device.pk)


def test_engineer_rollout_refused(publisher: Publisher, team: Team) -> None:
    publisher.publish("1.2.0")
    device, _ = enrolled(team, "edge 1")
    engineer = client_of(team.users[Role.ENGINEER])
    status, body = send(
        engineer,
        "post",
        f"{team.api}/rollouts",
        {"version": "1.2.0", "device_ids": [str(device.pk)]},
    )
    assert (status, body["code"]) == (403, "permission_denied")
    assert not Rollout.objects.exists()
    assert EdgeDevice.objects.get(pk=device.pk).desired_software_version == ""


def test_cross_tenant_device_in_rollout_body_refused(
    publisher: Publisher, team: Team, rival: Team
) -> None:
    publisher.publish("1.2.0")
    own, _ = enrolled(team, "edge own")
    theirs, _ = enrolled(rival, "edge theirs")
    status, body = send(
        client_of(team.users[Role.OWNER]),
        "post",
        f"{team.api}/rollouts",
        {"version": "1.2.0", "device_ids": [str(own.pk), str(theirs.pk)], "waves": [100]},
    )
    assert (status, body["code"]) == (404, "not_found")
    assert "edge theirs" not in str(body)
    assert not Rollout.objects.exists()
    assert EdgeDevice.objects.get(pk=theirs.pk).desired_software_version == ""


def test_downgrade_refused_unless_forced_and_signed_for_it(
    publisher: Publisher, team: Team
) -> None:
    publisher.publish("1.0.0")
    device, _ = enrolled(team, "edge 1", version="1.1.0")
    admin = client_of(team.users[Role.ADMIN])
    url = f"{team.api}/rollouts"
    body: dict[str, Any] = {"version": "1.0.0", "device_ids": [str(device.pk)], "waves": [100]}
    status, answer = send(admin, "post", url, body)
    assert (status, answer["code"], answer["details"]["reason"]) == (
        409,
        "downgrade_refused",
        "force_required",
    )
    status, answer = send(admin, "post", url, {**body, "force": True})
    assert (status, answer["details"]["reason"]) == (409, "not_signed_for_downgrade")
    assert not Rollout.objects.exists()


def test_rollout_maintenance_window(publisher: Publisher, team: Team) -> None:
    publisher.publish("1.2.0")
    device, _ = enrolled(team, "edge 1")
    admin = client_of(team.users[Role.ADMIN])
    body = {"version": "1.2.0", "device_ids": [str(device.pk)], "window_start": "22:00"}
    status, answer = send(admin, "post", f"{team.api}/rollouts", body)
    assert (status, answer["code"], answer["details"]) == (
        422,
        "rollout_invalid",
        {"field": "window"},
    )
    status, answer = send(admin, "post", f"{team.api}/rollouts", {**body, "window_end": "04:00"})
    assert status == 201, answer
    assert (answer["window_start"], answer["window_end"]) == ("22:00:00", "04:00:00")


def test_rollout_of_unpublished_version_refused(publisher: Publisher, team: Team) -> None:
    device, _ = enrolled(team, "edge 1")
    status, body = send(
        client_of(team.users[Role.ADMIN]),
        "post",
        f"{team.api}/rollouts",
        {"version": "6.6.6", "device_ids": [str(device.pk)]},
    )
    assert (status, body["code"]) == (422, "release_not_published")


def test_rollout_privileged_field_refused(publisher: Publisher, team: Team) -> None:
    publisher.publish("1.2.0")
    device, _ = enrolled(team, "edge 1")
    status, body = send(
        client_of(team.users[Role.ADMIN]),
        "post",
        f"{team.api}/rollouts",
        {"version": "1.2.0", "device_ids": [str(device.pk)], "state": "completed"},
    )
    assert (status, body["code"]) == (422, "validation_error")
    assert "state" in str(body["details"])
    assert not Rollout.objects.exists()


def test_configuration_round_trip_sync_and_drift(publisher: Publisher, team: Team) -> None:
    device, _ = enrolled(team, "edge 1")
    url = f"{team.api}/devices/{device.pk}/configuration"
    viewer = client_of(team.users[Role.VIEWER])
    status, body = send(viewer, "get", url)
    assert (status, body["status"], body["desired"]) == (200, "unset", None)

    engineer = client_of(team.users[Role.ENGINEER])
    status, body = send(engineer, "put", url, {"toml": SIM_TOML})
    assert status == 200, body
    desired = body["desired"]
    assert (desired["version"], desired["toml"], body["status"]) == (1, SIM_TOML, "pending")
    # What the API calls the hash is the signed target's: the device checks exactly these bytes.
    assert TufTarget.objects.filter(device=device, sha256=desired["sha256"]).exists()
    assert EdgeDevice.objects.get(pk=device.pk).desired_config_version == 1

    report(device, software_version="1.0.0", config_version=1, config_hash=desired["sha256"])
    assert send(viewer, "get", url)[1]["status"] == "in_sync"
    assert send(viewer, "get", f"{team.api}/update-alerts")[1] == []

    report(device, software_version="1.0.0", config_version=1, config_hash="f" * 64)
    status, body = send(viewer, "get", url)
    assert (body["status"], body["applied"]["sha256"]) == ("drift", "f" * 64)
    [alert] = send(viewer, "get", f"{team.api}/update-alerts")[1]
    assert (alert["kind"], alert["device_id"]) == ("config_drift", str(device.pk))


def test_configuration_validation_error_names_the_key(publisher: Publisher, team: Team) -> None:
    device, _ = enrolled(team, "edge 1")
    url = f"{team.api}/devices/{device.pk}/configuration"
    engineer = client_of(team.users[Role.ENGINEER])
    assert send(engineer, "put", url, {"toml": SIM_TOML})[0] == 200
    for bad, key in ((BAD_PORT_TOML, "sources[0].port"), ('log_level = "loud"\n', "log_level")):
        status, body = send(engineer, "put", url, {"toml": bad})
        assert (status, body["code"]) == (422, "configuration_invalid"), body
        assert key in body["message"]
    status, body = send(engineer, "put", url, {"toml": "[[sources]\nname ="})
    assert (status, body["code"]) == (422, "configuration_invalid")
    # Nothing of the refused texts was stored or signed.
    assert list(DeviceConfiguration.objects.values_list("version", flat=True)) == [1]
    assert TufTarget.objects.filter(device=device).count() == 1


def test_viewer_configuration_change_refused(publisher: Publisher, team: Team) -> None:
    device, _ = enrolled(team, "edge 1")
    status, body = send(
        client_of(team.users[Role.VIEWER]),
        "put",
        f"{team.api}/devices/{device.pk}/configuration",
        {"toml": SIM_TOML},
    )
    assert (status, body["code"]) == (403, "permission_denied")
    assert not DeviceConfiguration.objects.exists()


def test_update_alerts_name_failed_checks_updates_and_configs(team: Team, rival: Team) -> None:
    checked = enrolled(team, "edge check")[0]
    failed_update = enrolled(team, "edge update")[0]
    failed_config = enrolled(team, "edge config")[0]
    enrolled(team, "edge fine")
    at_ms = int(datetime(2026, 3, 2, 10, 0, tzinfo=UTC).timestamp() * 1000)
    report(
        checked,
        software_version="1.0.0",
        check_ok=False,
        check_error_code="expired_metadata",
        check_error="timestamp.json expired",
        checked_at_ms=at_ms,
    )
    report(
        failed_update,
        software_version="1.0.0",
        update_version="1.2.0",
        update_state="rolled_back",
        update_error="health check timed out",
    )
    EdgeDevice.objects.filter(pk=failed_config.pk).update(desired_config_version=2)
    report(failed_config, software_version="1.0.0", config_version=1, config_error="bad source")

    status, alerts = send(client_of(team.users[Role.VIEWER]), "get", f"{team.api}/update-alerts")
    assert status == 200
    found = {(a["device_name"], a["kind"], a["code"], a["message"]) for a in alerts}
    assert found == {
        ("edge check", "check_failed", "expired_metadata", "timestamp.json expired"),
        ("edge update", "update_failed", "rolled_back", "health check timed out"),
        ("edge config", "config_failed", "", "bad source"),
    }
    [check] = [a for a in alerts if a["kind"] == "check_failed"]
    assert check["at"].startswith("2026-03-02T10:00:00")
    # Another tenant sees none of it.
    rival_alerts = send(client_of(rival.users[Role.OWNER]), "get", f"{rival.api}/update-alerts")
    assert rival_alerts == (200, [])
