"""Web pages of the support context: security.txt and the vulnerability-report entry point."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.cache import cache_control
from django.views.decorators.http import require_safe

from fieldlink.support import services


@require_safe
@cache_control(max_age=3600, public=True)
def security_txt(request: HttpRequest) -> HttpResponse:
    body = services.security_txt(
        contact_url=request.build_absolute_uri(reverse("support:security-report")),
        canonical_url=request.build_absolute_uri(request.path),
        policy_url=request.build_absolute_uri(reverse("support:security-report")),
    )
    return HttpResponse(body, content_type="text/plain; charset=utf-8")


@require_safe
def security_report(request: HttpRequest) -> HttpResponse:
    # The ticket form arrives with the support issue; until then this page says how to report.
    return render(request, "support/security_report.html")
