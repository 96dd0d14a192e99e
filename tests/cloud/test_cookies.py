"""The session cookie, set by Django's real SessionMiddleware with our settings."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.contrib.sessions.middleware import SessionMiddleware
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory

pytestmark = [pytest.mark.django_db, pytest.mark.backend]


def test_session_cookie_is_host_prefixed_secure_httponly_samesite() -> None:
    def view(request: HttpRequest) -> HttpResponse:
        request.session["seen"] = True
        return HttpResponse("ok")

    request = RequestFactory().get("/", secure=True)
    response = SessionMiddleware(view)(request)
    cookie = response.cookies[settings.SESSION_COOKIE_NAME]
    assert settings.SESSION_COOKIE_NAME.startswith("__Host-")
    assert cookie["secure"] is True
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Lax"
    assert cookie["path"] == "/"
    assert cookie["domain"] == ""  # __Host- cookies must not carry a Domain


def test_csrf_cookie_is_host_prefixed_and_strict() -> None:
    assert settings.CSRF_COOKIE_NAME.startswith("__Host-")
    assert settings.CSRF_COOKIE_SECURE is True
    assert settings.CSRF_COOKIE_SAMESITE == "Strict"
    assert settings.CSRF_COOKIE_DOMAIN is None
