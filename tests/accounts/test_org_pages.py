"""The organisation pages (Django templates) over HTTPS with the test client.

Each page for the roles that may see it; forms that work and refusals that say why with the
status of their kind (403/404/409/422), never a 500; CSRF on every form; another tenant's pages
as 404 without a word about it; invitation links that are never cached nor leaked by referrer.
"""

from __future__ import annotations

import io
import logging
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.core import mail
from django.utils import timezone

from fieldlink.accounts import access, services
from fieldlink.accounts.access import Principal
from fieldlink.accounts.models import Invitation, Membership, Organisation, Role, StaffRole, User
from fieldlink.audit.models import AuditEntry
from fieldlink.kit.logging import configure_logging, reset_logging
from tests.accounts.conftest import MakeClient, MakeUser, SecureClient, link_in, path_of
from tests.plugins.log_canary import register_canary

pytestmark = [pytest.mark.django_db]

CaptureOnCommit = Callable[..., AbstractContextManager[list[Callable[[], object]]]]
MANAGE_MARKERS = ("Change role", "Send invitation", "Make owner", "Revoke", ">Remove<")


@dataclass
class Team:
    org: Organisation
    owner: User
    admin: User
    engineer: User
    viewer: User

    def url(self, tail: str = "") -> str:
        return f"/orgs/{self.org.pk}/{tail}"

    def membership(self, user: User) -> Membership:
        return Membership.objects.get(organisation=self.org, user=user)


def _team(make_user: MakeUser, domain: str, name: str) -> Team:
    owner = make_user(f"owner@{domain}")
    scope = services.create_organisation(Principal(owner, "session"), name=name, region="eu-west")
    users = {}
    for role in (Role.ADMIN, Role.ENGINEER, Role.VIEWER):
        users[role] = make_user(f"{role}@{domain}")
        Membership.objects.create(organisation=scope.organisation, user=users[role], role=role)
    return Team(
        scope.organisation, owner, users[Role.ADMIN], users[Role.ENGINEER], users[Role.VIEWER]
    )


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
        client = make_client(ip="198.51.100.30")
        client.force_login(user)
        return client

    return make


def _text(response: Any) -> str:
    return str(response.content.decode())


def _alert(response: Any) -> str:
    match = re.search(r'role="alert"[^>]*>(.*?)</', _text(response), re.S)
    assert match, "the page shows no alert"
    return match.group(1)


def _flash(client: SecureClient, path: str) -> str:
    response = client.get(path)
    assert response.status_code == 200
    return _text(response)


def _invite(
    client: SecureClient, team: Team, capture: CaptureOnCommit, email: str, role: str = "engineer"
) -> str:
    with capture(execute=True):
        response = client.post(team.url("invitations/"), {"email": email, "role": role})
    assert response.status_code == 302
    assert response["Location"] == team.url("members/")
    (message,) = (m for m in mail.outbox if m.to == [email])
    token = path_of(link_in(message, "/invitations/")).split("/")[2]
    register_canary(token)
    return token


# -- list, create, overview ----------------------------------------------------------------------


@pytest.mark.backend
def test_create_organisation_from_the_list_page(
    as_user: Callable[[User], SecureClient], make_user: MakeUser
) -> None:
    user = make_user("founder@plant.example")
    client = as_user(user)
    empty = client.get("/orgs/")
    assert empty.status_code == 200
    assert "You do not belong to an organisation yet" in _text(empty)

    response = client.post("/orgs/", {"name": "  Rhine Pumping  ", "region": "eu-north"})
    org = Organisation.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/orgs/{org.pk}/"
    assert (org.name, org.region) == ("Rhine Pumping", "eu-north")
    assert Membership.objects.get(organisation=org).role == Role.OWNER
    assert client.session["org"] == str(org.pk)

    overview = _flash(client, f"/orgs/{org.pk}/")
    assert "Rhine Pumping was created; you are its owner." in overview
    assert "EU North (Stockholm)" in overview
    assert "fixed when the organisation was created" in overview
    assert "1 member<" in overview
    listed = _text(client.get("/orgs/"))
    assert "Rhine Pumping" in listed
    assert "Owner" in listed


def test_invalid_new_organisation_is_422_with_the_reason(
    as_user: Callable[[User], SecureClient], make_user: MakeUser
) -> None:
    client = as_user(make_user("founder@plant.example"))
    response = client.post("/orgs/", {"name": "", "region": "mars-1"})
    assert response.status_code == 422
    assert "This field is required." in _text(response)
    assert "Select a valid choice." in _text(response)
    assert not Organisation.objects.exists()


