"""Use cases of the devices context: the only place that changes its state.

The plant configuration: sites, nested areas, assets, measuring points, edge devices and the
assets' NE 107 health. Every use case takes the caller's ``Scope``: reads need ``data.view``,
changes ``data.configure`` (engineer and above), and every change writes an audit entry with
before/after in the caller's transaction (the boundary owns it). Objects are found with
``scope.get``, so another tenant's id is a 404 like an unknown one.

Decisions where the issue was silent:

- Updates take a mapping of the fields to change (PATCH semantics); a field outside the
  use case's list is a programming error, not a caller's (request schemas refuse them first).
- An area keeps its site for life; moving it would silently move every asset below it.
  Deleting an area deletes its (asset-free) sub-areas; an area or site whose subtree still holds
  assets is refused with 409 ``plant_not_empty``.
- Health never changes through the asset's PATCH: only through ``report_health`` (devices) or
  ``set_health`` (a user), which keep the history.
- "Rotate credential" from the UI/API does not mint a credential a person would have to carry
  to the box: it sets ``rotate_credential`` and the device, told in its next response, asks for
  its new one itself (outbound only; ``credentials.rotate``, with overlap). A credential that
  may be stolen is revoked instead, and a new enrollment code re-enrolls the box.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from uuid import UUID

from django.db import IntegrityError, models, transaction
from django.http import HttpRequest
from django.utils import timezone

from fieldlink.accounts.access import Permission, Scope
from fieldlink.accounts.services import audit
from fieldlink.devices import credentials
from fieldlink.devices.errors import (
    DeviceRevokedError,
    PlantInvalidError,
    PlantNameTakenError,
    PlantNotEmptyError,
)
from fieldlink.devices.models import (
    Area,
    Asset,
    EdgeDevice,
    Health,
    HealthChange,
    MeasuringPoint,
    Site,
)
from fieldlink.devices.units import UNITS

POINT_KEY: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
MAX_AREA_DEPTH: Final = 16
MAX_DEVICE_ASSETS: Final = 1000
HEALTH_SOURCES: Final = frozenset({"device", "user"})

# Called with every HealthChange that changes an asset's current health, INSIDE the transaction
# that records it (not on commit): an alarm opened by a hook commits with the health change or
# not at all. Hooks must therefore be quick, write only to the database, and defer their own
# side effects (e-mails, webhooks) with transaction.on_commit. The alarms context appends here.
HEALTH_CHANGE_HOOKS: list[Callable[[HealthChange], None]] = []


def _require_text(value: str, what: str, max_length: int, *, required: bool = True) -> str:
    value = value.strip()
    if required and not value:
        raise PlantInvalidError(f"The {what} is required.", details={"field": what})
    if len(value) > max_length:
        raise PlantInvalidError(
            f"The {what} may be at most {max_length} characters.", details={"field": what}
        )
    return value


def _unexpected(changes: Mapping[str, Any], allowed: Iterable[str]) -> None:
    extra = set(changes) - set(allowed)
    if extra:
        raise TypeError(f"fields that cannot be changed here: {sorted(extra)}")


def _save_unique(obj: models.Model, message: str, *, fields: list[str] | None = None) -> None:
    """Save, turning the unique constraint's refusal into a 409 (the check is the database's)."""
    try:
        with transaction.atomic():  # a savepoint: the caller's transaction stays usable
            if fields is None:
                obj.save()
            else:
                obj.save(update_fields=fields)
    except IntegrityError as exc:
        raise PlantNameTakenError(message) from exc


# -- sites ---------------------------------------------------------------------------------------


def _site_fields(site: Site) -> dict[str, Any]:
    return {"name": site.name, "description": site.description}


def sites_of(scope: Scope) -> list[Site]:
    scope.require(Permission.DATA_VIEW)
    return list(scope.filter(Site.objects.all()))


def get_site(scope: Scope, site_id: UUID | str) -> Site:
    scope.require(Permission.DATA_VIEW)
    return scope.get(Site.objects.all(), site_id, what="site")


def create_site(
    scope: Scope, *, name: str, description: str = "", request: HttpRequest | None = None
) -> Site:
    scope.require(Permission.DATA_CONFIGURE)
    site = Site(
        organisation=scope.organisation,
        name=_require_text(name, "name", 100),
        description=_require_text(description, "description", 500, required=False),
    )
    _save_unique(site, "A site with this name already exists.")
    audit(scope, "site.created", target=site, after=_site_fields(site), request=request)
    return site


def update_site(
    scope: Scope,
    site_id: UUID | str,
    changes: Mapping[str, Any],
    *,
    request: HttpRequest | None = None,
) -> Site:
    scope.require(Permission.DATA_CONFIGURE)
    _unexpected(changes, {"name", "description"})
    site = scope.get(Site.objects.select_for_update(), site_id, what="site")
    before = _site_fields(site)
    if "name" in changes:
        site.name = _require_text(changes["name"], "name", 100)
    if "description" in changes:
        site.description = _require_text(changes["description"], "description", 500, required=False)
    if _site_fields(site) != before:
        _save_unique(site, "A site with this name already exists.", fields=["name", "description"])
        audit(
            scope,
            "site.updated",
            target=site,
            before=before,
            after=_site_fields(site),
            request=request,
        )
    return site


def delete_site(scope: Scope, site_id: UUID | str, *, request: HttpRequest | None = None) -> Site:
    scope.require(Permission.DATA_CONFIGURE)
    site = scope.get(Site.objects.select_for_update(), site_id, what="site")
    count = site.assets.count()
    if count:
        raise PlantNotEmptyError(
            f"This site still has {count} asset(s); move or delete them first.",
            details={"assets": count},
        )
    before = _site_fields(site)
    audit(scope, "site.deleted", target=site, before=before, request=request)
    site.delete()  # its (asset-free) areas go with it
    return site


# -- areas ---------------------------------------------------------------------------------------


def _area_fields(area: Area) -> dict[str, Any]:
    return {
        "name": area.name,
        "site": str(area.site_id),
        "parent": str(area.parent_id) if area.parent_id else None,
    }


def areas_of(scope: Scope, *, site_id: UUID | str | None = None) -> list[Area]:
    scope.require(Permission.DATA_VIEW)
    areas = scope.filter(Area.objects.select_related("site"))
    if site_id is not None:
        areas = areas.filter(site=scope.get(Site.objects.all(), site_id, what="site"))
    return list(areas)


def get_area(scope: Scope, area_id: UUID | str) -> Area:
    scope.require(Permission.DATA_VIEW)
    return scope.get(Area.objects.select_related("site"), area_id, what="area")


def _subtree_ids(scope: Scope, area: Area) -> set[UUID]:
    """The area and every area below it (one query per level, the tree is shallow)."""
    found = {area.pk}
    frontier = {area.pk}
    for _ in range(MAX_AREA_DEPTH + 1):
        frontier = set(
            scope.filter(Area.objects.filter(parent__in=frontier)).values_list("pk", flat=True)
        )
        frontier -= found
        if not frontier:
            break
        found |= frontier
    return found


def _depth(area: Area) -> int:
    depth, node = 1, area
    while node.parent_id is not None and depth <= MAX_AREA_DEPTH:
        node = Area.objects.only("parent_id").get(pk=node.parent_id)
        depth += 1
    return depth


def _parent(scope: Scope, site: Site, parent_id: UUID | str | None) -> Area | None:
    if parent_id is None:
        return None
    parent = scope.get(Area.objects.all(), parent_id, what="parent area")
    if parent.site_id != site.pk:
        raise PlantInvalidError(
            "The parent area belongs to another site.", details={"field": "parent_id"}
        )
    if _depth(parent) >= MAX_AREA_DEPTH:
        raise PlantInvalidError(
            f"Areas nest at most {MAX_AREA_DEPTH} levels deep.", details={"field": "parent_id"}
        )
    return parent


def create_area(
    scope: Scope,
    *,
    site_id: UUID | str,
    name: str,
    parent_id: UUID | str | None = None,
    request: HttpRequest | None = None,
) -> Area:
    scope.require(Permission.DATA_CONFIGURE)
    site = scope.get(Site.objects.all(), site_id, what="site")
    area = Area(
        organisation=scope.organisation,
        site=site,
        parent=_parent(scope, site, parent_id),
        name=_require_text(name, "name", 100),
    )
    area.save()
    audit(scope, "area.created", target=area, after=_area_fields(area), request=request)
    return area


def update_area(
    scope: Scope,
    area_id: UUID | str,
    changes: Mapping[str, Any],
    *,
    request: HttpRequest | None = None,
) -> Area:
    scope.require(Permission.DATA_CONFIGURE)
    _unexpected(changes, {"name", "parent_id"})
    area = scope.get(Area.objects.select_for_update().select_related("site"), area_id, what="area")
    before = _area_fields(area)
    if "name" in changes:
        area.name = _require_text(changes["name"], "name", 100)
    if "parent_id" in changes:
        parent = _parent(scope, area.site, changes["parent_id"])
        if parent is not None and parent.pk in _subtree_ids(scope, area):
            raise PlantInvalidError(
                "An area cannot be placed inside itself or one of its own sub-areas.",
                details={"field": "parent_id"},
            )
        area.parent = parent
    if _area_fields(area) != before:
        area.save(update_fields=["name", "parent"])
        audit(
            scope,
            "area.updated",
            target=area,
            before=before,
            after=_area_fields(area),
            request=request,
        )
    return area


def delete_area(scope: Scope, area_id: UUID | str, *, request: HttpRequest | None = None) -> Area:
    scope.require(Permission.DATA_CONFIGURE)
    area = scope.get(Area.objects.select_for_update(), area_id, what="area")
    count = scope.filter(Asset.objects.filter(area__in=_subtree_ids(scope, area))).count()
    if count:
        raise PlantNotEmptyError(
            f"This area (or one below it) still has {count} asset(s); move or delete them first.",
            details={"assets": count},
        )
    audit(scope, "area.deleted", target=area, before=_area_fields(area), request=request)
    area.delete()  # its (asset-free) sub-areas go with it
    return area


# -- assets --------------------------------------------------------------------------------------

ASSET_TEXT: Final = {
    "manufacturer": 100,
    "product_code": 100,
    "serial_number": 100,
    "firmware_version": 50,
    "description": 500,
}


def _asset_fields(asset: Asset) -> dict[str, Any]:
    return {
        "tag": asset.tag,
        "site": str(asset.site_id),
        "area": str(asset.area_id) if asset.area_id else None,
        "hidden": asset.hidden,
        **{name: getattr(asset, name) for name in ASSET_TEXT},
    }


@dataclass(frozen=True)
class AssetFilter:
    site_id: UUID | None = None
    area_id: UUID | None = None
    health: str | None = None
    q: str = ""


def assets_of(scope: Scope, filters: AssetFilter | None = None) -> list[Asset]:
    scope.require(Permission.DATA_VIEW)
    filters = filters or AssetFilter()
    assets = scope.filter(Asset.objects.select_related("site", "area"))
    if filters.site_id is not None:
        assets = assets.filter(site=scope.get(Site.objects.all(), filters.site_id, what="site"))
    if filters.area_id is not None:
        area = scope.get(Area.objects.all(), filters.area_id, what="area")
        assets = assets.filter(area__in=_subtree_ids(scope, area))
    if filters.health:
        if filters.health not in Health.values:
            raise PlantInvalidError("Unknown health status.", details={"field": "health"})
        assets = assets.filter(health=filters.health)
    if filters.q.strip():
        q = filters.q.strip()[:100]
        assets = assets.filter(
            models.Q(tag__icontains=q)
            | models.Q(description__icontains=q)
            | models.Q(manufacturer__icontains=q)
            | models.Q(serial_number__icontains=q)
        )
    return list(assets)


def get_asset(scope: Scope, asset_id: UUID | str) -> Asset:
    scope.require(Permission.DATA_VIEW)
    return scope.get(Asset.objects.select_related("site", "area"), asset_id, what="asset")


def _placement(
    scope: Scope, site_id: UUID | str, area_id: UUID | str | None
) -> tuple[Site, Area | None]:
    site = scope.get(Site.objects.all(), site_id, what="site")
    if area_id is None:
        return site, None
    area = scope.get(Area.objects.all(), area_id, what="area")
    if area.site_id != site.pk:
        raise PlantInvalidError(
            "The area belongs to another site than the asset.", details={"field": "area_id"}
        )
    return site, area


def create_asset(
    scope: Scope,
    *,
    tag: str,
    site_id: UUID | str,
    area_id: UUID | str | None = None,
    request: HttpRequest | None = None,
    **text: str,
) -> Asset:
    scope.require(Permission.DATA_CONFIGURE)
    _unexpected(text, ASSET_TEXT)
    site, area = _placement(scope, site_id, area_id)
    asset = Asset(
        organisation=scope.organisation,
        site=site,
        area=area,
        tag=_require_text(tag, "tag", 64),
        **{
            name: _require_text(text.get(name, ""), name, limit, required=False)
            for name, limit in ASSET_TEXT.items()
        },
    )
    _save_unique(asset, "An asset with this tag already exists in this organisation.")
    audit(scope, "asset.created", target=asset, after=_asset_fields(asset), request=request)
    return asset


def update_asset(
    scope: Scope,
    asset_id: UUID | str,
    changes: Mapping[str, Any],
    *,
    request: HttpRequest | None = None,
) -> Asset:
    scope.require(Permission.DATA_CONFIGURE)
    _unexpected(changes, {"tag", "site_id", "area_id", "hidden", *ASSET_TEXT})
    asset = scope.get(Asset.objects.select_for_update(), asset_id, what="asset")
    before = _asset_fields(asset)
    if "site_id" in changes or "area_id" in changes:
        site_id = changes.get("site_id", asset.site_id)
        area_id = changes.get("area_id", asset.area_id)
        asset.site, asset.area = _placement(scope, site_id, area_id)
    if "tag" in changes:
        asset.tag = _require_text(changes["tag"], "tag", 64)
    if "hidden" in changes:
        asset.hidden = bool(changes["hidden"])
    for name, limit in ASSET_TEXT.items():
        if name in changes:
            setattr(asset, name, _require_text(changes[name], name, limit, required=False))
    if _asset_fields(asset) != before:
        fields = ["tag", "site", "area", "hidden", *ASSET_TEXT]
        _save_unique(
            asset, "An asset with this tag already exists in this organisation.", fields=fields
        )
        audit(
            scope,
            "asset.updated",
            target=asset,
            before=before,
            after=_asset_fields(asset),
            request=request,
        )
    return asset


def delete_asset(
    scope: Scope, asset_id: UUID | str, *, request: HttpRequest | None = None
) -> Asset:
    """Deletes the asset with its measuring points, stored values and health history."""
    scope.require(Permission.DATA_CONFIGURE)
    asset = scope.get(Asset.objects.select_for_update(), asset_id, what="asset")
    audit(scope, "asset.deleted", target=asset, before=_asset_fields(asset), request=request)
    asset.delete()
    return asset


# -- health (NAMUR NE 107) -----------------------------------------------------------------------


def report_health(
    asset: Asset,
    health: str,
    *,
    code: str = "",
    cause: str = "",
    remedy: str = "",
    at: datetime | None = None,
    source: str,
) -> HealthChange | None:
    """Record an asset's NE 107 status; the HealthChange written, or None for a repeat.

    Scope-free on purpose: it takes the asset *object*, which the caller has already found
    through its authority — ``set_health`` through the user's Scope, the ingestion path through
    the device credential (only assets the device serves). It must run inside the caller's
    transaction. A report equal to the current status writes nothing (devices repeat their
    status with every batch). A late report (older than the current status) goes into the
    history once but does not overwrite the newer current status, and calls no hooks.
    """
    if health not in Health.values:
        raise PlantInvalidError(
            "Unknown health status.", details={"field": "health", "allowed": list(Health.values)}
        )
    if source not in HEALTH_SOURCES:
        raise ValueError(f"unknown health source {source!r}")
    code = _require_text(code, "code", 32, required=False)
    cause = _require_text(cause, "cause", 500, required=False)
    remedy = _require_text(remedy, "remedy", 500, required=False)
    at = at or timezone.now()
    if timezone.is_naive(at):
        raise PlantInvalidError("The time must carry a time zone (UTC).", details={"field": "at"})
    # The row lock serialises concurrent reports for one asset, so "changed?" is decided once.
    current = Asset.objects.select_for_update().get(pk=asset.pk)
    state = (health, code, cause, remedy)
    if current.health_changed_at is not None and at < current.health_changed_at:
        if HealthChange.objects.filter(
            asset=current, at=at, health=health, code=code, cause=cause
        ).exists():
            return None
        return HealthChange.objects.create(
            organisation_id=current.organisation_id,
            asset=current,
            health=health,
            code=code,
            cause=cause,
            remedy=remedy,
            at=at,
            source=source,
        )
    if (current.health, current.health_code, current.health_cause, current.health_remedy) == state:
        return None
    change = HealthChange.objects.create(
        organisation_id=current.organisation_id,
        asset=current,
        health=health,
        code=code,
        cause=cause,
        remedy=remedy,
        at=at,
        source=source,
    )
    Asset.objects.filter(pk=current.pk).update(
        health=health,
        health_code=code,
        health_cause=cause,
        health_remedy=remedy,
        health_changed_at=at,
    )
    for target in (current, asset):
        target.health, target.health_code, target.health_cause = health, code, cause
        target.health_remedy, target.health_changed_at = remedy, at
    change.asset = asset
    for hook in HEALTH_CHANGE_HOOKS:
        hook(change)
    return change


def set_health(
    scope: Scope,
    asset_id: UUID | str,
    *,
    health: str,
    code: str = "",
    cause: str = "",
    remedy: str = "",
    request: HttpRequest | None = None,
) -> tuple[Asset, HealthChange | None]:
    """A person reports an asset's status (e.g. "maintenance required" after an inspection)."""
    scope.require(Permission.DATA_CONFIGURE)
    asset = scope.get(Asset.objects.all(), asset_id, what="asset")
    before = _health_fields(asset)
    change = report_health(asset, health, code=code, cause=cause, remedy=remedy, source="user")
    if change is not None:
        audit(
            scope,
            "asset.health_reported",
            target=asset,
            before=before,
            after=_health_fields(asset),
            request=request,
        )
    return asset, change


