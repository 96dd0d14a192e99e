"""The alarm pages: the list (active first), one alarm, and a point's limits.

Thin: parse, call one service inside the transaction the view owns, render or redirect.
Refusals (another tenant's id, a missing permission) render the organisations' error page.
"""

from __future__ import annotations

from typing import Any, Final
from uuid import UUID

from django import forms
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from fieldlink.accounts import auth
from fieldlink.accounts.access import Permission
from fieldlink.telemetry import alarm_services
from fieldlink.telemetry.alarm_services import LEVEL_LABEL, AlarmFilter
from fieldlink.telemetry.alarms import Thresholds
from fieldlink.telemetry.errors import ThresholdsInvalidError
from fieldlink.telemetry.views import HEALTH_SIGN, page_errors, render_page

TABS: Final = (("active", "Active"), ("cleared", "Cleared"), ("all", "All"))
PER_PAGE: Final = 25
LIMIT_BOUND: Final = 1e15


def _level_label(kind: str, level: str) -> str:
    if kind == "health":
        return HEALTH_SIGN.get(level, (level, ""))[0]
    return LEVEL_LABEL.get(level, level).capitalize()


def _row(alarm: Any) -> dict[str, Any]:
    return {"alarm": alarm, "level_label": _level_label(alarm.kind, alarm.level)}


@never_cache
@require_GET
@login_required
@page_errors
def alarm_list(request: HttpRequest, org_id: UUID) -> HttpResponse:
    scope = auth.scope(request, org_id)
    state = request.GET.get("state", "active")
    if state not in dict(TABS):
        state = "active"
    try:
        page_number = max(1, min(int(request.GET.get("page", "1")), 10_000))
    except ValueError:
        page_number = 1
    page = alarm_services.list_alarms(
        scope, AlarmFilter(state=state, page=page_number, per_page=PER_PAGE)
    )
    return render_page(
        request,
        scope,
        "alarms/list.html",
        {
            "rows": [_row(a) for a in page.alarms],
            "page": page,
            "tab": state,
            "tabs": TABS,
            "counts": alarm_services.active_counts(scope),
            "can_respond": scope.can(Permission.ALARMS_RESPOND),
        },
    )


@never_cache
@require_GET
@login_required
@page_errors
def alarm_detail(request: HttpRequest, org_id: UUID, alarm_id: UUID) -> HttpResponse:
    scope = auth.scope(request, org_id)
    alarm = alarm_services.get_alarm(scope, alarm_id)
    return render_page(
        request,
        scope,
        "alarms/detail.html",
        {**_row(alarm), "can_respond": scope.can(Permission.ALARMS_RESPOND)},
    )


@never_cache
@require_POST
@login_required
@page_errors
def alarm_acknowledge(request: HttpRequest, org_id: UUID, alarm_id: UUID) -> HttpResponse:
    scope = auth.scope(request, org_id)
    with transaction.atomic():
        alarm_services.acknowledge(scope, alarm_id, request=request)
    # Back where the operator was: the list, or the alarm's own page (never a URL from input).
    if request.POST.get("back") == "list":
        return redirect(reverse("alarms:list", kwargs={"org_id": org_id}))
    return redirect(reverse("alarms:detail", kwargs={"org_id": org_id, "alarm_id": alarm_id}))


def _limit_field(label: str, help_text: str) -> forms.FloatField:
    return forms.FloatField(
        label=label,
        required=False,
        min_value=-LIMIT_BOUND,
        max_value=LIMIT_BOUND,
        help_text=help_text,
        widget=forms.NumberInput(attrs={"step": "any", "inputmode": "decimal"}),
    )


class ThresholdsForm(forms.Form):
    high_high = _limit_field("High high", "Trip level above: a critical alarm.")
    high = _limit_field("High", "Pre-alarm above: a warning.")
    low = _limit_field("Low", "Pre-alarm below: a warning.")
    low_low = _limit_field("Low low", "Trip level below: a critical alarm.")
    hysteresis = forms.FloatField(
        label="Hysteresis",
        required=False,
        min_value=0,
        max_value=LIMIT_BOUND,
        help_text="Deadband in the point's unit: a level is left only this far past its limit.",
        widget=forms.NumberInput(attrs={"step": "any", "inputmode": "decimal"}),
    )

    def limits(self) -> Thresholds:
        data = self.cleaned_data
        return Thresholds(
            low_low=data["low_low"],
            low=data["low"],
            high=data["high"],
            high_high=data["high_high"],
            hysteresis=data["hysteresis"] or 0.0,
        )


@never_cache
@require_http_methods(["GET", "POST"])
@login_required
@page_errors
def point_limits(request: HttpRequest, org_id: UUID, point_id: UUID) -> HttpResponse:
    scope = auth.scope(request, org_id)
    point, threshold = alarm_services.get_thresholds(scope, point_id)
    asset_url = reverse("assets:detail", kwargs={"org_id": org_id, "asset_id": point.asset_id})
    if request.method == "POST":
        scope.require(Permission.DATA_CONFIGURE)
        if request.POST.get("action") == "remove":
            with transaction.atomic():
                alarm_services.remove_thresholds(scope, point_id, request=request)
            return redirect(asset_url)
        form = ThresholdsForm(request.POST)
        if form.is_valid():
            try:
                with transaction.atomic():
                    alarm_services.set_thresholds(scope, point_id, form.limits(), request=request)
            except ThresholdsInvalidError as exc:
                field = str(exc.details.get("field", ""))
                form.add_error(field if field in form.fields else None, exc.message)
            else:
                return redirect(asset_url)
    else:
        initial = {}
        if threshold is not None:
            initial = {
                name: getattr(threshold, name)
                for name in ("high_high", "high", "low", "low_low", "hysteresis")
            }
        form = ThresholdsForm(initial=initial)
    return render_page(
        request,
        scope,
        "alarms/limits.html",
        {
            "point": point,
            "threshold": threshold,
            "form": form,
            "asset_url": asset_url,
            "can_configure": scope.can(Permission.DATA_CONFIGURE),
        },
        status=422 if request.method == "POST" else 200,
    )
