"""REST endpoints of the plant configuration (thin: parse, call one service, render).

Routes live under ``/api/v1/orgs/{org_id}/…`` (sites, areas, assets, points, devices) plus
``/api/v1/units``. Every handler resolves the caller's Scope (404 without standing), calls one
service inside the transaction it owns, and renders; the services check the permission and
write the audit entry in that transaction. No response carries a credential digest; the
one-time enrollment code appears only in the response that created it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from django.db import transaction
from django.http import HttpRequest
from ninja import Field, Query, Router, Schema, Status

from fieldlink.accounts.auth import scope as scope_of
from fieldlink.accounts.schemas import StrictInput
from fieldlink.devices import services
from fieldlink.devices.credentials import IssuedSecret
from fieldlink.devices.models import Area, Asset, EdgeDevice, Health, HealthChange, MeasuringPoint
from fieldlink.devices.models import Site as SiteModel
from fieldlink.devices.units import UNITS

router = Router(tags=["plant"])

# -- shapes --------------------------------------------------------------------------------------


class UnitOut(Schema):
    code: str
    label: str


class SiteIn(StrictInput):
    name: str = Field(min_length=1, max_length=100)
    description: str = Field(default="", max_length=500)


class SitePatch(StrictInput):
    name: str | None = Field(default=None, min_length=1, max_length=100)
    description: str | None = Field(default=None, max_length=500)


class SiteOut(Schema):
    id: UUID
    name: str
    description: str
    created_at: datetime


class AreaIn(StrictInput):
    site_id: UUID
    parent_id: UUID | None = None
    name: str = Field(min_length=1, max_length=100)


class AreaPatch(StrictInput):
    name: str | None = Field(default=None, min_length=1, max_length=100)
    parent_id: UUID | None = Field(default=None, description="null moves it to the site's top")


class AreaOut(Schema):
    id: UUID
    site_id: UUID
    parent_id: UUID | None
    name: str
    created_at: datetime


class AssetIn(StrictInput):
    tag: str = Field(min_length=1, max_length=64, description="The plant's name, e.g. FIT-101")
    site_id: UUID
    area_id: UUID | None = None
    manufacturer: str = Field(default="", max_length=100)
    product_code: str = Field(default="", max_length=100)
    serial_number: str = Field(default="", max_length=100)
    firmware_version: str = Field(default="", max_length=50)
    description: str = Field(default="", max_length=500)


class AssetPatch(StrictInput):
    """Health is not here: it changes only through /health, which keeps the history."""

    tag: str | None = Field(default=None, min_length=1, max_length=64)
    site_id: UUID | None = None
    area_id: UUID | None = None
    manufacturer: str | None = Field(default=None, max_length=100)
    product_code: str | None = Field(default=None, max_length=100)
    serial_number: str | None = Field(default=None, max_length=100)
    firmware_version: str | None = Field(default=None, max_length=50)
    description: str | None = Field(default=None, max_length=500)
    hidden: bool | None = Field(
        default=None, description="Hide from the operators' asset list (values are still kept)"
    )


class HealthOut(Schema):
    status: Health
    code: str
    cause: str
    remedy: str
    changed_at: datetime | None


class PointOut(Schema):
    id: UUID
    asset_id: UUID
    key: str
    unit: str
    unit_label: str
    description: str
    created_at: datetime


class AssetOut(Schema):
    id: UUID
    tag: str
    site_id: UUID
    area_id: UUID | None
    manufacturer: str
    product_code: str
    serial_number: str
    firmware_version: str
    description: str
    created_at: datetime
    health: HealthOut
    hidden: bool
    edge_ref: str = Field(description="The name the edge device uses for it (discovered assets)")


class AssetDetailOut(AssetOut):
    points: list[PointOut]


class AssetQuery(Schema):
    site_id: UUID | None = None
    area_id: UUID | None = Field(default=None, description="Includes the areas below it.")
    health: Health | None = None
    q: str = Field(default="", max_length=100, description="Tag, description, maker or serial.")


class HealthIn(StrictInput):
    health: Health
    code: str = Field(default="", max_length=32)
    cause: str = Field(default="", max_length=500)
    remedy: str = Field(default="", max_length=500)


class HealthChangeOut(Schema):
    id: UUID
    health: Health
    code: str
    cause: str
    remedy: str
    at: datetime
    source: str


class HealthPageOut(Schema):
    items: list[HealthChangeOut]
    total: int
    limit: int
    offset: int


class PageQuery(Schema):
    limit: int = Field(default=50, ge=1, le=500)
    offset: int = Field(default=0, ge=0)


class PointIn(StrictInput):
    key: str = Field(min_length=1, max_length=64, description="e.g. volume_flow")
    unit: str = Field(min_length=1, max_length=16, description="A code from GET /api/v1/units")
    description: str = Field(default="", max_length=200)


class PointPatch(StrictInput):
    key: str | None = Field(default=None, min_length=1, max_length=64)
    unit: str | None = Field(default=None, min_length=1, max_length=16)
    description: str | None = Field(default=None, max_length=200)


class DeviceIn(StrictInput):
    name: str = Field(min_length=1, max_length=100)
    asset_ids: list[UUID] = Field(default_factory=list, max_length=1000)


class DevicePatch(StrictInput):
    name: str | None = Field(default=None, min_length=1, max_length=100)
    asset_ids: list[UUID] | None = Field(default=None, max_length=1000)


class DeviceOut(Schema):
    id: UUID
    name: str
    asset_ids: list[UUID]
    created_at: datetime
    enrolled_at: datetime | None
    enrollment_expires_at: datetime | None = Field(description="Of a pending enrollment code.")
    credential_prefix: str = Field(description="The first characters, to recognise it.")
    credential_rotated_at: datetime | None
    rotate_credential: bool = Field(description="The device is told to rotate at next contact.")
    revoked_at: datetime | None
    last_seen_at: datetime | None
    acked_sequence: int


class EnrollmentOut(Schema):
    enrollment_code: str = Field(description="One-time, 24 h. Shown once; only its hash is kept.")
    expires_at: datetime
    enroll_command: str


class DeviceCreatedOut(DeviceOut):
    enrollment_code: str = Field(description="One-time, 24 h. Shown once; only its hash is kept.")
    enroll_command: str


# -- rendering -----------------------------------------------------------------------------------


def _changes(payload: StrictInput, nullable: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The fields a PATCH sent; null means "unset" only where the field may be empty."""
    sent = payload.model_dump(exclude_unset=True)
    return {k: v for k, v in sent.items() if v is not None or k in nullable}