def _health_fields(asset: Asset) -> dict[str, Any]:
    return {
        "health": asset.health,
        "code": asset.health_code,
        "cause": asset.health_cause,
        "remedy": asset.health_remedy,
    }


def health_history(
    scope: Scope, asset_id: UUID | str, *, limit: int = 50, offset: int = 0
) -> tuple[Asset, list[HealthChange], int]:
    """A page of an asset's health changes, newest first, and the total count."""
    asset = get_asset(scope, asset_id)
    changes = scope.filter(HealthChange.objects.filter(asset=asset)).order_by("-at", "-id")
    limit = max(1, min(limit, 500))
    offset = max(0, offset)
    return asset, list(changes[offset : offset + limit]), changes.count()


# -- measuring points ----------------------------------------------------------------------------


def _point_fields(point: MeasuringPoint) -> dict[str, Any]:
    return {
        "asset": str(point.asset_id),
        "key": point.key,
        "unit": point.unit,
        "description": point.description,
    }


def _key(value: str) -> str:
    if not POINT_KEY.match(value):
        raise PlantInvalidError(
            "The key must be 1 to 64 lowercase letters, digits, '_' or '-', e.g. volume_flow.",
            details={"field": "key"},
        )
    return value


def _unit(value: str) -> str:
    if value not in UNITS:
        raise PlantInvalidError(
            "Unknown unit code; see GET /api/v1/units for the list.",
            details={"field": "unit", "allowed": list(UNITS)},
        )
    return value


