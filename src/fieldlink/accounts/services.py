"""Use cases of the accounts context: the only place that changes its state.

Sign-up, sign-in, MFA, e-mail and password flows are django-allauth's; this module adds what
allauth does not do: the security history (with last and previous sign-in), ending other
sessions after a password change, new-device notices, and personal API keys.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from allauth.account.models import EmailAddress
from allauth.mfa.adapter import get_adapter
from allauth.mfa.models import Authenticator
from allauth.mfa.totp.internal.auth import (
    TOTP,
    format_hotp_value,
    generate_totp_secret,
    hotp_value,
    yield_hotp_counters_from_time,
)
from allauth.usersessions.models import UserSession
from django.core.mail import send_mail
from django.db import connection, models, transaction
from django.http import HttpRequest
from django.utils import timezone
from ua_parser import parse as parse_user_agent

from fieldlink.accounts import access
from fieldlink.accounts.access import Permission, PermissionDeniedError, Principal, Scope
from fieldlink.accounts.errors import (
    AlreadyMemberError,
    ApiKeyInvalidError,
    ApiKeyNotFoundError,
    InvitationEmailMismatchError,
    InvitationInvalidError,
    OrganisationInvalidError,
    OrganisationStateError,
    OwnerProtectedError,
    StaffNotCustomerError,
)
from fieldlink.accounts.models import (
    ApiKey,
    ApiKeyScope,
    Invitation,
    Membership,
    Organisation,
    Region,
    Role,
    SecurityEvent,
    SecurityEventKind,
    StaffRole,
    User,
)
from fieldlink.audit import services as audit_services
from fieldlink.audit.models import PLATFORM_CHAIN, ActorType
from fieldlink.kit.logging import get_logger

log = get_logger(__name__)

SECURITY_HISTORY_DAYS = 365  # the policy promises at least 90
API_KEY_PREFIX = "flk_"
API_KEY_MAX_LIFETIME = timedelta(days=366)
API_KEY_DEFAULT_LIFETIME = timedelta(days=90)
API_KEY_MAX_OVERLAP = timedelta(days=30)
# Writing last_used_* on every request would turn reads into writes; once a minute is enough.
API_KEY_TOUCH_INTERVAL = timedelta(minutes=1)


@dataclass(frozen=True)
class ClientInfo:
    ip: str | None
    user_agent: str
    device: str


def client_info(request: HttpRequest | None) -> ClientInfo:
    if request is None:
        return ClientInfo(ip=None, user_agent="", device="")
    # REMOTE_ADDR is the peer, or the client named by a *trusted* proxy (uvicorn rewrites it
    # only for FIELDLINK_TRUSTED_PROXIES); X-Forwarded-For itself is never read here.
    ip = request.META.get("REMOTE_ADDR") or None
    agent = request.META.get("HTTP_USER_AGENT", "")[:300]
    return ClientInfo(ip=ip, user_agent=agent, device=describe_device(agent))


def describe_device(user_agent: str) -> str:
    if not user_agent:
        return "Unknown device"
    parsed = parse_user_agent(user_agent)
    browser = parsed.user_agent.family if parsed.user_agent else "Unknown browser"
    system = parsed.os.family if parsed.os else "unknown system"
    return f"{browser} on {system}"[:120]


def record_security_event(
    user: User, kind: SecurityEventKind, request: HttpRequest | None = None, **details: Any
) -> SecurityEvent:
    info = client_info(request)
    return SecurityEvent.objects.create(
        user=user,
        kind=kind,
        ip=info.ip,
        user_agent=info.user_agent,
        device=info.device,
        details=details,
    )


def recent_sign_ins(user: User) -> tuple[SecurityEvent | None, SecurityEvent | None]:
    """The last and the previous successful sign-in."""
    events = list(
        SecurityEvent.objects.filter(user=user, kind=SecurityEventKind.SIGN_IN).order_by(
            "-created_at"
        )[:2]
    )
    return (events[0] if events else None, events[1] if len(events) > 1 else None)


def security_history(user: User, *, days: int = 90) -> list[SecurityEvent]:
    since = timezone.now() - timedelta(days=days)
    return list(SecurityEvent.objects.filter(user=user, created_at__gte=since)[:500])


def on_signed_in(request: HttpRequest, user: User) -> None:
    """Record the sign-in; tell the user by e-mail when it came from a device not seen before."""
    info = client_info(request)
    seen_before = SecurityEvent.objects.filter(
        user=user, kind=SecurityEventKind.SIGN_IN, device=info.device, user_agent=info.user_agent
    ).exists()
    had_history = SecurityEvent.objects.filter(user=user, kind=SecurityEventKind.SIGN_IN).exists()
    record_security_event(user, SecurityEventKind.SIGN_IN, request)
    if had_history and not seen_before:
        when = timezone.now().strftime("%Y-%m-%d %H:%M UTC")
        body = (
            f"Your Fieldlink account was signed in to from a new device.\n\n"
            f"When: {when}\nDevice: {info.device}\nIP address: {info.ip or 'unknown'}\n\n"
            "If this was you, there is nothing to do. If not, change your password now and "
            "end the other sessions on your security page."
        )
        email = user.email
        transaction.on_commit(
            lambda: send_mail(
                "[Fieldlink] New sign-in to your account", body, None, [email], fail_silently=True
            )
        )


def end_other_sessions(request: HttpRequest | None, user: User) -> int:
    """End every session of ``user`` except the one making this request."""
    current = request.session.session_key if request is not None else None
    ended = 0
    for session in UserSession.objects.filter(user=user):
        if session.session_key != current:
            session.end()
            ended += 1
    return ended


def burn_current_totp_codes(authenticator: Authenticator) -> None:
    """Mark the codes valid right now as used, so the code typed to activate TOTP cannot be
    replayed to pass the second factor (allauth does not mark the activation code)."""
    if authenticator.type != Authenticator.Type.TOTP:
        return
    totp = TOTP(authenticator)
    secret = get_adapter().decrypt(authenticator.data["secret"])
    for counter in yield_hotp_counters_from_time():
        # allauth's own used-code marker (pinned version), so its check sees these codes.
        totp._mark_code_used(format_hotp_value(hotp_value(secret, counter)))


def prune_security_history(now: datetime | None = None) -> int:
    cutoff = (now or timezone.now()) - timedelta(days=SECURITY_HISTORY_DAYS)
    deleted, _ = SecurityEvent.objects.filter(created_at__lt=cutoff).delete()
    return deleted


# -- API keys --------------------------------------------------------------------------------


def _digest(key: str) -> str:
    # A 256-bit random key needs no slow hash: SHA-256 is preimage-resistant at that entropy,
    # and the API-key path must stay cheap (no bcrypt per request).
    return hashlib.sha256(key.encode()).hexdigest()


def _new_key() -> tuple[str, str]:
    prefix = API_KEY_PREFIX + secrets.token_urlsafe(6).replace("-", "x").replace("_", "y")
    return prefix, f"{prefix}_{secrets.token_urlsafe(32)}"


@dataclass(frozen=True)
class IssuedKey:
    key: ApiKey
    secret: str  # shown to the user once, never stored


def create_api_key(
    user: User,
    *,
    name: str,
    scope: ApiKeyScope,
    lifetime: timedelta = API_KEY_DEFAULT_LIFETIME,
    request: HttpRequest | None = None,
) -> IssuedKey:
    if not timedelta(hours=1) <= lifetime <= API_KEY_MAX_LIFETIME:
        raise ApiKeyInvalidError("An API key must live between one hour and one year.")
    prefix, secret = _new_key()
    key = ApiKey.objects.create(
        user=user,
        name=name,
        prefix=prefix,
        digest=_digest(secret),
        scope=scope,
        expires_at=timezone.now() + lifetime,
    )
    record_security_event(
        user, SecurityEventKind.API_KEY_CREATED, request, key_prefix=prefix, name=name
    )
    _audit_key(user, "api_key.created", key, request, after=_key_fields(key))
    return IssuedKey(key, secret)


def _key_fields(key: ApiKey) -> dict[str, Any]:
    return {
        "name": key.name,
        "prefix": key.prefix,
        "scope": key.scope,
        "expires_at": key.expires_at,
    }


def _audit_key(
    user: User, action: str, key: ApiKey, request: HttpRequest | None, **values: Any
) -> None:
    # A personal key acts in every organisation its user belongs to, so each of them sees it in
    # its own trail.
    principal = Principal(user, "account")
    for chain in Membership.objects.filter(user=user).values_list("organisation_id", flat=True):
        _audit_in(str(chain), principal, action, target=key, request=request, **values)


def _own_key(user: User, key_id: Any) -> ApiKey:
    try:
        return ApiKey.objects.select_for_update().get(id=key_id, user=user)
    except (ApiKey.DoesNotExist, ValueError) as exc:
        raise ApiKeyNotFoundError("No such API key.") from exc


def revoke_api_key(user: User, key_id: Any, request: HttpRequest | None = None) -> ApiKey:
    key = _own_key(user, key_id)
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
        record_security_event(
            user, SecurityEventKind.API_KEY_REVOKED, request, key_prefix=key.prefix
        )
        _audit_key(user, "api_key.revoked", key, request, before=_key_fields(key))
    return key


def rotate_api_key(
    user: User, key_id: Any, *, overlap: timedelta, request: HttpRequest | None = None
) -> IssuedKey:
    """A new key with the old one's name and scope; the old one dies after ``overlap``."""
    if not timedelta(0) <= overlap <= API_KEY_MAX_OVERLAP:
        raise ApiKeyInvalidError("The overlap must be between 0 and 30 days.")
    old = _own_key(user, key_id)
    if not old.is_usable():
        raise ApiKeyInvalidError("Only a valid key can be rotated; create a new one instead.")
    lifetime = max(old.expires_at - old.created_at, timedelta(hours=1))
    issued = create_api_key(
        user, name=old.name, scope=ApiKeyScope(old.scope), lifetime=lifetime, request=request
    )
    old.expires_at = min(old.expires_at, timezone.now() + overlap)
    old.replaced_by = issued.key
    old.save(update_fields=["expires_at", "replaced_by"])
    record_security_event(
        user,
        SecurityEventKind.API_KEY_ROTATED,
        request,
        key_prefix=old.prefix,
        new_key_prefix=issued.key.prefix,
        old_key_expires_at=old.expires_at.isoformat(),
    )
    _audit_key(
        user,
        "api_key.rotated",
        old,
        request,
        before=_key_fields(old),
        after={"replaced_by": issued.key.prefix},
    )
    return issued


