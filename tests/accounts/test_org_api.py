"""The organisations REST API through the real HTTP stack: sessions and personal API keys.

Organisations, members, invitations (the token only ever in the invitee's mailbox), ownership
transfer and scheduled deletion; role refusals, mass assignment, read-only keys, writes while
deletion is pending, and other tenants' ids answering exactly like ids that do not exist.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.core import mail
from django.utils import timezone

from fieldlink.accounts import services
from fieldlink.accounts.access import Principal
from fieldlink.accounts.models import (
    ApiKeyScope,
    Invitation,
    Membership,
    Organisation,
    Role,
    User,
)
from fieldlink.audit.models import AuditEntry
from tests.accounts.conftest import (
    MakeClient,
    MakeUser,
    SecureClient,
    found_in_database,
    link_in,
    path_of,
    sign_in,
)
from tests.plugins.log_canary import register_canary

pytestmark = [pytest.mark.django_db]

CaptureOnCommit = Callable[..., AbstractContextManager[list[Callable[[], object]]]]

ORGS = "/api/v1/orgs"
PREVIEW = "/api/v1/invitations/preview"
ACCEPT = "/api/v1/invitations/accept"


@dataclass
class Team:
    org: Organisation
    owner: User
    admin: User
    engineer: User
    viewer: User

    @property
    def url(self) -> str:
        return f"{ORGS}/{self.org.pk}"

    def membership(self, user: User) -> Membership:
        return Membership.objects.get(organisation=self.org, user=user)


def _organisation(owner: User, name: str, region: str = "eu-central") -> Organisation:
    scope = services.create_organisation(Principal(owner, "session"), name=name, region=region)
    return scope.organisation


def _team(make_user: MakeUser, domain: str, name: str) -> Team:
    owner = make_user(f"owner@{domain}", first_name="Olga", last_name="Owner")
    org = _organisation(owner, name)
    members = {}
    for role in (Role.ADMIN, Role.ENGINEER, Role.VIEWER):
        user = make_user(f"{role}@{domain}")
        Membership.objects.create(organisation=org, user=user, role=role)
        members[str(role)] = user
    return Team(org, owner, members["admin"], members["engineer"], members["viewer"])


@pytest.fixture
def team(make_user: MakeUser) -> Team:
    return _team(make_user, "acme-water.example", "Acme Water")


@pytest.fixture
def rival(make_user: MakeUser) -> Team:
    return _team(make_user, "rival-gas.example", "Rival Gas Secret Plant")


@pytest.fixture
def as_user(make_client: MakeClient) -> Callable[[User], SecureClient]:
    def make(user: User) -> SecureClient:
        # force_login: these tests are about organisations, not passwords (bcrypt is slow).
        client = make_client(ip="198.51.100.20")
        client.force_login(user)
        return client

    return make


def _key_client(user: User, scope: ApiKeyScope = ApiKeyScope.READ_WRITE) -> SecureClient:
    issued = services.create_api_key(user, name="plant script", scope=scope)
    register_canary(issued.secret)
    return SecureClient(
        HTTP_AUTHORIZATION=f"Bearer {issued.secret}",
        HTTP_USER_AGENT="fieldlink-script/1.0",
        REMOTE_ADDR="203.0.113.9",
    )


def _send(client: SecureClient, method: str, path: str, body: Any = None) -> Any:
    kwargs: dict[str, Any] = {}
    if body is not None:
        kwargs = {"data": json.dumps(body), "content_type": "application/json"}
    return getattr(client, method.lower())(path, **kwargs)


def _ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.content
    return response.json() if response.content else None


def _refused(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.content
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    assert body["message"]
    return body


def _actions(org: Organisation) -> list[str]:
    return list(AuditEntry.objects.filter(chain=str(org.pk)).values_list("action", flat=True))


def _audit_snapshot() -> int:
    return AuditEntry.objects.count()


# -- Happy paths ---------------------------------------------------------------------------------


def test_create_and_list_organisations_with_a_signed_in_session(
    make_client: MakeClient, make_user: MakeUser, team: Team
) -> None:
    client = make_client()
    make_user("founder@new-plant.example")
    assert sign_in(client, "founder@new-plant.example").status_code == 302

    created = _ok(_send(client, "POST", ORGS, {"name": "  New Plant  ", "region": "eu-north"}), 201)
    assert created["name"] == "New Plant"
    assert created["region"] == "eu-north"
    assert created["region_label"] == "EU North (Stockholm)"
    assert created["role"] == "owner"
    assert created["pending_deletion"] is False
    assert "org.delete" in created["permissions"]

    org = Organisation.objects.get(pk=created["id"])
    assert Membership.objects.get(organisation=org).role == Role.OWNER
    assert _actions(org) == ["organisation.created"]
    entry = AuditEntry.objects.get(chain=str(org.pk))
    assert entry.actor_label == "founder@new-plant.example"
    assert entry.after == {"name": "New Plant", "region": "eu-north"}

    listed = _ok(_send(client, "GET", ORGS))
    assert [(o["name"], o["role"]) for o in listed] == [("New Plant", "owner")]


def test_user_in_several_organisations_sees_each_with_its_role(
    as_user: Callable[[User], SecureClient], team: Team
) -> None:
    _organisation(team.viewer, "Viewer's Own Lab")
    listed = _ok(_send(as_user(team.viewer), "GET", ORGS))
    assert [(o["name"], o["role"]) for o in listed] == [
        ("Acme Water", "viewer"),
        ("Viewer's Own Lab", "owner"),
    ]


def test_get_organisation_shows_role_region_and_deletion_state(
    as_user: Callable[[User], SecureClient], team: Team
) -> None:
    body = _ok(_send(as_user(team.engineer), "GET", team.url))
    assert body["id"] == str(team.org.pk)
    assert body["name"] == "Acme Water"
    assert body["region"] == "eu-central"
    assert body["region_label"] == "EU Central (Frankfurt)"
    assert body["role"] == "engineer"
    assert body["created_at"]
    assert body["deletion_requested_at"] is None
    assert body["deletion_due_at"] is None
    assert "data.configure" in body["permissions"]
    assert "members.manage" not in body["permissions"]


@pytest.mark.backend
def test_rename_organisation_through_an_api_key_is_audited(team: Team) -> None:
    body = _ok(_send(_key_client(team.admin), "PATCH", team.url, {"name": "Acme Water Works"}))
    assert body["name"] == "Acme Water Works"
    team.org.refresh_from_db()
    assert team.org.name == "Acme Water Works"
    entry = AuditEntry.objects.filter(chain=str(team.org.pk)).last()
    assert entry is not None
    assert entry.action == "organisation.updated"
    assert entry.actor_type == "api_key"
    assert entry.before == {"name": "Acme Water", "region": "eu-central"}
    assert entry.after == {"name": "Acme Water Works", "region": "eu-central"}
    assert entry.ip == "203.0.113.9"


def test_members_list(as_user: Callable[[User], SecureClient], team: Team) -> None:
    members = _ok(_send(as_user(team.viewer), "GET", f"{team.url}/members"))
    assert [(m["email"], m["role"]) for m in members] == [
        ("owner@acme-water.example", "owner"),
        ("admin@acme-water.example", "admin"),
        ("engineer@acme-water.example", "engineer"),
        ("viewer@acme-water.example", "viewer"),
    ]
    owner = members[0]
    assert owner["id"] == str(team.membership(team.owner).pk)
    assert owner["user_id"] == str(team.owner.pk)
    assert owner["name"] == "Olga Owner"
    assert owner["joined_at"]


@pytest.mark.backend
def test_change_role_is_audited(as_user: Callable[[User], SecureClient], team: Team) -> None:
    membership = team.membership(team.engineer)
    body = _ok(
        _send(
            as_user(team.admin), "PATCH", f"{team.url}/members/{membership.pk}", {"role": "viewer"}
        )
    )
    assert body["role"] == "viewer"
    membership.refresh_from_db()
    assert membership.role == Role.VIEWER
    entry = AuditEntry.objects.filter(chain=str(team.org.pk)).last()
    assert entry is not None
    assert entry.action == "member.role_changed"
    assert entry.target_id == str(membership.pk)
    assert entry.before == {"user": "engineer@acme-water.example", "role": "engineer"}
    assert entry.after == {"user": "engineer@acme-water.example", "role": "viewer"}


@pytest.mark.backend
def test_remove_member_is_204_and_audited(
    as_user: Callable[[User], SecureClient], team: Team
) -> None:
    membership = team.membership(team.viewer)
    response = _send(as_user(team.admin), "DELETE", f"{team.url}/members/{membership.pk}")
    assert response.status_code == 204, response.content
    assert not Membership.objects.filter(pk=membership.pk).exists()
    assert _actions(team.org)[-1] == "member.removed"
    # The removed member has lost all standing: the organisation no longer exists for them.
    _refused(_send(as_user(team.viewer), "GET", team.url), 404, "not_found")


def test_member_can_leave(as_user: Callable[[User], SecureClient], team: Team) -> None:
    membership = team.membership(team.viewer)
    client = as_user(team.viewer)
    assert _send(client, "DELETE", f"{team.url}/members/{membership.pk}").status_code == 204
    assert _actions(team.org)[-1] == "member.left"
    assert _ok(_send(client, "GET", ORGS)) == []


def test_owner_cannot_be_removed(as_user: Callable[[User], SecureClient], team: Team) -> None:
    owner = team.membership(team.owner)
    _refused(
        _send(as_user(team.admin), "DELETE", f"{team.url}/members/{owner.pk}"),
        409,
        "owner_protected",
    )
    assert Membership.objects.filter(pk=owner.pk).exists()


@pytest.mark.backend
def test_transfer_ownership(as_user: Callable[[User], SecureClient], team: Team) -> None:
    target = team.membership(team.engineer)
    body = _ok(
        _send(
            as_user(team.owner),
            "POST",
            f"{team.url}/transfer-ownership",
            {"membership_id": str(target.pk)},
        )
    )
    assert body["id"] == str(target.pk)
    assert body["role"] == "owner"
    assert team.membership(team.engineer).role == Role.OWNER
    assert team.membership(team.owner).role == Role.ADMIN
    entry = AuditEntry.objects.filter(chain=str(team.org.pk)).last()
    assert entry is not None
    assert entry.action == "organisation.ownership_transferred"
    assert entry.before == {"owner": "owner@acme-water.example"}
    assert entry.after == {"owner": "engineer@acme-water.example"}


@pytest.mark.backend
def test_deletion_can_be_scheduled_and_cancelled(
    as_user: Callable[[User], SecureClient], team: Team
) -> None:
    client = as_user(team.owner)
    scheduled = _ok(_send(client, "POST", f"{team.url}/deletion"))
    assert scheduled["pending_deletion"] is True
    assert scheduled["deletion_requested_at"]
    assert scheduled["deletion_due_at"]
    team.org.refresh_from_db()
    assert team.org.deletion_due_at is not None
    assert team.org.deletion_due_at - timezone.now() > timedelta(days=29)
    assert _ok(_send(client, "GET", team.url))["deletion_due_at"] == scheduled["deletion_due_at"]
    _refused(_send(client, "POST", f"{team.url}/deletion"), 409, "organisation_state")

    cancelled = _ok(_send(client, "DELETE", f"{team.url}/deletion"))
    assert cancelled["pending_deletion"] is False
    assert cancelled["deletion_due_at"] is None
    team.org.refresh_from_db()
    assert team.org.deletion_due_at is None
    assert _actions(team.org)[-2:] == [
        "organisation.deletion_requested",
        "organisation.deletion_cancelled",
    ]


# -- Invitations ---------------------------------------------------------------------------------


def _invite(
    client: SecureClient,
    team: Team,
    capture: CaptureOnCommit,
    email: str,
    role: str = "engineer",
) -> tuple[dict[str, Any], str]:
    """Invite through the API; return the response body and the token from the sent mail."""
    mail.outbox.clear()
    with capture(execute=True):
        body = _ok(
            _send(client, "POST", f"{team.url}/invitations", {"email": email, "role": role}), 201
        )
    (message,) = mail.outbox
    assert message.to == [email]
    path = path_of(link_in(message, "/invitations/"))
    token = path.split("/")[2]
    register_canary(token)
    assert path == f"/invitations/{token}/"
    return body, token


@pytest.mark.backend
def test_invitation_flow_end_to_end_through_the_api(
    as_user: Callable[[User], SecureClient],
    make_user: MakeUser,
    team: Team,
    django_capture_on_commit_callbacks: CaptureOnCommit,
) -> None:
    admin_key = _key_client(team.admin)
    invited, token = _invite(
        admin_key, team, django_capture_on_commit_callbacks, "new.engineer@acme-water.example"
    )
    assert invited["email"] == "new.engineer@acme-water.example"
    assert invited["role"] == "engineer"
    assert invited["status"] == "pending"
    assert invited["invited_by"] == "admin@acme-water.example"
    assert token not in json.dumps(invited), "the token goes only to the invitee's mailbox"
    assert found_in_database(token) == [], "only the token's hash is stored"

    listed = _ok(_send(admin_key, "GET", f"{team.url}/invitations"))
    assert [i["id"] for i in listed] == [invited["id"]]
    assert token not in json.dumps(listed)

    invitee = as_user(make_user("new.engineer@acme-water.example"))
    preview = _ok(_send(invitee, "POST", PREVIEW, {"token": token}))
    assert preview == {
        "organisation_name": "Acme Water",
        "email": "new.engineer@acme-water.example",
        "role": "engineer",
        "invited_by": "admin@acme-water.example",
        "status": "pending",
        "expires_at": invited["expires_at"],
    }

    joined = _ok(_send(invitee, "POST", ACCEPT, {"token": token}), 201)
    assert joined["organisation_id"] == str(team.org.pk)
    assert joined["organisation_name"] == "Acme Water"
    assert joined["role"] == "engineer"

    members = _ok(_send(invitee, "GET", f"{team.url}/members"))
    assert ("new.engineer@acme-water.example", "engineer") in [
        (m["email"], m["role"]) for m in members
    ]
    listed = _ok(_send(admin_key, "GET", f"{team.url}/invitations"))
    assert listed[0]["status"] == "accepted"
    assert _actions(team.org)[-2:] == ["invitation.created", "member.joined"]


def test_invitation_reuse_refused(
    as_user: Callable[[User], SecureClient],
    make_user: MakeUser,
    team: Team,
    django_capture_on_commit_callbacks: CaptureOnCommit,
) -> None:
    _, token = _invite(
        as_user(team.admin), team, django_capture_on_commit_callbacks, "twice@acme-water.example"
    )
    invitee = as_user(make_user("twice@acme-water.example"))
    _ok(_send(invitee, "POST", ACCEPT, {"token": token}), 201)
    body = _refused(_send(invitee, "POST", ACCEPT, {"token": token}), 409, "invitation_invalid")
    assert body["details"] == {"status": "accepted"}

    # Nor can someone else who got hold of the link after it was used.
    other = make_user("forwarded@acme-water.example")
    _refused(_send(as_user(other), "POST", ACCEPT, {"token": token}), 409, "invitation_invalid")
    assert not Membership.objects.filter(user=other).exists()


def test_expired_invitation_refused(
    as_user: Callable[[User], SecureClient],
    make_user: MakeUser,
    team: Team,
    django_capture_on_commit_callbacks: CaptureOnCommit,
) -> None:
    invited, token = _invite(
        as_user(team.admin), team, django_capture_on_commit_callbacks, "late@acme-water.example"
    )
    Invitation.objects.filter(pk=invited["id"]).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    invitee_user = make_user("late@acme-water.example")
    invitee = as_user(invitee_user)
    assert _ok(_send(invitee, "POST", PREVIEW, {"token": token}))["status"] == "expired"
    body = _refused(_send(invitee, "POST", ACCEPT, {"token": token}), 409, "invitation_invalid")
    assert body["details"] == {"status": "expired"}
    assert not Membership.objects.filter(user=invitee_user).exists()


def test_invitation_for_other_email_refused(
    as_user: Callable[[User], SecureClient],
    make_user: MakeUser,
    team: Team,
    django_capture_on_commit_callbacks: CaptureOnCommit,
) -> None:
    _, token = _invite(
        as_user(team.admin), team, django_capture_on_commit_callbacks, "intended@acme-water.example"
    )
    interceptor = make_user("interceptor@elsewhere.example")
    _refused(
        _send(as_user(interceptor), "POST", ACCEPT, {"token": token}),
        403,
        "invitation_email_mismatch",
    )
    assert not Membership.objects.filter(user=interceptor).exists()
    # An unverified address is not proof of owning the mailbox either.
    unverified = make_user("intended@acme-water.example", verified=False)
    _refused(
        _send(as_user(unverified), "POST", ACCEPT, {"token": token}),
        403,
        "invitation_email_mismatch",
    )
    assert not Membership.objects.filter(user=unverified).exists()


@pytest.mark.backend
def test_revoked_invitation_refused(
    as_user: Callable[[User], SecureClient],
    make_user: MakeUser,
    team: Team,
    django_capture_on_commit_callbacks: CaptureOnCommit,
) -> None:
    admin = as_user(team.admin)
    invited, token = _invite(
        admin, team, django_capture_on_commit_callbacks, "revoked@acme-water.example"
    )
    revoked = _ok(_send(admin, "DELETE", f"{team.url}/invitations/{invited['id']}"))
    assert revoked["status"] == "revoked"
    assert _actions(team.org)[-1] == "invitation.revoked"
    invitee = as_user(make_user("revoked@acme-water.example"))
    body = _refused(_send(invitee, "POST", ACCEPT, {"token": token}), 409, "invitation_invalid")
    assert body["details"] == {"status": "revoked"}


@pytest.mark.parametrize(
    "token", ["fli_not-a-real-token", "flk_wrong-prefix", "x" * 200, "fli_" + "a" * 150]
)
def test_unknown_invitation_token_is_409_invitation_invalid(
    as_user: Callable[[User], SecureClient], team: Team, token: str
) -> None:
    client = as_user(team.viewer)
    _refused(_send(client, "POST", PREVIEW, {"token": token}), 409, "invitation_invalid")
    _refused(_send(client, "POST", ACCEPT, {"token": token}), 409, "invitation_invalid")


def test_invitation_preview_needs_authentication(make_client: MakeClient) -> None:
    _refused(
        _send(make_client(), "POST", PREVIEW, {"token": "fli_whatever"}), 401, "unauthenticated"
    )


# -- Role refusals -------------------------------------------------------------------------------


def test_viewer_cannot_rename_organisation(
    as_user: Callable[[User], SecureClient], team: Team
) -> None:
    body = _refused(
        _send(as_user(team.viewer), "PATCH", team.url, {"name": "Pwned"}), 403, "permission_denied"
    )
    assert body["details"] == {"permission": "org.settings"}
    team.org.refresh_from_db()
    assert team.org.name == "Acme Water"


def test_engineer_cannot_invite(as_user: Callable[[User], SecureClient], team: Team) -> None:
    before = _audit_snapshot()
    mail.outbox.clear()
    _refused(
        _send(
            as_user(team.engineer),
            "POST",
            f"{team.url}/invitations",
            {"email": "friend@elsewhere.example", "role": "admin"},
        ),
        403,
        "permission_denied",
    )
    assert not Invitation.objects.exists()
    assert mail.outbox == []
    assert _audit_snapshot() == before


def test_engineer_cannot_change_roles(as_user: Callable[[User], SecureClient], team: Team) -> None:
    own = team.membership(team.engineer)
    _refused(
        _send(as_user(team.engineer), "PATCH", f"{team.url}/members/{own.pk}", {"role": "admin"}),
        403,
        "permission_denied",
    )
    assert team.membership(team.engineer).role == Role.ENGINEER


def test_admin_cannot_delete_organisation(
    as_user: Callable[[User], SecureClient], team: Team
) -> None:
    _refused(_send(as_user(team.admin), "POST", f"{team.url}/deletion"), 403, "permission_denied")
    team.org.refresh_from_db()
    assert team.org.deletion_due_at is None


def test_admin_cannot_take_ownership(as_user: Callable[[User], SecureClient], team: Team) -> None:
    admin = as_user(team.admin)
    own = team.membership(team.admin)
    _refused(
        _send(admin, "POST", f"{team.url}/transfer-ownership", {"membership_id": str(own.pk)}),
        403,
        "permission_denied",
    )
    assert team.membership(team.owner).role == Role.OWNER


# -- Mass assignment -----------------------------------------------------------------------------


def _refused_field(response: Any, field: str, *secrets: str) -> None:
    body = _refused(response, 422, "validation_error")
    fields = [e["field"] for e in body["details"]["errors"]]
    assert any(f.split(".")[-1] == field for f in fields), fields
    text = response.content.decode()
    for secret in secrets:
        assert secret not in text, "validation errors never echo what was sent"


def test_mass_assignment_role_in_create_org_body_refused(
    as_user: Callable[[User], SecureClient], team: Team
) -> None:
    client = as_user(team.viewer)
    before = Organisation.objects.count()
    _refused_field(
        _send(client, "POST", ORGS, {"name": "Sneaky", "region": "eu-west", "role": "owner"}),
        "role",
    )
    for field, value in [
        ("id", str(team.org.pk)),
        ("created_by", str(team.owner.pk)),
        ("deletion_due_at", "2000-01-01T00:00:00Z"),
    ]:
        _refused_field(
            _send(client, "POST", ORGS, {"name": "Sneaky", "region": "eu-west", field: value}),
            field,
            value,
        )
    assert Organisation.objects.count() == before


def test_mass_assignment_region_in_rename_refused(
    as_user: Callable[[User], SecureClient], team: Team
) -> None:
    _refused_field(
        _send(as_user(team.owner), "PATCH", team.url, {"name": "Acme", "region": "us-east"}),
        "region",
    )
    team.org.refresh_from_db()
    assert (team.org.name, team.org.region) == ("Acme Water", "eu-central")


def test_mass_assignment_organisation_in_invitation_refused(
    as_user: Callable[[User], SecureClient], team: Team, rival: Team
) -> None:
    admin = as_user(team.admin)
    url = f"{team.url}/invitations"
    base = {"email": "guest@elsewhere.example", "role": "viewer"}
    for field, value in [
        ("organisation", str(rival.org.pk)),
        ("organisation_id", str(rival.org.pk)),
        ("invited_by", str(team.owner.pk)),
        ("expires_at", "2999-01-01T00:00:00Z"),
    ]:
        _refused_field(_send(admin, "POST", url, {**base, field: value}), field, value)
    # Owner is never an invitable role: ownership moves only by transfer.
    _refused_field(_send(admin, "POST", url, {**base, "role": "owner"}), "role")
    assert not Invitation.objects.exists()


def test_mass_assignment_in_member_patch_refused(
    as_user: Callable[[User], SecureClient], team: Team, rival: Team
) -> None:
    admin = as_user(team.admin)
    membership = team.membership(team.viewer)
    url = f"{team.url}/members/{membership.pk}"
    for field, value in [
        ("organisation", str(rival.org.pk)),
        ("user", str(team.admin.pk)),
        ("user_id", str(team.admin.pk)),
    ]:
        _refused_field(_send(admin, "PATCH", url, {"role": "viewer", field: value}), field, value)
    _refused_field(_send(admin, "PATCH", url, {"role": "owner"}), "role")
    membership.refresh_from_db()
    assert (membership.organisation_id, membership.user_id, membership.role) == (
        team.org.pk,
        team.viewer.pk,
        Role.VIEWER,
    )


@pytest.mark.parametrize("field", ["is_staff", "is_superuser", "staff_role", "is_platform_staff"])
def test_mass_assignment_staff_flags_refused(
    as_user: Callable[[User], SecureClient], team: Team, field: str
) -> None:
    client = as_user(team.viewer)
    value: Any = "platform_admin" if field == "staff_role" else True
    _refused_field(
        _send(client, "POST", ORGS, {"name": "Lab", "region": "eu-west", field: value}), field
    )
    _refused_field(
        _send(client, "POST", "/api/v1/me/api-keys", {"name": "k", "scope": "read", field: value}),
        field,
    )
    _refused_field(
        _send(client, "POST", ACCEPT, {"token": "fli_x", field: value}),
        field,
    )
    team.viewer.refresh_from_db()
    assert not team.viewer.is_platform_staff
    assert not team.viewer.api_keys.exists()
    assert _ok(_send(client, "GET", ORGS))[0]["name"] == "Acme Water"


def test_boundary_validation_of_lengths_and_enums(
    as_user: Callable[[User], SecureClient], team: Team
) -> None:
    client = as_user(team.admin)
    _refused_field(_send(client, "POST", ORGS, {"name": "", "region": "eu-west"}), "name")
    _refused_field(_send(client, "POST", ORGS, {"name": "x" * 101, "region": "eu-west"}), "name")
    _refused_field(_send(client, "POST", ORGS, {"name": "Lab", "region": "mars-1"}), "region")
    _refused(
        _send(client, "POST", ORGS, {"name": "   ", "region": "eu-west"}),
        422,
        "organisation_invalid",
    )
    invitations = f"{team.url}/invitations"
    long_email = "a" * 250 + "@x.example"
    _refused_field(
        _send(client, "POST", invitations, {"email": long_email, "role": "viewer"}), "email"
    )
    _refused_field(
        _send(client, "POST", invitations, {"email": "not-an-address", "role": "viewer"}),
        "email",
        "not-an-address",
    )
    _refused_field(
        _send(client, "POST", invitations, {"email": "a@b.example", "role": "root"}), "role"
    )
    assert not Invitation.objects.exists()
    assert Organisation.objects.count() == 1


# -- API keys, pending deletion, tenants ---------------------------------------------------------


def test_read_only_api_key_cannot_write(team: Team) -> None:
    client = _key_client(team.owner, ApiKeyScope.READ)
    assert _ok(_send(client, "GET", team.url))["name"] == "Acme Water"
    before = _audit_snapshot()
    member = team.membership(team.viewer)
    for method, path, body in [
        ("POST", ORGS, {"name": "Via Read Key", "region": "eu-west"}),
        ("PATCH", team.url, {"name": "Renamed"}),
        ("PATCH", f"{team.url}/members/{member.pk}", {"role": "admin"}),
        ("DELETE", f"{team.url}/members/{member.pk}", None),
        ("POST", f"{team.url}/invitations", {"email": "x@y.example", "role": "viewer"}),
        ("POST", f"{team.url}/deletion", None),
    ]:
        _refused(_send(client, method, path, body), 403, "api_key_scope")
    team.org.refresh_from_db()
    assert team.org.name == "Acme Water"
    assert team.org.deletion_due_at is None
    assert team.membership(team.viewer).role == Role.VIEWER
    assert Organisation.objects.count() == 1
    assert not Invitation.objects.exists()
    assert _audit_snapshot() == before


@pytest.mark.backend
def test_writes_while_deletion_pending_are_409(
    as_user: Callable[[User], SecureClient], team: Team
) -> None:
    owner = as_user(team.owner)
    _ok(_send(owner, "POST", f"{team.url}/deletion"))
    member = team.membership(team.viewer)
    for method, path, body in [
        ("PATCH", team.url, {"name": "Renamed"}),
        ("PATCH", f"{team.url}/members/{member.pk}", {"role": "admin"}),
        ("DELETE", f"{team.url}/members/{member.pk}", None),
        ("POST", f"{team.url}/invitations", {"email": "x@y.example", "role": "viewer"}),
    ]:
        _refused(_send(owner, method, path, body), 409, "organisation_pending_deletion")
    # Looking stays possible, and so does changing one's mind.
    assert _ok(_send(owner, "GET", f"{team.url}/members"))
    _ok(_send(owner, "DELETE", f"{team.url}/deletion"))
    assert _ok(_send(owner, "PATCH", team.url, {"name": "Renamed"}))["name"] == "Renamed"


@pytest.mark.backend
def test_cross_tenant_member_read_is_404(
    as_user: Callable[[User], SecureClient], team: Team, rival: Team
) -> None:
    attacker = as_user(team.owner)  # owner of their own organisation, nothing in the rival's
    victim_member = rival.membership(rival.viewer)
    victim_invitation = Invitation.objects.create(
        organisation=rival.org,
        email="secret.hire@rival-gas.example",
        role=Role.ADMIN,
        digest="0" * 64,
        expires_at=timezone.now() + timedelta(days=1),
    )
    before = _audit_snapshot()
    for method, path, body in [
        ("GET", rival.url, None),
        ("GET", f"{rival.url}/members", None),
        ("GET", f"{rival.url}/invitations", None),
        ("PATCH", rival.url, {"name": "Pwned"}),
        ("PATCH", f"{rival.url}/members/{victim_member.pk}", {"role": "viewer"}),
        ("DELETE", f"{rival.url}/members/{victim_member.pk}", None),
        ("POST", f"{rival.url}/invitations", {"email": "mole@acme-water.example", "role": "admin"}),
        ("DELETE", f"{rival.url}/invitations/{victim_invitation.pk}", None),
        ("POST", f"{rival.url}/deletion", None),
        ("POST", f"{rival.url}/transfer-ownership", {"membership_id": str(victim_member.pk)}),
    ]:
        response = _send(attacker, method, path, body)
        _refused(response, 404, "not_found")
        text = response.content.decode()
        for leak in ("Rival Gas", "rival-gas.example", "secret.hire"):
            assert leak not in text
        # Exactly what an organisation that does not exist answers.
        nowhere = path.replace(str(rival.org.pk), "00000000-0000-4000-8000-000000000000")
        assert _send(attacker, method, nowhere, body).json() == response.json()
    rival.org.refresh_from_db()
    assert rival.org.name == "Rival Gas Secret Plant"
    assert rival.membership(rival.viewer).role == Role.VIEWER
    assert Invitation.objects.get(pk=victim_invitation.pk).revoked_at is None
    assert _audit_snapshot() == before


@pytest.mark.backend
def test_cross_tenant_member_id_through_own_organisation_is_404(
    as_user: Callable[[User], SecureClient], team: Team, rival: Team
) -> None:
    """An admin of one organisation cannot reach another's member by putting its id in their own
    organisation's URL."""
    admin = as_user(team.admin)
    victim = rival.membership(rival.admin)
    url = f"{team.url}/members/{victim.pk}"
    _refused(_send(admin, "PATCH", url, {"role": "viewer"}), 404, "not_found")
    _refused(_send(admin, "DELETE", url), 404, "not_found")
    _refused(
        _send(
            as_user(team.owner),
            "POST",
            f"{team.url}/transfer-ownership",
            {"membership_id": str(victim.pk)},
        ),
        404,
        "not_found",
    )
    assert rival.membership(rival.admin).role == Role.ADMIN
    assert team.membership(team.owner).role == Role.OWNER