def points_of(scope: Scope, asset_id: UUID | str) -> list[MeasuringPoint]:
    asset = get_asset(scope, asset_id)
    return list(scope.filter(MeasuringPoint.objects.filter(asset=asset)))


def get_point(scope: Scope, point_id: UUID | str) -> MeasuringPoint:
    scope.require(Permission.DATA_VIEW)
    return scope.get(
        MeasuringPoint.objects.select_related("asset"), point_id, what="measuring point"
    )


def create_point(
    scope: Scope,
    asset_id: UUID | str,
    *,
    key: str,
    unit: str,
    description: str = "",
    request: HttpRequest | None = None,
) -> MeasuringPoint:
    scope.require(Permission.DATA_CONFIGURE)
    asset = scope.get(Asset.objects.all(), asset_id, what="asset")
    point = MeasuringPoint(
        organisation=scope.organisation,
        asset=asset,
        key=_key(key.strip()),
        unit=_unit(unit),
        description=_require_text(description, "description", 200, required=False),
    )
    _save_unique(point, "This asset already has a measuring point with this key.")
    audit(scope, "point.created", target=point, after=_point_fields(point), request=request)
    return point


def update_point(
    scope: Scope,
    point_id: UUID | str,
    changes: Mapping[str, Any],
    *,
    request: HttpRequest | None = None,
) -> MeasuringPoint:
    scope.require(Permission.DATA_CONFIGURE)
    _unexpected(changes, {"key", "unit", "description"})
    point = scope.get(MeasuringPoint.objects.select_for_update(), point_id, what="measuring point")
    before = _point_fields(point)
    if "key" in changes:
        point.key = _key(changes["key"].strip())
    if "unit" in changes:
        point.unit = _unit(changes["unit"])
    if "description" in changes:
        point.description = _require_text(
            changes["description"], "description", 200, required=False
        )
    if _point_fields(point) != before:
        _save_unique(
            point,
            "This asset already has a measuring point with this key.",
            fields=["key", "unit", "description"],
        )
        audit(
            scope,
            "point.updated",
            target=point,
            before=before,
            after=_point_fields(point),
            request=request,
        )
    return point


