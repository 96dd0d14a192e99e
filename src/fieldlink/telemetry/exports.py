"""The telemetry context's part of organisation archives and of organisation purge.

Three sections (``fieldlink.accounts.exports.register_export_section``), each read through the
requester's ``Scope`` like any service:

- ``plant`` (complete archives): ``plant/*.jsonl``, one object per line — sites, areas, assets
  (with their NE 107 health), measuring points, edge devices, health history, data gaps and
  thresholds. An edge device's credential and enrollment digests and its credential prefix are
  never written: they are keys (or the means to recognise one), not the customer's data.
- ``alarms`` (complete archives): ``alarms.jsonl``. Who acknowledged an alarm is given by e-mail
  address, the identifier ``members.json`` uses in the same archive, so the two can be joined.
- ``measurements`` (complete and measurements-only archives): one CSV per measuring point under
  ``measurements/<asset tag>/<point key>.csv``, with the columns of the API's CSV download
  (``querying.csv_lines``), read from storage ``CHUNK`` values at a time: a series of years never
  sits in memory. ``measurements/index.json`` maps each file to its point and counts its values.

The purge hook removes the organisation's raw samples. The sample tables have no foreign key
(see ``storage``), so the database cascade that removes ``Series`` and ``LatestValue`` would
leave them behind, unreachable and never deleted; the hook runs before the organisation row goes
(``accounts.services.purge_due_organisations``), while its series ids can still be found.

Registered on import; ``TelemetryConfig.ready`` imports this module in every process.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Final

from fieldlink.accounts import services as account_services
from fieldlink.accounts.access import Permission, Scope
from fieldlink.accounts.exports import ArchiveWriter, register_export_section
from fieldlink.accounts.models import ExportKind, Organisation, User
from fieldlink.devices.models import (
    Area,
    Asset,
    DataGap,
    EdgeDevice,
    HealthChange,
    MeasuringPoint,
    Site,
)
from fieldlink.kit.logging import get_logger
from fieldlink.telemetry import retention, storage
from fieldlink.telemetry.models import Alarm, Series, Threshold
from fieldlink.telemetry.querying import EXPORT_CHUNK, Sample, csv_lines, iso, safe_filename

__all__ = ["CHUNK", "MEASUREMENTS_INDEX", "purge_samples"]

log = get_logger(__name__)

# Values read from storage per query while a CSV is written (the API's CSV export pages alike).
CHUNK: Final = EXPORT_CHUNK
MEASUREMENTS_INDEX: Final = "measurements/index.json"
# The widest int8 range: every timestamp a sample table can hold lies inside it.
_ALL_FROM: Final = -(2**63)
_ALL_TO: Final = 2**63 - 1
_ROWS: Final = 2000  # database rows fetched at a time while a JSONL file is written
_LINES: Final = 4096  # CSV lines joined into one write


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


def _email(user: User | None) -> str | None:
    return user.email if user is not None else None


# -- plant ---------------------------------------------------------------------------------------


def _site(site: Site) -> dict[str, Any]:
    return {
        "id": str(site.pk),
        "name": site.name,
        "description": site.description,
        "created_at": _iso(site.created_at),
    }


def _area(area: Area) -> dict[str, Any]:
    return {
        "id": str(area.pk),
        "site_id": str(area.site_id),
        "parent_id": str(area.parent_id) if area.parent_id else None,
        "name": area.name,
        "created_at": _iso(area.created_at),
    }


def _asset(asset: Asset) -> dict[str, Any]:
    return {
        "id": str(asset.pk),
        "tag": asset.tag,
        "site_id": str(asset.site_id),
        "area_id": str(asset.area_id) if asset.area_id else None,
        "manufacturer": asset.manufacturer,
        "product_code": asset.product_code,
        "serial_number": asset.serial_number,
        "firmware_version": asset.firmware_version,
        "description": asset.description,
        "created_at": _iso(asset.created_at),
        "health": {
            "status": asset.health,
            "code": asset.health_code,
            "cause": asset.health_cause,
            "remedy": asset.health_remedy,
            "changed_at": _iso(asset.health_changed_at),
        },
        "edge_ref": asset.edge_ref,
        "discovered_by": str(asset.discovered_by_id) if asset.discovered_by_id else None,
        "hidden": asset.hidden,
    }


def _point(point: MeasuringPoint) -> dict[str, Any]:
    return {
        "id": str(point.pk),
        "asset_id": str(point.asset_id),
        "asset_tag": point.asset.tag,
        "key": point.key,
        "unit": point.unit,
        "description": point.description,
        "created_at": _iso(point.created_at),
    }


def _device(device: EdgeDevice) -> dict[str, Any]:
    # Field by field on purpose: enrollment_digest, credential_prefix, credential_digest and
    # previous_credential_digest stay out, and a field added to the model later stays out too
    # until someone decides it belongs in a customer's archive.
    return {
        "id": str(device.pk),
        "name": device.name,
        "asset_ids": sorted(str(a.pk) for a in device.assets.all()),
        "created_at": _iso(device.created_at),
        "enrolled_at": _iso(device.enrolled_at),
        "credential_rotated_at": _iso(device.credential_rotated_at),
        "revoked_at": _iso(device.revoked_at),
        "last_seen_at": _iso(device.last_seen_at),
        "last_seen_ip": device.last_seen_ip,
        "acked_sequence": device.acked_sequence,
        "desired_config_version": device.desired_config_version,
        "software_version": device.software_version,
        "buffer": {
            "values": device.buffer_values,
            "oldest_age_s": device.buffer_oldest_age_s,
            "dropped_total": device.dropped_total,
            "last_error": device.last_error,
            "reported_at": _iso(device.status_at),
        },
    }


def _health_change(change: HealthChange) -> dict[str, Any]:
    return {
        "id": str(change.pk),
        "asset_id": str(change.asset_id),
        "asset_tag": change.asset.tag,
        "health": change.health,
        "code": change.code,
        "cause": change.cause,
        "remedy": change.remedy,
        "at": _iso(change.at),
        "source": change.source,
    }


def _gap(gap: DataGap) -> dict[str, Any]:
    return {
        "id": gap.pk,
        "device_id": str(gap.device_id),
        "device_name": gap.device.name,
        "from": iso(gap.from_ts),
        "to": iso(gap.to_ts),
        "from_ts": gap.from_ts,
        "to_ts": gap.to_ts,
        "count": gap.count,
        "reason": gap.reason,
        "reported_at": _iso(gap.reported_at),
    }


def _threshold(threshold: Threshold) -> dict[str, Any]:
    point = threshold.point
    return {
        "point_id": str(point.pk),
        "asset_tag": point.asset.tag,
        "key": point.key,
        "low_low": threshold.low_low,
        "low": threshold.low,
        "high": threshold.high,
        "high_high": threshold.high_high,
        "hysteresis": threshold.hysteresis,
        "state": threshold.state,
        "state_ts": threshold.state_ts,
        "updated_at": _iso(threshold.updated_at),
        "updated_by": _email(threshold.updated_by),
    }


def plant_section(scope: Scope, out: ArchiveWriter) -> None:
    scope.require(Permission.DATA_VIEW)
    sites = scope.filter(Site.objects.all()).order_by("name", "pk")
    areas = scope.filter(Area.objects.all()).order_by("site_id", "name", "pk")
    assets = scope.filter(Asset.objects.all()).order_by("tag")
    points = scope.filter(MeasuringPoint.objects.select_related("asset"))
    devices = scope.filter(EdgeDevice.objects.prefetch_related("assets")).order_by("name")
    history = scope.filter(HealthChange.objects.select_related("asset"))
    gaps = scope.filter(DataGap.objects.select_related("device"))
    thresholds = scope.filter(Threshold.objects.select_related("point__asset", "updated_by"))
    out.write_jsonl("plant/sites.jsonl", map(_site, sites.iterator(_ROWS)))
    out.write_jsonl("plant/areas.jsonl", map(_area, areas.iterator(_ROWS)))
    out.write_jsonl("plant/assets.jsonl", map(_asset, assets.iterator(_ROWS)))
    out.write_jsonl(
        "plant/measuring_points.jsonl",
        map(_point, points.order_by("asset__tag", "key").iterator(_ROWS)),
    )
    out.write_jsonl("plant/edge_devices.jsonl", map(_device, devices.iterator(_ROWS)))
    out.write_jsonl(
        "plant/health_history.jsonl",
        map(_health_change, history.order_by("asset__tag", "at", "pk").iterator(_ROWS)),
    )
    out.write_jsonl(
        "plant/data_gaps.jsonl",
        map(_gap, gaps.order_by("device__name", "from_ts", "pk").iterator(_ROWS)),
    )
    out.write_jsonl(
        "plant/thresholds.jsonl",
        map(_threshold, thresholds.order_by("point__asset__tag", "point__key").iterator(_ROWS)),
    )


# -- alarms --------------------------------------------------------------------------------------


def _alarm(alarm: Alarm) -> dict[str, Any]:
    return {
        "id": str(alarm.pk),
        "asset_id": str(alarm.asset_id),
        "asset_tag": alarm.asset.tag,
        "point_id": str(alarm.point_id) if alarm.point_id else None,
        "point_key": alarm.point.key if alarm.point is not None else None,
        "kind": alarm.kind,
        "level": alarm.level,
        "severity": alarm.severity,
        "state": alarm.state,
        "active": alarm.active,
        "message": alarm.message,
        "value": alarm.value,
        "raised_at": _iso(alarm.raised_at),
        "acknowledged_at": _iso(alarm.acknowledged_at),
        "acknowledged_by": _email(alarm.acknowledged_by),
        "cleared_at": _iso(alarm.cleared_at),
        "updated_at": _iso(alarm.updated_at),
    }


def alarms_section(scope: Scope, out: ArchiveWriter) -> None:
    scope.require(Permission.DATA_VIEW)
    alarms = scope.filter(Alarm.objects.select_related("asset", "point", "acknowledged_by"))
    out.write_jsonl("alarms.jsonl", map(_alarm, alarms.order_by("raised_at", "pk").iterator(_ROWS)))


# -- measurements --------------------------------------------------------------------------------


class _Names:
    """Member names for the CSVs: safe, and distinct even where two tags or keys clean alike.

    Compared case-folded: "FIT-1" and "fit-1" would be one file once unpacked on a
    case-insensitive disk. A clash takes the object's id as a suffix, which no other has.
    """

    def __init__(self) -> None:
        self._dirs: dict[Any, str] = {}
        self._taken = {MEASUREMENTS_INDEX.casefold()}

    def _claim(self, base: str, pk: Any) -> str:
        name = base if base.casefold() not in self._taken else f"{base}-{pk}"
        self._taken.add(name.casefold())
        return name

    def file(self, asset_id: Any, tag: str, point_id: Any, key: str) -> str:
        folder = self._dirs.get(asset_id)
        if folder is None:
            folder = self._claim(f"measurements/{safe_filename(tag)}", asset_id)
            self._dirs[asset_id] = folder
        return self._claim(f"{folder}/{safe_filename(key)}", point_id) + ".csv"


def _series_samples(series_id: int, counted: list[int]) -> Iterator[Sample]:
    after: int | None = None
    while True:
        rows = storage.range(series_id, _ALL_FROM, _ALL_TO, after=after, limit=CHUNK)
        counted[0] += len(rows)
        yield from rows
        if len(rows) < CHUNK:
            return
        after = rows[-1][0]


def measurements_section(scope: Scope, out: ArchiveWriter) -> None:
    scope.require(Permission.DATA_VIEW)
    points = (
        scope.filter(MeasuringPoint.objects.all())
        .order_by("asset__tag", "key", "pk")
        .values_list("pk", "asset_id", "asset__tag", "key", "unit", "series__id")
    )
    names = _Names()
    index: list[dict[str, Any]] = []
    for point_id, asset_id, tag, key, unit, series_id in points.iterator(_ROWS):
        name = names.file(asset_id, tag, point_id, key)
        header = ["timestamp_utc", "ts_ms", f"{tag}/{key} [{unit}]", "quality"]
        counted = [0]
        samples = iter(()) if series_id is None else _series_samples(series_id, counted)
        with out.open(name) as target:
            batch: list[str] = []
            for line in csv_lines(header, samples):
                batch.append(line)
                if len(batch) >= _LINES:
                    target.write("".join(batch).encode())
                    batch.clear()
            target.write("".join(batch).encode())
        index.append(
            {
                "point_id": str(point_id),
                "asset_id": str(asset_id),
                "asset_tag": tag,
                "key": key,
                "unit": unit,
                "file": name,
                "value_count": counted[0],
            }
        )
    out.write_json(MEASUREMENTS_INDEX, index)


register_export_section("plant", [ExportKind.COMPLETE], plant_section)
register_export_section("alarms", [ExportKind.COMPLETE], alarms_section)
register_export_section(
    "measurements", [ExportKind.COMPLETE, ExportKind.MEASUREMENTS], measurements_section
)


# -- purge ---------------------------------------------------------------------------------------


def purge_samples(organisation: Organisation) -> None:
    """Delete every raw sample of the organisation's series (in the purge's transaction)."""
    series = list(
        Series.objects.filter(organisation=organisation).order_by("id").values_list("id", flat=True)
    )
    # Retention's steps: a bounded number of series and rows per DELETE (a savepoint each here,
    # inside the purge's transaction), so no single statement touches a whole organisation.
    deleted, _latest = retention._delete_series_before(series, _ALL_TO)
    # Retention only looks from ts 0 on; whatever lies outside its window goes in a last sweep,
    # so nothing is left that a later series could be mistaken for.
    for i in range(0, len(series), retention.SERIES_PER_STEP):
        deleted += storage.delete_before(series[i : i + retention.SERIES_PER_STEP], _ALL_TO)
    log.info("organisation_samples_purged", organisation=str(organisation.pk), samples=deleted)


if purge_samples not in account_services.ORGANISATION_PURGE_HOOKS:
    account_services.ORGANISATION_PURGE_HOOKS.append(purge_samples)