def test_platform_staff_cannot_create_an_organisation_page_says_why(
    as_user: Callable[[User], SecureClient], make_user: MakeUser
) -> None:
    staff = make_user("support@fieldlink.example", staff_role=StaffRole.SUPPORT)
    response = as_user(staff).post("/orgs/", {"name": "Sneaky", "region": "eu-central"})
    assert response.status_code == 403
    assert "Platform staff accounts cannot belong" in _alert(response)
    assert not Organisation.objects.exists()


@pytest.mark.parametrize("role", ["owner", "admin", "engineer", "viewer"])
def test_every_role_sees_overview_members_and_settings(
    role: str, team: Team, as_user: Callable[[User], SecureClient]
) -> None:
    client = as_user(getattr(team, role))
    for tail in ("", "members/", "settings/"):
        response = client.get(team.url(tail))
        assert response.status_code == 200, tail
        text = _text(response)
        assert "Acme Water" in text
        assert "Cache-Control" in response
        assert "no-cache" in response["Cache-Control"]
    overview = _text(client.get(team.url()))
    assert "4 members" in overview
    assert "owner@acme-water.example" in overview
    admin_links = f'href="/orgs/{team.org.pk}/audit/"' in overview
    assert admin_links is (role in {"owner", "admin"})
    assert (f'href="/orgs/{team.org.pk}/exports/"' in overview) is (role in {"owner", "admin"})


def test_viewer_sees_no_manage_buttons(team: Team, as_user: Callable[[User], SecureClient]) -> None:
    client = as_user(team.viewer)
    members = _text(client.get(team.url("members/")))
    for marker in MANAGE_MARKERS:
        assert marker not in members, marker
    assert "invitee" not in members  # invitations are the managers' business
    assert ">Leave<" in members
    settings = _text(client.get(team.url("settings/")))
    assert 'value="rename"' not in settings
    assert 'value="delete"' not in settings
    assert "Only the owner can delete the organisation" in settings

    owner_members = _text(as_user(team.owner).get(team.url("members/")))
    for marker in MANAGE_MARKERS[:3]:
        assert marker in owner_members, marker


@pytest.mark.backend
def test_viewer_posts_to_manage_actions_are_403_and_change_nothing(
    team: Team, as_user: Callable[[User], SecureClient]
) -> None:
    owner_scope = access.resolve(Principal(team.owner, "session"), team.org.pk)
    invitation = services.invite_member(
        owner_scope, email="someone@acme-water.example", role="viewer"
    ).invitation
    engineer = team.membership(team.engineer)
    client = as_user(team.viewer)
    entries = AuditEntry.objects.count()
    attempts = [
        (team.url("invitations/"), {"email": "friend@elsewhere.example", "role": "admin"}),
        (team.url(f"members/{engineer.pk}/role/"), {"role": "viewer"}),
        (team.url(f"members/{engineer.pk}/remove/"), {}),
        (team.url(f"members/{engineer.pk}/transfer/"), {}),
        (team.url(f"invitations/{invitation.pk}/revoke/"), {}),
        (team.url("settings/"), {"action": "rename", "name": "Taken Over"}),
        (team.url("settings/"), {"action": "delete", "confirm_name": "Acme Water"}),
    ]
    for path, data in attempts:
        response = client.post(path, data)
        assert response.status_code == 403, path
        assert "does not allow" in _alert(response)
    # The confirmation pages refuse up front too: no form for a request that would fail.
    assert client.get(team.url(f"members/{engineer.pk}/remove/")).status_code == 403
    assert client.get(team.url(f"members/{engineer.pk}/transfer/")).status_code == 403
    assert AuditEntry.objects.count() == entries
    team.org.refresh_from_db()
    assert team.org.name == "Acme Water"
    assert not team.org.pending_deletion
    assert team.membership(team.engineer).role == Role.ENGINEER
    assert invitation.status() == "pending"


# -- members: invite, role, remove, leave, transfer ------------------------------------------------