def _site(site: SiteModel) -> SiteOut:
    return SiteOut.model_validate(site, from_attributes=True)


def _area(area: Area) -> AreaOut:
    return AreaOut(
        id=area.pk,
        site_id=area.site_id,
        parent_id=area.parent_id,
        name=area.name,
        created_at=area.created_at,
    )


def _point(point: MeasuringPoint) -> PointOut:
    return PointOut(
        id=point.pk,
        asset_id=point.asset_id,
        key=point.key,
        unit=point.unit,
        unit_label=UNITS.get(point.unit, point.unit),
        description=point.description,
        created_at=point.created_at,
    )


def _asset_fields(asset: Asset) -> dict[str, Any]:
    return {
        "id": asset.pk,
        "tag": asset.tag,
        "site_id": asset.site_id,
        "area_id": asset.area_id,
        "manufacturer": asset.manufacturer,
        "product_code": asset.product_code,
        "serial_number": asset.serial_number,
        "firmware_version": asset.firmware_version,
        "description": asset.description,
        "created_at": asset.created_at,
        "hidden": asset.hidden,
        "edge_ref": asset.edge_ref,
        "health": HealthOut(
            status=Health(asset.health),
            code=asset.health_code,
            cause=asset.health_cause,
            remedy=asset.health_remedy,
            changed_at=asset.health_changed_at,
        ),
    }


def _asset(asset: Asset) -> AssetOut:
    return AssetOut(**_asset_fields(asset))


def _asset_detail(asset: Asset, points: list[MeasuringPoint]) -> AssetDetailOut:
    return AssetDetailOut(**_asset_fields(asset), points=[_point(p) for p in points])


def _change(change: HealthChange) -> HealthChangeOut:
    return HealthChangeOut(
        id=change.pk,
        health=Health(change.health),
        code=change.code,
        cause=change.cause,
        remedy=change.remedy,
        at=change.at,
        source=change.source,
    )


def _device_fields(device: EdgeDevice) -> dict[str, Any]:
    return {
        "id": device.pk,
        "name": device.name,
        "asset_ids": sorted(a.pk for a in device.assets.all()),
        "created_at": device.created_at,
        "enrolled_at": device.enrolled_at,
        "enrollment_expires_at": device.enrollment_expires_at,
        "credential_prefix": device.credential_prefix,
        "credential_rotated_at": device.credential_rotated_at,
        "rotate_credential": device.rotate_credential,
        "revoked_at": device.revoked_at,
        "last_seen_at": device.last_seen_at,
        "acked_sequence": device.acked_sequence,
    }


