"""Organisation use cases (fieldlink.accounts.services), called the way a boundary calls them:
inside ``transaction.atomic()``, each writing exactly one audit entry in that transaction."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from allauth.account.models import EmailAddress
from django.core import mail
from django.db import IntegrityError, OperationalError, connection, transaction
from django.http import HttpRequest
from django.test import RequestFactory
from django.utils import timezone

from fieldlink.accounts import access, services
from fieldlink.accounts.access import (
    OrganisationPendingDeletionError,
    PermissionDeniedError,
    Principal,
    Scope,
)
from fieldlink.accounts.errors import (
    AlreadyMemberError,
    InvitationEmailMismatchError,
    InvitationInvalidError,
    OrganisationInvalidError,
    OrganisationStateError,
    OwnerProtectedError,
    StaffNotCustomerError,
)
from fieldlink.accounts.models import (
    ApiKeyScope,
    Invitation,
    Membership,
    Organisation,
    Region,
    Role,
    StaffRole,
    User,
)
from fieldlink.audit import services as audit_services
from fieldlink.audit.models import PLATFORM_CHAIN, AuditEntry
from fieldlink.kit.errors import FieldlinkError, NotFoundError
from tests.accounts.conftest import FIREFOX_LINUX, MakeUser, found_in_database, links_in
from tests.plugins.log_canary import register_canary

CaptureCallbacks = Callable[..., Any]


def session(user: User) -> Principal:
    return Principal(user, "session")


def new_org(user: User, name: str = "Acme Water", region: str = "eu-central") -> Scope:
    with transaction.atomic():
        return services.create_organisation(session(user), name=name, region=region)


def scope_of(user: User, org: Organisation | Scope) -> Scope:
    organisation = org.organisation if isinstance(org, Scope) else org
    return access.resolve(session(user), organisation.pk)


def invite(scope: Scope, email: str, role: str = Role.ENGINEER) -> str:
    with transaction.atomic():
        token = services.invite_member(scope, email=email, role=role).token
    return register_canary(token)


def accept(user: User, token: str) -> Membership:
    with transaction.atomic():
        return services.accept_invitation(session(user), token)


def chain(org: Organisation | Scope | str) -> list[AuditEntry]:
    if isinstance(org, Scope):
        org = org.organisation
    name = org if isinstance(org, str) else str(org.pk)
    return list(AuditEntry.objects.filter(chain=name).order_by("sequence"))


class BoundaryFailedError(Exception):
    pass


def fail_after(use_case: Callable[[], object]) -> None:
    """A boundary whose own work fails after the service returned (e.g. rendering)."""
    with transaction.atomic():
        use_case()
        raise BoundaryFailedError


@dataclass
class Team:
    owner: User
    admin: User
    engineer: User
    viewer: User
    scope: Scope  # the owner's

    @property
    def org(self) -> Organisation:
        return self.scope.organisation

    def of(self, user: User) -> Scope:
        return scope_of(user, self.org)

    def membership(self, user: User) -> Membership:
        return Membership.objects.get(organisation=self.org, user=user)


@pytest.fixture
def team(make_user: MakeUser) -> Team:
    owner = make_user("owner@acme.example")
    scope = new_org(owner)
    members = {}
    for role in (Role.ADMIN, Role.ENGINEER, Role.VIEWER):
        user = make_user(f"{role}@acme.example")
        Membership.objects.create(organisation=scope.organisation, user=user, role=role)
        members[role] = user
    return Team(owner, members[Role.ADMIN], members[Role.ENGINEER], members[Role.VIEWER], scope)


# -- create ---------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.backend
def test_create_makes_the_caller_its_only_owner(make_user: MakeUser) -> None:
    ada = make_user("ada@acme.example")
    scope = new_org(ada, name="  Acme Water  ", region="eu-north")
    org = Organisation.objects.get()
    assert (org.name, org.region, org.created_by) == ("Acme Water", Region.EU_NORTH, ada)
    assert list(Membership.objects.values_list("user", "role")) == [(ada.pk, Role.OWNER)]
    assert scope.role == Role.OWNER
    (entry,) = chain(org)
    assert (entry.action, entry.actor_id, entry.target_id) == (
        "organisation.created",
        str(ada.pk),
        str(org.pk),
    )
    assert entry.after == {"name": "Acme Water", "region": "eu-north"}


@pytest.mark.django_db
@pytest.mark.parametrize("region", ["", "eu", "EU-CENTRAL", "mars-1", "eu-central "])
def test_create_refuses_an_unknown_region(make_user: MakeUser, region: str) -> None:
    with pytest.raises(OrganisationInvalidError) as caught:
        new_org(make_user("ada@acme.example"), region=region)
    assert caught.value.details["allowed"] == list(Region.values)
    assert not Organisation.objects.exists()
    assert not AuditEntry.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["", "   ", "x" * 101])
def test_create_refuses_an_invalid_name(make_user: MakeUser, name: str) -> None:
    with pytest.raises(OrganisationInvalidError):
        new_org(make_user("ada@acme.example"), name=name)
    assert not Organisation.objects.exists()


@pytest.mark.django_db
def test_staff_cannot_create_an_organisation(make_user: MakeUser) -> None:
    staff = make_user("support@fieldlink.example", staff_role=StaffRole.SUPPORT)
    with pytest.raises(StaffNotCustomerError):
        new_org(staff)
    assert not Organisation.objects.exists()


@pytest.mark.django_db
def test_read_only_api_key_cannot_create_an_organisation(make_user: MakeUser) -> None:
    ada = make_user("ada@acme.example")
    with transaction.atomic():
        key = services.create_api_key(ada, name="ro", scope=ApiKeyScope.READ).key
    with pytest.raises(PermissionDeniedError), transaction.atomic():
        services.create_organisation(
            Principal(ada, "api_key", key), name="Acme", region="eu-central"
        )
    assert not Organisation.objects.exists()


@pytest.mark.django_db
def test_rename_is_org_settings_only(team: Team) -> None:
    with transaction.atomic():
        services.rename_organisation(team.of(team.admin), name=" Acme Pumps ")
    assert Organisation.objects.get().name == "Acme Pumps"
    with pytest.raises(PermissionDeniedError), transaction.atomic():
        services.rename_organisation(team.of(team.engineer), name="Hijacked")
    assert Organisation.objects.get().name == "Acme Pumps"


# -- invitations ----------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.backend
def test_invitation_mail_carries_the_link_and_leaves_only_on_commit(
    team: Team, django_capture_on_commit_callbacks: CaptureCallbacks, settings: Any
) -> None:
    settings.ALLOWED_HOSTS = ["fieldlink.example"]
    request = RequestFactory().post("/", secure=True, HTTP_HOST="fieldlink.example")
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        with transaction.atomic():
            issued = services.invite_member(
                team.of(team.admin), email="new@plant.example", role=Role.VIEWER, request=request
            )
        register_canary(issued.token)
        assert mail.outbox == []  # not before the transaction has committed
    assert len(callbacks) == 1
    (message,) = mail.outbox
    assert message.to == ["new@plant.example"]
    assert "Acme Water" in message.subject
    assert links_in(message) == [f"https://fieldlink.example/invitations/{issued.token}/"]
    assert issued.token.startswith("fli_")
    lifetime = issued.invitation.expires_at - issued.invitation.created_at
    assert abs(lifetime - timedelta(days=7)) < timedelta(seconds=5)


@pytest.mark.django_db
@pytest.mark.backend
def test_rolled_back_invitation_sends_no_mail(
    team: Team, django_capture_on_commit_callbacks: CaptureCallbacks
) -> None:
    with (
        django_capture_on_commit_callbacks(execute=True) as callbacks,
        pytest.raises(BoundaryFailedError),
    ):
        fail_after(
            lambda: services.invite_member(team.scope, email="new@plant.example", role="viewer")
        )
    assert callbacks == []
    assert mail.outbox == []
    assert not Invitation.objects.exists()


@pytest.mark.django_db
@pytest.mark.backend
def test_invitation_token_is_never_stored_raw(team: Team) -> None:
    token = invite(team.scope, "new@plant.example")
    assert found_in_database(token) == []
    assert found_in_database(token.removeprefix("fli_")) == []
    stored = Invitation.objects.get()
    assert stored.digest == hashlib.sha256(token.encode()).hexdigest()
    assert services.invitation_for_token(token) == stored


@pytest.mark.django_db
@pytest.mark.backend
def test_accepting_makes_a_member_with_the_invited_role(team: Team, make_user: MakeUser) -> None:
    token = invite(team.of(team.admin), "new@plant.example", Role.ENGINEER)
    newcomer = make_user("new@plant.example")
    membership = accept(newcomer, token)
    assert (membership.organisation, membership.role) == (team.org, Role.ENGINEER)
    assert scope_of(newcomer, team.org).role == Role.ENGINEER
    invitation = Invitation.objects.get()
    assert (invitation.status(), invitation.accepted_by) == ("accepted", newcomer)
    assert chain(team.org)[-1].action == "member.joined"


@pytest.mark.django_db
@pytest.mark.backend
def test_invitation_reuse_refused(team: Team, make_user: MakeUser) -> None:
    token = invite(team.scope, "new@plant.example")
    newcomer = make_user("new@plant.example")
    membership = accept(newcomer, token)
    with transaction.atomic():
        services.remove_member(scope_of(newcomer, team.org), membership.pk)
    # Gone again, the link is still spent: it does not bring them back.
    with pytest.raises(InvitationInvalidError) as caught:
        accept(newcomer, token)
    assert caught.value.details == {"status": "accepted"}
    assert not Membership.objects.filter(user=newcomer).exists()


@pytest.mark.django_db
@pytest.mark.backend
def test_expired_invitation_refused(team: Team, make_user: MakeUser) -> None:
    token = invite(team.scope, "new@plant.example")
    Invitation.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(InvitationInvalidError) as caught:
        accept(make_user("new@plant.example"), token)
    assert caught.value.details == {"status": "expired"}
    assert Membership.objects.filter(organisation=team.org).count() == 4


@pytest.mark.django_db
@pytest.mark.backend
def test_revoked_invitation_refused(team: Team, make_user: MakeUser) -> None:
    token = invite(team.scope, "new@plant.example")
    with transaction.atomic():
        services.revoke_invitation(team.of(team.admin), Invitation.objects.get().pk)
    assert chain(team.org)[-1].action == "invitation.revoked"
    with pytest.raises(InvitationInvalidError) as caught:
        accept(make_user("new@plant.example"), token)
    assert caught.value.details == {"status": "revoked"}


@pytest.mark.django_db
@pytest.mark.parametrize("token", ["", "fli_", "fli_unknown", "flk_abc_def", "fli_" + "a" * 200])
def test_unknown_or_malformed_invitation_token_refused(
    team: Team, make_user: MakeUser, token: str
) -> None:
    invite(team.scope, "new@plant.example")
    assert services.invitation_for_token(token) is None
    with pytest.raises(InvitationInvalidError):
        accept(make_user("new@plant.example"), token)


@pytest.mark.django_db
def test_cross_tenant_invitation_revoke_is_404(team: Team, make_user: MakeUser) -> None:
    other = new_org(make_user("owner@other.example"), "Other Co")
    invite(other, "new@plant.example")
    with pytest.raises(NotFoundError), transaction.atomic():
        services.revoke_invitation(team.scope, Invitation.objects.get().pk)
    assert Invitation.objects.get().status() == "pending"


@pytest.mark.django_db
@pytest.mark.backend
def test_reinviting_the_same_address_revokes_the_previous_link(
    team: Team, make_user: MakeUser
) -> None:
    first = invite(team.scope, "new@plant.example", Role.VIEWER)
    second = invite(team.scope, "NEW@plant.example", Role.ENGINEER)
    statuses = sorted(i.status() for i in Invitation.objects.all())
    assert statuses == ["pending", "revoked"]
    newcomer = make_user("new@plant.example")
    with pytest.raises(InvitationInvalidError):
        accept(newcomer, first)
    assert accept(newcomer, second).role == Role.ENGINEER


@pytest.mark.django_db
def test_invitation_for_another_address_refused(team: Team, make_user: MakeUser) -> None:
    token = invite(team.scope, "new@plant.example")
    someone_else = make_user("someone.else@plant.example")
    with pytest.raises(InvitationEmailMismatchError):
        accept(someone_else, token)
    assert Invitation.objects.get().status() == "pending"
    assert not Membership.objects.filter(user=someone_else).exists()


@pytest.mark.django_db
def test_invitation_to_an_unverified_address_refused(team: Team, make_user: MakeUser) -> None:
    token = invite(team.scope, "new@plant.example")
    # Whoever signs up with the address but never proves it owns it gets nothing.
    squatter = make_user("new@plant.example", verified=False)
    with pytest.raises(InvitationEmailMismatchError):
        accept(squatter, token)
    EmailAddress.objects.filter(user=squatter).update(verified=True)
    assert accept(squatter, token).role == Role.ENGINEER


@pytest.mark.django_db
def test_verified_secondary_address_may_accept(team: Team, make_user: MakeUser) -> None:
    token = invite(team.scope, "work@plant.example")
    user = make_user("private@mail.example")
    EmailAddress.objects.create(user=user, email="Work@plant.example", verified=True)
    assert accept(user, token).user == user


@pytest.mark.django_db
@pytest.mark.parametrize("role", [Role.OWNER, "superuser", "", "Admin"])
def test_owner_role_cannot_be_invited(team: Team, role: str) -> None:
    with pytest.raises(OrganisationInvalidError), transaction.atomic():
        services.invite_member(team.scope, email="new@plant.example", role=role)
    assert not Invitation.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("email", ["engineer@acme.example", "Engineer@ACME.example"])
def test_already_member_cannot_be_invited(team: Team, email: str) -> None:
    with pytest.raises(AlreadyMemberError), transaction.atomic():
        services.invite_member(team.scope, email=email, role=Role.VIEWER)


@pytest.mark.django_db
def test_already_member_cannot_accept_a_second_invitation(team: Team) -> None:
    # Invited under a second address that the engineer then verifies.
    token = invite(team.scope, "eng.private@mail.example", Role.ADMIN)
    EmailAddress.objects.create(user=team.engineer, email="eng.private@mail.example", verified=True)
    with pytest.raises(AlreadyMemberError):
        accept(team.engineer, token)
    assert team.membership(team.engineer).role == Role.ENGINEER


@pytest.mark.django_db
@pytest.mark.parametrize("who", ["engineer", "viewer"])
def test_only_member_managers_invite(team: Team, who: str) -> None:
    with pytest.raises(PermissionDeniedError), transaction.atomic():
        services.invite_member(
            team.of(getattr(team, who)), email="new@plant.example", role=Role.VIEWER
        )


@pytest.mark.django_db
def test_staff_cannot_accept_an_invitation(team: Team, make_user: MakeUser) -> None:
    token = invite(team.scope, "support@fieldlink.example")
    staff = make_user("support@fieldlink.example", staff_role=StaffRole.SUPPORT)
    with pytest.raises(StaffNotCustomerError):
        accept(staff, token)
    assert not Membership.objects.filter(user=staff).exists()


# -- roles ----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_admin_changes_a_role(team: Team) -> None:
    target = team.membership(team.engineer)
    with transaction.atomic():
        services.change_role(team.of(team.admin), target.pk, role=Role.VIEWER)
    assert scope_of(team.engineer, team.org).role == Role.VIEWER
    entry = chain(team.org)[-1]
    assert entry.action == "member.role_changed"
    assert (entry.before, entry.after) == (
        {"user": "engineer@acme.example", "role": "engineer"},
        {"user": "engineer@acme.example", "role": "viewer"},
    )


@pytest.mark.django_db
def test_setting_the_same_role_writes_nothing(team: Team) -> None:
    before = len(chain(team.org))
    with transaction.atomic():
        services.change_role(team.scope, team.membership(team.viewer).pk, role=Role.VIEWER)
    assert len(chain(team.org)) == before


@pytest.mark.django_db
@pytest.mark.parametrize("actor", ["owner", "admin"])
def test_owner_cannot_be_demoted(team: Team, actor: str) -> None:
    with pytest.raises(OwnerProtectedError), transaction.atomic():
        services.change_role(
            team.of(getattr(team, actor)), team.membership(team.owner).pk, role=Role.ADMIN
        )
    assert team.membership(team.owner).role == Role.OWNER


@pytest.mark.django_db
def test_owner_role_only_by_transfer(team: Team) -> None:
    with pytest.raises(OwnerProtectedError), transaction.atomic():
        services.change_role(team.of(team.admin), team.membership(team.admin).pk, role=Role.OWNER)
    assert team.membership(team.admin).role == Role.ADMIN


@pytest.mark.django_db
def test_unknown_role_refused(team: Team) -> None:
    with pytest.raises(OrganisationInvalidError), transaction.atomic():
        services.change_role(team.scope, team.membership(team.viewer).pk, role="root")


@pytest.mark.django_db
def test_engineer_cannot_promote_itself(team: Team) -> None:
    with pytest.raises(PermissionDeniedError), transaction.atomic():
        services.change_role(
            team.of(team.engineer), team.membership(team.engineer).pk, role=Role.ADMIN
        )
    assert team.membership(team.engineer).role == Role.ENGINEER


@pytest.mark.django_db
def test_cross_tenant_role_change_is_404(team: Team, make_user: MakeUser) -> None:
    other = new_org(make_user("owner@other.example"), "Other Co")
    victim = make_user("victim@other.example")
    theirs = Membership.objects.create(organisation=other.organisation, user=victim, role="viewer")
    with pytest.raises(NotFoundError), transaction.atomic():
        services.change_role(team.scope, theirs.pk, role=Role.ADMIN)
    theirs.refresh_from_db()
    assert theirs.role == Role.VIEWER


# -- remove and leave -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_owner_cannot_leave(team: Team) -> None:
    with pytest.raises(OwnerProtectedError), transaction.atomic():
        services.remove_member(team.scope, team.membership(team.owner).pk)
    with pytest.raises(OwnerProtectedError), transaction.atomic():
        services.remove_member(team.of(team.admin), team.membership(team.owner).pk)
    assert team.membership(team.owner).role == Role.OWNER


@pytest.mark.django_db
def test_viewer_can_leave(team: Team) -> None:
    with transaction.atomic():
        services.remove_member(team.of(team.viewer), team.membership(team.viewer).pk)
    with pytest.raises(NotFoundError):
        scope_of(team.viewer, team.org)
    entry = chain(team.org)[-1]
    assert (entry.action, entry.actor_id) == ("member.left", str(team.viewer.pk))


@pytest.mark.django_db
def test_read_only_api_key_cannot_leave(team: Team) -> None:
    with transaction.atomic():
        key = services.create_api_key(team.viewer, name="ro", scope=ApiKeyScope.READ).key
    scope = access.resolve(Principal(team.viewer, "api_key", key), team.org.pk)
    with pytest.raises(PermissionDeniedError), transaction.atomic():
        services.remove_member(scope, team.membership(team.viewer).pk)
    assert team.membership(team.viewer).role == Role.VIEWER


@pytest.mark.django_db
def test_viewer_cannot_remove_others(team: Team) -> None:
    with pytest.raises(PermissionDeniedError), transaction.atomic():
        services.remove_member(team.of(team.viewer), team.membership(team.engineer).pk)
    assert team.membership(team.engineer)


@pytest.mark.django_db
def test_admin_removes_a_member(team: Team) -> None:
    with transaction.atomic():
        services.remove_member(team.of(team.admin), team.membership(team.engineer).pk)
    with pytest.raises(NotFoundError):
        scope_of(team.engineer, team.org)
    entry = chain(team.org)[-1]
    assert (entry.action, entry.before) == (
        "member.removed",
        {"user": "engineer@acme.example", "role": "engineer"},
    )


# -- ownership ------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.backend
def test_transfer_ownership_leaves_one_owner_and_the_old_one_admin(team: Team) -> None:
    with transaction.atomic():
        services.transfer_ownership(team.scope, team.membership(team.engineer).pk)
    roles = dict(Membership.objects.values_list("user__email", "role"))
    assert roles["engineer@acme.example"] == Role.OWNER
    assert roles["owner@acme.example"] == Role.ADMIN
    assert list(roles.values()).count(Role.OWNER) == 1
    entry = chain(team.org)[-1]
    assert entry.action == "organisation.ownership_transferred"
    assert (entry.before, entry.after) == (
        {"owner": "owner@acme.example"},
        {"owner": "engineer@acme.example"},
    )
    # The former owner is an admin now: no more owner-only powers.
    with pytest.raises(PermissionDeniedError), transaction.atomic():
        services.request_deletion(team.of(team.owner))


@pytest.mark.django_db(transaction=True)
@pytest.mark.backend
def test_concurrent_transfers_leave_one_owner_chosen_by_the_real_owner(team: Team) -> None:
    # Two transfers by the owner at once (a double-submitted form, two tabs), each with a scope
    # resolved before either ran: the second must not hand on ownership that has already moved.
    jobs = [
        (team.of(team.owner), team.membership(team.admin).pk),
        (team.of(team.owner), team.membership(team.engineer).pk),
    ]
    start = threading.Barrier(len(jobs))
    outcomes: list[str] = []

    def work(scope: Scope, target: Any) -> None:
        try:
            start.wait()
            for _ in range(500):
                try:
                    with transaction.atomic():
                        services.transfer_ownership(scope, target)
                except OperationalError as exc:
                    # The in-memory SQLite test database reports a held write lock at once
                    # instead of waiting for it; retrying stands in for that wait.
                    if connection.vendor != "sqlite" or "locked" not in str(exc):
                        raise
                    time.sleep(0.005)
                else:
                    outcomes.append("ok")
                    return
            outcomes.append("gave up")
        except FieldlinkError as exc:
            outcomes.append(exc.code)
        except BaseException as exc:  # noqa: BLE001 -- a thread's error is asserted below
            outcomes.append(repr(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=job) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) == ["ok", "organisation_state"]
    owners = list(Membership.objects.filter(role=Role.OWNER).values_list("user__email", flat=True))
    assert len(owners) == 1
    assert owners[0] in {"admin@acme.example", "engineer@acme.example"}
    transfers = [e for e in chain(team.org) if e.action == "organisation.ownership_transferred"]
    assert len(transfers) == 1
    assert transfers[0].before == {"owner": "owner@acme.example"}
    assert audit_services.verify() == []


@pytest.mark.django_db
def test_admin_cannot_transfer_ownership(team: Team) -> None:
    with pytest.raises(PermissionDeniedError), transaction.atomic():
        services.transfer_ownership(team.of(team.admin), team.membership(team.admin).pk)
    assert team.membership(team.owner).role == Role.OWNER


@pytest.mark.django_db
def test_transfer_to_oneself_refused(team: Team) -> None:
    with pytest.raises(OrganisationStateError), transaction.atomic():
        services.transfer_ownership(team.scope, team.membership(team.owner).pk)


@pytest.mark.django_db
def test_cross_tenant_transfer_target_is_404(team: Team, make_user: MakeUser) -> None:
    other = new_org(make_user("owner@other.example"), "Other Co")
    theirs = Membership.objects.get(organisation=other.organisation)
    with pytest.raises(NotFoundError), transaction.atomic():
        services.transfer_ownership(team.scope, theirs.pk)
    assert team.membership(team.owner).role == Role.OWNER


@pytest.mark.django_db
@pytest.mark.backend
def test_second_owner_refused_by_database(team: Team, make_user: MakeUser) -> None:
    intruder = make_user("second@acme.example")
    with pytest.raises(IntegrityError), transaction.atomic():
        Membership.objects.create(organisation=team.org, user=intruder, role=Role.OWNER)
    with pytest.raises(IntegrityError), transaction.atomic():
        Membership.objects.filter(organisation=team.org, user=team.admin).update(role=Role.OWNER)
    with pytest.raises(IntegrityError), transaction.atomic():
        Membership.objects.create(organisation=team.org, user=team.viewer, role=Role.ADMIN)
    assert Membership.objects.filter(organisation=team.org, role=Role.OWNER).count() == 1


# -- deletion -------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.backend
def test_deletion_is_due_after_thirty_days_and_tells_owner_and_admins(
    team: Team, django_capture_on_commit_callbacks: CaptureCallbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        org = services.request_deletion(team.scope)
    assert org.deletion_requested_at is not None
    assert org.deletion_due_at is not None
    assert org.deletion_due_at - org.deletion_requested_at == timedelta(days=30)
    assert abs(org.deletion_requested_at - timezone.now()) < timedelta(minutes=1)
    assert Organisation.objects.get().pending_deletion
    (message,) = mail.outbox
    assert sorted(message.to) == ["admin@acme.example", "owner@acme.example"]
    entry = chain(team.org)[-1]
    assert entry.action == "organisation.deletion_requested"
    with pytest.raises(OrganisationStateError), transaction.atomic():
        services.request_deletion(team.scope)


@pytest.mark.django_db
@pytest.mark.backend
def test_writes_are_refused_while_deletion_is_pending(team: Team, make_user: MakeUser) -> None:
    with transaction.atomic():
        services.request_deletion(team.scope)
    owner, admin = team.of(team.owner), team.of(team.admin)
    writes: list[Callable[[], object]] = [
        lambda: services.rename_organisation(admin, name="New name"),
        lambda: services.invite_member(admin, email="new@plant.example", role=Role.VIEWER),
        lambda: services.change_role(admin, team.membership(team.viewer).pk, role=Role.ENGINEER),
        lambda: services.remove_member(admin, team.membership(team.engineer).pk),
        lambda: services.transfer_ownership(owner, team.membership(team.admin).pk),
    ]
    for write in writes:
        with pytest.raises(OrganisationPendingDeletionError), transaction.atomic():
            write()
    # Reading, and changing one's mind, still work.
    assert len(services.members_of(team.of(team.viewer))) == 4
    with transaction.atomic():
        services.cancel_deletion(owner)
    assert not Organisation.objects.get().pending_deletion
    with transaction.atomic():
        services.rename_organisation(team.of(team.admin), name="New name")
    assert Organisation.objects.get().name == "New name"


@pytest.mark.django_db
def test_invitation_into_an_org_pending_deletion_refused(team: Team, make_user: MakeUser) -> None:
    token = invite(team.scope, "new@plant.example")
    with transaction.atomic():
        services.request_deletion(team.scope)
    with pytest.raises(OrganisationStateError):
        accept(make_user("new@plant.example"), token)


@pytest.mark.django_db
def test_only_the_owner_requests_deletion(team: Team) -> None:
    with pytest.raises(PermissionDeniedError), transaction.atomic():
        services.request_deletion(team.of(team.admin))
    with pytest.raises(OrganisationStateError), transaction.atomic():
        services.cancel_deletion(team.scope)  # nothing to cancel
    assert not Organisation.objects.get().pending_deletion


@pytest.mark.django_db
@pytest.mark.backend
def test_purge_before_due_does_nothing(team: Team) -> None:
    with transaction.atomic():
        org = services.request_deletion(team.scope)
    assert org.deletion_due_at is not None
    with transaction.atomic():
        assert services.purge_due_organisations(org.deletion_due_at - timedelta(seconds=1)) == []
    assert Organisation.objects.filter(pk=team.org.pk).exists()
    assert Membership.objects.filter(organisation=team.org).count() == 4
    assert chain(team.org)[-1].action == "organisation.deletion_requested"


@pytest.mark.django_db
@pytest.mark.backend
def test_purge_after_due_deletes_the_org_and_audits_it_last(
    team: Team, make_user: MakeUser
) -> None:
    other = new_org(make_user("owner@other.example"), "Other Co")
    invite(team.scope, "new@plant.example")
    invite(other, "new@plant.example")
    with transaction.atomic():
        org = services.request_deletion(team.scope)
    assert org.deletion_due_at is not None
    org_id = str(team.org.pk)
    with transaction.atomic():
        purged = services.purge_due_organisations(org.deletion_due_at + timedelta(seconds=1))
    assert purged == [org_id]
    assert not Organisation.objects.filter(pk=org_id).exists()
    assert not Membership.objects.filter(organisation_id=org_id).exists()
    assert not Invitation.objects.filter(organisation_id=org_id).exists()
    # The other tenant is untouched.
    assert Membership.objects.filter(organisation=other.organisation).count() == 1
    assert Invitation.objects.filter(organisation=other.organisation).count() == 1
    for name in (org_id, PLATFORM_CHAIN):
        last = chain(name)[-1]
        assert (last.action, last.actor_type, last.target_id) == (
            "organisation.deleted",
            "system",
            org_id,
        )
        assert last.before is not None
        assert last.before["name"] == "Acme Water"
    assert audit_services.verify() == []
    # Purging again finds nothing: the deletion is recorded once.
    with transaction.atomic():
        assert services.purge_due_organisations(org.deletion_due_at + timedelta(days=1)) == []
    assert len(chain(PLATFORM_CHAIN)) == 1


# -- audit ----------------------------------------------------------------------------------------


Prepare = Callable[[Team, MakeUser], Any]
Run = Callable[[Team, Any, HttpRequest], Any]


@dataclass(frozen=True)
class Case:
    action: str
    target_type: str
    actor: str  # which team member acts ("newcomer": the invited person)
    run: Run  # returns the audited target
    prepare: Prepare = lambda t, make_user: None  # committed before the use case runs
    before: Any = None
    after: Any = None


def _pending_invitation(t: Team, _: MakeUser) -> services.IssuedInvitation:
    with transaction.atomic():
        issued = services.invite_member(t.scope, email="new@plant.example", role=Role.VIEWER)
    register_canary(issued.token)
    return issued


def _newcomer_with_invitation(t: Team, make_user: MakeUser) -> tuple[User, str]:
    return make_user("new@plant.example"), _pending_invitation(t, make_user).token


def _scheduled_deletion(t: Team, _: MakeUser) -> None:
    with transaction.atomic():
        services.request_deletion(t.scope)


def _rename(t: Team, _: Any, r: HttpRequest) -> Any:
    services.rename_organisation(t.of(t.admin), name="Acme Pumps", request=r)
    return t.org


def _remove(t: Team, _: Any, r: HttpRequest) -> Any:
    target = t.membership(t.viewer)
    services.remove_member(t.of(t.admin), target.pk, r)
    return target


def _leave(t: Team, _: Any, r: HttpRequest) -> Any:
    target = t.membership(t.engineer)
    services.remove_member(t.of(t.engineer), target.pk, r)
    return target


CASES = {
    "rename": Case(
        "organisation.updated",
        "organisation",
        "admin",
        _rename,
        before={"name": "Acme Water", "region": "eu-central"},
        after={"name": "Acme Pumps", "region": "eu-central"},
    ),
    "invite": Case(
        "invitation.created",
        "invitation",
        "admin",
        lambda t, _, r: (
            services.invite_member(
                t.of(t.admin), email="new@plant.example", role=Role.VIEWER, request=r
            ).invitation
        ),
    ),
    "revoke": Case(
        "invitation.revoked",
        "invitation",
        "admin",
        lambda t, issued, r: services.revoke_invitation(t.of(t.admin), issued.invitation.pk, r),
        prepare=_pending_invitation,
        before={"email": "new@plant.example", "role": "viewer"},
    ),
    "accept": Case(
        "member.joined",
        "membership",
        "newcomer",
        lambda t, ctx, r: services.accept_invitation(session(ctx[0]), ctx[1], r),
        prepare=_newcomer_with_invitation,
        after={"user": "new@plant.example", "role": "viewer"},
    ),
    "change_role": Case(
        "member.role_changed",
        "membership",
        "admin",
        lambda t, _, r: services.change_role(
            t.of(t.admin), t.membership(t.viewer).pk, role=Role.ENGINEER, request=r
        ),
        before={"user": "viewer@acme.example", "role": "viewer"},
        after={"user": "viewer@acme.example", "role": "engineer"},
    ),
    "remove": Case(
        "member.removed",
        "membership",
        "admin",
        _remove,
        before={"user": "viewer@acme.example", "role": "viewer"},
    ),
    "leave": Case(
        "member.left",
        "membership",
        "engineer",
        _leave,
        before={"user": "engineer@acme.example", "role": "engineer"},
    ),
    "transfer": Case(
        "organisation.ownership_transferred",
        "membership",
        "owner",
        lambda t, _, r: services.transfer_ownership(t.of(t.owner), t.membership(t.admin).pk, r),
        before={"owner": "owner@acme.example"},
        after={"owner": "admin@acme.example"},
    ),
    "request_deletion": Case(
        "organisation.deletion_requested",
        "organisation",
        "owner",
        lambda t, _, r: services.request_deletion(t.of(t.owner), r),
    ),
    "cancel_deletion": Case(
        "organisation.deletion_cancelled",
        "organisation",
        "owner",
        lambda t, _, r: services.cancel_deletion(t.of(t.owner), r),
        prepare=_scheduled_deletion,
    ),
}


@pytest.mark.django_db
@pytest.mark.parametrize("name", list(CASES))
def test_every_use_case_writes_exactly_one_entry(
    team: Team, make_user: MakeUser, name: str
) -> None:
    case = CASES[name]
    context = case.prepare(team, make_user)
    request = RequestFactory().post("/", REMOTE_ADDR="203.0.113.9", HTTP_USER_AGENT=FIREFOX_LINUX)
    entries_before = AuditEntry.objects.count()
    with transaction.atomic():
        target = case.run(team, context, request)
    assert AuditEntry.objects.count() == entries_before + 1
    entry = chain(team.org)[-1]
    assert entry.action == case.action
    actor = (
        User.objects.get(email="new@plant.example")
        if case.actor == "newcomer"
        else getattr(team, case.actor)
    )
    assert (entry.actor_type, entry.actor_id, entry.actor_label) == (
        "user",
        str(actor.pk),
        actor.email,
    )
    assert (entry.target_type, entry.target_id) == (case.target_type, str(target.pk))
    if case.before is not None:
        assert entry.before == case.before
    if case.after is not None:
        assert entry.after == case.after
    assert (entry.ip, entry.client) == ("203.0.113.9", f"session; {FIREFOX_LINUX}")
    _assert_no_secrets(entry, team)
    assert audit_services.verify() == []


def _assert_no_secrets(entry: AuditEntry, team: Team) -> None:
    stored = json.dumps([entry.before, entry.after, entry.actor_label, entry.client])
    for user in (team.owner, team.admin, team.engineer, team.viewer):
        assert user.password not in stored
    for invitation in Invitation.objects.all():
        assert invitation.digest not in stored
    assert "fli_" not in stored


@pytest.mark.django_db
@pytest.mark.backend
def test_audit_rolls_back_with_failed_change(team: Team) -> None:
    entries = len(chain(team.org))
    written: list[str] = []

    def rename() -> None:
        services.rename_organisation(team.of(team.admin), name="Half-done")
        written.append(chain(team.org)[-1].action)  # inside the transaction

    with pytest.raises(BoundaryFailedError):
        fail_after(rename)
    assert written == ["organisation.updated"]
    assert Organisation.objects.get().name == "Acme Water"
    assert len(chain(team.org)) == entries
    with pytest.raises(BoundaryFailedError):
        fail_after(lambda: services.transfer_ownership(team.scope, team.membership(team.admin).pk))
    assert team.membership(team.owner).role == Role.OWNER
    assert len(chain(team.org)) == entries
    assert audit_services.verify() == []


@pytest.mark.django_db
@pytest.mark.backend
def test_api_key_lifecycle_lands_in_each_of_the_users_org_chains(
    team: Team, make_user: MakeUser
) -> None:
    other = new_org(make_user("owner@other.example"), "Other Co")
    Membership.objects.create(organisation=other.organisation, user=team.engineer, role="viewer")
    unrelated = new_org(make_user("owner@third.example"), "Third Co")
    with transaction.atomic():
        issued = services.create_api_key(team.engineer, name="scada", scope=ApiKeyScope.READ)
    register_canary(issued.secret)
    with transaction.atomic():
        rotated = services.rotate_api_key(team.engineer, issued.key.pk, overlap=timedelta(0))
    register_canary(rotated.secret)
    with transaction.atomic():
        services.revoke_api_key(team.engineer, rotated.key.pk)
    expected = ["api_key.created", "api_key.created", "api_key.rotated", "api_key.revoked"]
    for org in (team.org, other.organisation):
        entries = [e for e in chain(org) if e.action.startswith("api_key.")]
        assert [e.action for e in entries] == expected
        assert {e.actor_id for e in entries} == {str(team.engineer.pk)}
        stored = json.dumps([[e.before, e.after] for e in entries])
        assert issued.secret not in stored
        assert rotated.secret not in stored
        assert issued.key.prefix in stored
    assert not [e for e in chain(unrelated) if e.action.startswith("api_key.")]
    assert audit_services.verify() == []
