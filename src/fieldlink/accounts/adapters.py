"""django-allauth adapters: where Fieldlink's sign-in policy plugs into allauth's flows."""

from __future__ import annotations

import base64
import json
import math
import time
from functools import lru_cache
from typing import Any

from allauth.account.adapter import DefaultAccountAdapter
from allauth.core.exceptions import ImmediateHttpResponse
from allauth.core.internal import ratelimit as allauth_ratelimit
from allauth.headless.base.response import RateLimitResponse
from allauth.headless.internal.restkit.response import APIResponse
from allauth.mfa.adapter import DefaultMFAAdapter
from allauth.mfa.models import Authenticator
from cryptography.fernet import Fernet, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse
from django.http.request import RawPostDataException
from django.shortcuts import render
from django.urls import reverse
from redis.exceptions import RedisError

from fieldlink.accounts.models import SecurityEventKind, User
from fieldlink.accounts.passwords import SECOND_FACTOR_TYPES, has_second_factor
from fieldlink.accounts.services import record_security_event
from fieldlink.kit.logging import get_logger

log = get_logger(__name__)


MFA_RETRY_AFTER = 60
# One "limit reached" history row per account per window, however long an attack goes on.
LIMIT_EVENT_WINDOW = 300


def retry_after_seconds(request: HttpRequest, *, action: str, key: str) -> int:
    """Seconds until the tightest exhausted login_failed limit has room again (at least 1)."""
    now = time.time()
    wait = 1.0
    for rate in allauth_ratelimit.get_rates(app="allauth.account", action=action):
        cache_key = allauth_ratelimit.get_cache_key(
            request, app="allauth.account", action=action, rate=rate, key=key
        )
        history: list[float] = cache.get(cache_key, [])
        recent = [t for t in history if t > now - rate.duration]
        if len(recent) >= rate.amount:
            # The window frees up when its oldest counted attempt ages out.
            oldest_counted = sorted(recent, reverse=True)[rate.amount - 1]
            wait = max(wait, oldest_counted + rate.duration - now)
    return math.ceil(wait)


def _is_headless(request: HttpRequest) -> bool:
    # allauth marks requests of its headless API (the mobile apps) this way; they expect JSON.
    return hasattr(getattr(request, "allauth", None), "headless")


def too_many_requests(request: HttpRequest, retry_after: int) -> HttpResponse:
    response: HttpResponse
    if _is_headless(request):
        response = RateLimitResponse(request)
    else:
        response = render(
            request,
            "429.html",
            {"retry_after": retry_after, "minutes": max(1, math.ceil(retry_after / 60))},
            status=429,
        )
    response["Retry-After"] = str(retry_after)
    return response


def unavailable(request: HttpRequest) -> HttpResponse:
    response: HttpResponse
    if _is_headless(request):
        message = "Sign-in is briefly unavailable. Please try again in a minute."
        response = APIResponse(
            request, status=503, errors=[{"message": message, "code": "unavailable"}]
        )
    else:
        response = render(request, "accounts/sign_in_unavailable.html", status=503)
    response["Retry-After"] = "30"
    return response


