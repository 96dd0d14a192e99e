"""The one scoping layer (fieldlink.accounts.access): roles, standing, scoping, permission sources.

Another tenant's organisation must look exactly like one that does not exist (404), platform
staff have no standing anywhere without a customer's grant, and a read-only API key never writes.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone

from fieldlink.accounts import access, services
from fieldlink.accounts.access import (
    ALLOWED_WHILE_DELETING,
    READ_ONLY,
    ROLE_PERMISSIONS,
    OrganisationPendingDeletionError,
    Permission,
    PermissionDeniedError,
    Principal,
    Scope,
    Standing,
)
from fieldlink.accounts.models import (
    ApiKey,
    ApiKeyScope,
    Invitation,
    Membership,
    Organisation,
    Role,
    SecurityEvent,
    StaffRole,
    User,
)
from fieldlink.audit.models import AuditEntry
from fieldlink.kit.errors import NotFoundError
from tests.accounts.conftest import MakeUser

P = Permission
WRITES = frozenset(Permission) - READ_ONLY

# The table as the issue and docs/ describe it, written out rather than derived from the code.
DOCUMENTED = {
    Role.VIEWER: {"org.view", "data.view", "members.view", "alarms.respond"},
    Role.ENGINEER: {"org.view", "data.view", "members.view", "alarms.respond", "data.configure"},
    Role.ADMIN: {
        "org.view",
        "data.view",
        "alarms.respond",
        "members.view",
        "data.configure",
        "members.manage",
        "org.settings",
        "audit.view",
        "export.request",
        "rollouts.manage",
    },
    Role.OWNER: {
        "org.view",
        "data.view",
        "alarms.respond",
        "members.view",
        "data.configure",
        "members.manage",
        "org.settings",
        "audit.view",
        "export.request",
        "rollouts.manage",
        "org.delete",
        "ownership.transfer",
    },
}


def session(user: User) -> Principal:
    return Principal(user, "session")


def new_org(user: User, name: str = "Acme Water") -> Scope:
    with transaction.atomic():
        return services.create_organisation(session(user), name=name, region="eu-central")


def join(scope: Scope, user: User, role: Role) -> Membership:
    return Membership.objects.create(organisation=scope.organisation, user=user, role=role)


# -- the role table (pure) ------------------------------------------------------------------------


def test_role_permission_table_is_exactly_as_documented() -> None:
    assert {role: {str(p) for p in perms} for role, perms in ROLE_PERMISSIONS.items()} == (
        DOCUMENTED
    )
    assert set(ROLE_PERMISSIONS) == set(Role)


def test_each_role_holds_everything_of_the_role_below() -> None:
    ladder = [Role.VIEWER, Role.ENGINEER, Role.ADMIN, Role.OWNER]
    for lower, higher in itertools.pairwise(ladder):
        assert ROLE_PERMISSIONS[lower] < ROLE_PERMISSIONS[higher]


def test_read_only_set_holds_no_write_permission() -> None:
    assert {str(p) for p in READ_ONLY} == {"org.view", "data.view", "members.view", "audit.view"}
    # What stays open while a deletion is pending: reading, taking the data out, cancelling.
    assert READ_ONLY | {P.EXPORT_REQUEST, P.ORG_DELETE} == ALLOWED_WHILE_DELETING


# -- resolve(): standing --------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("role", list(Role))
def test_member_resolves_with_the_permissions_of_the_role(make_user: MakeUser, role: Role) -> None:
    scope = new_org(make_user("owner@acme.example"))
    member = make_user("member@acme.example")
    if role != Role.OWNER:
        join(scope, member, role)
    else:
        member = scope.user
    resolved = access.resolve(session(member), scope.organisation.pk)
    assert resolved.role == role
    assert resolved.permissions == ROLE_PERMISSIONS[role]
    assert resolved.organisation == scope.organisation
    assert resolved.grant_id == ""
    # A UUID and its text form resolve alike (URLs carry text).
    assert access.resolve(session(member), str(scope.organisation.pk)).permissions == (
        resolved.permissions
    )


@pytest.mark.django_db
@pytest.mark.backend
def test_cross_tenant_org_resolve_is_404(make_user: MakeUser) -> None:
    theirs = new_org(make_user("owner@other.example"), "Other Co")
    intruder = make_user("intruder@acme.example")
    new_org(intruder)  # an owner elsewhere: standing in one org opens no other
    with pytest.raises(NotFoundError) as caught:
        access.resolve(session(intruder), theirs.organisation.pk)
    unknown = _error_of(lambda: access.resolve(session(intruder), _random_uuid()))
    # Indistinguishable from an organisation that does not exist.
    assert (caught.value.code, caught.value.message) == (unknown.code, unknown.message)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "bad_id",
    [
        "",
        "not-a-uuid",
        "' OR 1=1 --",
        "../../admin",
        "0" * 40,
        "8b0f7c1e-3a52-4c8e-9f0a-2f6e1d3c4b5a-extra",
        "\x00",
        "%00",
    ],
)
def test_malformed_org_id_is_404(make_user: MakeUser, bad_id: str) -> None:
    scope = new_org(make_user("owner@acme.example"))
    with pytest.raises(NotFoundError):
        access.resolve(scope.principal, bad_id)


@pytest.mark.django_db
def test_unknown_org_id_is_404(make_user: MakeUser) -> None:
    owner = make_user("owner@acme.example")
    new_org(owner)
    with pytest.raises(NotFoundError):
        access.resolve(session(owner), _random_uuid())


@pytest.mark.django_db
def test_inactive_member_has_no_standing(make_user: MakeUser) -> None:
    scope = new_org(make_user("owner@acme.example"))
    engineer = make_user("eng@acme.example")
    join(scope, engineer, Role.ENGINEER)
    engineer.is_active = False
    engineer.save(update_fields=["is_active"])
    with pytest.raises(NotFoundError):
        access.resolve(session(engineer), scope.organisation.pk)
    assert access.organisations_of(session(engineer)) == []


@pytest.mark.django_db
@pytest.mark.backend
@pytest.mark.parametrize(
    "staff_fields",
    [
        {"staff_role": StaffRole.SUPPORT},
        {"staff_role": StaffRole.PLATFORM_ADMIN},
        {"is_staff": True},
        {"is_superuser": True},
    ],
    ids=["support", "platform_admin", "django_staff", "superuser"],
)
def test_staff_without_grant_sees_no_customer_org(
    make_user: MakeUser, staff_fields: dict[str, Any]
) -> None:
    scope = new_org(make_user("owner@acme.example"))
    staff = make_user("staff@fieldlink.example", **staff_fields)
    # Forced past the services (which refuse it): even a stray row opens nothing.
    join(scope, staff, Role.ADMIN)
    with pytest.raises(NotFoundError):
        access.resolve(session(staff), scope.organisation.pk)
    assert access.organisations_of(session(staff)) == []


@pytest.mark.django_db
def test_organisations_of_lists_each_membership_with_its_role(make_user: MakeUser) -> None:
    ada = make_user("ada@acme.example")
    own = new_org(ada, "zeta Pumps")
    other = new_org(make_user("bob@other.example"), "Alpha Water")
    join(other, ada, Role.VIEWER)
    new_org(make_user("carol@third.example"), "Beta Grid")  # not Ada's
    assert access.organisations_of(session(ada)) == [
        (other.organisation, Role.VIEWER),
        (own.organisation, Role.OWNER),
    ]


# -- read-only API keys ---------------------------------------------------------------------------


def _key(user: User, scope: ApiKeyScope) -> ApiKey:
    with transaction.atomic():
        return services.create_api_key(user, name="scada", scope=scope).key


@pytest.mark.django_db
@pytest.mark.backend
def test_read_only_api_key_loses_every_write_permission(make_user: MakeUser) -> None:
    owner = make_user("owner@acme.example")
    org = new_org(owner)
    key = _key(owner, ApiKeyScope.READ)
    scope = access.resolve(Principal(owner, "api_key", key), org.organisation.pk)
    assert scope.permissions == ROLE_PERMISSIONS[Role.OWNER] & READ_ONLY
    for permission in WRITES:
        assert not scope.can(permission)
        with pytest.raises(PermissionDeniedError):
            scope.require(permission)
    scope.require(P.AUDIT_VIEW)  # reading the trail is reading


@pytest.mark.django_db
def test_read_write_api_key_keeps_the_users_permissions(make_user: MakeUser) -> None:
    owner = make_user("owner@acme.example")
    org = new_org(owner)
    key = _key(owner, ApiKeyScope.READ_WRITE)
    scope = access.resolve(Principal(owner, "api_key", key), org.organisation.pk)
    assert scope.permissions == ROLE_PERMISSIONS[Role.OWNER]


@pytest.mark.django_db
def test_read_only_key_of_a_viewer_is_still_only_a_viewer(make_user: MakeUser) -> None:
    org = new_org(make_user("owner@acme.example"))
    viewer = make_user("viewer@acme.example")
    join(org, viewer, Role.VIEWER)
    key = _key(viewer, ApiKeyScope.READ)
    scope = access.resolve(Principal(viewer, "api_key", key), org.organisation.pk)
    # A key never adds what its user lacks (audit.view is in READ_ONLY, not the viewer's role),
    # and a read-only key cannot acknowledge alarms (alarms.respond changes state).
    assert scope.permissions == ROLE_PERMISSIONS[Role.VIEWER] - {Permission.ALARMS_RESPOND}


# -- pending deletion -----------------------------------------------------------------------------


def _schedule_deletion(org: Organisation) -> None:
    Organisation.objects.filter(pk=org.pk).update(
        deletion_requested_at=timezone.now(), deletion_due_at=timezone.now() + timedelta(days=30)
    )


@pytest.mark.django_db
def test_pending_deletion_blocks_writes_but_not_reads_export_or_cancel(
    make_user: MakeUser,
) -> None:
    owner = make_user("owner@acme.example")
    org = new_org(owner)
    _schedule_deletion(org.organisation)
    scope = access.resolve(session(owner), org.organisation.pk)
    assert scope.organisation.pending_deletion
    for permission in (P.DATA_CONFIGURE, P.MEMBERS_MANAGE, P.ORG_SETTINGS, P.OWNERSHIP_TRANSFER):
        assert not scope.can(permission)
        with pytest.raises(OrganisationPendingDeletionError) as caught:
            scope.require(permission)
        assert (caught.value.code, caught.value.kind) == (
            "organisation_pending_deletion",
            "conflict",
        )
        assert caught.value.details["deletion_due_at"]
    for permission in (
        P.ORG_VIEW,
        P.DATA_VIEW,
        P.MEMBERS_VIEW,
        P.AUDIT_VIEW,
        P.EXPORT_REQUEST,
        P.ORG_DELETE,
    ):
        assert scope.can(permission)
        scope.require(permission)


@pytest.mark.django_db
def test_pending_deletion_does_not_hide_a_missing_permission(make_user: MakeUser) -> None:
    org = new_org(make_user("owner@acme.example"))
    viewer = make_user("viewer@acme.example")
    join(org, viewer, Role.VIEWER)
    _schedule_deletion(org.organisation)
    scope = access.resolve(session(viewer), org.organisation.pk)
    # 403 first: a viewer learns nothing about the deletion state from a refused write.
    with pytest.raises(PermissionDeniedError) as caught:
        scope.require(P.MEMBERS_MANAGE)
    assert (caught.value.code, caught.value.kind) == ("permission_denied", "forbidden")
    with pytest.raises(PermissionDeniedError):
        scope.require(P.EXPORT_REQUEST)


# -- Scope.filter / Scope.get ---------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("model", [User, ApiKey, SecurityEvent])
def test_scope_filter_refuses_a_model_without_organisation_lookup(
    make_user: MakeUser, model: type[Any]
) -> None:
    scope = new_org(make_user("owner@acme.example"))
    assert not hasattr(model, "organisation_lookup"), "scoped now: move it to the scoped tests"
    with pytest.raises(TypeError, match="no organisation_lookup"):
        scope.filter(model.objects.all())


@pytest.mark.django_db
@pytest.mark.backend
def test_scope_filter_narrows_every_scoped_model_to_its_organisation(make_user: MakeUser) -> None:
    ours = new_org(make_user("owner@acme.example"))
    theirs = new_org(make_user("owner@other.example"), "Other Co")
    for scope in (ours, theirs):
        with transaction.atomic():
            services.invite_member(scope, email="new@plant.example", role=Role.VIEWER)
    assert set(ours.filter(Organisation.objects.all())) == {ours.organisation}
    assert {m.organisation_id for m in ours.filter(Membership.objects.all())} == {
        ours.organisation.pk
    }
    assert {i.organisation_id for i in ours.filter(Invitation.objects.all())} == {
        ours.organisation.pk
    }
    assert Invitation.objects.count() == 2
    # The audit trail is scoped by its text chain name: the other chain stays out.
    assert {e.chain for e in ours.filter(AuditEntry.objects.all())} == {str(ours.organisation.pk)}
    assert AuditEntry.objects.values("chain").distinct().count() == 2


@pytest.mark.django_db
@pytest.mark.backend
def test_cross_tenant_member_read_is_404(make_user: MakeUser) -> None:
    ours = new_org(make_user("owner@acme.example"))
    theirs = new_org(make_user("owner@other.example"), "Other Co")
    their_owner = Membership.objects.get(organisation=theirs.organisation)
    our_owner = Membership.objects.get(organisation=ours.organisation)
    assert ours.get(Membership.objects.all(), our_owner.pk, what="member") == our_owner
    with pytest.raises(NotFoundError) as caught:
        ours.get(Membership.objects.all(), their_owner.pk, what="member")
    unknown = _error_of(lambda: ours.get(Membership.objects.all(), _random_uuid(), what="member"))
    assert caught.value.message == unknown.message == "No such member."
    with pytest.raises(NotFoundError):
        ours.get(Organisation.objects.all(), theirs.organisation.pk, what="organisation")


@pytest.mark.django_db
@pytest.mark.parametrize("bad_pk", ["nope", "", None, 12.5, "1; DROP TABLE x", ["x"]])
def test_scope_get_with_malformed_id_is_404(make_user: MakeUser, bad_pk: Any) -> None:
    scope = new_org(make_user("owner@acme.example"))
    with pytest.raises(NotFoundError):
        scope.get(Membership.objects.all(), bad_pk, what="member")


# -- permission sources (support grants) ----------------------------------------------------------


class FakeSupportGrants:
    """What the support context will register: a customer grant opens one org to one staff user."""

    def __init__(self) -> None:
        self.grants: dict[tuple[Any, Any], tuple[frozenset[Permission], str]] = {}

    def grant(self, user: User, org: Organisation, grant_id: str, *perms: Permission) -> None:
        self.grants[(user.pk, org.pk)] = (frozenset(perms), grant_id)

    def __call__(self, principal: Principal, organisation: Organisation) -> Standing | None:
        found = self.grants.get((principal.user.pk, organisation.pk))
        if found is None:
            return None
        return Standing(found[0], grant_id=found[1])


@pytest.fixture
def support_grants() -> Iterator[FakeSupportGrants]:
    grants = FakeSupportGrants()
    sources_before = list(access._SOURCES)
    access.register_source(grants)
    access.register_source(grants)  # idempotent: a source counts once
    assert [*sources_before, grants] == access._SOURCES
    try:
        yield grants
    finally:
        access._SOURCES.remove(grants)
    assert sources_before == access._SOURCES


@pytest.mark.django_db
@pytest.mark.backend
def test_support_grant_gives_staff_exactly_the_granted_permissions(
    make_user: MakeUser, support_grants: FakeSupportGrants
) -> None:
    org = new_org(make_user("owner@acme.example"))
    staff = make_user("support@fieldlink.example", staff_role=StaffRole.SUPPORT)
    support_grants.grant(staff, org.organisation, "grant-7f3a", P.ORG_VIEW, P.DATA_VIEW)
    scope = access.resolve(session(staff), org.organisation.pk)
    assert scope.permissions == {P.ORG_VIEW, P.DATA_VIEW}
    assert scope.grant_id == "grant-7f3a"
    assert scope.role is None
    with pytest.raises(PermissionDeniedError):
        scope.require(P.MEMBERS_MANAGE)
    # The grant opens no organisation list entry: staff are still no members.
    assert access.organisations_of(session(staff)) == []

    with transaction.atomic():
        services.audit(scope, "support.viewed", target=org.organisation, after={"page": "devices"})
    entry = AuditEntry.objects.filter(chain=str(org.organisation.pk)).order_by("sequence").last()
    assert entry is not None
    assert (entry.action, entry.on_behalf_of_grant) == ("support.viewed", "grant-7f3a")
    assert (entry.actor_type, entry.actor_id) == ("staff", str(staff.pk))


@pytest.mark.django_db
def test_support_grant_does_not_open_another_org(
    make_user: MakeUser, support_grants: FakeSupportGrants
) -> None:
    granted = new_org(make_user("owner@acme.example"))
    other = new_org(make_user("owner@other.example"), "Other Co")
    staff = make_user("support@fieldlink.example", staff_role=StaffRole.SUPPORT)
    support_grants.grant(staff, granted.organisation, "grant-1", P.ORG_VIEW)
    access.resolve(session(staff), granted.organisation.pk)
    with pytest.raises(NotFoundError):
        access.resolve(session(staff), other.organisation.pk)


@pytest.mark.django_db
def test_support_grant_of_an_inactive_staff_account_opens_nothing(
    make_user: MakeUser, support_grants: FakeSupportGrants
) -> None:
    org = new_org(make_user("owner@acme.example"))
    staff = make_user("gone@fieldlink.example", staff_role=StaffRole.SUPPORT, is_active=False)
    support_grants.grant(staff, org.organisation, "grant-2", P.ORG_VIEW)
    with pytest.raises(NotFoundError):
        access.resolve(session(staff), org.organisation.pk)


@pytest.mark.django_db
def test_member_audit_entries_name_no_grant(make_user: MakeUser) -> None:
    org = new_org(make_user("owner@acme.example"))
    with transaction.atomic():
        services.audit(org, "organisation.viewed", target=org.organisation)
    assert set(AuditEntry.objects.values_list("on_behalf_of_grant", flat=True)) == {""}


def _random_uuid() -> str:
    return str(uuid.uuid4())


def _error_of(call: Any) -> NotFoundError:
    with pytest.raises(NotFoundError) as caught:
        call()
    return caught.value


@pytest.mark.django_db
def test_grant_holder_acting_names_the_real_owner_and_the_grant(
    make_user: MakeUser, support_grants: FakeSupportGrants
) -> None:
    org = new_org(make_user("owner@acme.example"))
    heir = make_user("heir@acme.example")
    heir_membership = join(org, heir, Role.ADMIN)
    staff = make_user("support@fieldlink.example", staff_role=StaffRole.SUPPORT)
    support_grants.grant(staff, org.organisation, "grant-9", P.OWNERSHIP_TRANSFER)
    with transaction.atomic():
        services.transfer_ownership(
            access.resolve(session(staff), org.organisation.pk), heir_membership.pk
        )
    entry = AuditEntry.objects.filter(chain=str(org.organisation.pk)).order_by("sequence").last()
    assert entry is not None
    # The trail says whose ownership moved (not the acting staff member's) and under which grant.
    assert (entry.before, entry.after) == ({"owner": "owner@acme.example"}, {"owner": heir.email})
    assert (entry.actor_id, entry.on_behalf_of_grant) == (str(staff.pk), "grant-9")
