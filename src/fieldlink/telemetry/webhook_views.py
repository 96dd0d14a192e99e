"""Pages under /orgs/<org_id>/alarms/notifications/: own alarm e-mails, webhooks, deliveries.

Every member sees the overview with their own e-mail choice; admins also see and manage the
webhooks and their delivery history. Thin: parse, call one service inside the transaction the
view owns, render or redirect. Every change is a POST-only action URL that resolves the Scope
first (another tenant's organisation is a 404 for every method), answers 405 to other methods,
and checks the permission before looking at the form. The signing secret is the exception to
POST-redirect-GET: it is rendered once in the response of the POST that made it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, Final
from uuid import UUID

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from fieldlink.accounts import auth
from fieldlink.accounts.access import Permission, Scope
from fieldlink.telemetry import notifications, webhooks
from fieldlink.telemetry.errors import WebhookInvalidError, WebhookStateError
from fieldlink.telemetry.models import Webhook
from fieldlink.telemetry.views import page_errors, render_page

PER_PAGE: Final = 20

_View = Callable[..., HttpResponse]


class AlarmEmailsForm(forms.Form):
    choice = forms.ChoiceField(
        label="Alarm e-mails to me",
        choices=[
            ("none", "None"),
            ("all", "Every alarm that is raised or escalates"),
            ("critical", "Critical alarms only"),
        ],
        widget=forms.RadioSelect,
    )


class WebhookForm(forms.Form):
    name = forms.CharField(label="Name", max_length=notifications.NAME_MAX_LENGTH)
    url = forms.CharField(
        label="URL",
        max_length=notifications.URL_MAX_LENGTH,
        help_text="https:// to a public address. Private, loopback and link-local addresses "
        "are refused.",
        widget=forms.URLInput(attrs={"inputmode": "url", "autocomplete": "off"}),
    )


class RenameForm(forms.Form):
    name = forms.CharField(label="Name", max_length=notifications.NAME_MAX_LENGTH)


def _action(permission: Permission) -> Callable[[_View], _View]:
    """A POST-only change: the view gets the resolved scope instead of ``org_id``."""

    def decorate(view: _View) -> _View:
        @never_cache
        @login_required
        @page_errors
        @wraps(view)
        def wrapper(request: HttpRequest, org_id: UUID, **kwargs: Any) -> HttpResponse:
            scope = auth.scope(request, org_id)
            if request.method != "POST":
                response = render(
                    request,
                    "orgs/error.html",
                    {"message": "This address only takes a form submission.", "code": "405"},
                    status=405,
                )
                response["Allow"] = "POST"
                return response
            scope.require(permission)
            with transaction.atomic():
                return view(request, scope, **kwargs)

        return wrapper

    return decorate


def _index_page(
    request: HttpRequest,
    scope: Scope,
    *,
    form: WebhookForm | None = None,
    emails_form: AlarmEmailsForm | None = None,
    status: int = 200,
) -> HttpResponse:
    choice = notifications.alarm_emails_of(scope)
    initial = "none" if not choice.subscribed else "critical" if choice.critical_only else "all"
    can_manage = scope.can(Permission.ORG_SETTINGS)
    return render_page(
        request,
        scope,
        "notifications/index.html",
        {
            "emails_form": emails_form or AlarmEmailsForm(initial={"choice": initial}),
            "can_respond": scope.can(Permission.ALARMS_RESPOND) and scope.role is not None,
            "can_manage": can_manage,
            "webhooks": notifications.webhooks_of(scope) if can_manage else [],
            "form": form or WebhookForm(),
        },
        status=status,
    )


def _webhook_page(
    request: HttpRequest,
    scope: Scope,
    webhook: Webhook,
    *,
    issued: notifications.IssuedWebhook | None = None,
    rename_form: RenameForm | None = None,
    status: int = 200,
) -> HttpResponse:
    try:
        page_number = max(1, min(int(request.GET.get("page", "1")), 10_000))
    except ValueError:
        page_number = 1
    page = notifications.deliveries_of(scope, webhook.pk, page=page_number, per_page=PER_PAGE)
    return render_page(
        request,
        scope,
        "notifications/webhook.html",
        {
            "webhook": webhook,
            "page": page,
            "issued": issued,
            "rename_form": rename_form or RenameForm(initial={"name": webhook.name}),
            "signature_header": webhooks.SIGNATURE_HEADER,
        },
        status=status,
    )


@never_cache
@require_GET
@login_required
@page_errors
def index(request: HttpRequest, org_id: UUID) -> HttpResponse:
    return _index_page(request, auth.scope(request, org_id))


@never_cache
@require_GET
@login_required
@page_errors
def webhook_detail(request: HttpRequest, org_id: UUID, webhook_id: UUID) -> HttpResponse:
    scope = auth.scope(request, org_id)
    return _webhook_page(request, scope, notifications.get_webhook(scope, webhook_id))


@_action(Permission.ALARMS_RESPOND)
def alarm_emails(request: HttpRequest, scope: Scope) -> HttpResponse:
    form = AlarmEmailsForm(request.POST)
    if not form.is_valid():
        return _index_page(request, scope, emails_form=form, status=422)
    choice = form.cleaned_data["choice"]
    notifications.set_alarm_emails(
        scope, subscribed=choice != "none", critical_only=choice == "critical", request=request
    )
    messages.success(request, "Your alarm e-mail choice was saved.")
    return redirect("notifications:index", org_id=scope.organisation.pk)


@_action(Permission.ORG_SETTINGS)
def webhook_add(request: HttpRequest, scope: Scope) -> HttpResponse:
    form = WebhookForm(request.POST)
    if not form.is_valid():
        return _index_page(request, scope, form=form, status=422)
    try:
        issued = notifications.create_webhook(
            scope, name=form.cleaned_data["name"], url=form.cleaned_data["url"], request=request
        )
    except (WebhookInvalidError, webhooks.WebhookUrlRefusedError) as exc:
        field = str(exc.details.get("field", "url"))
        form.add_error(field if field in form.fields else None, exc.message)
        return _index_page(request, scope, form=form, status=422)
    # Rendered, not redirected: the secret exists in this response only.
    return _webhook_page(request, scope, issued.webhook, issued=issued)


@_action(Permission.ORG_SETTINGS)
def webhook_rename(request: HttpRequest, scope: Scope, webhook_id: UUID) -> HttpResponse:
    webhook = notifications.get_webhook(scope, webhook_id)
    form = RenameForm(request.POST)
    if not form.is_valid():
        return _webhook_page(request, scope, webhook, rename_form=form, status=422)
    notifications.update_webhook(scope, webhook_id, name=form.cleaned_data["name"], request=request)
    messages.success(request, "The webhook was renamed.")
    return redirect("notifications:webhook", org_id=scope.organisation.pk, webhook_id=webhook_id)


@_action(Permission.ORG_SETTINGS)
def webhook_enable(request: HttpRequest, scope: Scope, webhook_id: UUID) -> HttpResponse:
    notifications.update_webhook(scope, webhook_id, enabled=True, request=request)
    messages.success(request, "The webhook is enabled.")
    return redirect("notifications:webhook", org_id=scope.organisation.pk, webhook_id=webhook_id)


@_action(Permission.ORG_SETTINGS)
def webhook_disable(request: HttpRequest, scope: Scope, webhook_id: UUID) -> HttpResponse:
    notifications.update_webhook(scope, webhook_id, enabled=False, request=request)
    messages.success(request, "The webhook is disabled: it sends nothing until enabled.")
    return redirect("notifications:webhook", org_id=scope.organisation.pk, webhook_id=webhook_id)


@_action(Permission.ORG_SETTINGS)
def webhook_rotate(request: HttpRequest, scope: Scope, webhook_id: UUID) -> HttpResponse:
    issued = notifications.rotate_secret(scope, webhook_id, request=request)
    return _webhook_page(request, scope, issued.webhook, issued=issued)


@_action(Permission.ORG_SETTINGS)
def webhook_delete(request: HttpRequest, scope: Scope, webhook_id: UUID) -> HttpResponse:
    found = notifications.delete_webhook(scope, webhook_id, request=request)
    messages.success(request, f"Webhook {found.name} was deleted.")
    return redirect("notifications:index", org_id=scope.organisation.pk)


@_action(Permission.ORG_SETTINGS)
def webhook_test(request: HttpRequest, scope: Scope, webhook_id: UUID) -> HttpResponse:
    try:
        notifications.send_test(scope, webhook_id, request=request)
    except WebhookStateError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, "A test event is on its way; reload to see how it went.")
    return redirect("notifications:webhook", org_id=scope.organisation.pk, webhook_id=webhook_id)


@_action(Permission.ORG_SETTINGS)
def delivery_redeliver(
    request: HttpRequest, scope: Scope, webhook_id: UUID, delivery_id: UUID
) -> HttpResponse:
    try:
        notifications.redeliver(scope, webhook_id, delivery_id, request=request)
    except WebhookStateError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, "The delivery will be sent again.")
    return redirect("notifications:webhook", org_id=scope.organisation.pk, webhook_id=webhook_id)
