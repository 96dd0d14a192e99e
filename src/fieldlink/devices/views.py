"""Web pages of the plant configuration, under /orgs/<org_id>/plant/ (thin: parse, call a
service, render).

Pages (GET) are readable by every member (``data.view``); engineers and above also get the
forms. Every change is a POST-only action URL: it resolves the Scope (another tenant's
organisation is a 404 for every method), refuses a non-POST with 405, checks
``data.configure`` before looking at the form (a refusal outranks a typo), finds the object
(another tenant's id is a 404), then calls one service in the transaction and redirects.
The enrollment code is the exception to POST-redirect-GET: it is rendered once in the POST's
own response and never stored.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime
from functools import wraps
from typing import Any
from uuid import UUID

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache

from fieldlink.accounts import auth
from fieldlink.accounts.access import Permission, Scope
from fieldlink.accounts.templatetags.fieldlink_orgs import ORG_SESSION_KEY
from fieldlink.devices import services
from fieldlink.devices.api import enroll_command
from fieldlink.devices.credentials import IssuedSecret
from fieldlink.devices.forms import (
    AreaEditForm,
    AreaForm,
    AssetForm,
    DeviceForm,
    HealthForm,
    PointForm,
    SiteForm,
)
from fieldlink.devices.models import Area, Asset, EdgeDevice, Health, MeasuringPoint
from fieldlink.devices.units import UNITS
from fieldlink.kit.errors import HTTP_STATUS, FieldlinkError

_View = Callable[..., HttpResponse]


def _page(view: _View) -> _View:
    """A signed-in, uncached page whose service refusals render as an error page."""

    @never_cache
    @login_required
    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            with transaction.atomic():
                return view(request, *args, **kwargs)
        except FieldlinkError as exc:
            return _error_page(request, exc, kwargs.get("org_id"))

    return wrapper


def _action(view: Callable[..., HttpResponse]) -> _View:
    """A POST-only change: the view receives the resolved scope instead of ``org_id``."""

    @_page
    @wraps(view)
    def wrapper(request: HttpRequest, org_id: UUID, **kwargs: Any) -> HttpResponse:
        scope = auth.scope(request, org_id)
        if request.method != "POST":
            response = render(
                request,
                "plant/error.html",
                {"message": "This address only takes a form submission.", "code": "405"},
                status=405,
            )
            response["Allow"] = "POST"
            return response
        scope.require(Permission.DATA_CONFIGURE)
        return view(request, scope, **kwargs)

    return wrapper


def _error_page(request: HttpRequest, exc: FieldlinkError, org_id: UUID | None) -> HttpResponse:
    scope: Scope | None = None
    if org_id is not None:
        with suppress(FieldlinkError):  # only to offer a way back
            scope = auth.scope(request, org_id)
    return render(
        request,
        "plant/error.html",
        {"message": exc.message, "code": exc.code, "back_scope": scope},
        status=HTTP_STATUS[exc.kind],
    )


def _render(
    request: HttpRequest,
    scope: Scope,
    template: str,
    context: dict[str, Any] | None = None,
    *,
    status: int = 200,
) -> HttpResponse:
    org_id = str(scope.organisation.pk)
    if request.session.get(ORG_SESSION_KEY) != org_id:
        request.session[ORG_SESSION_KEY] = org_id
    base = {
        "scope": scope,
        "org": scope.organisation,
        "can_configure": scope.can(Permission.DATA_CONFIGURE),
    }
    return render(request, template, {**base, **(context or {})}, status=status)


def _site_choices(scope: Scope) -> list[tuple[str, str]]:
    return [(str(s.pk), s.name) for s in services.sites_of(scope)]


def _area_choices(tree: list[services.SiteNode]) -> list[tuple[str, str]]:
    return [(str(n.area.pk), f"{s.site.name} / {n.path}") for s in tree for n in s.areas]


def _or_none(value: str) -> str | None:
    return value or None


# -- hierarchy -----------------------------------------------------------------------------------


def _hierarchy(
    request: HttpRequest,
    scope: Scope,
    *,
    site_form: SiteForm | None = None,
    area_form: AreaForm | None = None,
    asset_form: AssetForm | None = None,
    status: int = 200,
) -> HttpResponse:
    tree = services.plant_tree(scope)
    sites = [(str(n.site.pk), n.site.name) for n in tree]
    areas = _area_choices(tree)
    return _render(
        request,
        scope,
        "plant/hierarchy.html",
        {
            "tree": tree,
            "site_form": site_form or SiteForm(),
            "area_form": area_form or AreaForm(sites=sites, areas=areas),
            "asset_form": asset_form or AssetForm(sites=sites, areas=areas),
        },
        status=status,
    )


@_page
def hierarchy(request: HttpRequest, org_id: UUID) -> HttpResponse:
    return _hierarchy(request, auth.scope(request, org_id))


@_action
def site_add(request: HttpRequest, scope: Scope) -> HttpResponse:
    form = SiteForm(request.POST)
    if not form.is_valid():
        return _hierarchy(request, scope, site_form=form, status=422)
    site = services.create_site(scope, request=request, **form.cleaned_data)
    messages.success(request, f"Site {site.name} was added.")
    return redirect("plant:hierarchy", org_id=scope.organisation.pk)


@_page
def site(request: HttpRequest, org_id: UUID, site_id: UUID) -> HttpResponse:
    scope = auth.scope(request, org_id)
    found = services.get_site(scope, site_id)
    scope.require(Permission.DATA_CONFIGURE)  # the page is an edit form
    form = SiteForm(initial={"name": found.name, "description": found.description})
    return _render(request, scope, "plant/site.html", {"site": found, "form": form})


@_action
def site_update(request: HttpRequest, scope: Scope, site_id: UUID) -> HttpResponse:
    found = services.get_site(scope, site_id)
    form = SiteForm(request.POST)
    if not form.is_valid():
        return _render(request, scope, "plant/site.html", {"site": found, "form": form}, status=422)
    services.update_site(scope, site_id, form.cleaned_data, request=request)
    messages.success(request, "The site was saved.")
    return redirect("plant:hierarchy", org_id=scope.organisation.pk)


@_action
def site_delete(request: HttpRequest, scope: Scope, site_id: UUID) -> HttpResponse:
    found = services.delete_site(scope, site_id, request=request)
    messages.success(request, f"Site {found.name} was deleted.")
    return redirect("plant:hierarchy", org_id=scope.organisation.pk)


# -- areas ---------------------------------------------------------------------------------------


@_action
def area_add(request: HttpRequest, scope: Scope) -> HttpResponse:
    tree = services.plant_tree(scope)
    sites = [(str(n.site.pk), n.site.name) for n in tree]
    form = AreaForm(request.POST, sites=sites, areas=_area_choices(tree))
    if not form.is_valid():
        return _hierarchy(request, scope, area_form=form, status=422)
    area = services.create_area(
        scope,
        site_id=form.cleaned_data["site"],
        parent_id=_or_none(form.cleaned_data["parent"]),
        name=form.cleaned_data["name"],
        request=request,
    )
    messages.success(request, f"Area {area.name} was added.")
    return redirect("plant:hierarchy", org_id=scope.organisation.pk)


def _area_page(
    request: HttpRequest, scope: Scope, area: Area, form: AreaEditForm | None, status: int = 200
) -> HttpResponse:
    tree = services.plant_tree(scope)
    node = next(n for n in tree if n.site.pk == area.site_id)
    # Offered parents: the same site's areas (the service refuses cycles with a message).
    parents = [(str(n.area.pk), n.path) for n in node.areas if n.area.pk != area.pk]
    initial = {"name": area.name, "parent": str(area.parent_id or "")}
    form = form or AreaEditForm(initial=initial, areas=parents)
    return _render(request, scope, "plant/area.html", {"area": area, "form": form}, status=status)


@_page
def area(request: HttpRequest, org_id: UUID, area_id: UUID) -> HttpResponse:
    scope = auth.scope(request, org_id)
    found = services.get_area(scope, area_id)
    scope.require(Permission.DATA_CONFIGURE)  # the page is an edit form
    return _area_page(request, scope, found, None)


@_action
def area_update(request: HttpRequest, scope: Scope, area_id: UUID) -> HttpResponse:
    found = services.get_area(scope, area_id)
    choices = [(str(a.pk), a.name) for a in services.areas_of(scope, site_id=found.site_id)]
    form = AreaEditForm(request.POST, areas=choices)
    if not form.is_valid():
        return _area_page(request, scope, found, form, status=422)
    changes = {
        "name": form.cleaned_data["name"],
        "parent_id": _or_none(form.cleaned_data["parent"]),
    }
    services.update_area(scope, area_id, changes, request=request)
    messages.success(request, "The area was saved.")
    return redirect("plant:hierarchy", org_id=scope.organisation.pk)


@_action
def area_delete(request: HttpRequest, scope: Scope, area_id: UUID) -> HttpResponse:
    found = services.delete_area(scope, area_id, request=request)
    messages.success(request, f"Area {found.name} was deleted.")
    return redirect("plant:hierarchy", org_id=scope.organisation.pk)


# -- assets --------------------------------------------------------------------------------------


def _asset_form_choices(scope: Scope) -> dict[str, Any]:
    tree = services.plant_tree(scope)
    return {"sites": [(str(n.site.pk), n.site.name) for n in tree], "areas": _area_choices(tree)}


def _asset_values(form: AssetForm) -> dict[str, Any]:
    data = form.cleaned_data
    return {
        "tag": data["tag"],
        "site_id": data["site"],
        "area_id": _or_none(data["area"]),
        "hidden": data["hidden"],
        **{name: data[name] for name in AssetForm.TEXT},
    }


@_action
def asset_add(request: HttpRequest, scope: Scope) -> HttpResponse:
    form = AssetForm(request.POST, **_asset_form_choices(scope))
    if not form.is_valid():
        return _hierarchy(request, scope, asset_form=form, status=422)
    values = _asset_values(form)
    values.pop("hidden")  # a new asset is visible; hiding is for discovered ones
    asset = services.create_asset(
        scope,
        tag=values.pop("tag"),
        site_id=values.pop("site_id"),
        area_id=values.pop("area_id"),
        request=request,
        **values,
    )
    messages.success(request, f"Asset {asset.tag} was added.")
    return redirect("plant:asset", org_id=scope.organisation.pk, asset_id=asset.pk)


def _asset_page(
    request: HttpRequest,
    scope: Scope,
    asset: Asset,
    *,
    asset_form: AssetForm | None = None,
    point_form: PointForm | None = None,
    health_form: HealthForm | None = None,
    status: int = 200,
) -> HttpResponse:
    points = services.points_of(scope, asset.pk)
    _, history, total = services.health_history(scope, asset.pk, limit=20)
    if asset_form is None:
        initial = {
            "tag": asset.tag,
            "site": str(asset.site_id),
            "area": str(asset.area_id or ""),
            "hidden": asset.hidden,
            **{name: getattr(asset, name) for name in AssetForm.TEXT},
        }
        asset_form = AssetForm(initial=initial, **_asset_form_choices(scope))
    return _render(
        request,
        scope,
        "plant/asset.html",
        {
            "asset": asset,
            "health_label": Health(asset.health).label,
            "points": [
                (
                    p,
                    UNITS.get(p.unit, p.unit),
                    PointForm(initial=_point_initial(p), prefix=f"p{p.pk.hex[:8]}"),
                )
                for p in points
            ],
            "history": history,
            "history_total": total,
            "asset_form": asset_form,
            "point_form": point_form or PointForm(),
            "health_form": health_form or HealthForm(initial={"health": asset.health}),
        },
        status=status,
    )


def _point_initial(point: MeasuringPoint) -> dict[str, str]:
    return {"key": point.key, "unit": point.unit, "description": point.description}


@_page
def asset(request: HttpRequest, org_id: UUID, asset_id: UUID) -> HttpResponse:
    scope = auth.scope(request, org_id)
    return _asset_page(request, scope, services.get_asset(scope, asset_id))


@_action
def asset_update(request: HttpRequest, scope: Scope, asset_id: UUID) -> HttpResponse:
    found = services.get_asset(scope, asset_id)
    form = AssetForm(request.POST, **_asset_form_choices(scope))
    if not form.is_valid():
        return _asset_page(request, scope, found, asset_form=form, status=422)
    services.update_asset(scope, asset_id, _asset_values(form), request=request)
    messages.success(request, "The asset was saved.")
    return redirect("plant:asset", org_id=scope.organisation.pk, asset_id=asset_id)


@_action
def asset_delete(request: HttpRequest, scope: Scope, asset_id: UUID) -> HttpResponse:
    found = services.delete_asset(scope, asset_id, request=request)
    messages.success(request, f"Asset {found.tag} was deleted.")
    return redirect("plant:hierarchy", org_id=scope.organisation.pk)


@_action
def asset_health(request: HttpRequest, scope: Scope, asset_id: UUID) -> HttpResponse:
    found = services.get_asset(scope, asset_id)
    form = HealthForm(request.POST)
    if not form.is_valid():
        return _asset_page(request, scope, found, health_form=form, status=422)
    _, change = services.set_health(scope, asset_id, request=request, **form.cleaned_data)
    if change is None:
        messages.info(request, "The status was already so; nothing changed.")
    else:
        messages.success(request, f"Status set to {Health(change.health).label}.")
    return redirect("plant:asset", org_id=scope.organisation.pk, asset_id=asset_id)


# -- measuring points ----------------------------------------------------------------------------


@_action
def point_add(request: HttpRequest, scope: Scope, asset_id: UUID) -> HttpResponse:
    found = services.get_asset(scope, asset_id)
    form = PointForm(request.POST)
    if not form.is_valid():
        return _asset_page(request, scope, found, point_form=form, status=422)
    point = services.create_point(scope, asset_id, request=request, **form.cleaned_data)
    messages.success(request, f"Measuring point {point.key} was added.")
    return redirect("plant:asset", org_id=scope.organisation.pk, asset_id=asset_id)


@_action
def point_update(request: HttpRequest, scope: Scope, point_id: UUID) -> HttpResponse:
    point = services.get_point(scope, point_id)
    form = PointForm(request.POST, prefix=f"p{point.pk.hex[:8]}")
    if not form.is_valid():
        asset = services.get_asset(scope, point.asset_id)
        return _asset_page(request, scope, asset, status=422)
    services.update_point(scope, point_id, form.cleaned_data, request=request)
    messages.success(request, "The measuring point was saved.")
    return redirect("plant:asset", org_id=scope.organisation.pk, asset_id=point.asset_id)


@_action
def point_delete(request: HttpRequest, scope: Scope, point_id: UUID) -> HttpResponse:
    point = services.delete_point(scope, point_id, request=request)
    messages.success(request, f"Measuring point {point.key} was deleted.")
    return redirect("plant:asset", org_id=scope.organisation.pk, asset_id=point.asset_id)


# -- edge devices --------------------------------------------------------------------------------


def _asset_choices(scope: Scope) -> list[tuple[str, str]]:
    return [(str(a.pk), a.tag) for a in services.assets_of(scope)]


def _devices_page(
    request: HttpRequest,
    scope: Scope,
    *,
    form: DeviceForm | None = None,
    issued: IssuedSecret | None = None,
    status: int = 200,
) -> HttpResponse:
    return _render(
        request,
        scope,
        "plant/devices.html",
        {
            "devices": services.devices_of(scope),
            "form": form or DeviceForm(assets=_asset_choices(scope)),
            **_issued(request, issued),
        },
        status=status,
    )


def _issued(request: HttpRequest, issued: IssuedSecret | None) -> dict[str, Any]:
    if issued is None:
        return {}
    return {
        "issued": issued,
        "enroll_command": enroll_command(request, issued.secret),
    }


@_page
def devices(request: HttpRequest, org_id: UUID) -> HttpResponse:
    return _devices_page(request, auth.scope(request, org_id))


@_action
def device_add(request: HttpRequest, scope: Scope) -> HttpResponse:
    form = DeviceForm(request.POST, assets=_asset_choices(scope))
    if not form.is_valid():
        return _devices_page(request, scope, form=form, status=422)
    issued = services.create_device(
        scope,
        name=form.cleaned_data["name"],
        asset_ids=form.cleaned_data["assets"],
        request=request,
    )
    # Rendered, not redirected: the code exists only in this response.
    return _devices_page(request, scope, issued=issued)


def _device_page(
    request: HttpRequest,
    scope: Scope,
    device: EdgeDevice,
    *,
    form: DeviceForm | None = None,
    issued: IssuedSecret | None = None,
    status: int = 200,
) -> HttpResponse:
    initial = {"name": device.name, "assets": [str(a.pk) for a in device.assets.all()]}
    return _render(
        request,
        scope,
        "plant/device.html",
        {
            "device": device,
            "device_assets": list(device.assets.all()),
            "gaps": [
                {
                    "count": gap.count,
                    "reason": gap.reason,
                    "from_at": datetime.fromtimestamp(gap.from_ts / 1000, tz=UTC),
                    "to_at": datetime.fromtimestamp(gap.to_ts / 1000, tz=UTC),
                }
                for gap in device.gaps.all()[:20]
            ],
            "form": form or DeviceForm(initial=initial, assets=_asset_choices(scope)),
            **_issued(request, issued),
        },
        status=status,
    )


@_page
def device(request: HttpRequest, org_id: UUID, device_id: UUID) -> HttpResponse:
    scope = auth.scope(request, org_id)
    return _device_page(request, scope, services.get_device(scope, device_id))


@_action
def device_update(request: HttpRequest, scope: Scope, device_id: UUID) -> HttpResponse:
    found = services.get_device(scope, device_id)
    form = DeviceForm(request.POST, assets=_asset_choices(scope))
    if not form.is_valid():
        return _device_page(request, scope, found, form=form, status=422)
    changes = {"name": form.cleaned_data["name"], "asset_ids": form.cleaned_data["assets"]}
    services.update_device(scope, device_id, changes, request=request)
    messages.success(request, "The edge device was saved.")
    return redirect("plant:device", org_id=scope.organisation.pk, device_id=device_id)


@_action
def device_revoke(request: HttpRequest, scope: Scope, device_id: UUID) -> HttpResponse:
    found = services.revoke_device(scope, device_id, request=request)
    messages.success(request, f"{found.name} is revoked: its credential no longer works.")
    return redirect("plant:device", org_id=scope.organisation.pk, device_id=device_id)


@_action
def device_code(request: HttpRequest, scope: Scope, device_id: UUID) -> HttpResponse:
    issued = services.new_enrollment_code(scope, device_id, request=request)
    return _device_page(request, scope, services.get_device(scope, device_id), issued=issued)


@_action
def device_rotate(request: HttpRequest, scope: Scope, device_id: UUID) -> HttpResponse:
    found = services.request_rotation(scope, device_id, request=request)
    messages.success(request, f"{found.name} will rotate its credential at its next contact.")
    return redirect("plant:device", org_id=scope.organisation.pk, device_id=device_id)
