"""The operator's pages: asset list (health badges, latest values, filters) and asset page.

Every role of the organisation may read them; another tenant's asset is a 404 that names
nothing of it; the pages carry no inline script or style (the CSP allows neither) and pass the
data the script needs in data-* attributes.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from django.urls import reverse

from fieldlink.accounts.models import Membership, Role, User
from fieldlink.devices.models import Asset, Health
from tests.accounts.conftest import SecureClient
from tests.telemetry.test_queries import T0, Plant, _plant, _storage, write

pytestmark = [pytest.mark.django_db]
__all__ = ["_storage"]  # the storage fixture (autouse) of the query tests


def _client(user: User) -> SecureClient:
    client = SecureClient(HTTP_USER_AGENT="asset-pages", REMOTE_ADDR="127.0.0.1")
    client.force_login(user)
    return client


@pytest.fixture
def plant(make_user: Callable[..., User]) -> Plant:
    plant = _plant(make_user, "p")
    write(plant.flow, [(T0, 12.5, 192), (T0 + 1000, 13.75, 192)])
    return plant


def _member(plant: Plant, make_user: Callable[..., User], role: Role) -> User:
    user = make_user(f"{role}-p@p.example")
    Membership.objects.create(organisation=plant.org, user=user, role=role)
    return user


@pytest.mark.backend
@pytest.mark.parametrize("role", [Role.OWNER, Role.ADMIN, Role.ENGINEER, Role.VIEWER])
def test_every_role_sees_the_asset_list_and_page(
    plant: Plant, make_user: Callable[..., User], role: Role
) -> None:
    user = plant.owner if role == Role.OWNER else _member(plant, make_user, role)
    client = _client(user)
    listing = client.get(reverse("assets:list", kwargs={"org_id": plant.org.pk}))
    assert listing.status_code == 200
    text = listing.content.decode()
    assert "FIT-101" in text
    assert 'class="health health-maintenance_required"' in text
    assert "13.75" in text  # the latest value, not the first
    page = client.get(
        reverse("assets:detail", kwargs={"org_id": plant.org.pk, "asset_id": plant.asset.pk})
    )
    assert page.status_code == 200
    html = page.content.decode()
    assert "Clean the electrodes" in html  # remedy
    assert "Electrode coating" in html  # cause
    assert f'data-latest-url="/api/v1/orgs/{plant.org.pk}/assets/{plant.asset.pk}/latest"' in html
    assert f"/api/v1/orgs/{plant.org.pk}/points/{plant.flow.pk}/series" in html
    assert "Hall 1" in html
    assert "Line 2" in html  # breadcrumbs


def test_pages_have_no_inline_script_or_style(plant: Plant) -> None:
    client = _client(plant.owner)
    for url in (
        reverse("assets:list", kwargs={"org_id": plant.org.pk}),
        reverse("assets:detail", kwargs={"org_id": plant.org.pk, "asset_id": plant.asset.pk}),
    ):
        html = client.get(url).content.decode()
        scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, re.DOTALL)
        assert scripts
        assert all("src=" in attrs and not body.strip() for attrs, body in scripts), url
        assert " style=" not in html
        assert "<style" not in html
        # Vendored, not from a CDN: every script and stylesheet comes from our own origin.
        assert not re.search(r'<script[^>]+src="(https?:)?//', html)
        assert not re.search(r'<link[^>]+href="(https?:)?//', html)


def test_asset_list_filters_by_health_and_site(plant: Plant) -> None:
    Asset.objects.create(organisation=plant.org, site=plant.asset.site, tag="PT-7")
    client = _client(plant.owner)
    base = reverse("assets:list", kwargs={"org_id": plant.org.pk})
    text = client.get(f"{base}?health={Health.MAINTENANCE_REQUIRED}").content.decode()
    assert "FIT-101" in text
    assert "PT-7" not in text
    text = client.get(f"{base}?site={plant.asset.site_id}").content.decode()
    assert "FIT-101" in text
    assert "PT-7" in text


def test_cross_tenant_asset_page_is_404(plant: Plant, make_user: Callable[..., User]) -> None:
    other = _plant(make_user, "z", tag="SECRET-TAG-9")
    client = _client(plant.owner)
    for org_id in (plant.org.pk, other.org.pk):
        url = reverse("assets:detail", kwargs={"org_id": org_id, "asset_id": other.asset.pk})
        response = client.get(url)
        assert response.status_code == 404
        assert b"SECRET-TAG-9" not in response.content
    # Another tenant's site in the filter of one's own list names nothing of theirs either.
    listing = client.get(
        reverse("assets:list", kwargs={"org_id": plant.org.pk}) + f"?site={other.asset.site_id}"
    )
    assert b"SECRET-TAG-9" not in listing.content
    assert b"Site z" not in listing.content


def test_anonymous_is_sent_to_sign_in(plant: Plant) -> None:
    client = SecureClient()
    response = client.get(reverse("assets:list", kwargs={"org_id": plant.org.pk}))
    assert response.status_code == 302
    assert "/accounts/login/" in response["Location"]


def test_org_navigation_has_an_assets_tab(plant: Plant) -> None:
    html = _client(plant.owner).get(f"/orgs/{plant.org.pk}/").content.decode()
    assert reverse("assets:list", kwargs={"org_id": plant.org.pk}) in html