def delete_point(
    scope: Scope, point_id: UUID | str, *, request: HttpRequest | None = None
) -> MeasuringPoint:
    scope.require(Permission.DATA_CONFIGURE)
    point = scope.get(MeasuringPoint.objects.select_for_update(), point_id, what="measuring point")
    audit(scope, "point.deleted", target=point, before=_point_fields(point), request=request)
    point.delete()
    return point


# -- edge devices --------------------------------------------------------------------------------


def _device_fields(device: EdgeDevice) -> dict[str, Any]:
    # Never a digest: the audit trail is readable by admins and exported.
    return {
        "name": device.name,
        "assets": sorted(str(pk) for pk in device.assets.values_list("pk", flat=True)),
        "revoked": device.revoked_at is not None,
    }


def devices_of(scope: Scope) -> list[EdgeDevice]:
    scope.require(Permission.DATA_VIEW)
    return list(scope.filter(EdgeDevice.objects.prefetch_related("assets")))


def get_device(scope: Scope, device_id: UUID | str) -> EdgeDevice:
    scope.require(Permission.DATA_VIEW)
    return scope.get(EdgeDevice.objects.prefetch_related("assets"), device_id, what="edge device")


def _assets(scope: Scope, asset_ids: Iterable[UUID | str]) -> list[Asset]:
    wanted = list(dict.fromkeys(str(pk) for pk in asset_ids))
    if len(wanted) > MAX_DEVICE_ASSETS:
        raise PlantInvalidError(
            f"A device serves at most {MAX_DEVICE_ASSETS} assets.", details={"field": "asset_ids"}
        )
    return [scope.get(Asset.objects.all(), pk, what="asset") for pk in wanted]


