"""Signal receivers: allauth's and Django's account signals become security-history rows."""

from __future__ import annotations

from collections.abc import Callable
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


def _on_mfa_change(kind: SecurityEventKind) -> Callable[..., None]:
    def record(
        sender: Any, request: HttpRequest, user: User, authenticator: Any, **kwargs: Any
    ) -> None:
        services.record_security_event(user, kind, request, type=str(authenticator.type))
        if kind == SecurityEventKind.MFA_ADDED:
            services.burn_current_totp_codes(authenticator)

    return record


# Connected by strong reference: the receivers live as long as this module.
for _signal, _kind in (
    (mfa_signals.authenticator_added, SecurityEventKind.MFA_ADDED),
    (mfa_signals.authenticator_removed, SecurityEventKind.MFA_REMOVED),
    (mfa_signals.authenticator_reset, SecurityEventKind.RECOVERY_CODES_RESET),
):
    _signal.connect(_on_mfa_change(_kind), weak=False, dispatch_uid=f"fieldlink-{_kind}")