def authenticate_api_key(secret: str, ip: str | None) -> ApiKey | None:
    """The usable key this secret belongs to, or None. Constant-time digest comparison."""
    # The visible part never holds "_" (see _new_key); the random part after it may, so the
    # key is split at the first "_" after the "flk_" marker, not at the last one.
    if not secret.startswith(API_KEY_PREFIX) or len(secret) > 128:
        return None
    ident, sep, _ = secret.removeprefix(API_KEY_PREFIX).partition("_")
    if not sep or not ident:
        return None
    prefix = API_KEY_PREFIX + ident
    key = ApiKey.objects.select_related("user").filter(prefix=prefix).first()
    if key is None or not hmac.compare_digest(key.digest, _digest(secret)):
        return None
    now = timezone.now()
    if not key.is_usable(now) or not key.user.is_active:
        return None
    if key.last_used_at is None or now - key.last_used_at > API_KEY_TOUCH_INTERVAL:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now, last_used_ip=ip)
    return key


def api_keys_of(user: User) -> list[ApiKey]:
    return list(ApiKey.objects.filter(user=user))


# -- Platform staff --------------------------------------------------------------------------


@dataclass(frozen=True)
class StaffEnrollment:
    user: User
    totp_secret: str  # printed once for the authenticator app, stored only encrypted
    otpauth_uri: str