def test_platform_staff_get_no_customer_access(
    as_user: Callable[[User], SecureClient], make_user: MakeUser, team: Team
) -> None:
    staff = as_user(make_user("support@fieldlink.example", is_staff=True))
    assert _ok(_send(staff, "GET", ORGS)) == []
    for path in (team.url, f"{team.url}/members", f"{team.url}/invitations"):
        _refused(_send(staff, "GET", path), 404, "not_found")
    _refused(
        _send(staff, "POST", ORGS, {"name": "Staff Org", "region": "eu-west"}),
        403,
        "staff_not_customer",
    )


def test_anonymous_caller_is_401(make_client: MakeClient, team: Team) -> None:
    client = make_client()
    for method, path in [("GET", ORGS), ("GET", team.url), ("GET", f"{team.url}/members")]:
        response = _send(client, method, path)
        _refused(response, 401, "unauthenticated")
        assert "Acme" not in response.content.decode()


def test_openapi_describes_organisation_operations(make_client: MakeClient) -> None:
    spec = _ok(_send(make_client(), "GET", "/api/v1/openapi.json"))
    expected = {
        ("/api/v1/orgs", "get"),
        ("/api/v1/orgs", "post"),
        ("/api/v1/orgs/{org_id}", "get"),
        ("/api/v1/orgs/{org_id}", "patch"),
        ("/api/v1/orgs/{org_id}/members", "get"),
        ("/api/v1/orgs/{org_id}/members/{membership_id}", "patch"),
        ("/api/v1/orgs/{org_id}/members/{membership_id}", "delete"),
        ("/api/v1/orgs/{org_id}/transfer-ownership", "post"),
        ("/api/v1/orgs/{org_id}/invitations", "get"),
        ("/api/v1/orgs/{org_id}/invitations", "post"),
        ("/api/v1/orgs/{org_id}/invitations/{invitation_id}", "delete"),
        ("/api/v1/invitations/preview", "post"),
        ("/api/v1/invitations/accept", "post"),
        ("/api/v1/orgs/{org_id}/deletion", "post"),
        ("/api/v1/orgs/{org_id}/deletion", "delete"),
    }
    for path, method in expected:
        operation = spec["paths"][path][method]
        assert operation["tags"] == ["organisations"], (path, method)
        assert operation["summary"], (path, method)
    schemas = spec["components"]["schemas"]
    assert schemas["OrganisationCreateIn"]["additionalProperties"] is False
    assert schemas["ApiKeyIn"]["additionalProperties"] is False
    assert "token" not in schemas["InvitationOut"]["properties"]


def test_every_request_body_in_the_api_refuses_unknown_fields(make_client: MakeClient) -> None:
    """The mass-assignment guard covers the whole API, not just this context: a new endpoint
    whose body derives from a plain Schema instead of StrictInput fails here."""
    spec = _ok(_send(make_client(), "GET", "/api/v1/openapi.json"))
    schemas = spec["components"]["schemas"]
    bodies = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            content = operation.get("requestBody", {}).get("content", {})
            for media in content.values():
                ref = media["schema"].get("$ref", "")
                if ref:
                    name = ref.rsplit("/", 1)[-1]
                    bodies.append(name)
                    assert schemas[name].get("additionalProperties") is False, (path, method, name)
    assert {"OrganisationCreateIn", "InvitationIn", "ApiKeyIn", "RotateIn"} <= set(bodies)