def _live(device: EdgeDevice) -> None:
    if device.revoked_at is not None:
        raise DeviceRevokedError("This edge device is revoked; create a new one instead.")


def create_device(
    scope: Scope,
    *,
    name: str,
    asset_ids: Iterable[UUID | str] = (),
    request: HttpRequest | None = None,
) -> credentials.IssuedSecret:
    """A new edge device and its one-time enrollment code (shown once, only its hash kept)."""
    scope.require(Permission.DATA_CONFIGURE)
    assets = _assets(scope, asset_ids)
    device = EdgeDevice(organisation=scope.organisation, name=_require_text(name, "name", 100))
    _save_unique(device, "An edge device with this name already exists.")
    device.assets.set(assets)
    issued = credentials.issue_enrollment_code(device)
    audit(scope, "device.created", target=device, after=_device_fields(device), request=request)
    return issued


def update_device(
    scope: Scope,
    device_id: UUID | str,
    changes: Mapping[str, Any],
    *,
    request: HttpRequest | None = None,
) -> EdgeDevice:
    scope.require(Permission.DATA_CONFIGURE)
    _unexpected(changes, {"name", "asset_ids"})
    device = scope.get(EdgeDevice.objects.select_for_update(), device_id, what="edge device")
    _live(device)
    before = _device_fields(device)
    if "name" in changes:
        device.name = _require_text(changes["name"], "name", 100)
        _save_unique(device, "An edge device with this name already exists.", fields=["name"])
    if "asset_ids" in changes:
        device.assets.set(_assets(scope, changes["asset_ids"]))
    after = _device_fields(device)
    if after != before:
        audit(scope, "device.updated", target=device, before=before, after=after, request=request)
    return device