def _device(device: EdgeDevice) -> DeviceOut:
    return DeviceOut(**_device_fields(device))


def enroll_command(request: HttpRequest, code: str) -> str:
    """The edge agent's command line for this code (the agent itself is a later issue)."""
    url = request.build_absolute_uri("/").rstrip("/")
    return f"fieldlink edge enroll --url {url} --code {code}"


def _enrollment(request: HttpRequest, issued: IssuedSecret) -> EnrollmentOut:
    expires = issued.device.enrollment_expires_at
    assert expires is not None  # noqa: S101 -- issue_enrollment_code sets it
    return EnrollmentOut(
        enrollment_code=issued.secret,
        expires_at=expires,
        enroll_command=enroll_command(request, issued.secret),
    )


# -- units ---------------------------------------------------------------------------------------


@router.get("/units", response=list[UnitOut], summary="Unit codes for measuring points")
def list_units(request: HttpRequest) -> list[UnitOut]:
    return [UnitOut(code=code, label=label) for code, label in UNITS.items()]


# -- sites ---------------------------------------------------------------------------------------


@router.get("/orgs/{org_id}/sites", response=list[SiteOut], summary="Sites")
def list_sites(request: HttpRequest, org_id: UUID) -> list[SiteOut]:
    return [_site(s) for s in services.sites_of(scope_of(request, org_id))]


@router.post("/orgs/{org_id}/sites", response={201: SiteOut}, summary="Create a site")
def create_site(request: HttpRequest, org_id: UUID, payload: SiteIn) -> Status[SiteOut]:
    scope = scope_of(request, org_id)
    with transaction.atomic():
        site = services.create_site(
            scope, name=payload.name, description=payload.description, request=request
        )
    return Status(201, _site(site))


@router.get("/orgs/{org_id}/sites/{site_id}", response=SiteOut, summary="A site")
def get_site(request: HttpRequest, org_id: UUID, site_id: UUID) -> SiteOut:
    return _site(services.get_site(scope_of(request, org_id), site_id))


@router.patch("/orgs/{org_id}/sites/{site_id}", response=SiteOut, summary="Change a site")
def update_site(request: HttpRequest, org_id: UUID, site_id: UUID, payload: SitePatch) -> SiteOut:
    scope = scope_of(request, org_id)
    with transaction.atomic():
        site = services.update_site(scope, site_id, _changes(payload), request=request)
    return _site(site)


@router.delete(
    "/orgs/{org_id}/sites/{site_id}",
    response={204: None},
    summary="Delete a site (409 while it has assets)",
)
def delete_site(request: HttpRequest, org_id: UUID, site_id: UUID) -> Status[None]:
    scope = scope_of(request, org_id)
    with transaction.atomic():
        services.delete_site(scope, site_id, request=request)
    return Status(204, None)


# -- areas ---------------------------------------------------------------------------------------


class AreaQuery(Schema):
    site_id: UUID | None = None


@router.get("/orgs/{org_id}/areas", response=list[AreaOut], summary="Areas (nested)")
def list_areas(request: HttpRequest, org_id: UUID, query: Query[AreaQuery]) -> list[AreaOut]:
    areas = services.areas_of(scope_of(request, org_id), site_id=query.site_id)
    return [_area(a) for a in areas]


@router.post("/orgs/{org_id}/areas", response={201: AreaOut}, summary="Create an area")
def create_area(request: HttpRequest, org_id: UUID, payload: AreaIn) -> Status[AreaOut]:
    scope = scope_of(request, org_id)
    with transaction.atomic():
        area = services.create_area(
            scope,
            site_id=payload.site_id,
            parent_id=payload.parent_id,
            name=payload.name,
            request=request,
        )
    return Status(201, _area(area))


@router.get("/orgs/{org_id}/areas/{area_id}", response=AreaOut, summary="An area")
def get_area(request: HttpRequest, org_id: UUID, area_id: UUID) -> AreaOut:
    return _area(services.get_area(scope_of(request, org_id), area_id))


@router.patch("/orgs/{org_id}/areas/{area_id}", response=AreaOut, summary="Rename or move an area")
def update_area(request: HttpRequest, org_id: UUID, area_id: UUID, payload: AreaPatch) -> AreaOut:
    scope = scope_of(request, org_id)
    with transaction.atomic():
        area = services.update_area(
            scope, area_id, _changes(payload, frozenset({"parent_id"})), request=request
        )
    return _area(area)


