"""Use cases of the accounts context: the only place that changes its state.

Sign-up, sign-in, MFA, e-mail and password flows are django-allauth's; this module adds what
allauth does not do: the security history (with last and previous sign-in), ending other
sessions after a password change, new-device notices, and personal API keys.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
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
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone
from ua_parser import parse as parse_user_agent

from fieldlink.accounts.errors import ApiKeyInvalidError, ApiKeyNotFoundError
from fieldlink.accounts.models import (
    ApiKey,
    ApiKeyScope,
    SecurityEvent,
    SecurityEventKind,
    StaffRole,
    User,
)
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
    return IssuedKey(key, secret)


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
