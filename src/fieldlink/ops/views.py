"""Health, readiness and metrics endpoints (plain views: probes must not need a session)."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe
from prometheus_client import CONTENT_TYPE_LATEST

from fieldlink.ops import services


@never_cache
@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@never_cache
@require_safe
def readyz(request: HttpRequest) -> JsonResponse:
    readiness = services.check_readiness()
    return JsonResponse(
        {"status": "ready" if readiness.ready else "not_ready", "checks": readiness.checks},
        status=200 if readiness.ready else 503,
    )


@never_cache
@require_safe
def metrics(request: HttpRequest) -> HttpResponse:
    token = settings.FIELDLINK.metrics_token
    header = request.headers.get("Authorization", "")
    presented = header.removeprefix("Bearer ") if header.startswith("Bearer ") else None
    if not services.metrics_token_matches(token.get_secret_value() if token else None, presented):
        response = JsonResponse(
            {
                "code": "unauthenticated",
                "message": "A valid metrics token is required (Authorization: Bearer …).",
                "details": {},
            },
            status=401,
        )
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(services.render_metrics(), content_type=CONTENT_TYPE_LATEST)