@router.delete(
    "/orgs/{org_id}/areas/{area_id}",
    response={204: None},
    summary="Delete an area and its sub-areas (409 while they hold assets)",
)
def delete_area(request: HttpRequest, org_id: UUID, area_id: UUID) -> Status[None]:
    scope = scope_of(request, org_id)
    with transaction.atomic():
        services.delete_area(scope, area_id, request=request)
    return Status(204, None)


# -- assets --------------------------------------------------------------------------------------


@router.get("/orgs/{org_id}/assets", response=list[AssetOut], summary="Assets, filtered")
def list_assets(request: HttpRequest, org_id: UUID, query: Query[AssetQuery]) -> list[AssetOut]:
    filters = services.AssetFilter(
        site_id=query.site_id,
        area_id=query.area_id,
        health=query.health.value if query.health else None,
        q=query.q,
    )
    return [_asset(a) for a in services.assets_of(scope_of(request, org_id), filters)]


@router.post("/orgs/{org_id}/assets", response={201: AssetOut}, summary="Create an asset")
def create_asset(request: HttpRequest, org_id: UUID, payload: AssetIn) -> Status[AssetOut]:
    scope = scope_of(request, org_id)
    fields = payload.model_dump(exclude={"tag", "site_id", "area_id"})
    with transaction.atomic():
        asset = services.create_asset(
            scope,
            tag=payload.tag,
            site_id=payload.site_id,
            area_id=payload.area_id,
            request=request,
            **fields,
        )
    return Status(201, _asset(asset))


@router.get(
    "/orgs/{org_id}/assets/{asset_id}",
    response=AssetDetailOut,
    summary="An asset with its measuring points and health",
)
def get_asset(request: HttpRequest, org_id: UUID, asset_id: UUID) -> AssetDetailOut:
    scope = scope_of(request, org_id)
    points = services.points_of(scope, asset_id)
    return _asset_detail(services.get_asset(scope, asset_id), points)


@router.patch("/orgs/{org_id}/assets/{asset_id}", response=AssetOut, summary="Change an asset")
def update_asset(
    request: HttpRequest, org_id: UUID, asset_id: UUID, payload: AssetPatch
) -> AssetOut:
    scope = scope_of(request, org_id)
    with transaction.atomic():
        asset = services.update_asset(
            scope, asset_id, _changes(payload, frozenset({"area_id"})), request=request
        )
    return _asset(asset)


@router.delete(
    "/orgs/{org_id}/assets/{asset_id}",
    response={204: None},
    summary="Delete an asset with its points, values and health history",
)
def delete_asset(request: HttpRequest, org_id: UUID, asset_id: UUID) -> Status[None]:
    scope = scope_of(request, org_id)
    with transaction.atomic():
        services.delete_asset(scope, asset_id, request=request)
    return Status(204, None)


@router.get(
    "/orgs/{org_id}/assets/{asset_id}/health",
    response=HealthPageOut,
    summary="The asset's NE 107 health history, newest first",
)
def health_history(
    request: HttpRequest, org_id: UUID, asset_id: UUID, query: Query[PageQuery]
) -> HealthPageOut:
    _, changes, total = services.health_history(
        scope_of(request, org_id), asset_id, limit=query.limit, offset=query.offset
    )
    return HealthPageOut(
        items=[_change(c) for c in changes], total=total, limit=query.limit, offset=query.offset
    )


@router.post(
    "/orgs/{org_id}/assets/{asset_id}/health",
    response=AssetOut,
    summary="Report the asset's status (e.g. maintenance required); a repeat changes nothing",
)
def set_health(request: HttpRequest, org_id: UUID, asset_id: UUID, payload: HealthIn) -> AssetOut:
    scope = scope_of(request, org_id)
    with transaction.atomic():
        asset, _ = services.set_health(
            scope,
            asset_id,
            health=payload.health.value,
            code=payload.code,
            cause=payload.cause,
            remedy=payload.remedy,
            request=request,
        )
    return _asset(asset)


# -- measuring points ----------------------------------------------------------------------------


@router.get(
    "/orgs/{org_id}/assets/{asset_id}/points",
    response=list[PointOut],
    summary="The asset's measuring points",
)
def list_points(request: HttpRequest, org_id: UUID, asset_id: UUID) -> list[PointOut]:
    return [_point(p) for p in services.points_of(scope_of(request, org_id), asset_id)]


