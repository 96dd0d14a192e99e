"""The audit trail API for organisation admins: list, filter, page, export (CSV, JSON), verify.

Entries are made by the real use cases (fieldlink.accounts.services) inside a transaction, as a
request would; ``build_org`` is shared with the page tests.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from allauth.account.models import EmailAddress
from asgiref.sync import async_to_sync
from django.db import transaction
from django.test import AsyncClient

from fieldlink.accounts import services as accounts
from fieldlink.accounts.access import Principal, Scope
from fieldlink.accounts.models import ApiKeyScope, Membership, Organisation, Role, User
from fieldlink.audit import services
from fieldlink.audit.models import AuditEntry
from tests.accounts.conftest import SecureClient
from tests.audit.conftest import raw
from tests.plugins.log_canary import register_canary

pytestmark = [pytest.mark.django_db]

FORMULAS = ("=HYPERLINK(1)", "+1+1", "-2+3", "@SUM(A1)", "\tcmd", "\rcmd", "'quoted")


@dataclass
class Org:
    org: Organisation
    scope: Scope  # the owner's
    users: dict[str, User] = field(default_factory=dict)
    memberships: dict[str, Membership] = field(default_factory=dict)

    @property
    def chain(self) -> str:
        return str(self.org.pk)

    def url(self, tail: str = "") -> str:
        return f"/api/v1/orgs/{self.org.pk}/audit{tail}"


def make_user(email: str, **fields: Any) -> User:
    user = User.objects.create_user(email, **fields)
    EmailAddress.objects.create(user=user, email=user.email, verified=True, primary=True)
    return user


def build_org(label: str) -> Org:
    """An organisation with an owner, an admin, an engineer and a viewer who joined by
    invitation, and a role change: 9 entries in its chain."""
    owner = make_user(f"owner@{label}.example")
    with transaction.atomic():
        scope = accounts.create_organisation(
            Principal(owner, "session"), name=f"Plant {label}", region="eu-central"
        )
    org = Org(scope.organisation, scope, {"owner": owner})
    for role in ("admin", "engineer", "viewer"):
        user = make_user(f"{role}@{label}.example")
        with transaction.atomic():
            issued = accounts.invite_member(scope, email=user.email, role=Role.VIEWER)
            register_canary(issued.token)
            org.memberships[role] = accounts.accept_invitation(
                Principal(user, "session"), issued.token
            )
        org.users[role] = user
    with transaction.atomic():
        for role in ("admin", "engineer"):
            accounts.change_role(scope, org.memberships[role].pk, role=role)
    return org


def client_for(user: User | None) -> SecureClient:
    client = SecureClient(HTTP_USER_AGENT="audit-tests/1.0", REMOTE_ADDR="192.0.2.7")
    if user is not None:
        client.force_login(user)
    return client


def actions(org: Org) -> list[str]:
    """The org's chain, newest first, as the API should return it."""
    return list(
        AuditEntry.objects.filter(chain=org.chain)
        .order_by("-sequence")
        .values_list("action", flat=True)
    )


@pytest.fixture
def plant() -> Org:
    return build_org("alpha")


@pytest.fixture
def other() -> Org:
    return build_org("beta")


@pytest.fixture
def admin(plant: Org) -> SecureClient:
    return client_for(plant.users["admin"])


def _rows_of_csv(text: str) -> list[dict[str, Any]]:
    rows = []
    for row in csv.DictReader(io.StringIO(text, newline="")):
        # The documented escape: exactly one leading apostrophe is dropped from a cell.
        cells: dict[str, Any] = {k: v[1:] if v.startswith("'") else v for k, v in row.items()}
        cells["sequence"] = int(cells["sequence"])
        cells["before"], cells["after"] = json.loads(cells["before"]), json.loads(cells["after"])
        rows.append(cells)
    return rows


def _streamed(response: Any) -> str:
    assert response.streaming
    return b"".join(response.streaming_content).decode()


# -- list, filters, paging ---------------------------------------------------------------------