def enroll_staff(email: str, role: StaffRole) -> StaffEnrollment:
    """Create (or update) a staff account and give it a fresh TOTP authenticator.

    Staff cannot sign in without a second factor, so the factor is created here, by a platform
    admin at the console, and the password is then set by the staff member via a reset link.
    """
    if role == StaffRole.NONE:
        raise ApiKeyInvalidError("Choose a staff role.")
    user = User.objects.filter(email__iexact=email).first()
    if user is None:
        user = User.objects.create_user(email=email, password=None)
    user.staff_role = role
    user.save(update_fields=["staff_role"])
    EmailAddress.objects.update_or_create(
        user=user, email=user.email, defaults={"verified": True, "primary": True}
    )
    Authenticator.objects.filter(user=user, type=Authenticator.Type.TOTP).delete()
    secret = generate_totp_secret()
    TOTP.activate(user, secret)
    return StaffEnrollment(user, secret, get_adapter().build_totp_url(user, secret))


# -- Organisations, memberships, invitations ----------------------------------------------------
#
# Every use case takes the caller's ``Scope`` (fieldlink.accounts.access), checks one permission
# and writes one audit entry in the caller's transaction. Lists come through ``Scope.filter``.

ORGANISATION_DELETION_GRACE = timedelta(days=30)
INVITATION_LIFETIME = timedelta(days=7)
INVITATION_PREFIX = "fli_"
MAX_PENDING_INVITATIONS = 100