@pytest.mark.backend
def test_admin_invites_changes_a_role_and_revokes_from_the_members_page(
    team: Team,
    as_user: Callable[[User], SecureClient],
    django_capture_on_commit_callbacks: CaptureOnCommit,
) -> None:
    client = as_user(team.admin)
    _invite(client, team, django_capture_on_commit_callbacks, "new.hand@acme-water.example")
    page = _flash(client, team.url("members/"))
    assert "Invitation sent to new.hand@acme-water.example." in page
    assert "new.hand@acme-water.example" in page
    assert "Pending" in page

    engineer = team.membership(team.engineer)
    response = client.post(team.url(f"members/{engineer.pk}/role/"), {"role": "admin"})
    assert response.status_code == 302
    assert team.membership(team.engineer).role == Role.ADMIN
    assert "engineer@acme-water.example is now admin." in _flash(client, team.url("members/"))

    invitation = Invitation.objects.get(email="new.hand@acme-water.example")
    response = client.post(team.url(f"invitations/{invitation.pk}/revoke/"))
    assert response.status_code == 302
    invitation.refresh_from_db()
    assert invitation.status() == "revoked"
    assert "is revoked" in _flash(client, team.url("members/"))


def test_invalid_invitation_form_is_422_on_the_members_page(
    team: Team, as_user: Callable[[User], SecureClient]
) -> None:
    response = as_user(team.admin).post(
        team.url("invitations/"), {"email": "not-an-address", "role": "owner"}
    )
    assert response.status_code == 422
    text = _text(response)
    assert "Enter a valid email address." in text
    assert "Select a valid choice." in text
    assert "<h1>Members</h1>" in text
    assert not Invitation.objects.exists()


def test_inviting_a_member_again_is_409_with_the_reason(
    team: Team, as_user: Callable[[User], SecureClient]
) -> None:
    response = as_user(team.admin).post(
        team.url("invitations/"), {"email": "viewer@acme-water.example", "role": "viewer"}
    )
    assert response.status_code == 409
    assert "already a member" in _alert(response)


def test_role_change_to_owner_is_409_and_unknown_role_is_422(
    team: Team, as_user: Callable[[User], SecureClient]
) -> None:
    client = as_user(team.admin)
    viewer = team.membership(team.viewer)
    owner = team.membership(team.owner)
    assert client.post(team.url(f"members/{viewer.pk}/role/"), {"role": "owner"}).status_code == 409
    assert client.post(team.url(f"members/{owner.pk}/role/"), {"role": "viewer"}).status_code == 409
    response = client.post(team.url(f"members/{viewer.pk}/role/"), {"role": "emperor"})
    assert response.status_code == 422
    assert "Unknown role." in _alert(response)
    assert team.membership(team.viewer).role == Role.VIEWER


def test_remove_member_asks_first_then_removes(
    team: Team, as_user: Callable[[User], SecureClient]
) -> None:
    client = as_user(team.admin)
    engineer = team.membership(team.engineer)
    confirm = client.get(team.url(f"members/{engineer.pk}/remove/"))
    assert confirm.status_code == 200
    assert "Remove engineer@acme-water.example?" in _text(confirm)
    assert Membership.objects.filter(pk=engineer.pk).exists(), "a GET removes nothing"

    response = client.post(team.url(f"members/{engineer.pk}/remove/"))
    assert response.status_code == 302
    assert not Membership.objects.filter(pk=engineer.pk).exists()
    assert "engineer@acme-water.example was removed." in _flash(client, team.url("members/"))


def test_member_leaves_after_confirming_and_owner_cannot(
    team: Team, as_user: Callable[[User], SecureClient]
) -> None:
    viewer = as_user(team.viewer)
    own = team.membership(team.viewer)
    viewer.get(team.url())  # remembered as the last organisation
    assert "Leave Acme Water?" in _text(viewer.get(team.url(f"members/{own.pk}/remove/")))
    response = viewer.post(team.url(f"members/{own.pk}/remove/"))
    assert response.status_code == 302
    assert response["Location"] == "/orgs/"
    assert "org" not in viewer.session
    assert "You left Acme Water." in _flash(viewer, "/orgs/")
    assert viewer.get(team.url()).status_code == 404

    owner = as_user(team.owner)
    mine = team.membership(team.owner)
    response = owner.post(team.url(f"members/{mine.pk}/remove/"))
    assert response.status_code == 409
    assert "transfer ownership first" in _alert(response)
    assert "Back to Acme Water" in _text(response)


