"""REST endpoints of the accounts context (thin: parse, call one service, render)."""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID

from django.db import transaction
from django.http import FileResponse, HttpRequest
from ninja import Field, Router, Schema, Status

from fieldlink.accounts import access, exports, services
from fieldlink.accounts.access import Permission, Scope
from fieldlink.accounts.auth import principal
from fieldlink.accounts.auth import scope as scope_of
from fieldlink.accounts.errors import InvitationInvalidError
from fieldlink.accounts.models import (
    ApiKey,
    ApiKeyScope,
    DataExport,
    ExportKind,
    Invitation,
    Membership,
    Organisation,
    Region,
    Role,
    SecurityEvent,
)
from fieldlink.accounts.schemas import (
    InvitationIn,
    InvitationOut,
    InvitationPreviewOut,
    InvitationTokenIn,
    MemberOut,
    MemberRoleIn,
    MembershipOut,
    MyOrganisationOut,
    OrganisationCreateIn,
    OrganisationOut,
    OrganisationRenameIn,
    StrictInput,
    TransferOwnershipIn,
)

router = Router(tags=["accounts"])


class SignInOut(Schema):
    at: datetime
    ip: str | None
    device: str


class MeOut(Schema):
    id: UUID
    email: str
    first_name: str
    last_name: str
    last_sign_in: SignInOut | None
    previous_sign_in: SignInOut | None
    authenticated_via: str


class SecurityEventOut(Schema):
    at: datetime
    kind: str
    ip: str | None
    device: str


class ApiKeyOut(Schema):
    id: UUID
    name: str
    prefix: str
    scope: str
    created_at: datetime
    expires_at: datetime
    last_used_at: datetime | None
    last_used_ip: str | None
    revoked_at: datetime | None


class ApiKeyCreatedOut(ApiKeyOut):
    key: str = Field(description="The key itself. Shown once; only its hash is stored.")


class ApiKeyIn(StrictInput):
    name: str = Field(min_length=1, max_length=100)
    scope: ApiKeyScope = ApiKeyScope.READ
    lifetime_days: int = Field(default=90, ge=1, le=366)


class RotateIn(StrictInput):
    overlap_hours: int = Field(default=24, ge=0, le=720)


def _sign_in(event: SecurityEvent | None) -> SignInOut | None:
    if event is None:
        return None
    return SignInOut(at=event.created_at, ip=event.ip, device=event.device)


def _key_out(key: ApiKey) -> ApiKeyOut:
    return ApiKeyOut.model_validate(key, from_attributes=True)


@router.get("/me", response=MeOut, summary="The signed-in user, with last and previous sign-in")
def me(request: HttpRequest) -> MeOut:
    who = principal(request)
    last, previous = services.recent_sign_ins(who.user)
    return MeOut(
        id=who.user.id,
        email=who.user.email,
        first_name=who.user.first_name,
        last_name=who.user.last_name,
        last_sign_in=_sign_in(last),
        previous_sign_in=_sign_in(previous),
        authenticated_via=who.via,
    )


@router.get("/me/security-history", response=list[SecurityEventOut], summary="90-day history")
def security_history(request: HttpRequest) -> list[SecurityEventOut]:
    events = services.security_history(principal(request).user, days=90)
    return [
        SecurityEventOut(at=e.created_at, kind=e.kind, ip=e.ip, device=e.device) for e in events
    ]


@router.get("/me/api-keys", response=list[ApiKeyOut], summary="Your API keys (never the keys)")
def list_api_keys(request: HttpRequest) -> list[ApiKeyOut]:
    return [_key_out(key) for key in services.api_keys_of(principal(request).user)]


@router.post("/me/api-keys", response={201: ApiKeyCreatedOut}, summary="Create an API key")
def create_api_key(request: HttpRequest, payload: ApiKeyIn) -> Status[ApiKeyCreatedOut]:
    with transaction.atomic():
        issued = services.create_api_key(
            principal(request).user,
            name=payload.name,
            scope=payload.scope,
            lifetime=timedelta(days=payload.lifetime_days),
            request=request,
        )
    out = ApiKeyCreatedOut(**_key_out(issued.key).model_dump(), key=issued.secret)
    return Status(201, out)


@router.post("/me/api-keys/{key_id}/rotate", response={201: ApiKeyCreatedOut}, summary="Rotate")
def rotate_api_key(
    request: HttpRequest, key_id: UUID, payload: RotateIn
) -> Status[ApiKeyCreatedOut]:
    with transaction.atomic():
        issued = services.rotate_api_key(
            principal(request).user,
            key_id,
            overlap=timedelta(hours=payload.overlap_hours),
            request=request,
        )
    return Status(201, ApiKeyCreatedOut(**_key_out(issued.key).model_dump(), key=issued.secret))