def _actor(principal: Principal) -> tuple[str, str, str]:
    """(actor_type, actor_id, actor_label) for the audit trail."""
    user = principal.user
    if principal.api_key is not None:
        key = principal.api_key
        return ActorType.API_KEY, str(key.id), f"{user.email} ({key.prefix}…)"
    if user.is_platform_staff:
        return ActorType.STAFF, str(user.id), user.email
    return ActorType.USER, str(user.id), user.email


def audit(
    scope: Scope,
    action: str,
    *,
    target: models.Model | None = None,
    before: object = None,
    after: object = None,
    request: HttpRequest | None = None,
) -> None:
    """One entry in the organisation's audit chain, in the caller's transaction."""
    _audit_in(
        str(scope.organisation.pk),
        scope.principal,
        action,
        target=target,
        before=before,
        after=after,
        request=request,
        grant_id=scope.grant_id,
    )


def _audit_in(
    chain: str,
    principal: Principal,
    action: str,
    *,
    target: models.Model | None = None,
    before: object = None,
    after: object = None,
    request: HttpRequest | None = None,
    grant_id: str = "",
) -> None:
    actor_type, actor_id, actor_label = _actor(principal)
    info = client_info(request)
    via = principal.via
    audit_services.record(
        chain,
        action=action,
        actor_type=actor_type,
        actor_id=actor_id,
        actor_label=actor_label,
        on_behalf_of_grant=grant_id,
        target_type=target._meta.model_name or "" if target is not None else "",
        target_id=str(target.pk) if target is not None else "",
        before=before,
        after=after,
        ip=info.ip,
        client=f"{via}; {info.user_agent}" if info.user_agent else via,
    )


def _organisation_fields(org: Organisation) -> dict[str, Any]:
    return {"name": org.name, "region": org.region}


def _member_fields(membership: Membership) -> dict[str, Any]:
    return {"user": membership.user.email, "role": membership.role}


def _refuse_staff(user: User) -> None:
    if user.is_platform_staff:
        raise StaffNotCustomerError(
            "Platform staff accounts cannot belong to customer organisations; support access "
            "is granted by the customer for a ticket."
        )


def create_organisation(
    principal: Principal, *, name: str, region: str, request: HttpRequest | None = None
) -> Scope:
    """A new organisation with the caller as its owner; returns the owner's scope."""
    _refuse_staff(principal.user)
    if not principal.can_write:
        raise PermissionDeniedError("This API key may only read.")
    name = name.strip()
    if not name or len(name) > 100:
        raise OrganisationInvalidError("The name must be 1 to 100 characters.")
    if region not in Region.values:
        raise OrganisationInvalidError("Unknown region.", details={"allowed": list(Region.values)})
    org = Organisation.objects.create(name=name, region=region, created_by=principal.user)
    Membership.objects.create(organisation=org, user=principal.user, role=Role.OWNER)
    scope = access.resolve(principal, org.pk)
    audit(
        scope, "organisation.created", target=org, after=_organisation_fields(org), request=request
    )
    return scope


def rename_organisation(scope: Scope, *, name: str, request: HttpRequest | None = None) -> None:
    scope.require(Permission.ORG_SETTINGS)
    name = name.strip()
    if not name or len(name) > 100:
        raise OrganisationInvalidError("The name must be 1 to 100 characters.")
    org = Organisation.objects.select_for_update().get(pk=scope.organisation.pk)
    if org.name == name:
        return
    before = _organisation_fields(org)
    org.name = name
    org.save(update_fields=["name"])
    scope.organisation.name = name
    audit(
        scope,
        "organisation.updated",
        target=org,
        before=before,
        after=_organisation_fields(org),
        request=request,
    )


