"""Web pages of the accounts context (thin: parse, call one service, render).

Sign-in, sign-up, e-mail, password, MFA and session pages are django-allauth's; these are the
security overview (last sign-ins and history), personal API keys, and the organisation pages
(members, invitations, settings) with the invitation links.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from datetime import timedelta
from functools import wraps
from typing import Any
from uuid import UUID

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.db import transaction
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from fieldlink.accounts import access, auth, exports, services
from fieldlink.accounts.access import Permission, Scope
from fieldlink.accounts.errors import ApiKeyInvalidError, ApiKeyNotFoundError
from fieldlink.accounts.forms import CreateApiKeyForm, RotateApiKeyForm
from fieldlink.accounts.models import ApiKeyScope, ExportKind, Membership, Role, User
from fieldlink.accounts.org_forms import (
    ASSIGNABLE_ROLES,
    CreateOrganisationForm,
    InviteForm,
    RenameOrganisationForm,
    ScheduleDeletionForm,
)
from fieldlink.accounts.templatetags.fieldlink_orgs import ORG_SESSION_KEY
from fieldlink.kit.errors import HTTP_STATUS, FieldlinkError, NotFoundError, ValidationFailedError


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


# -- Organisations: list, overview, members, invitations, settings ------------------------------
#
# Every page resolves the caller's Scope first (another tenant's organisation is a 404), then
# calls one service inside the transaction. A FieldlinkError becomes a page with its message and
# the status of its kind; success is POST-redirect-GET with a flash message.


_View = Callable[..., HttpResponse]


def _org_errors(view: _View) -> _View:
    """Render a service's refusal as a page (after the view's transaction rolled back)."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return view(request, *args, **kwargs)
        except FieldlinkError as exc:
            return _error_page(request, exc, kwargs.get("org_id"))

    return wrapper


def _error_page(request: HttpRequest, exc: FieldlinkError, org_id: UUID | None) -> HttpResponse:
    scope: Scope | None = None
    if org_id is not None:
        # Only to offer a way back; without standing there is none (and nothing is named).
        with suppress(FieldlinkError):
            scope = auth.scope(request, org_id)
    return render(
        request,
        "orgs/error.html",
        {"message": exc.message, "code": exc.code, "back_scope": scope},
        status=HTTP_STATUS[exc.kind],
    )


def _remember(request: HttpRequest, scope: Scope) -> None:
    org_id = str(scope.organisation.pk)
    if request.session.get(ORG_SESSION_KEY) != org_id:
        request.session[ORG_SESSION_KEY] = org_id


def _org_page(
    request: HttpRequest,
    scope: Scope,
    template: str,
    context: dict[str, Any] | None = None,
    *,
    status: int = 200,
) -> HttpResponse:
    _remember(request, scope)
    base = {"scope": scope, "org": scope.organisation}
    return render(request, template, {**base, **(context or {})}, status=status)


def _post_only(request: HttpRequest) -> HttpResponse | None:
    # Called after the scope is resolved, so another tenant's URL is a 404 for every method.
    if request.method == "POST":
        return None
    response = render(
        request,
        "orgs/error.html",
        {"message": "This address only takes a form submission.", "code": "method_not_allowed"},
        status=405,
    )
    response["Allow"] = "POST"
    return response


def _find_member(scope: Scope, membership_id: UUID) -> Membership:
    found = next((m for m in services.members_of(scope) if m.pk == membership_id), None)
    if found is None:
        raise NotFoundError("No such member.")
    return found


@never_cache
@login_required
@_org_errors
@transaction.atomic
def org_list(request: HttpRequest) -> HttpResponse:
    principal = auth.acting_principal(request)
    form = CreateOrganisationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        scope = services.create_organisation(
            principal,
            name=form.cleaned_data["name"],
            region=form.cleaned_data["region"],
            request=request,
        )
        _remember(request, scope)
        messages.success(request, f"{scope.organisation.name} was created; you are its owner.")
        return redirect("orgs:detail", org_id=scope.organisation.pk)
    return render(
        request,
        "orgs/list.html",
        {"form": form, "organisations": access.organisations_of(principal)},
        status=422 if form.is_bound else 200,
    )