class AccountAdapter(DefaultAccountAdapter):
    def pre_authenticate(self, request: HttpRequest, **credentials: Any) -> None:
        try:
            super().pre_authenticate(request, **credentials)
        except RedisError as exc:
            # Fail closed: without the shared counters nobody could be limited, so nobody
            # signs in with a password until the store is back (docs/security.md).
            log.error("sign_in_refused_rate_limit_store_down", error=type(exc).__name__)  # noqa: TRY400 -- no traceback for a known outage
            raise ImmediateHttpResponse(unavailable(request)) from exc
        except Exception as exc:
            if getattr(exc, "code", None) != "too_many_login_attempts":
                raise
            key = self._get_login_attempts_cache_key(request, **credentials)
            retry_after = retry_after_seconds(request, action="login_failed", key=key)
            self._record_limit(credentials)
            raise ImmediateHttpResponse(too_many_requests(request, retry_after)) from exc

    def _get_login_attempts_cache_key(self, request: HttpRequest, **credentials: Any) -> str:
        # allauth prefixes the key with the site domain, which without django.contrib.sites is
        # the Host header, port included: a client that varies it ("host:1", "host:2", …) would
        # get a fresh per-account budget each time, and two replicas reached under different
        # names would not share one. The account alone is the key.
        login = str(credentials.get("email", credentials.get("username", "")))
        return f"login:{login.strip().lower()}"

    def validation_error(self, code: str, *args: Any) -> Any:
        # allauth answers a tripped MFA-code limit with a form error (200); the policy says a
        # limited request gets 429 with Retry-After. The per-user key of that limit is internal
        # to allauth, so the hint is a lower bound: a client that retries early is told again.
        request = self.request
        if (
            code == "too_many_login_attempts"
            and request is not None
            and request.path == reverse("mfa_authenticate")
        ):
            raise ImmediateHttpResponse(too_many_requests(request, MFA_RETRY_AFTER))
        return super().validation_error(code, *args)

    def _record_limit(self, credentials: dict[str, Any]) -> None:
        email = str(credentials.get("email", ""))
        user = User.objects.filter(email__iexact=email).first() if email else None
        if user is not None and cache.add(
            f"fieldlink:limit-recorded:{user.pk}", 1, timeout=LIMIT_EVENT_WINDOW
        ):
            record_security_event(user, SecurityEventKind.RATE_LIMITED, limit="login_failed")

    def pre_login(self, request: HttpRequest, user: Any, **kwargs: Any) -> HttpResponse | None:
        if isinstance(user, User) and user.is_platform_staff and not has_second_factor(user):
            log.warning("staff_sign_in_refused_without_second_factor")
            return render(request, "accounts/staff_mfa_required.html", status=403)
        response: HttpResponse | None = super().pre_login(request, user, **kwargs)
        return response

    def is_open_for_signup(self, request: HttpRequest) -> bool:
        return bool(getattr(settings, "FIELDLINK_SIGNUP_OPEN", True))

    def clean_password(self, password: str, user: AbstractBaseUser | None = None) -> str:
        # allauth's headless sign-up (the mobile apps) checks the password without the account
        # it is for, so the rule against passwords built from one's own e-mail would not apply.
        if user is None:
            user = _headless_sign_up_subject(self.request)
        return str(super().clean_password(password, user))


def _headless_sign_up_subject(request: HttpRequest | None) -> User | None:
    """An unsaved user with the e-mail a headless sign-up request names, if it is one."""
    if request is None or request.method != "POST" or request.content_type != "application/json":
        return None
    try:
        data = json.loads(request.body)
    except (ValueError, RawPostDataException):
        return None
    email = data.get("email") if isinstance(data, dict) else None
    return User(email=email) if isinstance(email, str) else None


@lru_cache(maxsize=4)
def _mfa_cipher(keys: tuple[str, ...]) -> MultiFernet:
    def derive(secret_key: str) -> Fernet:
        # A key of its own for MFA secrets, derived so that the Django secret key is not
        # used directly as a cipher key.
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"fieldlink-mfa-v1")
        return Fernet(base64.urlsafe_b64encode(hkdf.derive(secret_key.encode())))

    return MultiFernet([derive(key) for key in keys])


def mfa_cipher() -> MultiFernet:
    # The current key encrypts; fallbacks still decrypt, so SECRET_KEY can be rotated.
    return _mfa_cipher((settings.SECRET_KEY, *settings.SECRET_KEY_FALLBACKS))


class MFAAdapter(DefaultMFAAdapter):
    """TOTP secrets and recovery-code seeds are stored encrypted (allauth stores them clear)."""

    def encrypt(self, text: str) -> str:
        return mfa_cipher().encrypt(text.encode()).decode()

    def decrypt(self, encrypted_text: str) -> str:
        return mfa_cipher().decrypt(encrypted_text.encode()).decode()

    def can_delete_authenticator(self, authenticator: Authenticator) -> bool:
        user = authenticator.user
        if authenticator.type not in SECOND_FACTOR_TYPES:
            return True
        others = (
            Authenticator.objects.filter(user=user, type__in=SECOND_FACTOR_TYPES)
            .exclude(pk=authenticator.pk)
            .exists()
        )
        if others:
            return True
        # Removing the last second factor: the password alone must then meet the 15-character
        # rule, and staff may never be without a second factor.
        return bool(user.password_ok_without_mfa) and not user.is_platform_staff
