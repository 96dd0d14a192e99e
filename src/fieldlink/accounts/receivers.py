"""Signal receivers: allauth's and Django's account signals become security-history rows."""

from __future__ import annotations

from typing import Any

from allauth.account import signals as account_signals
from allauth.mfa import signals as mfa_signals
from django.contrib.auth import signals as auth_signals
from django.dispatch import receiver
from django.http import HttpRequest

from fieldlink.accounts import services
from fieldlink.accounts.models import SecurityEventKind, User


@receiver(auth_signals.user_logged_in)
def _signed_in(sender: Any, request: HttpRequest | None, user: User, **kwargs: Any) -> None:
    if request is not None:
        services.on_signed_in(request, user)


@receiver(auth_signals.user_logged_out)
def _signed_out(sender: Any, request: HttpRequest | None, user: User | None, **kwargs: Any) -> None:
    if user is not None:
        services.record_security_event(user, SecurityEventKind.SIGN_OUT, request)


@receiver(auth_signals.user_login_failed)
def _sign_in_failed(
    sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **kwargs: Any
) -> None:
    # Only for accounts that exist: attempted addresses of non-users are not ours to keep.
    email = str(credentials.get("email") or credentials.get("username") or "")
    user = User.objects.filter(email__iexact=email).first() if email else None
    if user is not None:
        services.record_security_event(user, SecurityEventKind.SIGN_IN_FAILED, request)


@receiver(account_signals.password_changed)
def _password_changed(sender: Any, request: HttpRequest, user: User, **kwargs: Any) -> None:
    services.record_security_event(user, SecurityEventKind.PASSWORD_CHANGED, request)
    services.end_other_sessions(request, user)


@receiver(account_signals.password_reset)
def _password_reset(sender: Any, request: HttpRequest, user: User, **kwargs: Any) -> None:
    services.record_security_event(user, SecurityEventKind.PASSWORD_RESET, request)
    services.end_other_sessions(None, user)


@receiver(account_signals.email_changed)
def _email_changed(sender: Any, request: HttpRequest, user: User, **kwargs: Any) -> None:
    services.record_security_event(user, SecurityEventKind.EMAIL_CHANGED, request)


@receiver(mfa_signals.authenticator_added)
def _mfa_added(
    sender: Any, request: HttpRequest, user: User, authenticator: Any, **kw: Any
) -> None:
    services.record_security_event(
        user, SecurityEventKind.MFA_ADDED, request, type=str(authenticator.type)
    )


@receiver(mfa_signals.authenticator_removed)
def _mfa_removed(
    sender: Any, request: HttpRequest, user: User, authenticator: Any, **kw: Any
) -> None:
    services.record_security_event(
        user, SecurityEventKind.MFA_REMOVED, request, type=str(authenticator.type)
    )


@receiver(mfa_signals.authenticator_reset)
def _mfa_reset(
    sender: Any, request: HttpRequest, user: User, authenticator: Any, **kw: Any
) -> None:
    services.record_security_event(user, SecurityEventKind.RECOVERY_CODES_RESET, request)