def members_of(scope: Scope) -> list[Membership]:
    scope.require(Permission.MEMBERS_VIEW)
    return list(scope.filter(Membership.objects.select_related("user")).order_by("created_at"))


def invitations_of(scope: Scope) -> list[Invitation]:
    scope.require(Permission.MEMBERS_VIEW)
    return list(scope.filter(Invitation.objects.all()).order_by("-created_at")[:500])


def _invitation_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedInvitation:
    invitation: Invitation
    token: str  # goes into the e-mailed link only; its hash is stored


def invite_member(
    scope: Scope, *, email: str, role: str, request: HttpRequest | None = None
) -> IssuedInvitation:
    scope.require(Permission.MEMBERS_MANAGE)
    if role not in Role.values or role == Role.OWNER:
        raise OrganisationInvalidError(
            "Invite as admin, engineer or viewer; ownership is transferred, not invited.",
            details={"allowed": [Role.ADMIN, Role.ENGINEER, Role.VIEWER]},
        )
    email = User.objects.normalize_email(email.strip())
    if scope.filter(Membership.objects.filter(user__email__iexact=email)).exists():
        raise AlreadyMemberError("This person is already a member.")
    now = timezone.now()
    pending = scope.filter(
        Invitation.objects.filter(accepted_at=None, revoked_at=None, expires_at__gt=now)
    )
    # A new invitation for the same address replaces the old one: one live link per person.
    for old in pending.filter(email__iexact=email).select_for_update():
        old.revoked_at = now
        old.save(update_fields=["revoked_at"])
    if pending.count() >= MAX_PENDING_INVITATIONS:
        raise OrganisationStateError(
            f"At most {MAX_PENDING_INVITATIONS} invitations may be pending; revoke some first."
        )
    token = INVITATION_PREFIX + secrets.token_urlsafe(32)
    invitation = Invitation.objects.create(
        organisation=scope.organisation,
        email=email,
        role=role,
        digest=_invitation_digest(token),
        invited_by=scope.user,
        expires_at=now + INVITATION_LIFETIME,
    )
    audit(
        scope,
        "invitation.created",
        target=invitation,
        after={"email": email, "role": role, "expires_at": invitation.expires_at},
        request=request,
    )
    link = _absolute(request, f"/invitations/{token}/")
    org_name, inviter = scope.organisation.name, scope.user.email
    body = (
        f"{inviter} invites you to join {org_name} on Fieldlink as {Role(role).label.lower()}.\n\n"
        f"Accept (valid for 7 days, once): {link}\n\n"
        "Sign in or create an account with this e-mail address to accept. If you did not "
        "expect this invitation, ignore this message."
    )
    transaction.on_commit(
        lambda: send_mail(
            f"[Fieldlink] Invitation to {org_name}", body, None, [email], fail_silently=True
        )
    )
    return IssuedInvitation(invitation, token)


def _absolute(request: HttpRequest | None, path: str) -> str:
    if request is None:
        return path
    return request.build_absolute_uri(path)


def revoke_invitation(
    scope: Scope, invitation_id: Any, request: HttpRequest | None = None
) -> Invitation:
    scope.require(Permission.MEMBERS_MANAGE)
    invitation = scope.get(Invitation.objects.select_for_update(), invitation_id, what="invitation")
    if invitation.status() == "pending":
        invitation.revoked_at = timezone.now()
        invitation.save(update_fields=["revoked_at"])
        audit(
            scope,
            "invitation.revoked",
            target=invitation,
            before={"email": invitation.email, "role": invitation.role},
            request=request,
        )
    return invitation


def invitation_for_token(token: str) -> Invitation | None:
    """The invitation a link stands for, or None (unknown, malformed or too long)."""
    if not token.startswith(INVITATION_PREFIX) or len(token) > 100:
        return None
    return (
        Invitation.objects.select_related("organisation", "invited_by")
        .filter(digest=_invitation_digest(token))
        .first()
    )