@pytest.mark.backend
def test_owner_transfers_ownership_after_confirming(
    team: Team, as_user: Callable[[User], SecureClient]
) -> None:
    client = as_user(team.owner)
    engineer = team.membership(team.engineer)
    confirm = client.get(team.url(f"members/{engineer.pk}/transfer/"))
    assert confirm.status_code == 200
    assert "Make engineer@acme-water.example the owner?" in _text(confirm)
    assert team.membership(team.owner).role == Role.OWNER

    response = client.post(team.url(f"members/{engineer.pk}/transfer/"))
    assert response.status_code == 302
    assert team.membership(team.engineer).role == Role.OWNER
    assert team.membership(team.owner).role == Role.ADMIN
    assert "engineer@acme-water.example now owns Acme Water." in _flash(
        client, team.url("members/")
    )
    # The former owner is an admin now: no more transfer.
    assert as_user(team.owner).post(team.url(f"members/{engineer.pk}/transfer/")).status_code == 403


def test_admin_cannot_transfer_ownership(
    team: Team, as_user: Callable[[User], SecureClient]
) -> None:
    viewer = team.membership(team.viewer)
    response = as_user(team.admin).post(team.url(f"members/{viewer.pk}/transfer/"))
    assert response.status_code == 403
    assert team.membership(team.owner).role == Role.OWNER


def test_get_on_an_action_address_is_405(
    team: Team, as_user: Callable[[User], SecureClient]
) -> None:
    client = as_user(team.admin)
    viewer = team.membership(team.viewer)
    for tail in ("invitations/", f"members/{viewer.pk}/role/"):
        response = client.get(team.url(tail))
        assert response.status_code == 405
        assert response["Allow"] == "POST"


def test_unknown_member_in_own_organisation_is_404(
    team: Team, as_user: Callable[[User], SecureClient]
) -> None:
    client = as_user(team.owner)
    stranger = uuid.uuid4()
    assert client.get(team.url(f"members/{stranger}/remove/")).status_code == 404
    assert client.post(team.url(f"members/{stranger}/remove/")).status_code == 404
    assert client.post(team.url(f"members/{stranger}/role/"), {"role": "viewer"}).status_code == 404


# -- settings: rename, deletion with its grace period ---------------------------------------------


def test_admin_renames_and_engineer_cannot(
    team: Team, as_user: Callable[[User], SecureClient]
) -> None:
    admin = as_user(team.admin)
    assert 'value="rename"' in _text(admin.get(team.url("settings/")))
    response = admin.post(team.url("settings/"), {"action": "rename", "name": "Acme Water North"})
    assert response.status_code == 302
    team.org.refresh_from_db()
    assert team.org.name == "Acme Water North"
    assert "now called Acme Water North" in _flash(admin, team.url("settings/"))

    assert admin.post(team.url("settings/"), {"action": "rename", "name": " "}).status_code == 422
    assert admin.post(team.url("settings/"), {"action": "explode"}).status_code == 422
    engineer = as_user(team.engineer)
    assert (
        engineer.post(team.url("settings/"), {"action": "rename", "name": "Mine"}).status_code
        == 403
    )
    team.org.refresh_from_db()
    assert team.org.name == "Acme Water North"


@pytest.mark.backend
def test_owner_schedules_deletion_by_typing_the_name_and_cancels_it(
    team: Team,
    as_user: Callable[[User], SecureClient],
    django_capture_on_commit_callbacks: CaptureOnCommit,
) -> None:
    client = as_user(team.owner)
    settings_page = _text(client.get(team.url("settings/")))
    assert f"{services.ORGANISATION_DELETION_GRACE.days} days" in settings_page

    wrong = client.post(team.url("settings/"), {"action": "delete", "confirm_name": "acme"})
    assert wrong.status_code == 422
    assert "The name does not match" in _text(wrong)
    team.org.refresh_from_db()
    assert not team.org.pending_deletion

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            team.url("settings/"), {"action": "delete", "confirm_name": "Acme Water"}
        )
    assert response.status_code == 302
    team.org.refresh_from_db()
    assert team.org.deletion_due_at is not None
    due = team.org.deletion_due_at
    assert due - timezone.now() > services.ORGANISATION_DELETION_GRACE - timedelta(minutes=1)
    page = _flash(client, team.url())
    assert "will be deleted on" in page
    assert f'Scheduled for deletion on <time datetime="{due.isoformat()}' in page

    # While it waits, admins see the banner and cannot change anything (409, with the reason).
    admin = as_user(team.admin)
    refused = admin.post(team.url("settings/"), {"action": "rename", "name": "Last Minute"})
    assert refused.status_code == 409
    assert "scheduled for deletion" in _alert(refused)
    assert "Change role" not in _text(admin.get(team.url("members/")))

    response = client.post(team.url("settings/"), {"action": "cancel_deletion"})
    assert response.status_code == 302
    team.org.refresh_from_db()
    assert not team.org.pending_deletion
    assert "The deletion is cancelled" in _flash(client, team.url("settings/"))
    again = client.post(team.url("settings/"), {"action": "cancel_deletion"})
    assert again.status_code == 409
    assert "No deletion is scheduled." in _alert(again)


