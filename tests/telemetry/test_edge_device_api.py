"""What an edge device does for itself over /edge/v1: enroll, rotate, announce, report status.

Through the real ASGI stack (guard, router, lean handler), like the telemetry endpoint tests.
"""

from __future__ import annotations

import json
from datetime import timedelta

import msgspec
import pytest
from django.db import transaction
from django.utils import timezone

from fieldlink.audit.models import AuditEntry
from fieldlink.devices import credentials
from fieldlink.devices.edge_services import DISCOVERED_SITE
from fieldlink.devices.models import Asset, DataGap, EdgeDevice, MeasuringPoint
from fieldlink.protocol.edge import Announce, InstrumentAnnounce, PointAnnounce
from fieldlink.protocol.telemetry import AgentStatus, Batch, Gap, Value, encode_batch
from fieldlink.telemetry import edge_app
from tests.plugins.log_canary import register_canary
from tests.telemetry.ingest_support import batch_for, make_plant, now_ms
from tests.telemetry.test_edge_endpoint import post

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.backend]

BASE = "https://localhost/edge/v1"
_json = msgspec.json.Encoder()


def _code(device: EdgeDevice) -> str:
    with transaction.atomic():
        code = credentials.issue_enrollment_code(device).secret
    register_canary(code)
    return code


def _new_device(name: str = "edge new") -> EdgeDevice:
    plant = make_plant("enr")
    return EdgeDevice.objects.create(organisation=plant.org, name=name)


# -- enrollment --------------------------------------------------------------------------------


def test_enrollment_code_is_exchanged_once_for_a_working_credential() -> None:
    device = _new_device()
    code = _code(device)
    body = json.dumps({"code": code, "software_version": "0.1.0"}).encode()
    first = post(body, None, url=f"{BASE}/enroll")
    assert first.status_code == 200, first.text
    issued = first.json()
    register_canary(issued["credential"])
    assert issued["device_id"] == str(device.pk)
    assert issued["credential"].startswith("fld_")
    device.refresh_from_db()
    assert device.software_version == "0.1.0"
    assert device.credential_digest == credentials.digest(issued["credential"])
    replay = post(body, None, url=f"{BASE}/enroll")
    assert (replay.status_code, replay.json()["code"]) == (401, "enrollment_invalid")
    entry = AuditEntry.objects.get(action="device.enrolled")
    assert (entry.actor_type, entry.actor_id) == ("device", str(device.pk))
    assert issued["credential"] not in json.dumps(entry.after)


def test_expired_or_malformed_enrollment_is_refused() -> None:
    device = _new_device()
    code = _code(device)
    EdgeDevice.objects.filter(pk=device.pk).update(
        enrollment_expires_at=timezone.now() - timedelta(seconds=1)
    )
    expired = post(json.dumps({"code": code}).encode(), None, url=f"{BASE}/enroll")
    assert (expired.status_code, expired.json()["code"]) == (401, "enrollment_invalid")
    for bad in (b"{}", b'{"code": 5}', b'{"code": "fle_x", "admin": true}', b"not json"):
        refused = post(bad, None, url=f"{BASE}/enroll")
        assert refused.status_code == 422, bad


def test_enrollment_attempts_are_rate_limited_per_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(edge_app, "ENROLL_LIMIT", 2)
    body = json.dumps({"code": "fle_" + "a" * 43}).encode()
    statuses = [post(body, None, url=f"{BASE}/enroll").status_code for _ in range(3)]
    assert statuses[:2] == [401, 401]
    assert statuses[2] == 429


# -- rotation ----------------------------------------------------------------------------------


def test_rotation_keeps_the_old_credential_until_the_new_one_is_used() -> None:
    plant = make_plant()
    rotated = post(b"", plant.token, url=f"{BASE}/credential")
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()["credential"]
    register_canary(new)
    # Overlap: a batch in flight with the old credential still lands.
    assert post(encode_batch(batch_for(plant, 1)), plant.token).status_code == 200
    assert post(encode_batch(batch_for(plant, 2)), new).status_code == 200
    old = post(encode_batch(batch_for(plant, 3)), plant.token)
    assert (old.status_code, old.json()["code"]) == (401, "device_credential_invalid")
    assert AuditEntry.objects.filter(action="device.credential_rotated").count() == 1


def test_rotation_needs_a_valid_credential() -> None:
    refused = post(b"", "fld_" + "z" * 43, url=f"{BASE}/credential")
    assert refused.status_code == 401


# -- discovery ---------------------------------------------------------------------------------


def _announce(*instruments: InstrumentAnnounce) -> bytes:
    return _json.encode(Announce(instruments=list(instruments)))


FIT = InstrumentAnnounce(
    tag="FIT-201",
    manufacturer="Endress+Hauser",
    product_code="Promag 10W",
    serial_number="Q90A1234",
    firmware_version="1.2.0",
    points=[
        PointAnnounce(key="volume_flow", unit="m3/h", description="Volume flow"),
        PointAnnounce(key="totalizer", unit="m3"),
    ],
)