@router.delete("/me/api-keys/{key_id}", response=ApiKeyOut, summary="Revoke an API key")
def revoke_api_key(request: HttpRequest, key_id: UUID) -> ApiKeyOut:
    with transaction.atomic():
        key = services.revoke_api_key(principal(request).user, key_id, request)
    return _key_out(key)


# -- Organisations, members, invitations -----------------------------------------------------
#
# Every handler resolves the caller's Scope (404 without standing, so another tenant's ids look
# nonexistent), calls one service inside the transaction and renders. The services check the
# permission and write the audit entry in that same transaction.

organisations_router = Router(tags=["organisations"])


def _my_organisation(org: Organisation, role: Role | None) -> MyOrganisationOut:
    return MyOrganisationOut(
        id=org.id,
        name=org.name,
        region=org.region,
        region_label=Region(org.region).label,
        role=role,
        pending_deletion=org.pending_deletion,
        deletion_due_at=org.deletion_due_at,
    )


def _organisation(scope: Scope, org: Organisation | None = None) -> OrganisationOut:
    # Services that change the row return a fresh copy; the scope's may be older.
    org = org or scope.organisation
    return OrganisationOut(
        id=org.id,
        name=org.name,
        region=org.region,
        region_label=Region(org.region).label,
        created_at=org.created_at,
        role=scope.role,
        permissions=sorted(str(p) for p in scope.permissions),
        pending_deletion=org.pending_deletion,
        deletion_requested_at=org.deletion_requested_at,
        deletion_due_at=org.deletion_due_at,
    )


def _member(membership: Membership) -> MemberOut:
    user = membership.user
    return MemberOut(
        id=membership.id,
        user_id=user.id,
        email=user.email,
        name=user.get_full_name(),
        role=membership.role,
        joined_at=membership.created_at,
    )


def _invitation(invitation: Invitation) -> InvitationOut:
    inviter = invitation.invited_by
    return InvitationOut(
        id=invitation.id,
        email=invitation.email,
        role=invitation.role,
        status=invitation.status(),
        created_at=invitation.created_at,
        expires_at=invitation.expires_at,
        invited_by=inviter.email if inviter is not None else None,
    )


@organisations_router.get(
    "/orgs", response=list[MyOrganisationOut], summary="Your organisations, with your role"
)
def list_organisations(request: HttpRequest) -> list[MyOrganisationOut]:
    return [_my_organisation(o, r) for o, r in access.organisations_of(principal(request))]


@organisations_router.post(
    "/orgs", response={201: OrganisationOut}, summary="Create an organisation (you own it)"
)
def create_organisation(
    request: HttpRequest, payload: OrganisationCreateIn
) -> Status[OrganisationOut]:
    with transaction.atomic():
        scope = services.create_organisation(
            principal(request), name=payload.name, region=payload.region, request=request
        )
    return Status(201, _organisation(scope))


@organisations_router.get("/orgs/{org_id}", response=OrganisationOut, summary="An organisation")
def get_organisation(request: HttpRequest, org_id: UUID) -> OrganisationOut:
    scope = scope_of(request, org_id)
    scope.require(Permission.ORG_VIEW)
    return _organisation(scope)


@organisations_router.patch(
    "/orgs/{org_id}", response=OrganisationOut, summary="Rename an organisation (admin)"
)
def rename_organisation(
    request: HttpRequest, org_id: UUID, payload: OrganisationRenameIn
) -> OrganisationOut:
    with transaction.atomic():
        scope = scope_of(request, org_id)
        services.rename_organisation(scope, name=payload.name, request=request)
    return _organisation(scope)


@organisations_router.get(
    "/orgs/{org_id}/members", response=list[MemberOut], summary="Members and their roles"
)
def list_members(request: HttpRequest, org_id: UUID) -> list[MemberOut]:
    return [_member(m) for m in services.members_of(scope_of(request, org_id))]


@organisations_router.patch(
    "/orgs/{org_id}/members/{membership_id}",
    response=MemberOut,
    summary="Change a member's role (admin)",
)
def change_member_role(
    request: HttpRequest, org_id: UUID, membership_id: UUID, payload: MemberRoleIn
) -> MemberOut:
    with transaction.atomic():
        membership = services.change_role(
            scope_of(request, org_id), membership_id, role=payload.role, request=request
        )
    return _member(membership)


