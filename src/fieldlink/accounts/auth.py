"""How REST callers authenticate: a browser session, a headless session token, or an API key.

Nothing else is accepted. Each class returns the acting ``Principal`` or None; Django Ninja tries
them in order and answers 401 when none matches.
"""

from __future__ import annotations

from typing import Any

from allauth.core.internal import ratelimit as allauth_ratelimit
from allauth.headless.contrib.ninja.security import XSessionTokenAuth
from django.http import HttpRequest
from ninja.security import APIKeyHeader, SessionAuth
from redis.exceptions import RedisError

from fieldlink.accounts import access, services
from fieldlink.accounts.access import Principal, Scope
from fieldlink.accounts.errors import SignInUnavailableError
from fieldlink.accounts.models import ApiKeyScope, User
from fieldlink.kit.errors import FieldlinkError, RateLimitedError

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Failed API-key presentations per client IP; a valid key is never counted.
API_KEY_FAILURE_RATE = {"api_key_failed": "30/m/ip,300/h/ip"}


class ApiKeyScopeError(FieldlinkError):
    code = "api_key_scope"
    kind = "forbidden"


class BrowserSession(SessionAuth):
    """The web UI's session cookie (CSRF-checked for unsafe methods by Ninja)."""

    def authenticate(self, request: HttpRequest, key: str | None) -> Principal | None:
        user = request.user
        if isinstance(user, User) and user.is_authenticated:
            return Principal(user, "session")
        return None


class SessionToken(XSessionTokenAuth):
    """allauth headless app sessions (mobile apps): ``X-Session-Token``."""

    def __call__(self, request: HttpRequest) -> Principal | None:
        user = super().__call__(request)
        if isinstance(user, User) and user.is_active:
            return Principal(user, "session_token")
        return None


class PersonalApiKey(APIKeyHeader):
    """``Authorization: Bearer flk_…`` personal API keys."""

    param_name = "Authorization"
    openapi_description = "A personal API key: `Authorization: Bearer flk_…`"

    def authenticate(self, request: HttpRequest, key: str | None) -> Principal | None:
        if not key or not key.startswith("Bearer "):
            return None
        ip = request.META.get("REMOTE_ADDR")
        if not _count_failure(request, dry_run=True):
            raise RateLimitedError(
                "Too many invalid API keys from this address.",
                retry_after=60,
                limit="api_key_failed",
            )
        api_key = services.authenticate_api_key(key.removeprefix("Bearer ").strip(), ip)
        if api_key is None:
            _count_failure(request, dry_run=False)
            return None
        if request.method not in SAFE_METHODS and api_key.scope != ApiKeyScope.READ_WRITE:
            raise ApiKeyScopeError("This API key may only read.")
        return Principal(api_key.user, "api_key", api_key)


def _count_failure(request: HttpRequest, *, dry_run: bool) -> bool:
    try:
        return bool(
            allauth_ratelimit.consume(
                request,
                app="fieldlink.accounts",
                action="api_key_failed",
                config=API_KEY_FAILURE_RATE,
                dry_run=dry_run,
                limit_get=True,
            )
        )
    except RedisError as exc:
        # Fail closed, as sign-in does (docs/security.md), and say so instead of a 500.
        raise SignInUnavailableError(
            "Authentication is briefly unavailable. Please try again in a minute."
        ) from exc


API_AUTH: list[Any] = [BrowserSession(), SessionToken(), PersonalApiKey()]


def principal(request: HttpRequest) -> Principal:
    auth = getattr(request, "auth", None)
    if not isinstance(auth, Principal):
        raise TypeError("endpoint is missing authentication")
    return auth


def acting_principal(request: HttpRequest) -> Principal:
    """The principal of an API call (set by the auth classes) or of a signed-in web page."""
    auth = getattr(request, "auth", None)
    if isinstance(auth, Principal):
        return auth
    user = request.user
    if isinstance(user, User) and user.is_authenticated:
        return Principal(user, "session")
    raise TypeError("endpoint is missing authentication")


def scope(request: HttpRequest, organisation_id: Any) -> Scope:
    """The caller's scope in one organisation: 404 unless it has standing there."""
    return access.resolve(acting_principal(request), organisation_id)