@never_cache
@login_required
@_org_errors
def org_detail(request: HttpRequest, org_id: UUID) -> HttpResponse:
    scope = auth.scope(request, org_id)
    members = services.members_of(scope)
    return _org_page(
        request,
        scope,
        "orgs/detail.html",
        {"member_count": len(members), "owner": next(m for m in members if m.role == Role.OWNER)},
    )


def _members_page(
    request: HttpRequest, scope: Scope, invite_form: InviteForm | None = None, status: int = 200
) -> HttpResponse:
    manager = Permission.MEMBERS_MANAGE in scope.permissions
    return _org_page(
        request,
        scope,
        "orgs/members.html",
        {
            "members": services.members_of(scope),
            # Who was invited is the managers' business, like the invitations themselves.
            "invitations": services.invitations_of(scope) if manager else [],
            "can_manage": scope.can(Permission.MEMBERS_MANAGE),
            "can_transfer": scope.can(Permission.OWNERSHIP_TRANSFER),
            "invite_form": invite_form or InviteForm(),
            "roles": ASSIGNABLE_ROLES,
            "lifetime_days": services.INVITATION_LIFETIME.days,
        },
        status=status,
    )


@never_cache
@login_required
@_org_errors
def org_members(request: HttpRequest, org_id: UUID) -> HttpResponse:
    return _members_page(request, auth.scope(request, org_id))


@never_cache
@login_required
@_org_errors
@transaction.atomic
def org_invite(request: HttpRequest, org_id: UUID) -> HttpResponse:
    scope = auth.scope(request, org_id)
    if (refused := _post_only(request)) is not None:
        return refused
    form = InviteForm(request.POST)
    if not form.is_valid():
        scope.require(Permission.MEMBERS_MANAGE)  # a refusal outranks a typo
        return _members_page(request, scope, form, status=422)
    issued = services.invite_member(
        scope, email=form.cleaned_data["email"], role=form.cleaned_data["role"], request=request
    )
    messages.success(request, f"Invitation sent to {issued.invitation.email}.")
    return redirect("orgs:members", org_id=org_id)


@never_cache
@login_required
@_org_errors
@transaction.atomic
def org_invitation_revoke(request: HttpRequest, org_id: UUID, invitation_id: UUID) -> HttpResponse:
    scope = auth.scope(request, org_id)
    if (refused := _post_only(request)) is not None:
        return refused
    invitation = services.revoke_invitation(scope, invitation_id, request)
    messages.success(request, f"The invitation of {invitation.email} is revoked.")
    return redirect("orgs:members", org_id=org_id)


@never_cache
@login_required
@_org_errors
@transaction.atomic
def org_member_role(request: HttpRequest, org_id: UUID, membership_id: UUID) -> HttpResponse:
    scope = auth.scope(request, org_id)
    if (refused := _post_only(request)) is not None:
        return refused
    # The service validates the role after finding the member: another tenant's member is a
    # 404 whatever the form says.
    membership = services.change_role(
        scope, membership_id, role=request.POST.get("role", ""), request=request
    )
    messages.success(
        request, f"{membership.user.email} is now {Role(membership.role).label.lower()}."
    )
    return redirect("orgs:members", org_id=org_id)


@never_cache
@login_required
@_org_errors
@transaction.atomic
def org_member_remove(request: HttpRequest, org_id: UUID, membership_id: UUID) -> HttpResponse:
    """GET asks for confirmation (works without JavaScript); POST removes, or leaves."""
    scope = auth.scope(request, org_id)
    member = _find_member(scope, membership_id)
    leaving = member.user_id == scope.user.pk
    if request.method != "POST":
        if not leaving:
            scope.require(Permission.MEMBERS_MANAGE)  # no confirmation of a doomed request
        return _org_page(
            request, scope, "orgs/confirm_remove.html", {"member": member, "leaving": leaving}
        )
    services.remove_member(scope, membership_id, request)
    if leaving:
        if request.session.get(ORG_SESSION_KEY) == str(org_id):
            del request.session[ORG_SESSION_KEY]
        messages.success(request, f"You left {scope.organisation.name}.")
        return redirect("orgs:list")
    messages.success(request, f"{member.user.email} was removed.")
    return redirect("orgs:members", org_id=org_id)