@organisations_router.delete(
    "/orgs/{org_id}/members/{membership_id}",
    response={204: None},
    summary="Remove a member (admin), or leave when it is your own membership",
)
def remove_member(request: HttpRequest, org_id: UUID, membership_id: UUID) -> Status[None]:
    with transaction.atomic():
        services.remove_member(scope_of(request, org_id), membership_id, request)
    return Status(204, None)


@organisations_router.post(
    "/orgs/{org_id}/transfer-ownership",
    response=MemberOut,
    summary="Make another member the owner (owner); you stay on as admin",
)
def transfer_ownership(
    request: HttpRequest, org_id: UUID, payload: TransferOwnershipIn
) -> MemberOut:
    with transaction.atomic():
        new_owner = services.transfer_ownership(
            scope_of(request, org_id), payload.membership_id, request
        )
    return _member(new_owner)


@organisations_router.get(
    "/orgs/{org_id}/invitations",
    response=list[InvitationOut],
    summary="Invitations, newest first (never their tokens)",
)
def list_invitations(request: HttpRequest, org_id: UUID) -> list[InvitationOut]:
    return [_invitation(i) for i in services.invitations_of(scope_of(request, org_id))]


@organisations_router.post(
    "/orgs/{org_id}/invitations",
    response={201: InvitationOut},
    summary="Invite someone by e-mail (admin); the link goes only to their mailbox",
)
def invite_member(
    request: HttpRequest, org_id: UUID, payload: InvitationIn
) -> Status[InvitationOut]:
    with transaction.atomic():
        issued = services.invite_member(
            scope_of(request, org_id), email=payload.email, role=payload.role, request=request
        )
    # The token is deliberately not returned: whoever can call this must not be able to accept
    # on the invitee's behalf.
    return Status(201, _invitation(issued.invitation))


@organisations_router.delete(
    "/orgs/{org_id}/invitations/{invitation_id}",
    response=InvitationOut,
    summary="Revoke an invitation (admin)",
)
def revoke_invitation(request: HttpRequest, org_id: UUID, invitation_id: UUID) -> InvitationOut:
    with transaction.atomic():
        invitation = services.revoke_invitation(scope_of(request, org_id), invitation_id, request)
    return _invitation(invitation)


@organisations_router.post(
    "/invitations/preview",
    response=InvitationPreviewOut,
    summary="What an invitation token is for (organisation, role, inviter, status)",
)
def preview_invitation(request: HttpRequest, payload: InvitationTokenIn) -> InvitationPreviewOut:
    invitation = services.invitation_for_token(payload.token)
    if invitation is None:
        # The same code accept answers, so a client handles one refusal for a bad link.
        raise InvitationInvalidError("This invitation link is not valid.")
    inviter = invitation.invited_by
    return InvitationPreviewOut(
        organisation_name=invitation.organisation.name,
        email=invitation.email,
        role=invitation.role,
        invited_by=inviter.email if inviter is not None else None,
        status=invitation.status(),
        expires_at=invitation.expires_at,
    )


@organisations_router.post(
    "/invitations/accept",
    response={201: MembershipOut},
    summary="Accept an invitation sent to one of your verified e-mail addresses",
)
def accept_invitation(request: HttpRequest, payload: InvitationTokenIn) -> Status[MembershipOut]:
    with transaction.atomic():
        membership = services.accept_invitation(principal(request), payload.token, request)
    org = membership.organisation
    return Status(
        201,
        MembershipOut(
            id=membership.id,
            organisation_id=org.id,
            organisation_name=org.name,
            role=membership.role,
            joined_at=membership.created_at,
        ),
    )


@organisations_router.post(
    "/orgs/{org_id}/deletion",
    response=OrganisationOut,
    summary="Schedule the organisation's deletion after the grace period (owner)",
)
def request_deletion(request: HttpRequest, org_id: UUID) -> OrganisationOut:
    with transaction.atomic():
        scope = scope_of(request, org_id)
        org = services.request_deletion(scope, request)
    return _organisation(scope, org)


@organisations_router.delete(
    "/orgs/{org_id}/deletion",
    response=OrganisationOut,
    summary="Cancel a scheduled deletion (owner)",
)
def cancel_deletion(request: HttpRequest, org_id: UUID) -> OrganisationOut:
    with transaction.atomic():
        scope = scope_of(request, org_id)
        org = services.cancel_deletion(scope, request)
    return _organisation(scope, org)


# -- End of the organisations section -------------------------------------------------------


