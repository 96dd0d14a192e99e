"""Web pages of the telemetry context (thin: parse, call one service, render).

The pages render what the server knows at request time; the asset page's script then polls the
REST API (latest values, downsampled series) for live values and charts, so no data is inlined
in a script (the CSP allows no inline script).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from functools import wraps
from typing import Any
from uuid import UUID

from django import forms
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from fieldlink.accounts import auth
from fieldlink.accounts.access import Scope
from fieldlink.accounts.templatetags.fieldlink_orgs import ORG_SESSION_KEY
from fieldlink.devices.models import Area, Health, Site
from fieldlink.kit.errors import HTTP_STATUS, FieldlinkError
from fieldlink.telemetry import services

# (label, icon) per NE 107 status; the colours are in assets.css (.health-<value>).
HEALTH_SIGN: dict[str, tuple[str, str]] = {
    Health.FAILURE: ("Failure", "✖"),
    Health.FUNCTION_CHECK: ("Function check", "▼"),
    Health.OUT_OF_SPECIFICATION: ("Out of specification", "?"),
    Health.MAINTENANCE_REQUIRED: ("Maintenance required", "◆"),
    Health.OK: ("OK", "✔"),
    Health.UNKNOWN: ("Unknown", "-"),
}
RANGES = (("1 h", 3_600_000), ("24 h", 86_400_000), ("7 d", 604_800_000), ("30 d", 2_592_000_000))


class _AreaChoice(forms.ModelChoiceField):  # type: ignore[type-arg]
    def label_from_instance(self, obj: Any) -> str:
        return f"{obj.site.name} / {obj.name}"


class AssetFilterForm(forms.Form):
    site = forms.ModelChoiceField(queryset=Site.objects.none(), required=False, empty_label="All")
    area = _AreaChoice(queryset=Area.objects.none(), required=False, empty_label="All")
    health = forms.ChoiceField(choices=[("", "All"), *Health.choices], required=False)

    def __init__(self, data: Any, *, scope: Scope) -> None:
        super().__init__(data)
        site_field = self.fields["site"]
        area_field = self.fields["area"]
        if isinstance(site_field, forms.ModelChoiceField):
            site_field.queryset = scope.filter(Site.objects.all())
        if isinstance(area_field, forms.ModelChoiceField):
            area_field.queryset = scope.filter(Area.objects.select_related("site"))


_View = Callable[..., HttpResponse]


def page_errors(view: _View) -> _View:
    """A refusal (another tenant's id, a missing permission) as the organisations' error page."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return view(request, *args, **kwargs)
        except FieldlinkError as exc:
            back: Scope | None = None
            with suppress(FieldlinkError):
                back = auth.scope(request, kwargs.get("org_id"))
            return render(
                request,
                "orgs/error.html",
                {"message": exc.message, "code": exc.code, "back_scope": back},
                status=HTTP_STATUS[exc.kind],
            )

    return wrapper


def render_page(
    request: HttpRequest,
    scope: Scope,
    template: str,
    context: dict[str, Any],
    *,
    status: int = 200,
) -> HttpResponse:
    org_id = str(scope.organisation.pk)
    if request.session.get(ORG_SESSION_KEY) != org_id:
        request.session[ORG_SESSION_KEY] = org_id
    return render(
        request, template, {"scope": scope, "org": scope.organisation, **context}, status=status
    )


def _health(value: str) -> dict[str, str]:
    label, icon = HEALTH_SIGN.get(value, HEALTH_SIGN[Health.UNKNOWN])
    return {"value": value, "label": label, "icon": icon}


def _latest(value: services.PointValue) -> dict[str, Any]:
    latest = value.latest
    return {
        "point": value.point,
        "value": f"{latest[1]:.6g}" if latest else None,
        "at": services.iso(latest[0]) if latest else None,
        "quality": latest[2] if latest else None,
    }


@never_cache
@require_GET
@login_required
@page_errors
def asset_list(request: HttpRequest, org_id: UUID) -> HttpResponse:
    scope = auth.scope(request, org_id)
    form = AssetFilterForm(request.GET or None, scope=scope)
    filters = services.OverviewFilter()
    if form.is_bound and form.is_valid():
        site, area = form.cleaned_data["site"], form.cleaned_data["area"]
        filters = services.OverviewFilter(
            site_id=site.pk if site else None,
            area_id=area.pk if area else None,
            health=form.cleaned_data["health"] or None,
        )
    rows = [
        {
            "entry": entry,
            "health": _health(entry.asset.health),
            "path": services.breadcrumbs(entry.asset),
            "latest": [_latest(p) for p in entry.points],
        }
        for entry in services.overview(scope, filters)
    ]
    return render_page(
        request,
        scope,
        "assets/list.html",
        {"form": form, "rows": rows, "filtered": form.is_bound, "signs": HEALTH_SIGN},
    )


@never_cache
@require_GET
@login_required
@page_errors
def asset_detail(request: HttpRequest, org_id: UUID, asset_id: UUID) -> HttpResponse:
    scope = auth.scope(request, org_id)
    entry = services.latest_of_asset(scope, asset_id)
    org = str(scope.organisation.pk)
    return render_page(
        request,
        scope,
        "assets/detail.html",
        {
            "entry": entry,
            "asset": entry.asset,
            "health": _health(entry.asset.health),
            "path": services.breadcrumbs(entry.asset),
            "latest_url": reverse(
                "api-v1:asset_latest", kwargs={"org_id": org, "asset_id": entry.asset.pk}
            ),
            "points": [
                {
                    **_latest(p),
                    "series_url": reverse(
                        "api-v1:point_series", kwargs={"org_id": org, "point_id": p.point.pk}
                    ),
                    "export_url": reverse(
                        "api-v1:point_export", kwargs={"org_id": org, "point_id": p.point.pk}
                    ),
                }
                for p in entry.points
            ],
            "ranges": RANGES,
        },
    )