@router.post(
    "/orgs/{org_id}/assets/{asset_id}/points",
    response={201: PointOut},
    summary="Add a measuring point",
)
def create_point(
    request: HttpRequest, org_id: UUID, asset_id: UUID, payload: PointIn
) -> Status[PointOut]:
    scope = scope_of(request, org_id)
    with transaction.atomic():
        point = services.create_point(
            scope,
            asset_id,
            key=payload.key,
            unit=payload.unit,
            description=payload.description,
            request=request,
        )
    return Status(201, _point(point))


@router.get("/orgs/{org_id}/points/{point_id}", response=PointOut, summary="A measuring point")
def get_point(request: HttpRequest, org_id: UUID, point_id: UUID) -> PointOut:
    return _point(services.get_point(scope_of(request, org_id), point_id))


@router.patch(
    "/orgs/{org_id}/points/{point_id}", response=PointOut, summary="Change a measuring point"
)
def update_point(
    request: HttpRequest, org_id: UUID, point_id: UUID, payload: PointPatch
) -> PointOut:
    scope = scope_of(request, org_id)
    with transaction.atomic():
        point = services.update_point(scope, point_id, _changes(payload), request=request)
    return _point(point)


@router.delete(
    "/orgs/{org_id}/points/{point_id}",
    response={204: None},
    summary="Delete a measuring point and its values",
)
def delete_point(request: HttpRequest, org_id: UUID, point_id: UUID) -> Status[None]:
    scope = scope_of(request, org_id)
    with transaction.atomic():
        services.delete_point(scope, point_id, request=request)
    return Status(204, None)


# -- edge devices --------------------------------------------------------------------------------


@router.get("/orgs/{org_id}/devices", response=list[DeviceOut], summary="Edge devices")
def list_devices(request: HttpRequest, org_id: UUID) -> list[DeviceOut]:
    return [_device(d) for d in services.devices_of(scope_of(request, org_id))]


@router.post(
    "/orgs/{org_id}/devices",
    response={201: DeviceCreatedOut},
    summary="Create an edge device; the response carries its one-time enrollment code",
)
def create_device(
    request: HttpRequest, org_id: UUID, payload: DeviceIn
) -> Status[DeviceCreatedOut]:
    scope = scope_of(request, org_id)
    with transaction.atomic():
        issued = services.create_device(
            scope, name=payload.name, asset_ids=payload.asset_ids, request=request
        )
    out = DeviceCreatedOut(
        **_device_fields(issued.device),
        enrollment_code=issued.secret,
        enroll_command=enroll_command(request, issued.secret),
    )
    return Status(201, out)


@router.get("/orgs/{org_id}/devices/{device_id}", response=DeviceOut, summary="An edge device")
def get_device(request: HttpRequest, org_id: UUID, device_id: UUID) -> DeviceOut:
    return _device(services.get_device(scope_of(request, org_id), device_id))


@router.patch(
    "/orgs/{org_id}/devices/{device_id}",
    response=DeviceOut,
    summary="Rename an edge device or change the assets it serves",
)
def update_device(
    request: HttpRequest, org_id: UUID, device_id: UUID, payload: DevicePatch
) -> DeviceOut:
    scope = scope_of(request, org_id)
    with transaction.atomic():
        device = services.update_device(scope, device_id, _changes(payload), request=request)
    return _device(device)


@router.delete(
    "/orgs/{org_id}/devices/{device_id}",
    response=DeviceOut,
    summary="Revoke an edge device: its credential stops working at once, for good",
)
def revoke_device(request: HttpRequest, org_id: UUID, device_id: UUID) -> DeviceOut:
    scope = scope_of(request, org_id)
    with transaction.atomic():
        device = services.revoke_device(scope, device_id, request=request)
    return _device(device)


@router.post(
    "/orgs/{org_id}/devices/{device_id}/enrollment-code",
    response={201: EnrollmentOut},
    summary="A new one-time enrollment code (the earlier one dies)",
)
def new_enrollment_code(
    request: HttpRequest, org_id: UUID, device_id: UUID
) -> Status[EnrollmentOut]:
    scope = scope_of(request, org_id)
    with transaction.atomic():
        issued = services.new_enrollment_code(scope, device_id, request=request)
    return Status(201, _enrollment(request, issued))


@router.post(
    "/orgs/{org_id}/devices/{device_id}/rotate-credential",
    response=DeviceOut,
    summary="Tell the device to rotate its credential at its next contact",
)
def rotate_credential(request: HttpRequest, org_id: UUID, device_id: UUID) -> DeviceOut:
    scope = scope_of(request, org_id)
    with transaction.atomic():
        device = services.request_rotation(scope, device_id, request=request)
    return _device(device)
