"""Ingestion test builders: an organisation with an asset, points and an enrolled device."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from django.db import transaction

from fieldlink.accounts.models import Organisation, Region
from fieldlink.devices import credentials
from fieldlink.devices.models import Asset, EdgeDevice, MeasuringPoint, Site
from fieldlink.protocol.telemetry import Batch, Value
from tests.plugins.log_canary import register_canary


@dataclass
class Plant:
    org: Organisation
    asset: Asset
    points: list[MeasuringPoint]
    device: EdgeDevice
    token: str = field(repr=False)  # kept out of failure reports (log canary)


def make_plant(
    label: str = "a", *, points: int = 3, serve: bool = True, org: Organisation | None = None
) -> Plant:
    if org is None:
        org = Organisation.objects.create(name=f"Org {label}", region=Region.EU_CENTRAL)
    site = Site.objects.create(organisation=org, name=f"Site {label}")
    asset = Asset.objects.create(organisation=org, site=site, tag=f"FIT-{label}")
    pts = [
        MeasuringPoint.objects.create(organisation=org, asset=asset, key=f"p{i}", unit="m3/h")
        for i in range(points)
    ]
    device = EdgeDevice.objects.create(organisation=org, name=f"edge {label}")
    if serve:
        device.assets.add(asset)
    code = credentials.issue_enrollment_code(device)
    register_canary(code.secret)
    with transaction.atomic():
        issued = credentials.enroll(code.secret)
    register_canary(issued.secret)
    return Plant(org, asset, pts, issued.device, issued.secret)


def now_ms() -> int:
    return int(time.time() * 1000)


_BASE_MS = now_ms() - 3_600_000


def batch_for(
    plant: Plant, sequence: int, *, n: int = 6, ts: int | None = None, **kw: object
) -> Batch:
    # Distinct, deterministic times per sequence: two batches built in the same millisecond
    # must not write the same (series, ts), which storage treats as a correction.
    base = ts if ts is not None else _BASE_MS + sequence * 10_000
    values = [
        Value(f"{plant.asset.tag}/{plant.points[i % len(plant.points)].key}", base + i, float(i))
        for i in range(n)
    ]
    return Batch(sequence=sequence, values=values, **kw)  # type: ignore[arg-type]