def test_announce_creates_assets_and_points_that_then_receive_values() -> None:
    plant = make_plant("disc")
    answer = post(_announce(FIT), plant.token, url=f"{BASE}/announce")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"created_assets": 1, "created_points": 2, "updated_assets": 0}
    asset = Asset.objects.get(organisation=plant.org, tag="FIT-201")
    assert (asset.site.name, asset.serial_number, asset.edge_ref) == (
        DISCOVERED_SITE,
        "Q90A1234",
        "FIT-201",
    )
    assert plant.device.assets.filter(pk=asset.pk).exists()
    again = post(_announce(FIT), plant.token, url=f"{BASE}/announce")
    assert again.json() == {"created_assets": 0, "created_points": 0, "updated_assets": 0}

    # An admin renames the discovered asset: the device's own name keeps working.
    Asset.objects.filter(pk=asset.pk).update(tag="Inlet flow")
    batch = Batch(sequence=1, values=[Value("FIT-201/volume_flow", now_ms() - 1000, 12.5)])
    assert post(encode_batch(batch), plant.token).status_code == 200
    after_rename = post(_announce(FIT), plant.token, url=f"{BASE}/announce")
    assert after_rename.json()["created_assets"] == 0
    assert Asset.objects.get(pk=asset.pk).tag == "Inlet flow"


def test_announce_with_an_unknown_unit_creates_nothing() -> None:
    plant = make_plant("bad")
    broken = InstrumentAnnounce(tag="PIT-1", points=[PointAnnounce(key="pressure", unit="psi!")])
    refused = post(_announce(FIT, broken), plant.token, url=f"{BASE}/announce")
    assert (refused.status_code, refused.json()["code"]) == (422, "plant_invalid")
    assert "instruments[1].points[0].unit" in refused.json()["message"]
    assert not Asset.objects.filter(tag__in=["FIT-201", "PIT-1"]).exists()


def test_announce_never_touches_another_organisations_asset_of_the_same_tag() -> None:
    mine, theirs = make_plant("m"), make_plant("t")
    Asset.objects.create(organisation=theirs.org, site=theirs.asset.site, tag="FIT-201")
    post(_announce(FIT), mine.token, url=f"{BASE}/announce")
    theirs_asset = Asset.objects.get(organisation=theirs.org, tag="FIT-201")
    assert (theirs_asset.edge_ref, theirs_asset.serial_number) == ("", "")
    assert not MeasuringPoint.objects.filter(asset=theirs_asset).exists()


def test_oversized_announcement_is_413() -> None:
    plant = make_plant("big")
    many = [InstrumentAnnounce(tag=f"T-{i}") for i in range(1001)]
    refused = post(_announce(*many), plant.token, url=f"{BASE}/announce")
    assert refused.status_code == 413


# -- status and gaps ---------------------------------------------------------------------------


def test_status_and_gaps_ride_with_a_batch_and_are_stored_once() -> None:
    plant = make_plant("st")
    now = now_ms()
    batch = Batch(
        sequence=1,
        values=[Value(f"{plant.asset.tag}/{plant.points[0].key}", now - 500, 1.0)],
        gaps=[Gap(from_ts=now - 60_000, to_ts=now - 30_000, count=300)],
        status=AgentStatus(
            software_version="0.1.0",
            buffer_values=1200,
            oldest_unsent_age_s=42,
            dropped_total=300,
            last_error="",
        ),
    )
    body = encode_batch(batch)
    assert post(body, plant.token).status_code == 200
    assert post(body, plant.token).json()["duplicate"] is True
    device = EdgeDevice.objects.get(pk=plant.device.pk)
    assert (device.software_version, device.buffer_values, device.buffer_oldest_age_s) == (
        "0.1.0",
        1200,
        42,
    )
    assert device.dropped_total == 300
    [gap] = DataGap.objects.filter(device=device)
    assert (gap.count, gap.reason, gap.to_ts - gap.from_ts) == (300, "buffer_full", 30_000)


@pytest.mark.parametrize(
    "gap",
    [
        {"from_ts": 2_000_000_000_000, "to_ts": 1_900_000_000_000, "count": 1},
        {"from_ts": 1_900_000_000_000, "to_ts": 1_900_000_000_001, "count": 0},
    ],
)
def test_invalid_gap_refuses_the_batch(gap: dict[str, int]) -> None:
    plant = make_plant("g")
    doc = json.loads(encode_batch(batch_for(plant, 1)))
    doc["gaps"] = [gap]
    refused = post(json.dumps(doc).encode(), plant.token)
    assert (refused.status_code, refused.json()["code"]) == (422, "gap_invalid")
    assert not DataGap.objects.exists()