def test_admin_reads_the_trail_newest_first_with_its_links(plant: Org, admin: SecureClient) -> None:
    response = admin.get(plant.url())
    assert response.status_code == 200, response.content
    body = response.json()
    entries = body["entries"]
    assert [e["action"] for e in entries] == actions(plant)
    assert entries[-1]["action"] == "organisation.created"
    assert [e["sequence"] for e in entries] == list(range(len(entries), 0, -1))
    for newer, older in itertools.pairwise(entries):
        assert newer["prev_hash"] == older["hash"]
    assert entries[-1]["prev_hash"] == "0" * 64
    joined = next(e for e in entries if e["action"] == "member.joined")
    assert joined["actor_label"] == "viewer@alpha.example"
    assert joined["actor_type"] == "user"
    assert joined["after"] == {"user": "viewer@alpha.example", "role": "viewer"}
    assert joined["created_at"].endswith(("Z", "+00:00"))
    assert set(entries[0]) >= {
        "sequence", "created_at", "actor_type", "actor_label", "on_behalf_of_grant", "action",
        "target_type", "target_id", "before", "after", "ip", "client", "hash", "prev_hash",
    }  # fmt: skip
    assert body["next_before_sequence"] is None


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"action": "member.role_changed"}, ["member.role_changed"] * 2),
        ({"action": "member."}, ["member.role_changed"] * 2 + ["member.joined"] * 3),
        ({"action": "member"}, []),  # no trailing dot: exact, and no action is called that
        ({"actor": "VIEWER@alpha"}, ["member.joined"]),  # part of the label, any case
        ({"target_type": "organisation"}, ["organisation.created"]),
        ({"target_type": "invitation", "actor": "owner@"}, ["invitation.created"] * 3),
    ],
)
def test_filters_narrow_the_trail(
    plant: Org, admin: SecureClient, params: dict[str, str], expected: list[str]
) -> None:
    response = admin.get(plant.url(), params)
    assert response.status_code == 200, response.content
    assert [e["action"] for e in response.json()["entries"]] == expected


def test_filter_by_actor_id_and_target_id(plant: Org, admin: SecureClient) -> None:
    engineer = plant.memberships["engineer"]
    by_target = admin.get(plant.url(), {"target_id": str(engineer.pk)}).json()["entries"]
    assert [e["action"] for e in by_target] == ["member.role_changed", "member.joined"]
    by_actor = admin.get(plant.url(), {"actor": str(plant.users["engineer"].pk)}).json()
    assert [e["action"] for e in by_actor["entries"]] == ["member.joined"]


def test_since_is_inclusive_and_until_exclusive(plant: Org, admin: SecureClient) -> None:
    entries = list(AuditEntry.objects.filter(chain=plant.chain).order_by("sequence"))
    third = entries[2].created_at.astimezone(UTC)
    since = admin.get(plant.url(), {"since": third.isoformat(), "limit": 500}).json()
    assert {e["sequence"] for e in since["entries"]} >= {e.sequence for e in entries[2:]}
    assert all(datetime.fromisoformat(e["created_at"]) >= third for e in since["entries"])
    until = admin.get(plant.url(), {"until": third.isoformat()}).json()
    assert all(datetime.fromisoformat(e["created_at"]) < third for e in until["entries"])
    # A naive time is UTC; an offset is honoured.
    later = (third + timedelta(hours=1)).replace(tzinfo=None).isoformat()
    assert admin.get(plant.url(), {"since": later}).json()["entries"] == []
    shifted = (third + timedelta(minutes=30)).astimezone(UTC).isoformat().replace("+00:00", "Z")
    assert admin.get(plant.url(), {"until": shifted}).json()["entries"]


@pytest.mark.backend
def test_cursor_pages_cover_every_entry_exactly_once(plant: Org, admin: SecureClient) -> None:
    seen: list[int] = []
    params: dict[str, Any] = {"limit": 2}
    first = True
    while True:
        body = admin.get(plant.url(), params).json()
        assert len(body["entries"]) <= 2
        seen += [e["sequence"] for e in body["entries"]]
        if first:
            # Entries appended while someone pages do not shift the pages already cut.
            with transaction.atomic():
                accounts.rename_organisation(plant.scope, name="Plant alpha renamed")
            first = False
        if body["next_before_sequence"] is None:
            break
        params["before_sequence"] = body["next_before_sequence"]
    assert seen == list(range(9, 0, -1))


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"before_sequence": "0"}, "before_sequence"),
        ({"before_sequence": str(2**64)}, "before_sequence"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2025-01-02T00:00:00Z", "until": "2025-01-01T00:00:00Z"}, "until"),
        ({"action": "member joined"}, "action"),
        ({"action": "a" * 101}, "action"),
        ({"actor": "x" * 321}, "actor"),
        ({"target_id": "abc\x00def"}, "target_id"),
        ({"target_type": "t" * 65}, "target_type"),
        ({"acter": "ada"}, "acter"),  # a misspelt filter is refused, not ignored
    ],
)
def test_bad_filters_are_422_naming_the_field(
    plant: Org, admin: SecureClient, params: dict[str, str], field: str
) -> None:
    for tail in ("", "/export"):
        response = admin.get(plant.url(tail), params)
        assert response.status_code == 422, (tail, response.content)
        body = response.json()
        assert body["code"] == "validation_error"
        assert any(error["field"].endswith(field) for error in body["details"]["errors"]), body


