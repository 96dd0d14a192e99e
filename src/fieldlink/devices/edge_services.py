"""Use cases an edge device starts itself: enroll, rotate its credential, announce, report status.

The actor is the device, not a user: each call is authenticated by the device's credential (or,
for enrollment, its one-time code), works only inside the device's organisation, and is audited
with the device as the actor. The boundary (``telemetry/edge_app.py``) owns the transaction.

Discovery creates what the device announces and never takes anything away: an admin may rename
an asset (its ``edge_ref`` keeps the device's own name working), move it to another site or area,
or hide it, and a later announcement changes none of that. Unknown unit codes refuse the whole
announcement, naming the point, so nothing is half-created.
"""

from __future__ import annotations

from typing import Final

from django.db.models import Q
from django.utils import timezone

from fieldlink.audit import services as audit_services
from fieldlink.audit.models import ActorType
from fieldlink.devices import credentials
from fieldlink.devices.errors import PlantInvalidError
from fieldlink.devices.models import Asset, DataGap, EdgeDevice, MeasuringPoint, Site
from fieldlink.devices.services import POINT_KEY
from fieldlink.devices.units import UNITS
from fieldlink.protocol.edge import Announce, AnnounceAck
from fieldlink.protocol.telemetry import AgentStatus, Gap

__all__ = [
    "DISCOVERED_SITE",
    "announce",
    "audit_by_device",
    "enroll",
    "record_status",
    "rotate_credential",
]

DISCOVERED_SITE: Final = "Discovered"


def audit_by_device(device: EdgeDevice, action: str, *, after: object = None, ip: str = "") -> None:
    """An audit entry in the device's organisation with the device itself as the actor."""
    audit_services.record(
        str(device.organisation_id),
        action=action,
        actor_type=ActorType.DEVICE,
        actor_id=str(device.pk),
        actor_label=device.name,
        target_type="edge_device",
        target_id=str(device.pk),
        after=after,
        ip=ip or None,
    )


def enroll(
    code: str, *, software_version: str = "", client_ip: str = ""
) -> credentials.IssuedSecret:
    """Exchange a one-time code for the device credential; the code dies with it."""
    issued = credentials.enroll(code)
    device = issued.device
    if software_version:
        device.software_version = software_version
        device.save(update_fields=["software_version"])
    audit_by_device(
        device, "device.enrolled", after={"software_version": software_version}, ip=client_ip
    )
    return issued


def rotate_credential(device: EdgeDevice, *, client_ip: str = "") -> credentials.IssuedSecret:
    """A new credential for the device; the current one works until the new one is first used."""
    issued = credentials.rotate(device)
    audit_by_device(device, "device.credential_rotated", ip=client_ip)
    return issued


def _check_units(message: Announce) -> None:
    for i, instrument in enumerate(message.instruments):
        for j, point in enumerate(instrument.points):
            where = f"instruments[{i}].points[{j}]"
            if point.unit not in UNITS:
                raise PlantInvalidError(
                    f"{where}.unit {point.unit!r} is not a known unit code.",
                    details={"field": f"{where}.unit"},
                )
            if not POINT_KEY.match(point.key):
                raise PlantInvalidError(
                    f"{where}.key must be 1 to 64 lowercase letters, digits, '_' or '-'.",
                    details={"field": f"{where}.key"},
                )


def _asset_for(device: EdgeDevice, tag: str) -> Asset | None:
    # The device's own name for it first (the admin may have renamed it), then a typed-in asset
    # of that tag that nobody has claimed for discovery yet.
    org = device.organisation_id
    found = Asset.objects.select_for_update().filter(organisation_id=org, edge_ref=tag).first()
    if found is not None:
        return found
    return (
        Asset.objects.select_for_update()
        .filter(Q(edge_ref="") | Q(edge_ref=tag), organisation_id=org, tag=tag)
        .first()
    )


def announce(device: EdgeDevice, message: Announce, *, client_ip: str = "") -> AnnounceAck:
    """Create or update the announced assets and points in the device's organisation."""
    _check_units(message)
    site: Site | None = None
    created_assets = created_points = updated_assets = 0
    for instrument in message.instruments:
        tag = instrument.tag.strip()
        facts = {
            "manufacturer": instrument.manufacturer,
            "product_code": instrument.product_code,
            "serial_number": instrument.serial_number,
            "firmware_version": instrument.firmware_version,
        }
        asset = _asset_for(device, tag)
        if asset is None:
            if site is None:
                site, _ = Site.objects.get_or_create(
                    organisation_id=device.organisation_id, name=DISCOVERED_SITE
                )
            asset = Asset.objects.create(
                organisation_id=device.organisation_id,
                site=site,
                tag=tag,
                edge_ref=tag,
                discovered_by=device,
                **facts,
            )
            created_assets += 1
        else:
            changed = {k: v for k, v in facts.items() if v and getattr(asset, k) != v}
            if not asset.edge_ref:
                changed["edge_ref"] = tag
            if changed:
                for name, value in changed.items():
                    setattr(asset, name, value)
                asset.save(update_fields=list(changed))
                updated_assets += 1
        device.assets.add(asset)
        existing = set(MeasuringPoint.objects.filter(asset=asset).values_list("key", flat=True))
        new_points = [
            MeasuringPoint(
                organisation_id=device.organisation_id,
                asset=asset,
                key=point.key,
                unit=point.unit,
                description=point.description,
            )
            for point in instrument.points
            if point.key not in existing
        ]
        MeasuringPoint.objects.bulk_create(new_points, ignore_conflicts=True)
        created_points += len(new_points)
    ack = AnnounceAck(
        created_assets=created_assets, created_points=created_points, updated_assets=updated_assets
    )
    if created_assets or created_points or updated_assets:
        audit_by_device(
            device,
            "device.announced",
            after={
                "created_assets": created_assets,
                "created_points": created_points,
                "updated_assets": updated_assets,
            },
            ip=client_ip,
        )
    return ack


def record_status(device: EdgeDevice, status: AgentStatus | None, gaps: list[Gap]) -> list[str]:
    """Keep what the agent said about itself; store reported gaps. The fields changed."""
    fields: list[str] = []
    if status is not None:
        device.software_version = status.software_version
        device.buffer_values = status.buffer_values
        device.buffer_oldest_age_s = status.oldest_unsent_age_s
        device.dropped_total = status.dropped_total
        device.last_error = status.last_error
        device.status_at = timezone.now()
        fields = [
            "software_version",
            "buffer_values",
            "buffer_oldest_age_s",
            "dropped_total",
            "last_error",
            "status_at",
        ]
    if gaps:
        DataGap.objects.bulk_create(
            DataGap(
                organisation_id=device.organisation_id,
                device=device,
                from_ts=gap.from_ts,
                to_ts=gap.to_ts,
                count=gap.count,
                reason=gap.reason,
            )
            for gap in gaps
        )
    return fields
