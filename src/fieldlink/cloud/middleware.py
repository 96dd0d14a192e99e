"""Django middleware of the cloud project."""

from __future__ import annotations

import time
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from redis.exceptions import RedisError

from fieldlink.cloud.errors import MESSAGE_BY_STATUS, json_error
from fieldlink.cloud.guards import is_api_path
from fieldlink.kit.logging import get_logger
from fieldlink.ops.services import HTTP_LATENCY, HTTP_REQUESTS

log = get_logger(__name__)

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

Handler = Callable[[HttpRequest], HttpResponse]


class SecurityBaselineMiddleware:
    """Headers Django's SecurityMiddleware does not set; it runs for every Django response."""

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        response.headers.setdefault("Permissions-Policy", settings.PERMISSIONS_POLICY)
        response.headers.setdefault("Cross-Origin-Resource-Policy", "same-origin")
        if is_api_path(request.path):
            # API answers are per caller; no shared cache may keep them.
            response.headers.setdefault("Cache-Control", "no-store")
        return response


class APIErrorBodyMiddleware:
    """Gives framework-made API refusals (e.g. Ninja's bare 405) the one JSON error body."""

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if (
            response.status_code >= 400
            and is_api_path(request.path)
            and not response.get("Content-Type", "").startswith("application/json")
        ):
            replacement = json_error(response.status_code)
            for header in ("Allow", "Retry-After", "WWW-Authenticate"):
                if header in response:
                    replacement[header] = response[header]
            return replacement
        return response


class DependencyOutageMiddleware:
    """A down Redis (rate limits, cache) is a 503, never a 500, and never a way around a limit.

    Whatever needed the store was refused (fail closed); the client is told to retry.
    """

    RETRY_AFTER = "30"

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, RedisError):
            return None
        log.error("dependency_unavailable", dependency="redis", path=request.path)
        if is_api_path(request.path):
            response: HttpResponse = json_error(503, "unavailable")
        elif request.path.startswith("/accounts/"):
            response = render(request, "accounts/sign_in_unavailable.html", status=503)
        else:
            response = render(
                request,
                "cloud/error.html",
                {"status": 503, "message": MESSAGE_BY_STATUS[503]},
                status=503,
            )
        response["Retry-After"] = self.RETRY_AFTER
        return response


class RequestMetricsMiddleware:
    """Counts requests by route *pattern* (not raw path) so label cardinality stays bounded."""

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        match = request.resolver_match
        route = match.route if match is not None else "unmatched"
        method = request.method if request.method in KNOWN_METHODS else "other"
        HTTP_REQUESTS.labels(method, route, f"{response.status_code // 100}xx").inc()
        HTTP_LATENCY.labels(route).observe(time.perf_counter() - started)
        return response