@never_cache
@login_required
@_org_errors
@transaction.atomic
def org_member_transfer(request: HttpRequest, org_id: UUID, membership_id: UUID) -> HttpResponse:
    """GET asks for confirmation; POST makes the member the owner (the owner becomes admin)."""
    scope = auth.scope(request, org_id)
    if request.method != "POST":
        member = _find_member(scope, membership_id)
        scope.require(Permission.OWNERSHIP_TRANSFER)
        return _org_page(request, scope, "orgs/confirm_transfer.html", {"member": member})
    target = services.transfer_ownership(scope, membership_id, request)
    messages.success(request, f"{target.user.email} now owns {scope.organisation.name}.")
    return redirect("orgs:members", org_id=org_id)


def _settings_page(
    request: HttpRequest,
    scope: Scope,
    *,
    rename_form: RenameOrganisationForm | None = None,
    delete_form: ScheduleDeletionForm | None = None,
    status: int = 200,
) -> HttpResponse:
    org = scope.organisation
    return _org_page(
        request,
        scope,
        "orgs/settings.html",
        {
            "rename_form": rename_form or RenameOrganisationForm(initial={"name": org.name}),
            "delete_form": delete_form or ScheduleDeletionForm(expected_name=org.name),
            "can_rename": scope.can(Permission.ORG_SETTINGS),
            "can_delete": scope.can(Permission.ORG_DELETE),
            "grace_days": services.ORGANISATION_DELETION_GRACE.days,
        },
        status=status,
    )


@never_cache
@login_required
@_org_errors
@transaction.atomic
def org_settings(request: HttpRequest, org_id: UUID) -> HttpResponse:
    """One page, three forms told apart by ``action``: rename, schedule or cancel deletion."""
    scope = auth.scope(request, org_id)
    if request.method != "POST":
        return _settings_page(request, scope)
    action = request.POST.get("action", "")
    org = scope.organisation
    if action == "rename":
        scope.require(Permission.ORG_SETTINGS)  # a refusal outranks a typo
        rename_form = RenameOrganisationForm(request.POST)
        if not rename_form.is_valid():
            return _settings_page(request, scope, rename_form=rename_form, status=422)
        services.rename_organisation(scope, name=rename_form.cleaned_data["name"], request=request)
        messages.success(request, f"The organisation is now called {org.name}.")
    elif action == "delete":
        scope.require(Permission.ORG_DELETE)
        delete_form = ScheduleDeletionForm(request.POST, expected_name=org.name)
        if not delete_form.is_valid():
            return _settings_page(request, scope, delete_form=delete_form, status=422)
        deleted = services.request_deletion(scope, request)
        messages.warning(
            request,
            f"{deleted.name} will be deleted on {deleted.deletion_due_at:%Y-%m-%d %H:%M} UTC "
            "unless you cancel it before then.",
        )
    elif action == "cancel_deletion":
        services.cancel_deletion(scope, request)
        messages.success(request, "The deletion is cancelled; nothing will be deleted.")
    else:
        raise ValidationFailedError("Unknown settings action.")
    return redirect("orgs:settings", org_id=org_id)


# -- Invitation links: /invitations/<token>/ ---------------------------------------------------


def _origin_only_referrer(view: _View) -> _View:
    # The token is in the address: no request from the page may carry it in a Referer.
    # "strict-origin" sends the origin alone. Not "no-referrer": under it browsers send
    # "Origin: null" with the page's own Accept form, which the CSRF check rightly refuses.
    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = view(request, *args, **kwargs)
        response["Referrer-Policy"] = "strict-origin"
        return response

    return wrapper


@never_cache
@_origin_only_referrer
@require_http_methods(["GET", "HEAD", "POST"])
def invitation(request: HttpRequest, token: str) -> HttpResponse:
    found = services.invitation_for_token(token)
    if found is None:
        return render(request, "orgs/invitation.html", {"invalid": True}, status=404)
    error, status = "", 200
    if request.method == "POST":
        if not request.user.is_authenticated:
            return redirect_to_login(request.path)
        try:
            with transaction.atomic():
                membership = services.accept_invitation(
                    auth.acting_principal(request), token, request
                )
        except FieldlinkError as exc:
            error, status = exc.message, HTTP_STATUS[exc.kind]
        else:
            request.session[ORG_SESSION_KEY] = str(membership.organisation_id)
            messages.success(request, f"Welcome to {found.organisation.name}.")
            return redirect("orgs:detail", org_id=membership.organisation_id)
    state = found.status()
    if state != "pending" and not error:
        status = 410  # the link worked once or ran out; it never will again
    return render(
        request,
        "orgs/invitation.html",
        {"invitation": found, "state": state, "error": error},
        status=status,
    )