def accept_invitation(
    principal: Principal, token: str, request: HttpRequest | None = None
) -> Membership:
    _refuse_staff(principal.user)
    if not principal.can_write:
        raise PermissionDeniedError("This API key may only read.")
    found = invitation_for_token(token)
    if found is None:
        raise InvitationInvalidError("This invitation link is not valid.")
    invitation = (
        Invitation.objects.select_for_update().select_related("organisation").get(pk=found.pk)
    )
    status = invitation.status()
    if status != "pending":
        raise InvitationInvalidError(
            f"This invitation has {'been used' if status == 'accepted' else status}; ask for a "
            "new one.",
            details={"status": status},
        )
    org = invitation.organisation
    if org.pending_deletion:
        raise OrganisationStateError("This organisation is scheduled for deletion.")
    user = principal.user
    verified = EmailAddress.objects.filter(
        user=user, email__iexact=invitation.email, verified=True
    ).exists()
    if not verified:
        raise InvitationEmailMismatchError(
            "This invitation was sent to another e-mail address. Sign in with that address "
            "(or add and verify it on your account) to accept."
        )
    if Membership.objects.filter(organisation=org, user=user).exists():
        raise AlreadyMemberError("You are already a member of this organisation.")
    membership = Membership.objects.create(organisation=org, user=user, role=invitation.role)
    invitation.accepted_at = timezone.now()
    invitation.accepted_by = user
    invitation.save(update_fields=["accepted_at", "accepted_by"])
    scope = access.resolve(principal, org.pk)
    audit(
        scope, "member.joined", target=membership, after=_member_fields(membership), request=request
    )
    return membership


def change_role(
    scope: Scope, membership_id: Any, *, role: str, request: HttpRequest | None = None
) -> Membership:
    scope.require(Permission.MEMBERS_MANAGE)
    membership = scope.get(
        Membership.objects.select_for_update().select_related("user"),
        membership_id,
        what="member",
    )
    if role not in Role.values:
        raise OrganisationInvalidError("Unknown role.", details={"allowed": list(Role.values)})
    if Role.OWNER in (membership.role, role):
        raise OwnerProtectedError("Ownership changes only by transfer, by the owner.")
    if membership.role != role:
        before = _member_fields(membership)
        membership.role = role
        membership.save(update_fields=["role"])
        audit(
            scope,
            "member.role_changed",
            target=membership,
            before=before,
            after=_member_fields(membership),
            request=request,
        )
    return membership


def remove_member(scope: Scope, membership_id: Any, request: HttpRequest | None = None) -> None:
    """Remove a member (members.manage), or leave (anyone but the owner)."""
    membership = scope.get(
        Membership.objects.select_for_update().select_related("user"),
        membership_id,
        what="member",
    )
    leaving = membership.user_id == scope.user.pk
    if not leaving:
        scope.require(Permission.MEMBERS_MANAGE)
    elif not scope.principal.can_write:
        # Leaving needs no permission, but it is a change: a read-only key cannot make it.
        raise PermissionDeniedError("This API key may only read.")
    if membership.role == Role.OWNER:
        raise OwnerProtectedError("The owner cannot leave or be removed; transfer ownership first.")
    before = _member_fields(membership)
    audit(
        scope,
        "member.left" if leaving else "member.removed",
        target=membership,
        before=before,
        request=request,
    )
    membership.delete()


def transfer_ownership(
    scope: Scope, membership_id: Any, request: HttpRequest | None = None
) -> Membership:
    """The target member becomes owner; the previous owner stays on as admin."""
    scope.require(Permission.OWNERSHIP_TRANSFER)
    target = scope.get(
        Membership.objects.select_for_update().select_related("user"),
        membership_id,
        what="member",
    )
    current = scope.filter(Membership.objects.select_for_update()).filter(role=Role.OWNER).first()
    # The caller's standing was resolved before this lock: a concurrent transfer may have moved
    # ownership since, and a former owner must not hand on what is no longer theirs.
    if current is None or (scope.role == Role.OWNER and current.user_id != scope.user.pk):
        raise OrganisationStateError("Ownership has just changed; reload and try again.")
    if target.pk == current.pk:
        raise OrganisationStateError("This member already owns the organisation.")
    _refuse_staff(target.user)
    # The owner's address, not the caller's: a permission source other than membership (a
    # support grant) may hold ownership.transfer too.
    before = {"owner": current.user.email}
    # The old owner steps down first: the database allows one owner per organisation.
    current.role = Role.ADMIN
    current.save(update_fields=["role"])
    target.role = Role.OWNER
    target.save(update_fields=["role"])
    audit(
        scope,
        "organisation.ownership_transferred",
        target=target,
        before=before,
        after={"owner": target.user.email},
        request=request,
    )
    return target


