"""Web pages of the updates context, under /orgs/<org_id>/updates/ (thin: parse, call one
service, render).

Phone-first: one column of cards, native ``<progress>`` bars (no script, no inline style: the
CSP allows neither). Every member reads the overview, a rollout and a device's configuration;
engineers and above edit a configuration; admins and owners start, pause, resume and cancel
rollouts (``api.ROLLOUT_PERMISSION``, the same rule as the API). Changes are POST-only action
URLs with CSRF, checked for the permission before the form is read (a refusal outranks a
typo), run one service in the transaction the view owns, then redirect.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any, Final
from uuid import UUID

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from fieldlink.accounts import auth
from fieldlink.accounts.access import Permission, Scope
from fieldlink.devices.models import EdgeDevice
from fieldlink.telemetry.views import page_errors, render_page
from fieldlink.updates import api, services
from fieldlink.updates.errors import (
    ConfigurationInvalidError,
    DowngradeRefusedError,
    ReleaseNotPublishedError,
    RolloutDeviceBusyError,
    RolloutInvalidError,
)
from fieldlink.updates.forms import ROLLOUT_FIELDS, ConfigurationForm, RolloutForm
from fieldlink.updates.models import Rollout, RolloutDevice
from fieldlink.updates.schemas import ProgressOut, WaveOut

_View = Callable[..., HttpResponse]

MAX_ROLLOUTS_SHOWN: Final = 50
CHECK_ERROR_LABEL: Final = {
    "expired_metadata": "Signed metadata expired (freeze protection)",
    "bad_signature": "Bad signature",
    "rollback": "Older metadata than already trusted (rollback refused)",
    "unreachable": "Update server unreachable",
    "too_large": "Download larger than signed",
    "bad_target": "File does not match its signed hash or length",
    "downgrade_refused": "Downgrade refused",
    "repository_error": "Repository error",
}


def _page(view: _View) -> _View:
    """Signed-in and uncached; a service refusal renders as the organisations' error page."""
    return never_cache(login_required(page_errors(view)))


def _render(
    request: HttpRequest,
    scope: Scope,
    template: str,
    context: dict[str, Any],
    *,
    status: int = 200,
) -> HttpResponse:
    rights = {
        "can_roll_out": scope.can(api.ROLLOUT_PERMISSION),
        "can_configure": scope.can(Permission.DATA_CONFIGURE),
    }
    return render_page(request, scope, template, {**rights, **context}, status=status)