# -- who may read ------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["engineer", "viewer"])
def test_engineers_and_viewers_may_not_read_the_trail(plant: Org, role: str) -> None:
    client = client_for(plant.users[role])
    for tail in ("", "/export", "/verify"):
        response = client.get(plant.url(tail))
        assert response.status_code == 403, (tail, response.content)
        assert response.json()["code"] == "permission_denied"
    assert not AuditEntry.objects.filter(action="audit.exported").exists()


@pytest.mark.backend
def test_cross_tenant_audit_read_is_404(plant: Org, other: Org) -> None:
    # The owner of another organisation asks for this one's trail by its id.
    intruder = client_for(other.users["owner"])
    for tail in ("", "/export", "/export?format=json", "/verify"):
        response = intruder.get(plant.url(tail))
        assert response.status_code == 404, (tail, response.content)
        assert response.json()["code"] == "not_found"
        leaked = response.content.decode()
        assert "alpha.example" not in leaked
        assert str(plant.org.pk) not in leaked
    assert not AuditEntry.objects.filter(action="audit.exported").exists()
    # Their own trail holds only their own organisation's entries.
    own = intruder.get(other.url(), {"limit": 500}).json()["entries"]
    assert own
    assert "alpha.example" not in json.dumps(own)


def test_unknown_organisation_is_404_and_anonymous_is_401(plant: Org) -> None:
    admin = client_for(plant.users["admin"])
    missing = admin.get("/api/v1/orgs/00000000-0000-4000-8000-000000000000/audit")
    assert missing.status_code == 404
    assert client_for(None).get(plant.url()).status_code == 401


def test_platform_staff_without_a_grant_sees_no_trail(plant: Org) -> None:
    staff = make_user("support@fieldlink.example", is_staff=True)
    assert staff.is_platform_staff
    assert client_for(staff).get(plant.url()).status_code == 404


def test_read_only_api_key_may_read_and_export(plant: Org) -> None:
    with transaction.atomic():
        issued = accounts.create_api_key(plant.users["admin"], name="siem", scope=ApiKeyScope.READ)
    register_canary(issued.secret)
    script = client_for(None)
    auth = {"HTTP_AUTHORIZATION": f"Bearer {issued.secret}"}
    assert script.get(plant.url(), **auth).status_code == 200
    export = script.get(plant.url("/export"), {"format": "json"}, **auth)
    assert export.status_code == 200
    assert json.loads(_streamed(export))
    exported = AuditEntry.objects.get(chain=plant.chain, action="audit.exported")
    assert exported.actor_type == "api_key"
    assert exported.actor_id == str(issued.key.pk)


# -- exports -----------------------------------------------------------------------------------


@pytest.mark.backend
def test_csv_export_reverifies_offline_and_neutralises_formulas(
    plant: Org, admin: SecureClient
) -> None:
    with transaction.atomic():
        for i, text in enumerate(FORMULAS):
            services.record(
                plant.chain,
                action="note.added",
                actor_type="system",
                actor_id=text,
                actor_label=text,
                target_type="note",
                target_id=f"{text[:20]}{i}",
                before={"text": text},
                after=-1,
                client=text,
            )
    response = admin.get(plant.url("/export"), {"format": "csv"})
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    day = datetime.now(UTC).date().isoformat()
    assert (
        response["Content-Disposition"] == f'attachment; filename="audit-{plant.org.pk}-{day}.csv"'
    )
    assert response["Cache-Control"] == "no-store"
    text = _streamed(response)

    # No cell starts a formula for a spreadsheet.
    for raw_row in csv.reader(io.StringIO(text, newline="")):
        for cell in raw_row:
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
    rows = _rows_of_csv(text)
    assert list(rows[0]) == list(services.EXPORT_FIELDS)
    stored = list(AuditEntry.objects.filter(chain=plant.chain).order_by("sequence"))
    # The export was planned before it was recorded: its own entry is the next one.
    assert [r["sequence"] for r in rows] == [e.sequence for e in stored[:-1]]
    assert stored[-1].action == "audit.exported"
    assert response["Fieldlink-Export-Up-To-Sequence"] == str(stored[-2].sequence)
    # Every row re-hashes to its hash and links to the previous one: verifiable offline.
    previous = "0" * 64
    for row in rows:
        assert services.entry_hash(row) == row["hash"]
        assert row["prev_hash"] == previous
        previous = row["hash"]
    # After the escape is undone, the values are exactly what was recorded.
    notes = [r for r in rows if r["action"] == "note.added"]
    assert [r["actor_label"] for r in notes] == list(FORMULAS)
    assert [r["before"] for r in notes] == [{"text": t} for t in FORMULAS]


