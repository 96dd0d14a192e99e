"""Site-wide pages and error handlers. API paths get the JSON error body, pages get HTML."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import cache_control
from django.views.decorators.http import require_safe

from fieldlink import __version__
from fieldlink.cloud.errors import MESSAGE_BY_STATUS, json_error
from fieldlink.cloud.guards import is_api_path


def site_context(request: HttpRequest) -> dict[str, Any]:
    return {"fieldlink_version": __version__, "region": settings.FIELDLINK.region}


@require_safe
def home(request: HttpRequest) -> HttpResponse:
    return render(request, "cloud/home.html")


@require_safe
@cache_control(max_age=86400, public=True)
def manifest(request: HttpRequest) -> HttpResponse:
    return render(request, "cloud/manifest.webmanifest", content_type="application/manifest+json")


def _error(request: HttpRequest, status: int) -> HttpResponse:
    if is_api_path(request.path):
        return json_error(status)
    return render(
        request,
        "cloud/error.html",
        {"status": status, "message": MESSAGE_BY_STATUS.get(status, "Request failed.")},
        status=status,
    )


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return _error(request, 400)


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return _error(request, 403)


def page_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return _error(request, 404)


def server_error(request: HttpRequest) -> HttpResponse:
    return _error(request, 500)


# allauth knows which limit tripped but not when it frees up; its shortest windows are one
# minute, so that is an honest lower bound to wait.
GENERIC_RETRY_AFTER = 60


def too_many_requests(request: HttpRequest) -> HttpResponse:
    if is_api_path(request.path):
        response: HttpResponse = json_error(429)
    else:
        response = render(request, "cloud/too_many_requests.html", status=429)
    response["Retry-After"] = str(GENERIC_RETRY_AFTER)
    return response


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    if is_api_path(request.path):
        return json_error(403, "csrf_failed", "The CSRF check failed; reload and try again.")
    return render(
        request,
        "cloud/error.html",
        {"status": 403, "message": "The form expired or came from elsewhere. Reload and retry."},
        status=403,
    )
