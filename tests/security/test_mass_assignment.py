"""Mass assignment: fields a caller may not set are refused on every write, never applied.

Generated from the OpenAPI schema: every request body forbids unknown properties, and every
operation that takes a body, sent its valid sample plus a privileged field (role, organisation,
ids, staff flags), answers 422 naming the field and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from fieldlink.accounts.models import ApiKey, DataExport, Invitation, Membership, Organisation, User
from fieldlink.audit.models import AuditEntry
from fieldlink.cloud.api import api
from tests.security.tenancy import OBJECT_OF, ApiRoute, Tenant, api_routes, build_tenant
from tests.security.test_tenant_isolation import _body_for, _call, _client_of

pytestmark = [pytest.mark.django_db]

PRIVILEGED = {
    "id": "00000000-0000-0000-0000-000000000001",
    "organisation": "00000000-0000-0000-0000-000000000002",
    "organisation_id": "00000000-0000-0000-0000-000000000002",
    "user": "00000000-0000-0000-0000-000000000003",
    "user_id": "00000000-0000-0000-0000-000000000003",
    "is_staff": True,
    "is_superuser": True,
    "staff_role": "platform_admin",
    "created_by": "00000000-0000-0000-0000-000000000003",
    "deletion_due_at": "2000-01-01T00:00:00Z",
    "status": "ready",
    "digest": "0" * 64,
    "prefix": "flk_mine",
    "owner": True,
}

BODY_ROUTES = [r for r in api_routes() if r.has_body]


def _request_schemas() -> list[tuple[str, dict[str, Any]]]:
    schema = api.get_openapi_schema()
    components = schema.get("components", {}).get("schemas", {})
    found = []
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            body = operation.get("requestBody")
            if not body:
                continue
            for media in body["content"].values():
                ref = media["schema"].get("$ref", "")
                target = components[ref.rsplit("/", 1)[-1]] if ref else media["schema"]
                found.append((f"{method.upper()} {path}", target))
    return found


def test_every_request_body_forbids_unknown_fields() -> None:
    schemas = _request_schemas()
    assert len(schemas) >= 5
    open_bodies = [op for op, s in schemas if s.get("additionalProperties") is not False]
    assert not open_bodies, f"request bodies that accept unknown fields: {open_bodies}"


def _snapshot() -> tuple[Any, ...]:
    return (
        sorted(Organisation.objects.values_list("id", "name", "region", "deletion_due_at")),
        sorted(Membership.objects.values_list("id", "organisation_id", "user_id", "role")),
        sorted(Invitation.objects.values_list("id", "email", "role", "revoked_at")),
        sorted(ApiKey.objects.values_list("id", "scope", "expires_at", "revoked_at")),
        sorted(DataExport.objects.values_list("id", "status")),
        sorted(User.objects.values_list("id", "is_staff", "is_superuser", "staff_role")),
        AuditEntry.objects.count(),
    )


@pytest.fixture
def tenant(make_user: Callable[..., User]) -> Tenant:
    return build_tenant(make_user, "m")


@pytest.mark.parametrize("route", BODY_ROUTES, ids=str)
def test_mass_assignment_refused(route: ApiRoute, tenant: Tenant) -> None:
    values = {p: OBJECT_OF[p](tenant, route.path) for p in route.params}
    body = _body_for(route, tenant)
    assert body is not None
    client = _client_of(tenant.users["owner"])
    for name, value in PRIVILEGED.items():
        if name in body:
            continue  # a field the operation legitimately takes
        before = _snapshot()
        response = _call(client, route.method, route.url(values), {**body, name: value})
        assert response.status_code == 422, f"{route} + {name}: {response.status_code}"
        error = response.json()
        assert error["code"] == "validation_error"
        assert name in str(error["details"]), f"{route}: the error does not name {name}"
        assert str(value) not in error["message"]
        assert _snapshot() == before, f"{route} + {name} changed something"
