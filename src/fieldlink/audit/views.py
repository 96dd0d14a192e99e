"""Web pages of the audit context (thin: parse, call one service, render).

``/orgs/<org_id>/audit/`` is the organisation's trail for its owners and admins: filters, a list
that stacks into cards on phones, paging, exports (links to the REST export, which records each
one) and a chain check.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode
from uuid import UUID

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from fieldlink.accounts.access import Permission, PermissionDeniedError, Scope
from fieldlink.accounts.auth import scope as scope_of
from fieldlink.audit import services
from fieldlink.audit.forms import AuditFilterForm
from fieldlink.audit.models import AuditEntry
from fieldlink.kit.errors import NotFoundError


def _auditor(request: HttpRequest, org_id: UUID) -> Scope:
    try:
        scope = scope_of(request, org_id)
        scope.require(Permission.AUDIT_VIEW)
    except NotFoundError as exc:
        raise Http404(exc.message) from exc
    except PermissionDeniedError as exc:
        raise PermissionDenied(exc.message) from exc
    return scope


def _param_time(value: datetime) -> str:
    # Naive UTC, the form a datetime-local input shows; the page and the API read it as UTC.
    value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(timespec="seconds" if not value.microsecond else "microseconds")


def _params(filters: services.AuditFilters) -> dict[str, str]:
    params = filters.active()
    for name in ("since", "until"):
        value = getattr(filters, name)
        if value is not None:
            params[name] = _param_time(value)
    return params


def _query(params: dict[str, Any]) -> str:
    return urlencode({k: v for k, v in params.items() if v not in ("", None)})


@never_cache
@require_safe
@login_required
def trail(request: HttpRequest, org_id: UUID) -> HttpResponse:
    scope = _auditor(request, org_id)
    entries = scope.filter(AuditEntry.objects.all())
    form = AuditFilterForm(request.GET)
    context: dict[str, Any] = {
        "org": scope.organisation,
        "form": form,
        "export_limit": f"{services.EXPORT_LIMIT:,}",
        "verification": services.verify_entries(entries) if request.GET.get("verify") else None,
    }
    if not form.is_valid():
        context["verify_query"] = _query({"verify": "1"})
        return render(request, "audit/trail.html", context, status=422)
    filters = form.filters()
    params = _params(filters)
    limit = form.cleaned_data["limit"]
    page = services.search(
        entries,
        filters,
        before_sequence=form.cleaned_data["before_sequence"],
        limit=limit or services.PAGE_SIZE_DEFAULT,
    )
    export = reverse("api-v1:export_entries", kwargs={"org_id": scope.organisation.pk})
    context.update(
        entries=[(e, services.changes(e.before, e.after)) for e in page.entries],
        paged=form.cleaned_data["before_sequence"] is not None,
        newest_query=_query({**params, "limit": limit}),
        older_query=(
            _query({**params, "limit": limit, "before_sequence": page.next_before_sequence})
            if page.next_before_sequence is not None
            else None
        ),
        verify_query=_query(
            {**params, "limit": limit, "before_sequence": form.cleaned_data["before_sequence"]}
            | {"verify": "1"}
        ),
        export_csv_url=f"{export}?{_query({**params, 'format': 'csv'})}",
        export_json_url=f"{export}?{_query({**params, 'format': 'json'})}",
        filtered=bool(params),
    )
    return render(request, "audit/trail.html", context)
