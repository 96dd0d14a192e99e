"""The audit trail page /orgs/<org_id>/audit/: filters, cards, paging, export links, chain check."""

from __future__ import annotations

import html
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.db import transaction

from fieldlink.accounts import services as accounts
from fieldlink.audit.models import AuditEntry
from tests.accounts.conftest import SecureClient
from tests.audit.conftest import raw
from tests.audit.test_audit_api import Org, build_org, client_for

pytestmark = [pytest.mark.django_db]


@pytest.fixture
def plant() -> Org:
    return build_org("alpha")


@pytest.fixture
def admin(plant: Org) -> SecureClient:
    return client_for(plant.users["admin"])


def page(org: Org) -> str:
    return f"/orgs/{org.org.pk}/audit/"


def text(response: Any) -> str:
    return html.unescape(response.content.decode())


def cards(body: str) -> list[str]:
    return re.findall(r'<li class="audit-entry">(.*?)</li>\s*(?=<li|</ol>)', body, re.S)


def link(body: str, label: str) -> str:
    found = re.search(r'<a[^>]*href="([^"]*)"[^>]*>\s*' + re.escape(label) + r"\s*</a>", body)
    assert found, f"no link {label!r}"
    return found.group(1)


def test_admin_sees_the_trail_as_cards_newest_first(plant: Org, admin: SecureClient) -> None:
    response = admin.get(page(plant))
    assert response.status_code == 200
    body = text(response)
    entries = cards(body)
    assert len(entries) == 9
    assert "member.role_changed" in entries[0]
    assert "organisation.created" in entries[-1]
    assert "owner@alpha.example" in entries[0]
    # Before and after are in a <details> that works without JavaScript.
    assert "<details" in entries[0]
    diff = r"<dt>role</dt>\s*<dd><del>viewer</del>.*<ins>engineer</ins>"
    assert re.search(diff, entries[0], re.S)
    assert "Export CSV" in body
    assert "Export JSON" in body
    assert "Verify chain" in body


def test_page_keeps_to_the_content_security_policy(plant: Org, admin: SecureClient) -> None:
    body = admin.get(page(plant)).content.decode()
    assert "style=" not in body
    assert not re.search(r"<script(?![^>]*\bsrc=)", body)
    assert re.search(r"\son[a-z]+=", body) is None


def test_filters_narrow_the_list_and_travel_with_the_export_links(
    plant: Org, admin: SecureClient
) -> None:
    response = admin.get(page(plant), {"action": "member.", "actor": "engineer@"})
    assert response.status_code == 200
    body = text(response)
    entries = cards(body)
    assert len(entries) == 1
    assert "member.joined" in entries[0]
    assert 'value="member."' in body  # the form shows the filter in force
    for label, fmt in (("Export CSV", "csv"), ("Export JSON", "json")):
        href = link(body, label)
        assert urlsplit(href).path == f"/api/v1/orgs/{plant.org.pk}/audit/export"
        assert parse_qs(urlsplit(href).query) == {
            "action": ["member."],
            "actor": ["engineer@"],
            "format": [fmt],
        }
        # The link works for the signed-in admin, and exports just that.
        download = admin.get(href)
        assert download.status_code == 200
        assert b"".join(download.streaming_content).count(b"member.joined") == 1


def test_paging_walks_back_through_the_whole_trail(plant: Org, admin: SecureClient) -> None:
    seen: list[str] = []
    url = page(plant) + "?limit=4"
    for _ in range(5):
        body = text(admin.get(url))
        seen += re.findall(r"<dt>Entry</dt><dd>#(\d+) ", body)
        if "Older entries" not in body:
            break
        url = page(plant) + link(body, "Older entries")
    assert seen == [str(n) for n in range(9, 0, -1)]
    assert "Newest" in body


@pytest.mark.parametrize(
    ("params", "label"),
    [
        ({"since": "not a time"}, "From (UTC)"),
        ({"since": "2025-01-02T00:00", "until": "2025-01-01T00:00"}, "Until (UTC, not included)"),
        ({"action": "drop table"}, "Action"),
        ({"actor": "x" * 321}, "Who"),
        ({"target_id": "a\x00b"}, "Target id"),
        ({"limit": "9999"}, "Limit"),
        ({"before_sequence": "-1"}, "Page cursor"),
    ],
)
def test_bad_filters_are_refused_with_the_field_named(
    plant: Org, admin: SecureClient, params: dict[str, str], label: str
) -> None:
    response = admin.get(page(plant), params)
    assert response.status_code == 422
    body = text(response)
    assert f"{label}: " in body
    assert cards(body) == []  # nothing is listed on a refused filter


@pytest.mark.parametrize("role", ["engineer", "viewer"])
def test_engineers_and_viewers_get_403(plant: Org, role: str) -> None:
    response = client_for(plant.users[role]).get(page(plant))
    assert response.status_code == 403
    assert "alpha.example" not in response.content.decode()


@pytest.mark.backend
def test_cross_tenant_audit_page_is_404(plant: Org) -> None:
    other = build_org("beta")
    response = client_for(other.users["owner"]).get(page(plant))
    assert response.status_code == 404
    body = response.content.decode()
    assert "alpha.example" not in body
    assert "Plant alpha" not in body


def test_anonymous_visitor_is_sent_to_sign_in(plant: Org) -> None:
    response = client_for(None).get(page(plant))
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


@pytest.mark.backend
def test_verify_chain_reports_intact_then_names_a_tampered_entry(
    plant: Org, admin: SecureClient
) -> None:
    body = text(admin.get(page(plant) + link(text(admin.get(page(plant))), "Verify chain")))
    assert "Chain intact: all 9 entries" in body
    raw("DELETE FROM {table} WHERE chain = %s AND sequence = 5", [plant.chain])
    body = text(admin.get(page(plant), {"verify": "1"}))
    assert "Chain NOT intact" in body
    after_gap = AuditEntry.objects.get(chain=plant.chain, sequence=6)
    assert re.search(rf"#5 deleted: .*{after_gap.pk}", body)


def test_export_from_the_page_is_recorded_and_shown(plant: Org, admin: SecureClient) -> None:
    href = link(text(admin.get(page(plant))), "Export JSON")
    assert href.startswith("/api/v1/")
    b"".join(admin.get(href).streaming_content)
    newest = cards(text(admin.get(page(plant))))[0]
    assert "audit.exported" in newest
    assert "admin@alpha.example" in newest
    assert "&quot;json&quot;" in newest or '"json"' in newest or ">json<" in newest


def test_pending_deletion_still_shows_the_trail(plant: Org, admin: SecureClient) -> None:
    with transaction.atomic():
        accounts.request_deletion(plant.scope)
    response = admin.get(page(plant))
    assert response.status_code == 200
    assert "organisation.deletion_requested" in cards(text(response))[0]
