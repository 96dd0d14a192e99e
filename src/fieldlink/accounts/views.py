"""Web pages of the accounts context (thin: parse, call one service, render).

Sign-in, sign-up, e-mail, password, MFA and session pages are django-allauth's; these are the
security overview (last sign-ins and history) and personal API keys.
"""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from fieldlink.accounts import services
from fieldlink.accounts.errors import ApiKeyInvalidError, ApiKeyNotFoundError
from fieldlink.accounts.forms import CreateApiKeyForm, RotateApiKeyForm
from fieldlink.accounts.models import ApiKeyScope, User


def _user(request: HttpRequest) -> User:
    user = request.user
    assert isinstance(user, User)  # noqa: S101 -- login_required guarantees it
    return user


@never_cache
@login_required
def profile(request: HttpRequest) -> HttpResponse:
    user = _user(request)
    last, previous = services.recent_sign_ins(user)
    return render(
        request,
        "accounts/profile.html",
        {
            "last_sign_in": last,
            "previous_sign_in": previous,
            "history": services.security_history(user, days=90),
        },
    )


@never_cache
@login_required
@transaction.atomic
def api_keys(request: HttpRequest) -> HttpResponse:
    user = _user(request)
    issued = None
    form = CreateApiKeyForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        issued = services.create_api_key(
            user,
            name=form.cleaned_data["name"],
            scope=ApiKeyScope(form.cleaned_data["scope"]),
            lifetime=timedelta(days=form.cleaned_data["lifetime_days"]),
            request=request,
        )
        form = CreateApiKeyForm()
    return render(
        request,
        "accounts/api_keys.html",
        {
            "form": form,
            "rotate_form": RotateApiKeyForm(),
            "issued": issued,
            "keys": services.api_keys_of(user),
        },
    )


@require_POST
@login_required
@transaction.atomic
def revoke_api_key(request: HttpRequest, key_id: UUID) -> HttpResponse:
    try:
        services.revoke_api_key(_user(request), key_id, request)
    except ApiKeyNotFoundError as exc:
        # Someone else's key looks exactly like no key at all.
        raise Http404(exc.message) from exc
    return redirect("accounts:api-keys")


@never_cache
@require_POST
@login_required
@transaction.atomic
def rotate_api_key(request: HttpRequest, key_id: UUID) -> HttpResponse:
    user = _user(request)
    form = RotateApiKeyForm(request.POST)
    issued = error = None
    if form.is_valid():
        try:
            issued = services.rotate_api_key(
                user,
                key_id,
                overlap=timedelta(hours=form.cleaned_data["overlap_hours"]),
                request=request,
            )
        except ApiKeyNotFoundError as exc:
            raise Http404(exc.message) from exc
        except ApiKeyInvalidError as exc:
            error = exc.message
    else:
        error = "Choose how long the old key stays valid."
    return render(
        request,
        "accounts/api_keys.html",
        {
            "form": CreateApiKeyForm(),
            "rotate_form": RotateApiKeyForm(),
            "issued": issued,
            "error": error,
            "keys": services.api_keys_of(user),
        },
        status=200 if error is None else 400,
    )