# -- tenancy, CSRF, switcher -----------------------------------------------------------------------


@pytest.mark.backend
def test_cross_tenant_org_pages_are_404_without_their_name(
    team: Team, rival: Team, as_user: Callable[[User], SecureClient]
) -> None:
    client = as_user(team.owner)
    rival_member = rival.membership(rival.viewer)
    for method, path in [
        ("get", rival.url()),
        ("get", rival.url("members/")),
        ("get", rival.url("settings/")),
        ("get", rival.url(f"members/{rival_member.pk}/remove/")),
        ("get", team.url(f"members/{rival_member.pk}/remove/")),
        ("post", rival.url("settings/")),
        ("post", rival.url("invitations/")),
        ("post", team.url(f"members/{rival_member.pk}/remove/")),
        ("post", team.url(f"members/{rival_member.pk}/role/")),
    ]:
        response = getattr(client, method)(path, {"action": "rename", "role": "viewer"})
        assert response.status_code == 404, (method, path)
        text = _text(response)
        assert "Rival Gas" not in text
        assert "rival-gas.example" not in text
    assert Membership.objects.filter(pk=rival_member.pk, role=Role.VIEWER).exists()
    assert "Rival Gas" not in _text(client.get("/orgs/"))


@pytest.mark.backend
def test_csrf_is_enforced_on_organisation_forms(
    team: Team, make_client: MakeClient, django_capture_on_commit_callbacks: CaptureOnCommit
) -> None:
    client = make_client(enforce_csrf_checks=True)
    client.force_login(team.admin)
    # Same-origin Referer (checked over HTTPS) on both: only the missing token differs.
    same_origin = {"HTTP_REFERER": "https://testserver" + team.url("members/")}
    forged = client.post(
        team.url("invitations/"), {"email": "x@evil.example", "role": "admin"}, **same_origin
    )
    assert forged.status_code == 403
    assert not Invitation.objects.exists()

    page = client.get(team.url("members/"))
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', _text(page))
    assert token
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            team.url("invitations/"),
            {"email": "x@good.example", "role": "viewer", "csrfmiddlewaretoken": token.group(1)},
            **same_origin,
        )
    assert response.status_code == 302
    assert Invitation.objects.filter(email="x@good.example").exists()


def test_switcher_lists_my_organisations_and_remembers_the_last(
    team: Team, make_client: MakeClient, as_user: Callable[[User], SecureClient]
) -> None:
    second = services.create_organisation(
        Principal(team.viewer, "session"), name="Zephyr Hydro", region="us-east"
    ).organisation
    client = as_user(team.viewer)
    home = _text(client.get("/"))
    switcher = re.search(r'<details class="org-switcher">.*?</details>', home, re.S)
    assert switcher
    assert "Organisations</summary>" in switcher.group(0)
    assert "Acme Water" in switcher.group(0)
    assert "Zephyr Hydro" in switcher.group(0)

    client.get(f"/orgs/{second.pk}/")
    assert client.session["org"] == str(second.pk)
    home = _text(client.get("/"))
    summary = re.search(r"<summary[^>]*>(.*?)</summary>", home, re.S)
    assert summary
    assert summary.group(1) == "Zephyr Hydro"
    assert f'href="/orgs/{team.org.pk}/"' in home

    assert "org-switcher" not in _text(make_client().get("/"))


# -- invitation links ------------------------------------------------------------------------------


@pytest.fixture
def production_logging() -> Iterator[io.StringIO]:
    """Logging set up as ``fieldlink serve`` does: refusals of a token URL are logged by Django
    (``Gone: /invitations/fli_…/``), and only our redaction layer keeps the token out."""
    root = logging.getLogger()
    level = root.level
    stream = io.StringIO()
    configure_logging("INFO", stream=stream)
    yield stream
    reset_logging()
    root.setLevel(level)