def revoke_device(
    scope: Scope, device_id: UUID | str, *, request: HttpRequest | None = None
) -> EdgeDevice:
    """The device's credential and any enrollment code stop working at once, for good."""
    scope.require(Permission.DATA_CONFIGURE)
    device = scope.get(EdgeDevice.objects.select_for_update(), device_id, what="edge device")
    if device.revoked_at is not None:
        return device
    before = _device_fields(device)
    device.revoked_at = timezone.now()
    device.credential_digest = ""
    device.previous_credential_digest = ""
    device.enrollment_digest = ""
    device.enrollment_expires_at = None
    device.rotate_credential = False
    device.save()
    audit(
        scope,
        "device.revoked",
        target=device,
        before=before,
        after=_device_fields(device),
        request=request,
    )
    return device


def new_enrollment_code(
    scope: Scope, device_id: UUID | str, *, request: HttpRequest | None = None
) -> credentials.IssuedSecret:
    """A fresh one-time code (the earlier one dies); enrolling with it replaces the credential,
    e.g. for a replaced edge box."""
    scope.require(Permission.DATA_CONFIGURE)
    device = scope.get(EdgeDevice.objects.select_for_update(), device_id, what="edge device")
    _live(device)
    issued = credentials.issue_enrollment_code(device)
    audit(scope, "device.enrollment_code_issued", target=device, request=request)
    return issued