def _waves_by_rollout(scope: Scope, rollouts: list[Rollout]) -> dict[UUID, list[Any]]:
    """Per-wave progress of every listed rollout, in one query."""
    rows = (
        scope.filter(RolloutDevice.objects.filter(rollout__in=[r.pk for r in rollouts]))
        .values("rollout_id", "wave", "state")
        .annotate(n=Count("id"))
        .order_by()
    )
    states: dict[UUID, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        states[row["rollout_id"]][row["wave"]].extend([row["state"]] * row["n"])
    result = {}
    for rollout in rollouts:
        members = [
            RolloutDevice(wave=wave, state=state)
            for wave, found in states[rollout.pk].items()
            for state in found
        ]
        result[rollout.pk] = api.waves_of(rollout, members)
    return result


def _bar(progress: ProgressOut, label: str, element_id: str) -> dict[str, Any]:
    return {"p": progress, "label": label, "id": element_id}


def _wave_bar(wave: WaveOut, prefix: str) -> dict[str, Any]:
    return _bar(
        wave, f"Wave {wave.index + 1} (up to {wave.percent} %)", f"{prefix}-wave-{wave.index}"
    )


def _alert_row(alert: services.Alert) -> dict[str, Any]:
    label = CHECK_ERROR_LABEL.get(alert.code, alert.code) if alert.kind == "check_failed" else ""
    return {"alert": alert, "label": label}


@_page
@require_GET
def overview(request: HttpRequest, org_id: UUID) -> HttpResponse:
    scope = auth.scope(request, org_id)
    rollouts = services.rollouts_of(scope)[:MAX_ROLLOUTS_SHOWN]
    progress = api.progress_of_rollouts(scope, rollouts)
    waves = _waves_by_rollout(scope, rollouts)
    return _render(
        request,
        scope,
        "updates/overview.html",
        {
            "releases": services.releases()[:10],
            "rollouts": [
                {
                    "rollout": r,
                    "bar": _bar(progress[r.pk], "All devices", f"rollout-{r.pk}"),
                    "waves": [_wave_bar(w, f"rollout-{r.pk}") for w in waves[r.pk]],
                }
                for r in rollouts
            ],
            "alerts": [_alert_row(a) for a in services.update_alerts(scope)],
        },
    )


def _rollout_form(scope: Scope, data: Any = None) -> RolloutForm:
    devices = scope.filter(
        EdgeDevice.objects.filter(revoked_at__isnull=True).exclude(credential_digest="")
    ).order_by("name")
    groups = (
        scope.filter(EdgeDevice.objects.filter(revoked_at__isnull=True).exclude(group=""))
        .values_list("group", flat=True)
        .distinct()
        .order_by("group")
    )
    return RolloutForm(
        data,
        releases=[(r.version, r.version) for r in services.releases()],
        devices=[
            (str(d.pk), f"{d.name} ({d.software_version or 'version unknown'})")
            for d in devices[:500]
        ],
        groups=list(groups),
    )


@_page
@require_http_methods(["GET", "POST"])
def rollout_new(request: HttpRequest, org_id: UUID) -> HttpResponse:
    scope = auth.scope(request, org_id)
    scope.require(api.ROLLOUT_PERMISSION)
    scope.require(Permission.DATA_CONFIGURE)
    if request.method != "POST":
        return _render(request, scope, "updates/rollout_new.html", {"form": _rollout_form(scope)})
    form = _rollout_form(scope, request.POST)
    if form.is_valid():
        try:
            with transaction.atomic():
                rollout = services.create_rollout(scope, **form.service_kwargs(), request=request)
        except (
            RolloutInvalidError,
            ReleaseNotPublishedError,
            DowngradeRefusedError,
            RolloutDeviceBusyError,
        ) as exc:
            field = ROLLOUT_FIELDS.get(str(exc.details.get("field", "")))
            if isinstance(exc, DowngradeRefusedError):
                field = "force"
            form.add_error(field, exc.message)
        else:
            messages.success(request, f"Rollout of {rollout.release.version} started.")
            return redirect("updates:rollout", org_id=org_id, rollout_id=rollout.pk)
    return _render(request, scope, "updates/rollout_new.html", {"form": form}, status=422)


@_page
@require_GET
def rollout(request: HttpRequest, org_id: UUID, rollout_id: UUID) -> HttpResponse:
    scope = auth.scope(request, org_id)
    detail = api.rollout_detail(scope, rollout_id)
    return _render(
        request,
        scope,
        "updates/rollout.html",
        {
            "rollout": detail,
            "bar": _bar(detail.progress, "All devices", "rollout-all"),
            "waves": [
                {
                    "bar": _bar(wave, "Finished", f"rollout-wave-{wave.index}"),
                    "current": wave.index == detail.current_wave,
                    "devices": [d for d in detail.devices if d.wave == wave.index],
                }
                for wave in detail.per_wave
            ],
        },
    )


def _rollout_action(
    change: Callable[..., Rollout], done: str
) -> Callable[[HttpRequest, UUID, UUID], HttpResponse]:
    @_page
    @require_POST
    def action(request: HttpRequest, org_id: UUID, rollout_id: UUID) -> HttpResponse:
        scope = auth.scope(request, org_id)
        scope.require(api.ROLLOUT_PERMISSION)
        with transaction.atomic():
            changed = change(scope, rollout_id, request=request)
        messages.success(request, f"Rollout of {changed.release.version} {done}.")
        return redirect("updates:rollout", org_id=org_id, rollout_id=rollout_id)

    return action


rollout_pause = _rollout_action(services.pause_rollout, "paused")
rollout_resume = _rollout_action(services.resume_rollout, "resumed")
rollout_cancel = _rollout_action(services.cancel_rollout, "cancelled")


@_page
@require_http_methods(["GET", "POST"])
def configuration(request: HttpRequest, org_id: UUID, device_id: UUID) -> HttpResponse:
    scope = auth.scope(request, org_id)
    status = 200
    if request.method == "POST":
        scope.require(Permission.DATA_CONFIGURE)
        form = ConfigurationForm(request.POST)
        if form.is_valid():
            try:
                with transaction.atomic():
                    saved = services.set_device_configuration(
                        scope, device_id, form.cleaned_data["toml"], request=request
                    )
            except ConfigurationInvalidError as exc:
                form.add_error("toml", exc.message)
            else:
                messages.success(
                    request, f"Configuration {saved.version} is signed; the device fetches it next."
                )
                return redirect("updates:configuration", org_id=org_id, device_id=device_id)
        status = 422
    current = api.configuration_out(scope, device_id)
    device = scope.get(EdgeDevice.objects.all(), device_id, what="edge device")
    if request.method != "POST":
        form = ConfigurationForm(initial={"toml": current.desired.toml if current.desired else ""})
    return _render(
        request,
        scope,
        "updates/configuration.html",
        {"device": device, "current": current, "form": form},
        status=status,
    )
