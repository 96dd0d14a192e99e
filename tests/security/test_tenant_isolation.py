"""The generated tenant-isolation matrix.

For every operation of the OpenAPI schema and every page URL that takes an object id, a member
of organisation A (its owner, so no role limit hides a leak) asks for organisation B's object —
read, update, delete — and gets 404 with none of B's data in the body. Nested routes are asked
both ways: with B's organisation id, and with A's organisation id but B's object id.

A new route whose parameter the matrix does not know fails ``test_every_route_is_covered``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from fieldlink.accounts.models import User
from tests.accounts.conftest import PASSWORD, SecureClient
from tests.security.tenancy import (
    MUTATING,
    OBJECT_OF,
    UI_EXEMPT,
    UI_PARAMS,
    ApiRoute,
    Tenant,
    UiUrl,
    api_routes,
    build_tenant,
    ui_urls_with_ids,
)

pytestmark = [pytest.mark.django_db]

# A valid body for every operation that takes one, so a refusal cannot come from validation
# before the ownership check. Keys: "METHOD path" as in the OpenAPI schema.
BODY: dict[str, dict[str, Any]] = {
    "PATCH /api/v1/orgs/{org_id}": {"name": "Renamed"},
    "PATCH /api/v1/orgs/{org_id}/members/{membership_id}": {"role": "engineer"},
    "POST /api/v1/orgs/{org_id}/transfer-ownership": {"membership_id": "<membership_id>"},
    "POST /api/v1/orgs/{org_id}/invitations": {"email": "new@example.com", "role": "viewer"},
    "POST /api/v1/orgs/{org_id}/exports": {"kind": "complete"},
    "POST /api/v1/me/api-keys/{key_id}/rotate": {"overlap_hours": 1},
    "POST /api/v1/orgs": {"name": "Mine", "region": "eu-central"},
    "POST /api/v1/me/api-keys": {"name": "k", "scope": "read", "lifetime_days": 30},
    "POST /api/v1/me/exports": {},
    "POST /api/v1/invitations/preview": {"token": "fli_" + "x" * 43},
    "POST /api/v1/invitations/accept": {"token": "fli_" + "x" * 43},
    # The plant (issue 5)
    "POST /api/v1/orgs/{org_id}/sites": {"name": "North works"},
    "PATCH /api/v1/orgs/{org_id}/sites/{site_id}": {"description": "Renamed"},
    "POST /api/v1/orgs/{org_id}/areas": {"site_id": "<site_id>", "name": "Hall 9"},
    "PATCH /api/v1/orgs/{org_id}/areas/{area_id}": {"name": "Hall 10"},
    "POST /api/v1/orgs/{org_id}/assets": {"tag": "FIT-900", "site_id": "<site_id>"},
    "PATCH /api/v1/orgs/{org_id}/assets/{asset_id}": {"serial_number": "SN-1"},
    "POST /api/v1/orgs/{org_id}/assets/{asset_id}/health": {"health": "maintenance_required"},
    "POST /api/v1/orgs/{org_id}/assets/{asset_id}/points": {"key": "pressure", "unit": "bar"},
    "PATCH /api/v1/orgs/{org_id}/points/{point_id}": {"description": "Main flow"},
    "PUT /api/v1/orgs/{org_id}/points/{point_id}/thresholds": {"high": 80.0},
    "POST /api/v1/orgs/{org_id}/devices": {"name": "Edge 9"},
    "PATCH /api/v1/orgs/{org_id}/devices/{device_id}": {"name": "Edge 10"},
    # Alarm notifications: an IP literal, so creating it needs no DNS lookup.
    "POST /api/v1/orgs/{org_id}/webhooks": {"name": "Hook 9", "url": "https://93.184.215.14/h"},
    "PATCH /api/v1/orgs/{org_id}/webhooks/{webhook_id}": {"name": "Hook 10"},
    "PUT /api/v1/orgs/{org_id}/alarm-emails": {"subscribed": True, "critical_only": True},
    # Updates (issue 7). Rollouts name devices by group here: a body naming another tenant's
    # device is tested in tests/updates/test_api.py, which has a signed release to roll out.
    "POST /api/v1/orgs/{org_id}/rollouts": {"version": "9.9.0", "group": "line-1"},
    "PUT /api/v1/orgs/{org_id}/devices/{device_id}/configuration": {
        "toml": 'log_level = "warning"\n'
    },
}


@pytest.fixture
def tenants(make_user: Callable[..., User]) -> tuple[Tenant, Tenant]:
    return build_tenant(make_user, "a"), build_tenant(make_user, "b")


def _client_of(user: User) -> SecureClient:
    client = SecureClient(HTTP_USER_AGENT="isolation-matrix", REMOTE_ADDR="127.0.0.1")
    client.force_login(user)
    return client


def _body_for(route: ApiRoute, tenant: Tenant) -> dict[str, Any] | None:
    """The route's sample body; ``"<param>"`` placeholders name ``tenant``'s object."""
    if not route.has_body:
        return None
    sample = BODY.get(f"{route.method.upper()} {route.path}")
    assert sample is not None, f"{route}: add a valid body to BODY in {__name__}"
    return {
        name: OBJECT_OF[value[1:-1]](tenant, route.path) if _is_placeholder(value) else value
        for name, value in sample.items()
    }


def _is_placeholder(value: object) -> bool:
    return isinstance(value, str) and value.startswith("<") and value.endswith(">")


def _names_objects_in_body(route: ApiRoute) -> bool:
    sample = BODY.get(f"{route.method.upper()} {route.path}", {})
    return any(_is_placeholder(v) for v in sample.values())


def _call(client: Client, method: str, url: str, body: dict[str, Any] | None) -> Any:
    kwargs: dict[str, Any] = {}
    if body is not None:
        kwargs = {"data": body, "content_type": "application/json"}
    return getattr(client, method)(url, **kwargs)


def _assert_nothing_of(response: Any, victim: Tenant, what: str) -> None:
    text = response.content.decode(errors="replace")
    leaked = [marker for marker in victim.markers if marker in text]
    assert not leaked, f"{what} leaked {leaked}"


# Valid-looking form data for page actions, so a refusal cannot come from form validation.
FORM = {"confirm": "yes", "overlap_hours": "1", "role": "engineer", "kind": "complete"}

ROUTES = api_routes()
OBJECT_ROUTES = [r for r in ROUTES if r.params]
LIST_ROUTES = [r for r in ROUTES if not r.params and r.method == "get"]
UI_URLS = ui_urls_with_ids()


def test_every_route_is_covered() -> None:
    unknown = sorted(
        f"{route}: {{{param}}}"
        for route in OBJECT_ROUTES
        for param in route.params
        if param not in OBJECT_OF
    )
    missing_body = sorted(
        str(r) for r in ROUTES if r.has_body and f"{r.method.upper()} {r.path}" not in BODY
    )
    unknown_ui = sorted(
        f"{url.name}: <{kw}>"
        for url in UI_URLS
        for kw in url.kwargs
        if kw not in UI_PARAMS and kw not in UI_EXEMPT
    )
    assert not unknown, f"routes with parameters the isolation matrix does not know: {unknown}"
    assert not missing_body, f"operations without a sample body: {missing_body}"
    assert not unknown_ui, f"pages with parameters the isolation matrix does not know: {unknown_ui}"
    # The matrix must really be walking the application, not an empty list.
    assert len(OBJECT_ROUTES) >= 10
    assert any(url.name.startswith("orgs:") for url in UI_URLS)


def _variants(route: ApiRoute, a: Tenant, b: Tenant) -> list[tuple[str, dict[str, str], Tenant]]:
    """(label, path values, tenant whose objects the body names)."""
    theirs = {p: OBJECT_OF[p](b, route.path) for p in route.params if p in OBJECT_OF}
    variants = [("their ids", theirs, b)]
    if "org_id" in route.params and len(route.params) > 1:
        variants.append(("own org id, their object id", {**theirs, "org_id": str(a.org.pk)}, b))
    if "org_id" in route.params and _names_objects_in_body(route):
        own = {p: OBJECT_OF[p](a, route.path) for p in route.params}
        variants.append(("own org id, their object id in the body", own, b))
    return variants


@pytest.mark.parametrize("route", OBJECT_ROUTES, ids=str)
def test_cross_tenant_api_object_access_is_404(
    route: ApiRoute, tenants: tuple[Tenant, Tenant]
) -> None:
    a, b = tenants
    if any(p not in OBJECT_OF for p in route.params):
        pytest.fail(f"{route} is not covered (see test_every_route_is_covered)")
    client = _client_of(a.users["owner"])
    for label, values, named in _variants(route, a, b):
        response = _call(client, route.method, route.url(values), _body_for(route, named))
        assert response.status_code == 404, (
            f"{route} with {label}: {response.status_code} {response.content[:300]!r}"
        )
        assert response.json()["code"].endswith("not_found")
        _assert_nothing_of(response, b, f"{route} with {label}")
    # And the owner of B still can: the 404 above is isolation, not a broken route.
    if route.method == "get" and not route.path.endswith("/download"):
        own = _client_of(b.users["owner"])
        values = {p: OBJECT_OF[p](b, route.path) for p in route.params}
        response = _call(own, "get", route.url(values), None)
        assert response.status_code == 200, f"{route} for its owner: {response.status_code}"


@pytest.mark.parametrize("route", LIST_ROUTES, ids=str)
def test_cross_tenant_api_lists_show_nothing_of_other_tenants(
    route: ApiRoute, tenants: tuple[Tenant, Tenant]
) -> None:
    a, b = tenants
    response = _client_of(a.users["owner"]).get(route.path)
    assert response.status_code < 500
    _assert_nothing_of(response, b, str(route))


def _ui_values(url: UiUrl, tenant: Tenant) -> dict[str, str] | None:
    if any(kw in UI_EXEMPT for kw in url.kwargs):
        return None
    return {kw: UI_PARAMS[kw](tenant, url.name) for kw in url.kwargs}


@pytest.mark.parametrize("url", UI_URLS, ids=str)
def test_cross_tenant_page_access_is_404(url: UiUrl, tenants: tuple[Tenant, Tenant]) -> None:
    a, b = tenants
    if any(kw not in UI_PARAMS and kw not in UI_EXEMPT for kw in url.kwargs):
        pytest.fail(f"{url} is not covered (see test_every_route_is_covered)")
    theirs = _ui_values(url, b)
    if theirs is None:
        return  # exempt by its parameters (UI_EXEMPT says why); nothing of a tenant to ask for
    variants = [("their ids", theirs)]
    if "org_id" in theirs and len(theirs) > 1:
        variants.append(("own org id, their object id", {**theirs, "org_id": str(a.org.pk)}))
    client = _client_of(a.users["owner"])
    if url.name.startswith("mfa_"):
        # allauth's MFA pages ask for the password again first; the matrix must reach their
        # ownership check, not the re-authentication prompt.
        response = client.post("/accounts/reauthenticate/", {"password": PASSWORD})
        assert response.status_code == 302, "re-authentication failed"
    for label, values in variants:
        path = reverse(url.name, kwargs=values)
        statuses = {}
        for method in ("get", "post"):
            response = getattr(client, method)(path, FORM)
            statuses[method] = response.status_code
            _assert_nothing_of(response, b, f"{method.upper()} {url} with {label}")
        # 405 for the method a page does not serve reveals nothing; the other must be 404.
        assert set(statuses.values()) <= {404, 405}, f"{url} with {label}: {statuses}"
        assert 404 in statuses.values(), f"{url} with {label}: {statuses}"


def test_matrix_sees_mutating_operations() -> None:
    # Guard against a schema change that would make the matrix read-only by accident.
    assert any(r.method in MUTATING for r in OBJECT_ROUTES)