# -- Data exports --------------------------------------------------------------------------------
#
# An organisation's archive (owner/admin: export.request) or the caller's own data. Requests are
# answered 202: the archive is built in the background; poll the export until it is "ready",
# then download it (until "expires_at"). Downloads of an organisation's archive are audited.


class ExportIn(StrictInput):
    kind: ExportKind = Field(
        default=ExportKind.COMPLETE,
        description="complete: everything; measurements: only the measurement data",
    )


class ExportOut(Schema):
    id: UUID
    kind: str
    status: str = Field(description="pending, ready, failed or expired")
    created_at: datetime
    ready_at: datetime | None
    expires_at: datetime | None
    size: int | None = Field(description="Bytes of the zip archive, once ready")
    sha256: str = Field(description="SHA-256 of the zip archive, once ready")
    error: str
    requested_by: str


def _export_out(export: DataExport) -> ExportOut:
    return ExportOut(
        id=export.id,
        kind=export.kind,
        status=exports.effective_status(export),
        created_at=export.created_at,
        ready_at=export.ready_at,
        expires_at=export.expires_at,
        size=export.size,
        sha256=export.sha256,
        error=export.error,
        requested_by=export.requested_by.email,
    )


def _zip_response(download: exports.Download) -> FileResponse:
    response = FileResponse(
        download.file,
        as_attachment=True,
        filename=download.filename,
        content_type="application/zip",
    )
    # Personal or customer data: no shared or browser cache may keep a copy.
    response["Cache-Control"] = "no-store"
    return response


_ZIP = {200: {"description": "The zip archive", "content": {"application/zip": {}}}}


@router.get(
    "/orgs/{org_id}/exports",
    response=list[ExportOut],
    tags=["exports"],
    summary="The organisation's exports (owner/admin)",
)
def list_organisation_exports(request: HttpRequest, org_id: UUID) -> list[ExportOut]:
    scope = scope_of(request, org_id)
    return [_export_out(e) for e in exports.organisation_exports(scope)]


@router.post(
    "/orgs/{org_id}/exports",
    response={202: ExportOut},
    tags=["exports"],
    summary="Request an export of the organisation's data (owner/admin)",
)
def request_organisation_export(
    request: HttpRequest, org_id: UUID, payload: ExportIn
) -> Status[ExportOut]:
    with transaction.atomic():
        scope = scope_of(request, org_id)
        export = exports.request_organisation_export(scope, payload.kind, request)
    return Status(202, _export_out(export))


@router.get(
    "/orgs/{org_id}/exports/{export_id}",
    response=ExportOut,
    tags=["exports"],
    summary="One export of the organisation",
)
def get_organisation_export(request: HttpRequest, org_id: UUID, export_id: UUID) -> ExportOut:
    scope = scope_of(request, org_id)
    return _export_out(exports.organisation_export(scope, export_id))


@router.get(
    "/orgs/{org_id}/exports/{export_id}/download",
    tags=["exports"],
    summary="Download a ready export (audited)",
    openapi_extra={"responses": _ZIP},
)
def download_organisation_export(
    request: HttpRequest, org_id: UUID, export_id: UUID
) -> FileResponse:
    with transaction.atomic():
        scope = scope_of(request, org_id)
        download = exports.open_organisation_download(scope, export_id, request)
    return _zip_response(download)


@router.get(
    "/me/exports",
    response=list[ExportOut],
    tags=["exports"],
    summary="Your personal data exports",
)
def list_personal_exports(request: HttpRequest) -> list[ExportOut]:
    return [_export_out(e) for e in exports.personal_exports(principal(request).user)]


@router.post(
    "/me/exports",
    response={202: ExportOut},
    tags=["exports"],
    summary="Request an export of your own data",
)
def request_personal_export(request: HttpRequest) -> Status[ExportOut]:
    with transaction.atomic():
        export = exports.request_personal_export(principal(request), request)
    return Status(202, _export_out(export))


@router.get(
    "/me/exports/{export_id}", response=ExportOut, tags=["exports"], summary="One of your exports"
)
def get_personal_export(request: HttpRequest, export_id: UUID) -> ExportOut:
    return _export_out(exports.personal_export(principal(request).user, export_id))


@router.get(
    "/me/exports/{export_id}/download",
    tags=["exports"],
    summary="Download your ready export",
    openapi_extra={"responses": _ZIP},
)
def download_personal_export(request: HttpRequest, export_id: UUID) -> FileResponse:
    with transaction.atomic():
        download = exports.open_personal_download(principal(request), export_id, request)
    return _zip_response(download)