# -- Data exports: /orgs/<org_id>/exports/ and /me/exports/ -------------------------------------
#
# Request an archive (built in the background), see its status, download it until it expires.
# A refusal (one already pending, the daily limit, expired) is shown on the page itself.


def _zip_response(download: exports.Download) -> FileResponse:
    response = FileResponse(
        download.file,
        as_attachment=True,
        filename=download.filename,
        content_type="application/zip",
    )
    response["Cache-Control"] = "no-store"  # personal or customer data: no cache keeps a copy
    return response


def _export_rows(rows: list[Any]) -> list[tuple[Any, str]]:
    return [(export, exports.effective_status(export)) for export in rows]


def _org_exports_page(
    request: HttpRequest, scope: Scope, *, error: str = "", status: int = 200
) -> HttpResponse:
    rows = _export_rows(exports.organisation_exports(scope))
    context = {
        "exports": rows,
        "kinds": ExportKind.choices,
        "error": error,
        "pending": any(s == "pending" for _, s in rows),
        "lifetime_days": exports.EXPORT_LIFETIME.days,
        "per_day": exports.MAX_EXPORTS_PER_DAY,
    }
    return _org_page(request, scope, "exports/organisation.html", context, status=status)


@never_cache
@login_required
@_org_errors
@require_http_methods(["GET", "HEAD", "POST"])
def org_exports(request: HttpRequest, org_id: UUID) -> HttpResponse:
    scope = auth.scope(request, org_id)
    if request.method != "POST":
        return _org_exports_page(request, scope)
    try:
        with transaction.atomic():
            exports.request_organisation_export(scope, request.POST.get("kind", ""), request)
    except FieldlinkError as exc:
        return _org_exports_page(request, scope, error=exc.message, status=HTTP_STATUS[exc.kind])
    messages.success(
        request, "Export requested. It is being prepared; refresh to see when it is ready."
    )
    return redirect("orgs:exports", org_id=scope.organisation.pk)


@never_cache
@login_required
@require_http_methods(["GET", "HEAD"])
def org_export_download(
    request: HttpRequest, org_id: UUID, export_id: UUID
) -> HttpResponse | FileResponse:
    try:
        scope = auth.scope(request, org_id)
    except FieldlinkError as exc:
        return _error_page(request, exc, org_id)
    try:
        with transaction.atomic():
            download = exports.open_organisation_download(scope, export_id, request)
    except exports.ExportUnavailableError as exc:
        return _org_exports_page(request, scope, error=exc.message, status=HTTP_STATUS[exc.kind])
    except FieldlinkError as exc:
        return _error_page(request, exc, org_id)
    return _zip_response(download)


def _my_exports_page(request: HttpRequest, *, error: str = "", status: int = 200) -> HttpResponse:
    rows = _export_rows(exports.personal_exports(_user(request)))
    context = {
        "exports": rows,
        "error": error,
        "pending": any(s == "pending" for _, s in rows),
        "lifetime_days": exports.EXPORT_LIFETIME.days,
    }
    return render(request, "exports/personal.html", context, status=status)


@never_cache
@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def my_exports(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return _my_exports_page(request)
    try:
        with transaction.atomic():
            exports.request_personal_export(auth.acting_principal(request), request)
    except FieldlinkError as exc:
        return _my_exports_page(request, error=exc.message, status=HTTP_STATUS[exc.kind])
    messages.success(
        request, "Export requested. It is being prepared; refresh to see when it is ready."
    )
    return redirect("accounts:exports")


@never_cache
@login_required
@require_http_methods(["GET", "HEAD"])
def my_export_download(request: HttpRequest, export_id: UUID) -> HttpResponse | FileResponse:
    try:
        with transaction.atomic():
            download = exports.open_personal_download(
                auth.acting_principal(request), export_id, request
            )
    except NotFoundError as exc:
        raise Http404(exc.message) from exc  # someone else's export looks like none at all
    except FieldlinkError as exc:
        return _my_exports_page(request, error=exc.message, status=HTTP_STATUS[exc.kind])
    return _zip_response(download)