def _no_leak_headers(response: Any) -> None:
    # Only the origin, never the path with the token (tests/e2e: "no-referrer" breaks CSRF).
    assert response["Referrer-Policy"] == "strict-origin"
    assert "no-store" in response["Cache-Control"]


@pytest.mark.backend
def test_invitation_link_shows_the_invitation_and_accepts_once(
    *,
    team: Team,
    make_user: MakeUser,
    make_client: MakeClient,
    as_user: Callable[[User], SecureClient],
    django_capture_on_commit_callbacks: CaptureOnCommit,
    production_logging: io.StringIO,
) -> None:
    token = _invite(
        as_user(team.admin), team, django_capture_on_commit_callbacks, "joiner@acme-water.example"
    )
    link = f"/invitations/{token}/"

    anonymous = make_client()
    page = anonymous.get(link)
    assert page.status_code == 200
    _no_leak_headers(page)
    text = _text(page)
    for fact in ("Join Acme Water", "Engineer", "admin@acme-water.example"):
        assert fact in text
    assert f'/accounts/login/?next=/invitations/{token}/"' in text
    assert f'/accounts/signup/?next=/invitations/{token}/"' in text
    assert "Accept and join" not in text
    response = anonymous.post(link)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=")
    assert not Membership.objects.filter(user__email="joiner@acme-water.example").exists()

    joiner = as_user(make_user("joiner@acme-water.example"))
    assert "Accept and join" in _text(joiner.get(link))
    response = joiner.post(link)
    assert response.status_code == 302
    assert response["Location"] == team.url()
    _no_leak_headers(response)
    assert Membership.objects.get(user__email="joiner@acme-water.example").role == Role.ENGINEER
    assert joiner.session["org"] == str(team.org.pk)
    assert "Welcome to Acme Water." in _flash(joiner, team.url())

    used = joiner.get(link)
    assert used.status_code == 410
    assert "already been used" in _alert(used)
    again = joiner.post(link)
    assert again.status_code == 409
    assert "has been used" in _alert(again)


def test_invitation_for_another_address_is_403_with_a_clear_message(
    team: Team,
    make_user: MakeUser,
    as_user: Callable[[User], SecureClient],
    django_capture_on_commit_callbacks: CaptureOnCommit,
    production_logging: io.StringIO,
) -> None:
    token = _invite(
        as_user(team.admin), team, django_capture_on_commit_callbacks, "meant@acme-water.example"
    )
    other = as_user(make_user("forwarded-to@elsewhere.example"))
    page = _text(other.get(f"/invitations/{token}/"))
    assert "You are signed in as forwarded-to@elsewhere.example" in page
    response = other.post(f"/invitations/{token}/")
    assert response.status_code == 403
    assert "sent to another e-mail address" in _alert(response)
    assert not Membership.objects.filter(user__email="forwarded-to@elsewhere.example").exists()


def test_revoked_expired_and_unknown_invitation_links_say_so(
    team: Team,
    make_user: MakeUser,
    as_user: Callable[[User], SecureClient],
    django_capture_on_commit_callbacks: CaptureOnCommit,
    production_logging: io.StringIO,
) -> None:
    admin = as_user(team.admin)
    revoked = _invite(admin, team, django_capture_on_commit_callbacks, "a@acme-water.example")
    expired = _invite(admin, team, django_capture_on_commit_callbacks, "b@acme-water.example")
    Invitation.objects.filter(email="a@acme-water.example").update(revoked_at=timezone.now())
    Invitation.objects.filter(email="b@acme-water.example").update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    client = as_user(make_user("a@acme-water.example"))
    withdrawn = client.get(f"/invitations/{revoked}/")
    assert withdrawn.status_code == 410
    assert "withdrawn" in _alert(withdrawn)
    _no_leak_headers(withdrawn)
    late = client.get(f"/invitations/{expired}/")
    assert late.status_code == 410
    assert "expired" in _alert(late)

    unknown = client.get("/invitations/fli_" + "x" * 43 + "/")
    assert unknown.status_code == 404
    _no_leak_headers(unknown)
    assert "Acme Water" not in _text(unknown)
    assert client.post(f"/invitations/{revoked}/").status_code == 409
    assert not Membership.objects.filter(user__email="a@acme-water.example").exists()
    logged = production_logging.getvalue()
    assert "/invitations/fli_[REDACTED]/" in logged
    assert revoked not in logged
    assert expired not in logged
