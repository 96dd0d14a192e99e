"""Two fully populated tenants and the discovery of every route that takes an object id.

The tenant-isolation matrix, the role matrix and the mass-assignment tests are generated from
what the application really serves: the OpenAPI schema of /api/v1 and Django's URL resolver.
A route whose path parameter has no entry in ``OBJECT_OF`` (or a UI URL without an entry in
``UI_PARAMS`` or ``UI_EXEMPT``) makes the generator fail, so a new route cannot slip in untested.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta

from allauth.mfa.models import Authenticator
from django.db import transaction
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone

from fieldlink.accounts import services
from fieldlink.accounts.access import Principal
from fieldlink.accounts.models import (
    ApiKeyScope,
    DataExport,
    ExportKind,
    ExportStatus,
    Membership,
    Organisation,
    Role,
    User,
)
from fieldlink.cloud.api import api
from fieldlink.devices.credentials import digest
from fieldlink.devices.models import Area, Asset, EdgeDevice, MeasuringPoint, Site
from fieldlink.telemetry.models import (
    Alarm,
    AlarmKind,
    Delivery,
    DeliveryAttempt,
    DeliveryState,
    Threshold,
    Webhook,
)
from fieldlink.updates.models import Release, Rollout, RolloutDevice, RolloutDeviceState

MUTATING = frozenset({"post", "put", "patch", "delete"})
ROLES = (Role.OWNER, Role.ADMIN, Role.ENGINEER, Role.VIEWER)


@dataclass
class Tenant:
    label: str
    org: Organisation
    users: dict[str, User] = field(default_factory=dict)  # role name (and "spare") → user
    memberships: dict[str, Membership] = field(default_factory=dict)
    invitation_id: str = ""
    org_export_id: str = ""
    personal_export_id: str = ""
    api_key_id: str = ""
    authenticator_id: str = ""
    # The plant (issue 5): a site with an asset and a measuring point.
    site_id: str = ""
    asset_id: str = ""
    asset_tag: str = ""
    point_id: str = ""
    area_id: str = ""
    device_id: str = ""
    alarm_id: str = ""
    # Alarm notifications: a webhook with one failed delivery.
    webhook_id: str = ""
    delivery_id: str = ""
    # Updates (issue 7): a running rollout of a (platform-wide) release to the tenant's device.
    rollout_id: str = ""

    @property
    def markers(self) -> list[str]:
        """Strings that only this tenant's data contains: none may appear in another's view."""
        plant = [self.asset_tag] if self.asset_tag else []
        return [
            self.org.name,
            str(self.org.pk),
            *(u.email for u in self.users.values()),
            *plant,
        ]


def build_tenant(make_user: Callable[..., User], label: str) -> Tenant:
    owner = make_user(f"owner-{label}@{label}.example")
    with transaction.atomic():
        scope = services.create_organisation(
            Principal(owner, "session"),
            name=f"Plant {label.upper()} Zeta{label}",
            region="eu-central",
        )
    tenant = Tenant(label, scope.organisation)
    tenant.users["owner"] = owner
    tenant.memberships["owner"] = Membership.objects.get(organisation=tenant.org, user=owner)
    for role in ("admin", "engineer", "viewer", "spare"):
        user = make_user(f"{role}-{label}@{label}.example")
        tenant.users[role] = user
        tenant.memberships[role] = Membership.objects.create(
            organisation=tenant.org, user=user, role=Role.VIEWER if role == "spare" else role
        )
    with transaction.atomic():
        issued = services.invite_member(
            scope, email=f"invitee-{label}@{label}.example", role=Role.VIEWER
        )
        key = services.create_api_key(owner, name=f"key {label}", scope=ApiKeyScope.READ_WRITE)
    tenant.invitation_id = str(issued.invitation.pk)
    tenant.api_key_id = str(key.key.pk)
    # A passkey of the owner: allauth's own pages take its id (mfa_edit/remove_webauthn).
    tenant.authenticator_id = str(
        Authenticator.objects.create(
            user=owner, type=Authenticator.Type.WEBAUTHN, data={"name": f"key {label}"}
        ).pk
    )
    now = timezone.now()
    ready = {"status": ExportStatus.READY, "ready_at": now, "expires_at": now + timedelta(days=7)}
    tenant.org_export_id = str(
        DataExport.objects.create(
            organisation=tenant.org, requested_by=owner, kind=ExportKind.COMPLETE, **ready
        ).pk
    )
    tenant.personal_export_id = str(
        DataExport.objects.create(
            organisation=None, requested_by=owner, kind=ExportKind.COMPLETE, **ready
        ).pk
    )
    _build_plant(tenant, label)
    _build_notifications(tenant, label)
    _build_updates(tenant)
    return tenant


def _build_plant(tenant: Tenant, label: str) -> None:
    site = Site.objects.create(organisation=tenant.org, name=f"Site {label.upper()}")
    asset = Asset.objects.create(
        organisation=tenant.org, site=site, tag=f"TAG-ZETA{label.upper()}-77"
    )
    point = MeasuringPoint.objects.create(
        organisation=tenant.org, asset=asset, key="volume_flow", unit="m3/h"
    )
    tenant.site_id, tenant.asset_id, tenant.asset_tag = str(site.pk), str(asset.pk), asset.tag
    tenant.point_id = str(point.pk)
    area = Area.objects.create(organisation=tenant.org, site=site, name=f"Hall {label.upper()}")
    device = EdgeDevice.objects.create(
        organisation=tenant.org, name=f"Edge {label.upper()}", credential_digest=digest(label)
    )
    device.assets.add(asset)
    tenant.area_id, tenant.device_id = str(area.pk), str(device.pk)
    alarm = Alarm.objects.create(
        organisation=tenant.org,
        asset=asset,
        point=point,
        kind=AlarmKind.LIMIT,
        level="high",
        severity="warning",
        message=f"{asset.tag}/volume_flow high",
        raised_at=timezone.now(),
    )
    tenant.alarm_id = str(alarm.pk)
    Threshold.objects.create(point=point, organisation=tenant.org, high=100.0)


def _build_notifications(tenant: Tenant, label: str) -> None:
    webhook = Webhook.objects.create(
        organisation=tenant.org,
        name=f"Hook {label.upper()}",
        url=f"https://hooks-{label}.example/fieldlink",
        secret=f"flw_matrix-secret-{label}-0000000000000000000000000000",
    )
    delivery = Delivery.objects.create(
        organisation=tenant.org,
        webhook=webhook,
        alarm_id=tenant.alarm_id,
        event="alarm.opened",
        body=b"{}",
        state=DeliveryState.FAILED,
        attempts=6,
        finished_at=timezone.now(),
    )
    DeliveryAttempt.objects.create(delivery=delivery, status_code=500, error="HTTP 500")
    tenant.webhook_id, tenant.delivery_id = str(webhook.pk), str(delivery.pk)


def _build_updates(tenant: Tenant) -> None:
    release, _ = Release.objects.get_or_create(
        version="9.9.0",
        defaults={
            "target_path": "software/fieldlink-agent-9.9.0.tar",
            "sha256": "0" * 64,
            "length": 1,
        },
    )
    rollout = Rollout.objects.create(organisation=tenant.org, release=release, waves=[100])
    RolloutDevice.objects.create(
        organisation=tenant.org,
        rollout=rollout,
        device_id=tenant.device_id,
        wave=0,
        state=RolloutDeviceState.OFFERED,
        offered_at=timezone.now(),
    )
    tenant.rollout_id = str(rollout.pk)


# -- which object of a tenant each path parameter names ----------------------------------------

# (path parameter name) → the tenant's object it stands for. /me/… routes name the signed-in
# user's own objects, the others the organisation's.
OBJECT_OF: dict[str, Callable[[Tenant, str], str]] = {
    "org_id": lambda t, path: str(t.org.pk),
    "membership_id": lambda t, path: str(t.memberships["spare"].pk),
    "invitation_id": lambda t, path: t.invitation_id,
    "key_id": lambda t, path: t.api_key_id,
    "export_id": lambda t, path: t.personal_export_id if "/me/" in path else t.org_export_id,
    "asset_id": lambda t, path: t.asset_id,
    "point_id": lambda t, path: t.point_id,
    "alarm_id": lambda t, path: t.alarm_id,
    "webhook_id": lambda t, path: t.webhook_id,
    "delivery_id": lambda t, path: t.delivery_id,
    "site_id": lambda t, path: t.site_id,
    "area_id": lambda t, path: t.area_id,
    "device_id": lambda t, path: t.device_id,
    "rollout_id": lambda t, path: t.rollout_id,
}

_PARAM = re.compile(r"{(\w+)}")


@dataclass(frozen=True)
class ApiRoute:
    method: str
    path: str  # as in the OpenAPI schema, e.g. /api/v1/orgs/{org_id}
    params: tuple[str, ...]
    has_body: bool

    def __str__(self) -> str:
        return f"{self.method.upper()} {self.path}"

    def url(self, values: dict[str, str]) -> str:
        return _PARAM.sub(lambda m: values[m.group(1)], self.path)


def api_routes() -> list[ApiRoute]:
    schema = api.get_openapi_schema()
    routes = []
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if method not in {"get", *MUTATING}:
                continue
            full = path if path.startswith("/api/v1") else "/api/v1" + path
            routes.append(
                ApiRoute(
                    method,
                    full,
                    tuple(_PARAM.findall(full)),
                    "requestBody" in operation,
                )
            )
    return sorted(routes, key=str)


def api_route_ids(routes: list[ApiRoute]) -> list[str]:
    return [str(r) for r in routes]


# -- UI URLs -----------------------------------------------------------------------------------

# URL kwargs of our pages → the tenant's object.
UI_PARAMS: dict[str, Callable[[Tenant, str], str]] = {
    "org_id": lambda t, name: str(t.org.pk),
    "membership_id": lambda t, name: str(t.memberships["spare"].pk),
    "invitation_id": lambda t, name: t.invitation_id,
    "key_id": lambda t, name: t.api_key_id,
    "export_id": lambda t, name: (
        t.personal_export_id if name.startswith("accounts:") else t.org_export_id
    ),
    # allauth's passkey pages (mfa_edit_webauthn, mfa_remove_webauthn): the user's own objects.
    "pk": lambda t, name: t.authenticator_id,
    "asset_id": lambda t, name: t.asset_id,
    "site_id": lambda t, name: t.site_id,
    "area_id": lambda t, name: t.area_id,
    "point_id": lambda t, name: t.point_id,
    "alarm_id": lambda t, name: t.alarm_id,
    "webhook_id": lambda t, name: t.webhook_id,
    "delivery_id": lambda t, name: t.delivery_id,
    "device_id": lambda t, name: t.device_id,
    "rollout_id": lambda t, name: t.rollout_id,
}

# URL kwargs that do not name a tenant's object, with the reason they are outside the matrix.
UI_EXEMPT: dict[str, str] = {
    "token": "a one-time secret is itself the authority (tests/accounts: invitation tests)",
    "key": "allauth e-mail confirmation / password-reset keys: secrets, not object ids",
    "uidb36": "allauth password reset: part of a signed secret link",
    "path": "static and media files: no tenant data",
    "document_root": "static files",
    "provider": "allauth provider ids: configuration, not tenant data",
    "type": "allauth MFA authenticator types",
    "client": "allauth headless client kind (app/browser): not an object",
}


@dataclass(frozen=True)
class UiUrl:
    name: str  # namespaced URL name
    pattern: str
    kwargs: tuple[str, ...]

    def __str__(self) -> str:
        return self.name


def _walk(
    patterns: list[URLPattern | URLResolver], prefix: str, namespace: str, inherited: set[str]
) -> Iterator[UiUrl]:
    for entry in patterns:
        regex = str(entry.pattern)
        kwargs = set(re.findall(r"<(?:\w+:)?(\w+)>", regex)) | set(
            re.findall(r"\(\?P<(\w+)>", regex)
        )
        if isinstance(entry, URLResolver):
            ns = namespace
            if entry.namespace:
                ns = f"{namespace}:{entry.namespace}" if namespace else entry.namespace
            yield from _walk(entry.url_patterns, prefix + regex, ns, inherited | kwargs)
        elif entry.name:
            name = f"{namespace}:{entry.name}" if namespace else entry.name
            yield UiUrl(name, prefix + regex, tuple(sorted(inherited | kwargs)))


def ui_urls_with_ids() -> list[UiUrl]:
    """Every named page whose URL takes parameters, outside the JSON API."""
    found = {}
    for url in _walk(get_resolver().url_patterns, "/", "", set()):
        if not url.kwargs or url.pattern.startswith(("/api/", "/_allauth/")):
            continue
        found[url.name] = url
    return sorted(found.values(), key=str)
