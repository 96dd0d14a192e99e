"""The ingestion use case: one device batch, stored exactly once.

The device is the authority here, not a user's Scope: the credential names the device, and the
device may write only points of the assets it serves (``EdgeDevice.assets``). A point outside
that set — unknown, another organisation's, or an asset the device does not serve — refuses the
whole batch with one code (``point_unknown``), so a device learns nothing about other points.

Exactly-once: the batch key is ``(device, sequence)``. The device row is locked first
(``select_for_update``; on SQLite the IMMEDIATE transaction serialises writers anyway), so two
connections carrying the same batch queue up and the second finds the receipt. The receipt's
unique constraint is the backstop. ``acked_sequence`` is the highest sequence below which every
batch is stored; gaps are the receipts above it, and it moves up when the gap below closes.
The caller (the boundary) owns the transaction; everything here happens inside it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple
from uuid import UUID

from django.core.cache import cache
from django.db.models import Q
from django.utils import timezone

from fieldlink.devices.edge_services import record_status
from fieldlink.devices.models import Asset, EdgeDevice, MeasuringPoint
from fieldlink.devices.services import report_health
from fieldlink.kit.errors import RateLimitedError
from fieldlink.protocol.telemetry import Ack, Batch
from fieldlink.telemetry import storage
from fieldlink.telemetry.errors import PointUnknownError, TelemetryUnavailableError
from fieldlink.telemetry.models import BatchReceipt

__all__ = [
    "INGEST_HOOKS",
    "LIMITS",
    "IngestHook",
    "Limit",
    "StoredSample",
    "check_rate",
    "ingest_batch",
]


class StoredSample(NamedTuple):
    point_id: UUID
    series_id: int
    ts: int  # UTC ms
    value: float
    quality: int
    limited: bool = False  # the point has thresholds (alarms evaluate only these)


IngestHook = Callable[[EdgeDevice, Sequence[StoredSample]], None]
# Called after a batch's samples are written, inside its transaction (alarms append here). A
# hook that raises rolls the batch back: the device retries it, nothing is half-stored.
INGEST_HOOKS: list[IngestHook] = []


# -- rate limits --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limit:
    name: str
    values_per_window: int
    window_seconds: int


# Live traffic and backlog drain have separate budgets: a device that comes back after an
# outage drains its buffer fast without eating the budget of its live values (and vice versa).
LIMITS: Final[dict[bool, Limit]] = {
    False: Limit("device_live", 600_000, 60),
    True: Limit("device_backlog", 3_000_000, 60),
}


def check_rate(device_id: UUID, *, backlog: bool, values: int, now: float | None = None) -> None:
    """Count ``values`` against the device's budget; RateLimitedError naming the limit if spent.

    A fixed window in the shared cache (Redis in production), so replicas share the budget. If
    the cache is down the batch is refused with 503 (fail closed): the device keeps the batch
    and retries, nothing is lost.
    """
    limit = LIMITS[backlog]
    now = time.time() if now is None else now
    window = int(now // limit.window_seconds)
    key = f"edge-rate:{limit.name}:{device_id}:{window}"
    try:
        cache.add(key, 0, timeout=limit.window_seconds * 2)
        used = int(cache.incr(key, max(1, values)))
    except Exception as exc:  # any cache failure: refuse, never let it through
        raise TelemetryUnavailableError(
            "Rate limits cannot be checked right now; retry later."
        ) from exc
    if used > limit.values_per_window:
        retry_after = max(1, int((window + 1) * limit.window_seconds - now) + 1)
        raise RateLimitedError(
            f"Too many values ({limit.name}); retry later.",
            retry_after=retry_after,
            limit=limit.name,
        )


# -- the use case -------------------------------------------------------------------------------


def _ack(device: EdgeDevice, *, accepted: bool, duplicate: bool) -> Ack:
    return Ack(
        acked_sequence=device.acked_sequence,
        accepted=accepted,
        duplicate=duplicate,
        desired_config_version=device.desired_config_version,
        # Set by a staged rollout (fieldlink.updates); the row is already loaded: no query.
        update_available=device.desired_software_version or None,
        rotate_credential=device.rotate_credential,
    )


def _served_points(device: EdgeDevice, names: set[str]) -> dict[str, list[Any]]:
    """``"<tag>/<key>"`` → ``[point id, series id or None, has thresholds]`` for served points.

    Plain tuples, not model objects: this runs for every batch (measured: building model
    instances here was a quarter of the server's time per batch). A discovered asset is named by
    the device's own tag (edge_ref), which survives an admin renaming it; an asset typed in by
    hand is named by its tag.
    """
    wanted = sorted({name.rpartition("/")[0] for name in names})
    rows = (
        MeasuringPoint.objects.filter(asset__edge_devices=device)
        .filter(Q(asset__edge_ref__in=wanted) | Q(asset__edge_ref="", asset__tag__in=wanted))
        .values_list("pk", "key", "asset__tag", "asset__edge_ref", "series__id", "threshold__pk")
    )
    return {
        f"{ref or tag}/{key}": [pk, sid, limit is not None]
        for pk, key, tag, ref, sid, limit in rows
    }


def _with_series(served: dict[str, list[Any]]) -> None:
    """Fill in the series ids of points that have none yet (their first values ever)."""
    missing = [entry[0] for entry in served.values() if entry[1] is None]
    if not missing:
        return
    created = storage.ensure_series(MeasuringPoint.objects.filter(pk__in=missing))
    for entry in served.values():
        if entry[1] is None:
            entry[1] = created[entry[0]]


def _advance(device: EdgeDevice) -> None:
    stored = set(
        BatchReceipt.objects.filter(device=device, sequence__gt=device.acked_sequence).values_list(
            "sequence", flat=True
        )
    )
    acked = device.acked_sequence
    while acked + 1 in stored:
        acked += 1
    device.acked_sequence = acked


def ingest_batch(device: EdgeDevice, batch: Batch, *, client_ip: str = "") -> Ack:
    """Store ``batch`` of ``device`` once; the ack. Runs inside the caller's transaction."""
    locked = EdgeDevice.objects.select_for_update().get(pk=device.pk)
    if (
        batch.sequence <= locked.acked_sequence
        or BatchReceipt.objects.filter(device=locked, sequence=batch.sequence).exists()
    ):
        return _ack(locked, accepted=True, duplicate=True)

    names = {v.point for v in batch.values}
    served = _served_points(locked, names) if names else {}
    if not names <= served.keys():
        for index, value in enumerate(batch.values):
            if value.point not in served:
                raise PointUnknownError(
                    f"values[{index}]: no measuring point {value.point!r} on the assets this "
                    "device serves.",
                    details={"index": index},
                )
    _with_series(served)
    rows: list[storage.Row] = []
    stored: list[StoredSample] = []
    for value in batch.values:
        point_id, sid, limited = served[value.point]
        rows.append((sid, value.ts, value.value, value.quality))
        stored.append(StoredSample(point_id, sid, value.ts, value.value, value.quality, limited))
    storage.write_samples(rows)

    if batch.health:
        _report_health(locked, batch)

    BatchReceipt.objects.create(
        organisation_id=locked.organisation_id,
        device=locked,
        sequence=batch.sequence,
        value_count=len(batch.values),
        backlog=batch.backlog,
    )
    _advance(locked)
    status_fields = record_status(locked, batch.status, batch.gaps)
    locked.last_seen_at = timezone.now()
    if client_ip:
        locked.last_seen_ip = client_ip[:45]
    locked.save(update_fields=["acked_sequence", "last_seen_at", "last_seen_ip", *status_fields])
    for hook in INGEST_HOOKS:
        hook(locked, stored)
    return _ack(locked, accepted=True, duplicate=False)


def _report_health(device: EdgeDevice, batch: Batch) -> None:
    tags = sorted({r.asset for r in batch.health})
    rows = Asset.objects.filter(edge_devices=device).filter(
        Q(edge_ref__in=tags) | Q(edge_ref="", tag__in=tags)
    )
    assets = {a.edge_ref or a.tag: a for a in rows}
    for index, report in enumerate(batch.health):
        asset = assets.get(report.asset)
        if asset is None:
            raise PointUnknownError(
                f"health[{index}]: no asset {report.asset!r} served by this device.",
                details={"index": index},
            )
        report_health(
            asset,
            report.status,
            code=report.code,
            cause=report.cause,
            remedy=report.remedy,
            at=datetime.fromtimestamp(report.ts / 1000, tz=UTC),
            source="device",
        )


def ack_of(device: EdgeDevice) -> Ack:
    """The current ack of a device without a batch (e.g. for a status poll)."""
    return _ack(device, accepted=False, duplicate=False)
