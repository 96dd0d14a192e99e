"""Device reports through the real edge endpoint, and signed per-device configuration.

The report is what the cloud knows about a device's software and configuration: it is stored,
it moves the device's rollout, and its answer (like every telemetry ack) says what the device
should run. Configurations are validated with the edge's own rules and signed as TUF targets.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from django.db import transaction

from fieldlink.accounts.models import Role
from fieldlink.audit.models import AuditEntry
from fieldlink.cloud.asgi import application
from fieldlink.devices.models import EdgeDevice
from fieldlink.kit.errors import NotFoundError
from fieldlink.protocol.telemetry import encode_batch
from fieldlink.protocol.updates import REPORT_PATH
from fieldlink.updates import services
from fieldlink.updates.errors import ConfigurationInvalidError, RepositoryMissingError
from fieldlink.updates.models import DeviceConfiguration, RolloutDevice, TufTarget
from tests.devices.conftest import Team
from tests.telemetry.ingest_support import batch_for, make_plant
from tests.updates.conftest import Publisher, enrolled

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.backend]

URL = f"https://localhost{REPORT_PATH}"
HASH = "ab" * 32
SOURCES = """
log_level = "warning"

[[sources]]
name = "demo"
kind = "simulator"
seed = 7
[[sources.instruments]]
tag = "FIT-900"
model = "flow"
"""


def post(url: str, body: bytes, token: str | None) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport) as client:
            headers = {"content-type": "application/json"}
            if token is not None:
                headers["authorization"] = f"Bearer {token}"
            return await client.post(url, content=body, headers=headers)

    return asyncio.run(go())


def send(token: str | None, **fields: Any) -> httpx.Response:
    return post(URL, json.dumps({"software_version": "1.0.0", **fields}).encode(), token)


# -- the endpoint


def test_report_is_stored_and_answered_with_what_the_device_should_run(team: Team) -> None:
    device, token = enrolled(team, "edge")
    EdgeDevice.objects.filter(pk=device.pk).update(
        desired_config_version=3, desired_software_version="1.2.0"
    )
    checked = datetime(2026, 3, 1, 12, tzinfo=UTC)
    reply = send(
        token,
        config_version=2,
        config_hash=HASH,
        update_version="1.2.0",
        update_state="downloading",
        check_ok=False,
        check_error_code="expired_metadata",
        check_error="timestamp.json expired",
        checked_at_ms=int(checked.timestamp() * 1000),
    )
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"desired_config_version": 3, "update_available": "1.2.0"}
    assert reply.headers["cache-control"] == "no-store"
    device.refresh_from_db()
    assert (device.applied_config_version, device.applied_config_hash) == (2, HASH)
    assert (device.update_version, device.update_state) == ("1.2.0", "downloading")
    assert not device.update_check_ok
    assert device.update_check_error_code == "expired_metadata"
    assert device.update_checked_at == checked
    assert device.last_seen_at is not None


def test_telemetry_ack_tells_the_offered_version() -> None:
    plant = make_plant()
    body = encode_batch(batch_for(plant, 1))
    url = "https://localhost/edge/v1/telemetry"
    assert post(url, body, plant.token).json()["update_available"] is None
    EdgeDevice.objects.filter(pk=plant.device.pk).update(desired_software_version="1.2.0")
    assert (
        post(url, encode_batch(batch_for(plant, 2)), plant.token).json()["update_available"]
        == "1.2.0"
    )


@pytest.mark.parametrize(
    "fields",
    [
        {"config_hash": "not a hash"},
        {"update_state": "installed"},
        {"check_error_code": "made_up"},
        {"software_version": "x" * 101},
        {"firmware": "1.0"},  # unknown fields are refused, not ignored
        {"config_version": -1},
    ],
)
def test_malformed_report_refused_and_nothing_stored(team: Team, fields: dict[str, Any]) -> None:
    device, token = enrolled(team, "edge")
    reply = send(token, **fields)
    assert reply.status_code == 422, reply.text
    assert reply.json()["code"] == "body_invalid"
    device.refresh_from_db()
    assert device.last_seen_at is None


def test_report_without_or_with_a_revoked_credential_refused(team: Team) -> None:
    device, token = enrolled(team, "edge")
    assert send(None).status_code == 401
    assert send("fld_" + "0" * 43).status_code == 401
    EdgeDevice.objects.filter(pk=device.pk).update(revoked_at=datetime.now(UTC))
    assert send(token).status_code == 401
    assert not AuditEntry.objects.filter(action__startswith="device.update").exists()


def test_report_flood_is_rate_limited_naming_the_limit(team: Team) -> None:
    _, token = enrolled(team, "edge")
    replies = [send(token) for _ in range(31)]
    assert {r.status_code for r in replies[:30]} == {200}
    assert replies[30].status_code == 429
    assert replies[30].json()["details"]["limit"] == "reports_per_device"
    assert int(replies[30].headers["retry-after"]) >= 1


def test_report_over_https_moves_the_rollout_and_is_audited(
    publisher: Publisher, team: Team
) -> None:
    publisher.publish("1.2.0")
    device, token = enrolled(team, "edge")
    with transaction.atomic():
        rollout = services.create_rollout(team.scope(), version="1.2.0", device_ids=[device.pk])
    progress = send(token, update_version="1.2.0", update_state="installing")
    assert progress.json()["update_available"] == "1.2.0"
    assert RolloutDevice.objects.get(rollout=rollout).progress_at is not None
    done = send(token, software_version="1.2.0", update_version="1.2.0", update_state="running")
    assert done.status_code == 200
    assert RolloutDevice.objects.get(rollout=rollout).state == "succeeded"
    entry = AuditEntry.objects.get(action="rollout.device_succeeded")
    assert (entry.actor_type, entry.actor_id) == ("device", str(device.pk))
    assert entry.chain == str(team.org.pk)
    # Progress is not audited, outcomes are; the same outcome again is not audited twice.
    send(token, software_version="1.2.0", update_version="1.2.0", update_state="running")
    assert AuditEntry.objects.filter(action="device.update_reported").count() == 1


def test_absurd_check_time_is_not_stored(team: Team) -> None:
    device, token = enrolled(team, "edge")
    assert send(token, checked_at_ms=2**63 - 1).status_code == 200
    device.refresh_from_db()
    assert device.update_checked_at is None


# -- configuration


def test_configuration_is_validated_signed_and_told_to_the_device(
    publisher: Publisher, team: Team
) -> None:
    device, token = enrolled(team, "edge")
    with transaction.atomic():
        first = services.set_device_configuration(team.scope(Role.ENGINEER), device.pk, SOURCES)
    assert first.version == 1
    document = json.loads(first.document)
    assert document["format"] == 1
    assert document["device_id"] == str(device.pk)
    assert document["version"] == 1
    assert document["log_level"] == "warning"
    assert document["sources"][0]["name"] == "demo"
    assert first.sha256 == hashlib.sha256(first.document.encode()).hexdigest()
    target = TufTarget.objects.get(path=f"config/{device.pk}.json", sha256=first.sha256)
    assert target.device_id == device.pk
    assert send(token).json()["desired_config_version"] == 1

    drift = services.configuration_drift(EdgeDevice.objects.get(pk=device.pk))
    assert (drift.desired_version, drift.applied_version, drift.in_sync) == (1, 0, False)
    send(token, config_version=1, config_hash=first.sha256)
    drift = services.configuration_drift(EdgeDevice.objects.get(pk=device.pk))
    assert drift.in_sync
    assert drift.error == ""

    with transaction.atomic():
        second = services.set_device_configuration(team.scope(), device.pk, SOURCES)
    assert second.version == 2
    send(token, config_version=1, config_hash=first.sha256, config_error="sources[0]: refused")
    drift = services.configuration_drift(EdgeDevice.objects.get(pk=device.pk))
    assert not drift.in_sync
    assert drift.error == "sources[0]: refused"
    entry = AuditEntry.objects.filter(action="device.configuration_set").order_by("-sequence")[0]
    assert entry.before is not None
    assert entry.after is not None
    assert entry.before["version"] == 1
    assert entry.after["version"] == 2


@pytest.mark.parametrize(
    "text",
    [
        "log_level = 'loud'",
        "[[sources]]\nname = 'x'\nkind = 'modbus'\nhost = '192.0.2.1'\nport = 70000",
        "this is not toml",
        "[cloud]\nurl = 'https://attacker.example'",  # only sources and log level, never the URL
    ],
)
def test_invalid_configuration_refused_and_nothing_signed(
    publisher: Publisher, team: Team, text: str
) -> None:
    device, _ = enrolled(team, "edge")
    with pytest.raises(ConfigurationInvalidError), transaction.atomic():
        services.set_device_configuration(team.scope(), device.pk, text)
    assert not DeviceConfiguration.objects.exists()
    assert not TufTarget.objects.filter(path__startswith="config/").exists()
    device.refresh_from_db()
    assert device.desired_config_version == 0


def test_configuration_needs_a_repository(team: Team, settings: Any, tmp_path: Any) -> None:
    settings.VAR_DIR = tmp_path
    device, _ = enrolled(team, "edge")
    with pytest.raises(RepositoryMissingError), transaction.atomic():
        services.set_device_configuration(team.scope(), device.pk, SOURCES)


def test_viewer_and_other_tenants_cannot_configure_a_device(
    publisher: Publisher, team: Team, rival: Team
) -> None:
    device, _ = enrolled(team, "edge")
    with pytest.raises(Exception) as caught, transaction.atomic():  # noqa: PT011
        services.set_device_configuration(team.scope(Role.VIEWER), device.pk, SOURCES)
    assert getattr(caught.value, "code", "") == "permission_denied"
    with pytest.raises(NotFoundError), transaction.atomic():
        services.set_device_configuration(rival.scope(), device.pk, SOURCES)
    assert not DeviceConfiguration.objects.exists()


def test_late_success_after_a_silent_timeout_is_recorded(publisher: Publisher, team: Team) -> None:
    publisher.publish("1.2.0")
    device, token = enrolled(team, "edge")
    t0 = datetime.now(UTC)
    with transaction.atomic():
        rollout = services.create_rollout(
            team.scope(), version="1.2.0", device_ids=[device.pk], now=t0
        )
    services.advance_rollouts(t0 + timedelta(hours=1))
    assert RolloutDevice.objects.get(rollout=rollout).state == "failed"
    send(token, software_version="1.2.0", update_version="1.2.0", update_state="running")
    assert RolloutDevice.objects.get(rollout=rollout).state == "succeeded"