def request_rotation(
    scope: Scope, device_id: UUID | str, *, request: HttpRequest | None = None
) -> EdgeDevice:
    """Ask the device to rotate its credential at its next exchange (see the module docstring)."""
    scope.require(Permission.DATA_CONFIGURE)
    device = scope.get(EdgeDevice.objects.select_for_update(), device_id, what="edge device")
    _live(device)
    if not device.credential_digest:
        raise PlantInvalidError("This device has not enrolled yet: it has no credential.")
    if not device.rotate_credential:
        device.rotate_credential = True
        device.save(update_fields=["rotate_credential"])
        audit(scope, "device.rotation_requested", target=device, request=request)
    return device


# -- the hierarchy, for pages --------------------------------------------------------------------


@dataclass(frozen=True)
class AreaNode:
    area: Area
    depth: int  # 0 = directly in the site
    path: str  # "Hall 1 / Line 2"
    assets: list[Asset]


@dataclass(frozen=True)
class SiteNode:
    site: Site
    areas: list[AreaNode]  # depth first, children after their parent
    assets: list[Asset]  # placed on the site, in no area


def plant_tree(scope: Scope) -> list[SiteNode]:
    """Sites → areas (nested) → assets, in three queries."""
    scope.require(Permission.DATA_VIEW)
    sites = list(scope.filter(Site.objects.all()))
    areas = list(scope.filter(Area.objects.all()))
    assets = list(scope.filter(Asset.objects.all()))
    children: dict[Any, list[Area]] = {}
    for area in areas:
        children.setdefault((area.site_id, area.parent_id), []).append(area)
    by_area: dict[Any, list[Asset]] = {}
    for asset in assets:
        by_area.setdefault(asset.area_id or ("site", asset.site_id), []).append(asset)

    def walk(site_id: Any, parent_id: Any, depth: int, prefix: str) -> list[AreaNode]:
        nodes: list[AreaNode] = []
        if depth > MAX_AREA_DEPTH:
            return nodes
        for area in children.get((site_id, parent_id), []):
            path = f"{prefix}{area.name}"
            nodes.append(AreaNode(area, depth, path, by_area.get(area.pk, [])))
            nodes += walk(site_id, area.pk, depth + 1, f"{path} / ")
        return nodes

    return [
        SiteNode(site, walk(site.pk, None, 0, ""), by_area.get(("site", site.pk), []))
        for site in sites
    ]