def test_json_export_is_an_array_that_reverifies_and_honours_filters(
    plant: Org, admin: SecureClient
) -> None:
    response = admin.get(plant.url("/export"), {"format": "json", "action": "member."})
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response["Content-Disposition"].endswith('.json"')
    rows = json.loads(_streamed(response))
    assert isinstance(rows, list)
    assert [r["action"] for r in rows] == ["member.joined"] * 3 + ["member.role_changed"] * 2
    assert [r["sequence"] for r in rows] == sorted(r["sequence"] for r in rows)
    for row in rows:
        assert services.entry_hash(row) == row["hash"]
        assert row["chain"] == plant.chain
    assert response["Fieldlink-Export-Entries"] == "5"
    assert response["Fieldlink-Export-Truncated"] == "false"
    assert "Fieldlink-Export-Next-Since" not in response


def test_an_empty_json_export_is_still_an_array(plant: Org, admin: SecureClient) -> None:
    response = admin.get(plant.url("/export"), {"format": "json", "action": "nothing.here"})
    assert json.loads(_streamed(response)) == []


def test_every_export_is_recorded_in_the_organisation_chain(
    plant: Org, admin: SecureClient
) -> None:
    response = admin.get(plant.url("/export"), {"format": "csv", "actor": "owner@"})
    _streamed(response)
    entry = AuditEntry.objects.filter(chain=plant.chain).order_by("-sequence").first()
    assert entry is not None
    assert entry.action == "audit.exported"
    assert entry.actor_label == "admin@alpha.example"
    assert (entry.target_type, entry.target_id) == ("organisation", plant.chain)
    assert entry.after == {
        "format": "csv",
        "filters": {"actor": "owner@"},
        "entries": 6,  # created the organisation, invited three, changed two roles
        "up_to_sequence": entry.sequence - 1,
        "truncated": False,
    }
    assert services.verify_report(plant.chain).intact


@pytest.mark.backend
def test_export_is_bounded_and_says_where_to_continue(
    plant: Org, admin: SecureClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(services, "EXPORT_LIMIT", 4)
    first = admin.get(plant.url("/export"), {"format": "json"})
    rows = json.loads(_streamed(first))
    assert [r["sequence"] for r in rows] == [1, 2, 3, 4]
    assert first["Fieldlink-Export-Truncated"] == "true"
    assert first["Fieldlink-Export-Limit"] == "4"
    assert first["Fieldlink-Export-Entries"] == "4"
    fifth = AuditEntry.objects.get(chain=plant.chain, sequence=5)
    assert datetime.fromisoformat(first["Fieldlink-Export-Next-Since"]) == fifth.created_at
    # Following the hint (since is inclusive) leaves no gap.
    rest = admin.get(
        plant.url("/export"), {"format": "json", "since": first["Fieldlink-Export-Next-Since"]}
    )
    more = json.loads(_streamed(rest))
    assert more[0]["sequence"] <= 5
    assert AuditEntry.objects.filter(chain=plant.chain, action="audit.exported").count() == 2
    recorded = AuditEntry.objects.filter(action="audit.exported").order_by("sequence").first()
    assert recorded is not None
    assert recorded.after is not None
    assert recorded.after["truncated"] is True


@pytest.mark.backend
def test_export_streams_through_an_async_server_without_buffering(plant: Org) -> None:
    # Under ASGI the body must be an async iterator; Django would read a sync one into memory.
    client = AsyncClient(HTTP_USER_AGENT="audit-tests/1.0")
    async_to_sync(client.aforce_login)(plant.users["admin"])

    async def download() -> tuple[Any, list[bytes]]:
        response = await client.get(plant.url("/export"), {"format": "csv"}, secure=True)
        assert response.is_async
        return response, [chunk async for chunk in response.streaming_content]

    response, chunks = async_to_sync(download)()
    assert response.status_code == 200
    rows = _rows_of_csv(b"".join(chunks).decode())
    assert [r["sequence"] for r in rows] == list(range(1, 10))


# -- verification ------------------------------------------------------------------------------


@pytest.mark.backend
def test_verify_checks_only_this_organisations_chain(
    plant: Org, other: Org, admin: SecureClient
) -> None:
    intact = admin.get(plant.url("/verify")).json()
    assert intact == {"intact": True, "entries": 9, "findings": []}
    raw(
        "UPDATE {table} SET actor_label = %s WHERE chain = %s AND sequence = 4",
        ["someone-else@alpha.example", other.chain],
    )
    assert admin.get(plant.url("/verify")).json()["intact"] is True
    raw(
        "UPDATE {table} SET after = %s WHERE chain = %s AND sequence = 3",
        ['{"role": "owner"}', plant.chain],
    )
    report = admin.get(plant.url("/verify")).json()
    victim = AuditEntry.objects.get(chain=plant.chain, sequence=3)
    assert report["intact"] is False
    assert report["findings"] == [
        {
            "sequence": 3,
            "entry_id": str(victim.pk),
            "kind": "altered",
            "detail": "its content does not match its hash",
        }
    ]
