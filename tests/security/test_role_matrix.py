"""The generated role matrix: every mutating operation in an organisation, asked by every role.

``MIN_ROLE`` names the least powerful role that may perform each mutating operation of the API
(and each action page of the UI). Every role below it gets 403 ``permission_denied`` and changes
nothing; every role at or above it is let through (its answer is neither 403 nor 404). An
operation missing from the table fails ``test_every_mutating_route_has_a_role``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.urls import reverse

from fieldlink.accounts.models import Role, User
from fieldlink.audit.models import AuditEntry
from tests.security.tenancy import (
    MUTATING,
    OBJECT_OF,
    ROLES,
    UI_PARAMS,
    ApiRoute,
    Tenant,
    UiUrl,
    api_routes,
    build_tenant,
    ui_urls_with_ids,
)
from tests.security.test_tenant_isolation import _body_for, _call, _client_of

pytestmark = [pytest.mark.django_db]

RANK = {role: len(ROLES) - i for i, role in enumerate(ROLES)}  # owner 4 … viewer 1

MIN_ROLE: dict[str, Role] = {
    "PATCH /api/v1/orgs/{org_id}": Role.ADMIN,
    "DELETE /api/v1/orgs/{org_id}/members/{membership_id}": Role.ADMIN,
    "PATCH /api/v1/orgs/{org_id}/members/{membership_id}": Role.ADMIN,
    "POST /api/v1/orgs/{org_id}/invitations": Role.ADMIN,
    "DELETE /api/v1/orgs/{org_id}/invitations/{invitation_id}": Role.ADMIN,
    "POST /api/v1/orgs/{org_id}/transfer-ownership": Role.OWNER,
    "POST /api/v1/orgs/{org_id}/deletion": Role.OWNER,
    "DELETE /api/v1/orgs/{org_id}/deletion": Role.OWNER,
    "POST /api/v1/orgs/{org_id}/exports": Role.ADMIN,
    # The plant (issue 5): configuring it is data.configure (engineer and above).
    "POST /api/v1/orgs/{org_id}/sites": Role.ENGINEER,
    "PATCH /api/v1/orgs/{org_id}/sites/{site_id}": Role.ENGINEER,
    "DELETE /api/v1/orgs/{org_id}/sites/{site_id}": Role.ENGINEER,
    "POST /api/v1/orgs/{org_id}/areas": Role.ENGINEER,
    "PATCH /api/v1/orgs/{org_id}/areas/{area_id}": Role.ENGINEER,
    "DELETE /api/v1/orgs/{org_id}/areas/{area_id}": Role.ENGINEER,
    "POST /api/v1/orgs/{org_id}/assets": Role.ENGINEER,
    "PATCH /api/v1/orgs/{org_id}/assets/{asset_id}": Role.ENGINEER,
    "DELETE /api/v1/orgs/{org_id}/assets/{asset_id}": Role.ENGINEER,
    "POST /api/v1/orgs/{org_id}/assets/{asset_id}/health": Role.ENGINEER,
    "POST /api/v1/orgs/{org_id}/assets/{asset_id}/points": Role.ENGINEER,
    "PATCH /api/v1/orgs/{org_id}/points/{point_id}": Role.ENGINEER,
    "DELETE /api/v1/orgs/{org_id}/points/{point_id}": Role.ENGINEER,
    "POST /api/v1/orgs/{org_id}/devices": Role.ENGINEER,
    "PATCH /api/v1/orgs/{org_id}/devices/{device_id}": Role.ENGINEER,
    "DELETE /api/v1/orgs/{org_id}/devices/{device_id}": Role.ENGINEER,
    "POST /api/v1/orgs/{org_id}/devices/{device_id}/enrollment-code": Role.ENGINEER,
    "POST /api/v1/orgs/{org_id}/devices/{device_id}/rotate-credential": Role.ENGINEER,
    # Alarms: engineers set limits; every member may acknowledge (issue 5).
    "PUT /api/v1/orgs/{org_id}/points/{point_id}/thresholds": Role.ENGINEER,
    "DELETE /api/v1/orgs/{org_id}/points/{point_id}/thresholds": Role.ENGINEER,
    "POST /api/v1/orgs/{org_id}/alarms/{alarm_id}/acknowledge": Role.VIEWER,
    # Alarm notifications: webhooks are org.settings (admins); one's own e-mails every member.
    "POST /api/v1/orgs/{org_id}/webhooks": Role.ADMIN,
    "PATCH /api/v1/orgs/{org_id}/webhooks/{webhook_id}": Role.ADMIN,
    "DELETE /api/v1/orgs/{org_id}/webhooks/{webhook_id}": Role.ADMIN,
    "POST /api/v1/orgs/{org_id}/webhooks/{webhook_id}/rotate-secret": Role.ADMIN,
    "POST /api/v1/orgs/{org_id}/webhooks/{webhook_id}/test": Role.ADMIN,
    "POST /api/v1/orgs/{org_id}/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver": (
        Role.ADMIN
    ),
    "PUT /api/v1/orgs/{org_id}/alarm-emails": Role.VIEWER,
    # Updates (issue 7): a rollout changes the fleet's software (admins); a device's signed
    # configuration is data.configure, like its other settings (engineers).
    "POST /api/v1/orgs/{org_id}/rollouts": Role.ADMIN,
    "POST /api/v1/orgs/{org_id}/rollouts/{rollout_id}/pause": Role.ADMIN,
    "POST /api/v1/orgs/{org_id}/rollouts/{rollout_id}/resume": Role.ADMIN,
    "POST /api/v1/orgs/{org_id}/rollouts/{rollout_id}/cancel": Role.ADMIN,
    "PUT /api/v1/orgs/{org_id}/devices/{device_id}/configuration": Role.ENGINEER,
}

# Page actions (POST) under /orgs/<org_id>/…, by URL name.
UI_MIN_ROLE: dict[str, Role] = {
    "orgs:member-role": Role.ADMIN,
    "orgs:member-remove": Role.ADMIN,
    "orgs:member-transfer": Role.OWNER,
    "orgs:invite": Role.ADMIN,
    "orgs:invitation-revoke": Role.ADMIN,
    "orgs:exports": Role.ADMIN,
    # The plant (issue 5): every change is data.configure.
    "plant:site-add": Role.ENGINEER,
    "plant:site-update": Role.ENGINEER,
    "plant:site-delete": Role.ENGINEER,
    "plant:area-add": Role.ENGINEER,
    "plant:area-update": Role.ENGINEER,
    "plant:area-delete": Role.ENGINEER,
    "plant:asset-add": Role.ENGINEER,
    "plant:asset-update": Role.ENGINEER,
    "plant:asset-delete": Role.ENGINEER,
    "plant:asset-health": Role.ENGINEER,
    "plant:point-add": Role.ENGINEER,
    "plant:point-update": Role.ENGINEER,
    "plant:point-delete": Role.ENGINEER,
    "plant:device-add": Role.ENGINEER,
    "plant:device-update": Role.ENGINEER,
    "plant:device-revoke": Role.ENGINEER,
    "plant:device-code": Role.ENGINEER,
    "plant:device-rotate": Role.ENGINEER,
    "alarms:acknowledge": Role.VIEWER,
    "notifications:emails": Role.VIEWER,
    "notifications:webhook-add": Role.ADMIN,
    "notifications:webhook-rename": Role.ADMIN,
    "notifications:webhook-enable": Role.ADMIN,
    "notifications:webhook-disable": Role.ADMIN,
    "notifications:webhook-rotate": Role.ADMIN,
    "notifications:webhook-delete": Role.ADMIN,
    "notifications:webhook-test": Role.ADMIN,
    "notifications:delivery-redeliver": Role.ADMIN,
    "updates:rollout-new": Role.ADMIN,
    "updates:rollout-pause": Role.ADMIN,
    "updates:rollout-resume": Role.ADMIN,
    "updates:rollout-cancel": Role.ADMIN,
    "updates:configuration": Role.ENGINEER,
}
# Pages under /orgs/<org_id>/ that only read (GET) — or whose POST is governed by a form
# checked per field (settings: rename is admin, deletion is owner; tested in their own tests).
UI_READ_PAGES: dict[str, Role] = {
    "orgs:detail": Role.VIEWER,
    "orgs:members": Role.VIEWER,
    "orgs:settings": Role.VIEWER,
    "orgs:export-download": Role.ADMIN,
    "audit:trail": Role.ADMIN,
    "assets:list": Role.VIEWER,
    "assets:detail": Role.VIEWER,
    # The plant: readable by all; the site and area pages are edit forms.
    "plant:hierarchy": Role.VIEWER,
    "plant:site": Role.ENGINEER,
    "plant:area": Role.ENGINEER,
    "plant:asset": Role.VIEWER,
    "plant:devices": Role.VIEWER,
    "plant:device": Role.VIEWER,
    "alarms:list": Role.VIEWER,
    "alarms:detail": Role.VIEWER,
    # Readable by all; its POST needs data.configure (tested in tests/telemetry/test_alarm_web).
    "alarms:limits": Role.VIEWER,
    # Everyone sees their own e-mail choice there; the webhooks part is for admins.
    "notifications:index": Role.VIEWER,
    "notifications:webhook": Role.ADMIN,
    # Updates: every member reads; the new-rollout form is for admins (it is nothing else).
    "updates:overview": Role.VIEWER,
    "updates:rollout": Role.VIEWER,
    "updates:rollout-new": Role.ADMIN,
    "updates:configuration": Role.VIEWER,
}

ROUTES = api_routes()
ORG_MUTATIONS = [
    r for r in ROUTES if r.method in MUTATING and r.path.startswith("/api/v1/orgs/{org_id}")
]
ORG_UI = [url for url in ui_urls_with_ids() if "org_id" in url.kwargs]


def _key(route: ApiRoute) -> str:
    return f"{route.method.upper()} {route.path}"


def test_every_mutating_route_has_a_role() -> None:
    missing = [str(r) for r in ORG_MUTATIONS if _key(r) not in MIN_ROLE]
    stale = sorted(set(MIN_ROLE) - {_key(r) for r in ORG_MUTATIONS})
    assert not missing, f"mutating operations without a minimum role: {missing}"
    assert not stale, f"MIN_ROLE names operations that no longer exist: {stale}"
    missing_ui = [u.name for u in ORG_UI if u.name not in UI_MIN_ROLE | UI_READ_PAGES]
    assert not missing_ui, f"organisation pages without a minimum role: {missing_ui}"
    assert len(ORG_MUTATIONS) >= 8


@pytest.fixture
def tenant(make_user: Callable[..., User]) -> Tenant:
    return build_tenant(make_user, "r")


def _cases() -> list[tuple[ApiRoute, Role]]:
    return [(route, role) for route in ORG_MUTATIONS for role in ROLES]


@pytest.mark.parametrize(
    ("route", "role"), _cases(), ids=[f"{r}-as-{role}" for r, role in _cases()]
)
def test_role_matrix_api(route: ApiRoute, role: Role, tenant: Tenant) -> None:
    minimum = MIN_ROLE.get(_key(route))
    if minimum is None:
        pytest.fail(f"{route} has no minimum role (see test_every_mutating_route_has_a_role)")
    values = {p: OBJECT_OF[p](tenant, route.path) for p in route.params}
    entries_before = AuditEntry.objects.count()
    response = _call(
        _client_of(tenant.users[role]), route.method, route.url(values), _body_for(route, tenant)
    )
    body: Any = response.json() if response.content else {}
    if RANK[role] >= RANK[minimum]:
        assert response.status_code not in {401, 403, 404}, (
            f"{route} as {role}: {response.status_code} {body}"
        )
    else:
        assert response.status_code == 403, f"{route} as {role}: {response.status_code} {body}"
        assert body["code"] == "permission_denied"
        assert AuditEntry.objects.count() == entries_before, "a refused change left a trace"


def _ui_cases() -> list[tuple[UiUrl, Role]]:
    return [(url, role) for url in ORG_UI if url.name in UI_MIN_ROLE for role in ROLES]


@pytest.mark.parametrize(
    ("url", "role"), _ui_cases(), ids=[f"{u}-as-{role}" for u, role in _ui_cases()]
)
def test_role_matrix_pages(url: UiUrl, role: Role, tenant: Tenant) -> None:
    minimum = UI_MIN_ROLE[url.name]
    path = reverse(url.name, kwargs={kw: UI_PARAMS[kw](tenant, url.name) for kw in url.kwargs})
    data = {"role": "engineer", "email": "new@example.com", "kind": "complete", "confirm": "yes"}
    entries_before = AuditEntry.objects.count()
    response = _client_of(tenant.users[role]).post(path, data)
    if RANK[role] >= RANK[minimum]:
        assert response.status_code not in {403, 404}, f"{url} as {role}: {response.status_code}"
    else:
        assert response.status_code == 403, f"{url} as {role}: {response.status_code}"
        assert AuditEntry.objects.count() == entries_before


@pytest.mark.parametrize(
    ("name", "minimum"), sorted(UI_READ_PAGES.items()), ids=sorted(UI_READ_PAGES)
)
def test_role_matrix_read_pages(name: str, minimum: Role, tenant: Tenant) -> None:
    url = next((u for u in ORG_UI if u.name == name), None)
    assert url is not None, f"{name} is no longer a page; update UI_READ_PAGES"
    path = reverse(name, kwargs={kw: UI_PARAMS[kw](tenant, name) for kw in url.kwargs})
    for role in ROLES:
        response = _client_of(tenant.users[role]).get(path)
        if RANK[role] >= RANK[minimum]:
            assert response.status_code not in {403, 404}, f"{name} as {role}"
        else:
            assert response.status_code == 403, f"{name} as {role}: {response.status_code}"