def request_deletion(scope: Scope, request: HttpRequest | None = None) -> Organisation:
    """Schedule the organisation's deletion after the grace period (cancellable until then)."""
    scope.require(Permission.ORG_DELETE)
    org = Organisation.objects.select_for_update().get(pk=scope.organisation.pk)
    if org.pending_deletion:
        raise OrganisationStateError("Deletion is already scheduled.")
    now = timezone.now()
    org.deletion_requested_at = now
    org.deletion_due_at = now + ORGANISATION_DELETION_GRACE
    org.deletion_requested_by = scope.user
    org.save(update_fields=["deletion_requested_at", "deletion_due_at", "deletion_requested_by"])
    audit(
        scope,
        "organisation.deletion_requested",
        target=org,
        after={"deletion_due_at": org.deletion_due_at},
        request=request,
    )
    _tell_admins(
        org,
        f"[Fieldlink] {org.name} will be deleted on {org.deletion_due_at:%Y-%m-%d}",
        f"{scope.user.email} scheduled the deletion of {org.name} and all its data on "
        f"{org.deletion_due_at:%Y-%m-%d %H:%M} UTC. Until then the owner can cancel it, and "
        "admins can still export the data.",
    )
    return org


def cancel_deletion(scope: Scope, request: HttpRequest | None = None) -> Organisation:
    scope.require(Permission.ORG_DELETE)
    org = Organisation.objects.select_for_update().get(pk=scope.organisation.pk)
    if not org.pending_deletion:
        raise OrganisationStateError("No deletion is scheduled.")
    before = {"deletion_due_at": org.deletion_due_at}
    org.deletion_requested_at = org.deletion_due_at = None
    org.deletion_requested_by = None
    org.save(update_fields=["deletion_requested_at", "deletion_due_at", "deletion_requested_by"])
    audit(scope, "organisation.deletion_cancelled", target=org, before=before, request=request)
    _tell_admins(
        org,
        f"[Fieldlink] Deletion of {org.name} cancelled",
        f"{scope.user.email} cancelled the scheduled deletion of {org.name}.",
    )
    return org


def _tell_admins(org: Organisation, subject: str, body: str) -> None:
    recipients = list(
        Membership.objects.filter(organisation=org, role__in=[Role.OWNER, Role.ADMIN]).values_list(
            "user__email", flat=True
        )
    )
    if recipients:
        transaction.on_commit(
            lambda: send_mail(subject, body, None, recipients, fail_silently=True)
        )


def purge_due_organisations(now: datetime | None = None) -> list[str]:
    """Delete organisations whose grace period is over; returns their ids.

    The deletion is recorded twice: as the last entry of the organisation's own chain (which
    outlives it) and in the platform chain, both by the system actor.
    """
    now = now or timezone.now()
    purged: list[str] = []
    due = Organisation.objects.filter(deletion_due_at__lte=now).select_for_update(
        skip_locked=connection.vendor == "postgresql"
    )
    for org in due:
        org_id = str(org.pk)
        entry = {
            "name": org.name,
            "region": org.region,
            "deletion_requested_at": org.deletion_requested_at,
        }
        for chain in (org_id, PLATFORM_CHAIN):
            audit_services.record(
                chain,
                action="organisation.deleted",
                actor_type=ActorType.SYSTEM,
                actor_id="purge",
                actor_label="Deletion after the grace period",
                target_type="organisation",
                target_id=org_id,
                before=entry,
            )
        for hook in ORGANISATION_PURGE_HOOKS:
            hook(org)
        org.delete()
        purged.append(org_id)
        log.info("organisation_purged", organisation=org_id)
    return purged


# Other contexts register here what must happen to their data beyond the database cascade
# (files on disk, object storage) before an organisation row is deleted.
ORGANISATION_PURGE_HOOKS: list[Callable[[Organisation], None]] = []
