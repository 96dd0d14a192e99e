"""The telemetry context's part of organisation archives (plant, alarms, measurements) and purge.

Archives are built by the real task (``build_data_export``) from an export requested through the
accounts service, and read back from the zip on disk.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone

from fieldlink.accounts import exports as account_exports
from fieldlink.accounts import services as account_services
from fieldlink.accounts.models import ExportKind, Organisation, Role
from fieldlink.accounts.tasks import build_data_export, purge_due_organisations
from fieldlink.devices import credentials
from fieldlink.devices.models import Area, Asset, DataGap, EdgeDevice, Health, HealthChange
from fieldlink.devices.services import report_health
from fieldlink.protocol.telemetry import Batch, Value
from fieldlink.telemetry import alarm_services, exports, ingest, storage
from fieldlink.telemetry.alarms import Thresholds
from fieldlink.telemetry.models import Alarm, AlarmState, LatestValue, Series
from fieldlink.telemetry.querying import EXPORT_CHUNK, csv_lines, iso
from tests.devices.conftest import Team, rival, team
from tests.plugins.log_canary import register_canary
from tests.support.server import subprocess_env
from tests.telemetry.ingest_support import Plant, make_plant, now_ms

__all__ = ["rival", "team"]

pytestmark = [pytest.mark.django_db, pytest.mark.backend]

T0 = now_ms() - 30 * 86_400_000  # a month ago: every value lies in the past
LIMITS = Thresholds(low_low=0.0, low=10.0, high=80.0, high_high=90.0, hysteresis=2.0)
ALL = (-(2**63), 2**63 - 1)


@pytest.fixture(autouse=True)
def _exports_here(settings: Any, tmp_path: Path) -> None:
    settings.VAR_DIR = tmp_path


def tricky_values(n: int, seed: int) -> list[float]:
    """Floats whose shortest repr needs all 17 digits, tiny and huge ones, and plain ones."""
    # Reproducible test data, not a secret.
    rng = random.Random(seed)  # noqa: S311
    fixed = [0.1, 1 / 3, 2 / 3, 5e-324, 1.7976931348623157e308, -2.2250738585072014e-308, 42.0]
    values = fixed + [
        rng.choice([-1, 1]) * rng.random() * 10.0 ** rng.randint(-300, 300) for _ in range(n)
    ]
    return values[:n]


def write(series_id: int, start: int, values: list[float], step: int = 1000) -> list[Any]:
    rows = [(start + i * step, v, (0, 64, 192)[i % 3]) for i, v in enumerate(values)]
    storage.write_samples([(series_id, ts, v, q) for ts, v, q in rows])
    return rows


def series_id(plant: Plant, point: int) -> int:
    return storage.ensure_series([plant.points[point]])[plant.points[point].pk]


def build_archive(team: Team, kind: str = "complete") -> tuple[bytes, dict[str, bytes]]:
    """The archive as stored on disk, and its members uncompressed."""
    with transaction.atomic():
        export = account_exports.request_organisation_export(team.scope(Role.ADMIN), kind)
    assert build_data_export.call(str(export.pk)) == "ready"
    raw = account_exports.archive_path(export.pk).read_bytes()
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        return raw, {name: zf.read(name) for name in zf.namelist()}


def build(team: Team, kind: str = "complete") -> dict[str, bytes]:
    return build_archive(team, kind)[1]


def jsonl(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.decode().splitlines()]


def csv_rows(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode(), newline="")))


@dataclass
class World:
    plant: Plant
    hall: Area
    building: Area
    hidden: Asset
    spare: EdgeDevice
    samples: dict[int, list[Any]]  # point index -> (ts, value, quality) written
    secrets: dict[str, str]
    rival: Plant


def _send(plant: Plant, sequence: int, ts: int, value: float) -> None:
    name = f"{plant.asset.tag}/{plant.points[0].key}"
    with transaction.atomic():
        ingest.ingest_batch(plant.device, Batch(sequence=sequence, values=[Value(name, ts, value)]))


def _alarms_and_health(team: Team, plant: Plant, *, acknowledge: bool) -> None:
    with transaction.atomic():
        alarm_services.set_thresholds(team.scope(Role.ENGINEER), plant.points[0].pk, LIMITS)
    _send(plant, 1, now_ms() - 60_000, 95.0)  # above high_high: a critical limit alarm
    with transaction.atomic():
        report_health(plant.asset, Health.FAILURE, code="F042", cause="Coil", source="device")
    if acknowledge:
        limit = Alarm.objects.get(point=plant.points[0])
        with transaction.atomic():
            alarm_services.acknowledge(team.scope(Role.VIEWER), limit.pk)


@pytest.fixture
def world(team: Team, rival: Team) -> World:
    plant = make_plant("x", org=team.org, points=3)
    org = team.org
    site = plant.asset.site
    building = Area.objects.create(organisation=org, site=site, name="Building")
    hall = Area.objects.create(organisation=org, site=site, parent=building, name="Hall")
    hidden = Asset.objects.create(
        organisation=org,
        site=site,
        area=hall,
        tag="PT-7",
        manufacturer="Endress",
        serial_number="SN-77",
        edge_ref="pt7",
        hidden=True,
    )
    spare = EdgeDevice.objects.create(organisation=org, name="spare edge")
    enrollment = credentials.issue_enrollment_code(spare)
    register_canary(enrollment.secret)
    rotated = credentials.rotate(plant.device)  # leaves a previous digest to leak, or not
    register_canary(rotated.secret)
    EdgeDevice.objects.filter(pk=plant.device.pk).update(
        software_version="2.4.1", buffer_values=17, dropped_total=3
    )
    DataGap.objects.create(
        organisation=org, device=plant.device, from_ts=T0, to_ts=T0 + 5000, count=5, reason="full"
    )
    _alarms_and_health(team, plant, acknowledge=True)

    samples = {
        0: write(series_id(plant, 0), T0, tricky_values(3000, seed=1)),
        1: write(series_id(plant, 1), T0, tricky_values(1500, seed=2), step=2000),
    }
    storage.compact()  # some values in each SQLite table
    samples[1] += write(series_id(plant, 1), T0 + 1500 * 2000, [7.25, -3.5])
    # The ingested value that raised the limit alarm is a sample of point 0 too.
    samples[0] += [
        (ts, v, q) for ts, v, q in storage.range(series_id(plant, 0), T0 + 10**9, 2**62, limit=9)
    ]

    other = make_plant("r", org=rival.org, points=1)
    _alarms_and_health(rival, other, acknowledge=False)
    write(series_id(other, 0), T0, [4242.125] * 50)

    plant.device.refresh_from_db()
    spare.refresh_from_db()
    secrets = {
        "credential": rotated.secret,
        "previous credential": plant.token,
        "credential digest": plant.device.credential_digest,
        "previous credential digest": plant.device.previous_credential_digest,
        "credential prefix": plant.device.credential_prefix,
        "enrollment code": enrollment.secret,
        "enrollment digest": spare.enrollment_digest,
    }
    assert all(secrets.values())
    return World(plant, hall, building, hidden, spare, samples, secrets, other)


def test_complete_export_holds_the_plant(team: Team, world: World) -> None:
    files = build(team)
    plant = world.plant

    assert "measurements/README.txt" not in files
    assert json.loads(files["plant/sites.jsonl"])["name"] == "Site x"
    areas = {a["name"]: a for a in jsonl(files["plant/areas.jsonl"])}
    assert set(areas) == {"Building", "Hall"}
    assert areas["Hall"]["parent_id"] == str(world.building.pk)
    assert areas["Building"]["parent_id"] is None

    assets = {a["tag"]: a for a in jsonl(files["plant/assets.jsonl"])}
    assert set(assets) == {"FIT-x", "PT-7"}
    assert assets["FIT-x"]["health"]["status"] == "failure"
    assert assets["FIT-x"]["health"]["code"] == "F042"
    hidden = assets["PT-7"]
    assert (hidden["area_id"], hidden["edge_ref"], hidden["hidden"]) == (
        str(world.hall.pk),
        "pt7",
        True,
    )
    assert (hidden["manufacturer"], hidden["serial_number"]) == ("Endress", "SN-77")
    assert hidden["health"]["status"] == "unknown"
    points = jsonl(files["plant/measuring_points.jsonl"])
    assert [(p["asset_tag"], p["key"], p["unit"]) for p in points] == [
        ("FIT-x", f"p{i}", "m3/h") for i in range(3)
    ]

    devices = {d["name"]: d for d in jsonl(files["plant/edge_devices.jsonl"])}
    assert set(devices) == {"edge x", "spare edge"}
    edge = devices["edge x"]
    assert edge["software_version"] == "2.4.1"
    assert edge["buffer"]["values"] == 17
    assert edge["buffer"]["dropped_total"] == 3
    assert edge["enrolled_at"] is not None
    assert edge["asset_ids"] == [str(plant.asset.pk)]
    assert devices["spare edge"]["enrolled_at"] is None
    assert not [k for d in devices.values() for k in d if "digest" in k or "prefix" in k]

    history = jsonl(files["plant/health_history.jsonl"])
    assert len(history) == HealthChange.objects.filter(asset=plant.asset).count() >= 1
    assert history[-1]["health"] == "failure"
    (gap,) = jsonl(files["plant/data_gaps.jsonl"])
    assert (gap["count"], gap["from"], gap["device_name"]) == (5, iso(T0), "edge x")
    (threshold,) = jsonl(files["plant/thresholds.jsonl"])
    assert (threshold["key"], threshold["high_high"]) == ("p0", 90.0)
    assert threshold["updated_by"] == "engineer@acme-water.example"


def test_complete_export_holds_alarms_and_measurements(team: Team, world: World) -> None:
    files = build(team)
    plant = world.plant

    alarms = {a["kind"]: a for a in jsonl(files["alarms.jsonl"])}
    assert set(alarms) == {"limit", "health"}
    assert len(files["alarms.jsonl"].splitlines()) == 2
    assert alarms["limit"]["state"] == AlarmState.ACKNOWLEDGED
    assert alarms["limit"]["acknowledged_by"] == "viewer@acme-water.example"
    assert (alarms["limit"]["point_key"], alarms["limit"]["value"]) == ("p0", 95.0)
    assert alarms["health"]["asset_tag"] == "FIT-x"

    index = json.loads(files["measurements/index.json"])
    assert [(e["point_id"], e["asset_tag"], e["key"], e["unit"]) for e in index] == [
        (str(p.pk), "FIT-x", p.key, "m3/h") for p in plant.points
    ]
    assert [e["file"] for e in index] == [f"measurements/FIT-x/p{i}.csv" for i in range(3)]
    assert [e["value_count"] for e in index] == [3001, 1502, 0]
    for i, entry in enumerate(index):
        rows = csv_rows(files[entry["file"]])
        assert rows[0] == ["timestamp_utc", "ts_ms", f"FIT-x/p{i} [m3/h]", "quality"]
        assert len(rows) == entry["value_count"] + 1
    # The same bytes as the API's CSV download of those values.
    header = ["timestamp_utc", "ts_ms", "FIT-x/p1 [m3/h]", "quality"]
    expected = "".join(csv_lines(header, iter(world.samples[1]))).encode()
    assert files["measurements/FIT-x/p1.csv"] == expected


def test_measurement_values_round_trip_exactly(team: Team, world: World) -> None:
    files = build(team, "measurements")
    for point, written in world.samples.items():
        rows = csv_rows(files[f"measurements/FIT-x/p{point}.csv"])[1:]
        assert [(int(r[1]), float(r[2]), int(r[3])) for r in rows] == written
        for row, (ts, value, _quality) in zip(rows, written, strict=True):
            assert row[2] == repr(value)
            assert math.copysign(1.0, float(row[2])) == math.copysign(1.0, value)
            assert row[0] == iso(ts)


def test_measurements_only_export_has_only_measurements(team: Team, world: World) -> None:
    files = build(team, "measurements")
    assert set(files) == {
        "manifest.json",
        "measurements/index.json",
        "measurements/FIT-x/p0.csv",
        "measurements/FIT-x/p1.csv",
        "measurements/FIT-x/p2.csv",
    }


def test_archive_holds_no_device_credential_digest_or_prefix(team: Team, world: World) -> None:
    raw, files = build_archive(team)
    for name, data in [("the archive itself", raw), *files.items()]:
        for what, secret in world.secrets.items():
            assert secret.encode() not in data, f"{what} in {name}"


def test_another_organisations_plant_alarms_and_values_are_absent(
    team: Team, rival: Team, world: World
) -> None:
    files = build(team)
    everything = b"".join(files.values())
    other = world.rival
    assert Alarm.objects.filter(asset=other.asset).count() == 2  # there was something to leak
    alarm_ids = {
        f"alarm {pk}": str(pk)
        for pk in Alarm.objects.filter(asset=other.asset).values_list("pk", flat=True)
    }
    for what, marker in {
        **alarm_ids,
        "organisation": str(rival.org.pk),
        "organisation name": rival.org.name,
        "asset": str(other.asset.pk),
        "asset tag": other.asset.tag,
        "site": other.asset.site.name,
        "device": other.device.name,
        "point": str(other.points[0].pk),
        "member": "@rival-gas.example",
        "value": repr(4242.125),
    }.items():
        assert marker.encode() not in everything, what


def test_a_series_longer_than_one_chunk_is_read_a_chunk_at_a_time(
    team: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    plant = make_plant("long", org=team.org, points=1)
    sid = series_id(plant, 0)
    half = (EXPORT_CHUNK + 2345) // 2
    written = write(sid, T0, tricky_values(half, seed=3), step=100)
    storage.compact()
    written += write(sid, T0 + half * 100, tricky_values(EXPORT_CHUNK + 2345 - half, 4), step=100)
    calls: list[tuple[int, int]] = []  # (limit asked, rows returned) per query of that series
    real = storage.range

    def spy(series: int, start: int, end: int, *, after: int | None = None, limit: int) -> Any:
        rows = real(series, start, end, after=after, limit=limit)
        if series == sid:
            calls.append((limit, len(rows)))
        return rows

    monkeypatch.setattr(storage, "range", spy)

    files = build(team, "measurements")

    assert calls == [(EXPORT_CHUNK, EXPORT_CHUNK), (EXPORT_CHUNK, 2345)]
    rows = csv_rows(files["measurements/FIT-long/p0.csv"])[1:]
    assert len(rows) == EXPORT_CHUNK + 2345
    assert [(int(r[1]), float(r[2]), int(r[3])) for r in rows] == written
    (entry,) = json.loads(files["measurements/index.json"])
    assert entry["value_count"] == EXPORT_CHUNK + 2345


def test_tags_and_keys_that_clean_to_the_same_name_get_distinct_files(team: Team) -> None:
    org = team.org
    first = make_plant("1", org=org, points=1)
    Asset.objects.filter(pk=first.asset.pk).update(tag="FIT/1")
    site = first.asset.site
    second = Asset.objects.create(organisation=org, site=site, tag="fit_1")
    keys = ["_flow", "flow_", "FLOW"]
    points = [second.points.create(organisation=org, key=key, unit="m3/h") for key in keys]
    write(series_id(first, 0), T0, [1.5])

    files = build(team, "measurements")

    index = json.loads(files["measurements/index.json"])
    names = [e["file"] for e in index]
    assert len({n.casefold() for n in names}) == len(names) == 4
    assert set(names) == set(files) - {"manifest.json", "measurements/index.json"}
    by_point = {e["point_id"]: e for e in index}
    assert by_point[str(first.points[0].pk)]["file"] == "measurements/FIT_1/p0.csv"
    assert by_point[str(first.points[0].pk)]["value_count"] == 1
    assert by_point[str(points[2].pk)]["file"].startswith(f"measurements/fit_1-{second.pk}/")
    assert csv_rows(files[by_point[str(first.points[0].pk)]["file"]])[1][2] == "1.5"


def test_a_viewer_scope_reads_the_sections_and_a_foreign_point_never_appears(
    team: Team, rival: Team, world: World
) -> None:
    # The section reads through the scope it is given: the rival's scope sees only the rival.
    with zipfile.ZipFile(io.BytesIO(), "w") as zf:
        writer = account_exports.ArchiveWriter(zf)
        exports.measurements_section(rival.scope(Role.VIEWER), writer)
        index = json.loads(zf.read("measurements/index.json"))
    assert [e["point_id"] for e in index] == [str(world.rival.points[0].pk)]
    assert index[0]["value_count"] == 51  # 50 written + the ingested one


# -- purge ---------------------------------------------------------------------------------------


def _stored(series_ids: list[int]) -> int:
    return sum(len(storage.range(s, *ALL, limit=10**6)) for s in series_ids)


@dataclass
class Doomed:
    mine: list[int]  # series of the organisation to purge
    theirs: list[int]  # series of another organisation


@pytest.fixture
def doomed(team: Team, rival: Team) -> Doomed:
    mine, theirs = make_plant("m", org=team.org, points=2), make_plant("t", org=rival.org)
    found = Doomed([series_id(mine, 0), series_id(mine, 1)], [series_id(theirs, 0)])
    for sid in found.mine + found.theirs:
        write(sid, T0, [float(i) for i in range(3000)])
    storage.compact()
    for sid in found.mine + found.theirs:
        write(sid, T0 + 86_400_000, [1.0, 2.0])  # another day (partition), another table
    assert _stored(found.mine) == 2 * 3002
    with transaction.atomic():
        account_services.request_deletion(team.scope(Role.OWNER))
    Organisation.objects.filter(pk=team.org.pk).update(deletion_due_at=timezone.now())
    return found


def test_purge_hooks_remove_the_organisations_samples_and_keep_the_others(
    team: Team, doomed: Doomed
) -> None:
    # What purge_due_organisations does before it deletes the organisation row.
    with transaction.atomic():
        for hook in account_services.ORGANISATION_PURGE_HOOKS:
            hook(team.org)

    assert _stored(doomed.mine) == 0
    assert _stored(doomed.theirs) == 3002
    assert LatestValue.objects.filter(series_id__in=doomed.theirs).count() == 1
    # The series rows are still there for the cascade: the hook needed them to find the samples.
    assert Series.objects.filter(pk__in=doomed.mine).count() == 2


def test_organisation_purge_removes_its_samples_and_keeps_the_others(
    team: Team, doomed: Doomed
) -> None:
    assert purge_due_organisations.call() == 1

    assert not Organisation.objects.filter(pk=team.org.pk).exists()
    assert not Series.objects.filter(pk__in=doomed.mine).exists()
    assert _stored(doomed.mine) == 0
    assert _stored(doomed.theirs) == 3002


def test_purge_deletes_in_bounded_steps(team: Team, monkeypatch: pytest.MonkeyPatch) -> None:
    plant = make_plant("s", org=team.org, points=1)
    sid = series_id(plant, 0)
    write(sid, T0, [0.5] * 5000, step=60_000)  # 3.5 days of one value a minute
    deleted: list[int] = []
    real = storage.delete_before

    def spy(series_ids: list[int], cutoff_ms: int) -> int:
        count = real(series_ids, cutoff_ms)
        deleted.append(count)
        return count

    monkeypatch.setattr(storage, "delete_before", spy)
    monkeypatch.setattr("fieldlink.telemetry.retention.ROWS_PER_STEP", 400)
    with transaction.atomic():
        exports.purge_samples(team.org)
    assert _stored([sid]) == 0
    assert sum(deleted) == 5000
    # Each DELETE stays near the (lowered) step size instead of taking the whole series.
    assert len([n for n in deleted if n]) > 10
    assert max(deleted) <= 400


def test_sections_and_purge_hook_register_in_a_fresh_process() -> None:
    # As in the worker: django.setup() alone (the app's ready()) must register them.
    code = (
        "import django; django.setup();"
        "from fieldlink.accounts import exports, services;"
        "import json;"
        "print(json.dumps([s.name for s in exports._SECTIONS]));"
        "print(json.dumps([h.__qualname__ for h in services.ORGANISATION_PURGE_HOOKS]))"
    )
    result = subprocess.run(  # our own interpreter, fixed arguments
        [sys.executable, "-c", code],
        env=subprocess_env(DJANGO_SETTINGS_MODULE="fieldlink.cloud.django_settings"),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    sections, hooks = result.stdout.splitlines()[-2:]
    assert {"plant", "alarms", "measurements"} <= set(json.loads(sections))
    assert "purge_samples" in json.loads(hooks)
    kinds = {s.name: s.kinds for s in account_exports._SECTIONS}
    assert kinds["measurements"] == {ExportKind.COMPLETE, ExportKind.MEASUREMENTS}
    assert kinds["plant"] == kinds["alarms"] == {ExportKind.COMPLETE}


def test_points_without_values_get_a_header_only_file(team: Team) -> None:
    make_plant("e", org=team.org, points=1)
    files = build(team, "measurements")
    assert csv_rows(files["measurements/FIT-e/p0.csv"]) == [
        ["timestamp_utc", "ts_ms", "FIT-e/p0 [m3/h]", "quality"]
    ]
    assert json.loads(files["measurements/index.json"])[0]["value_count"] == 0
