"""The plant configuration pages: per role, forms, the one-time enrollment code, phone markup."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from fieldlink.accounts.models import Role, User
from fieldlink.audit.models import AuditEntry
from fieldlink.devices import services
from fieldlink.devices.models import Area, Asset, EdgeDevice, Health, MeasuringPoint, Site
from tests.accounts.conftest import SecureClient
from tests.devices.conftest import Team
from tests.plugins.log_canary import register_canary

pytestmark = [pytest.mark.django_db]

AsUser = Callable[[User], SecureClient]


def _plant(team: Team) -> Asset:
    scope = team.scope(Role.ENGINEER)
    site = services.create_site(scope, name="North works")
    hall = services.create_area(scope, site_id=site.pk, name="Hall 1")
    asset = services.create_asset(scope, tag="FIT-101", site_id=site.pk, area_id=hall.pk)
    services.create_point(scope, asset.pk, key="volume_flow", unit="m3/h")
    return asset


def _csp_safe(html: str) -> None:
    # No inline script or style: the CSP allows neither.
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html)
    assert " style=" not in html
    assert "<style" not in html


@pytest.mark.parametrize("role", [Role.VIEWER, Role.ENGINEER])
def test_hierarchy_renders_per_role(role: Role, team: Team, as_user: AsUser) -> None:
    asset = _plant(team)
    response = as_user(team.users[role]).get(team.pages)
    assert response.status_code == 200
    html = response.content.decode()
    _csp_safe(html)
    assert 'name="viewport"' in html
    assert "Hall 1" in html
    assert f"/plant/assets/{asset.pk}/" in html
    assert ">Plant<" in html  # the organisation tab
    assert ("Add a site" in html) is (role == Role.ENGINEER)


def test_asset_page_for_viewer_is_read_only(team: Team, as_user: AsUser) -> None:
    asset = _plant(team)
    html = as_user(team.users[Role.VIEWER]).get(f"{team.pages}assets/{asset.pk}/").content.decode()
    _csp_safe(html)
    assert "volume_flow" in html
    assert "cubic metres per hour" in html
    assert "<form" not in html.split('id="points-title"')[1]
    assert "Set the status" not in html


def test_viewer_actions_are_403(team: Team, as_user: AsUser) -> None:
    asset = _plant(team)
    viewer = as_user(team.users[Role.VIEWER])
    before = AuditEntry.objects.count()
    for path, data in [
        (f"{team.pages}sites/add", {"name": "Mine"}),
        (f"{team.pages}assets/{asset.pk}/health", {"health": "failure"}),
        (f"{team.pages}assets/{asset.pk}/delete", {}),
        (f"{team.pages}devices/add", {"name": "Edge"}),
    ]:
        assert viewer.post(path, data).status_code == 403, path
    assert viewer.get(f"{team.pages}sites/{asset.site_id}/").status_code == 403
    assert AuditEntry.objects.count() == before
    assert Asset.objects.filter(pk=asset.pk, health=Health.UNKNOWN).exists()


def test_engineer_builds_the_plant_with_forms(team: Team, as_user: AsUser) -> None:
    client = as_user(team.users[Role.ENGINEER])
    response = client.post(f"{team.pages}sites/add", {"name": "South works"})
    assert response.status_code == 302
    site = Site.objects.get(name="South works")
    client.post(f"{team.pages}areas/add", {"site": str(site.pk), "name": "Pump hall"})
    area = Area.objects.get(name="Pump hall")
    response = client.post(
        f"{team.pages}assets/add",
        {"tag": "PT-7", "site": str(site.pk), "area": str(area.pk), "manufacturer": "Acme"},
    )
    asset = Asset.objects.get(tag="PT-7")
    assert response["Location"] == f"{team.pages}assets/{asset.pk}/"
    client.post(f"{team.pages}assets/{asset.pk}/points/add", {"key": "pressure", "unit": "bar"})
    assert MeasuringPoint.objects.filter(asset=asset, key="pressure", unit="bar").exists()
    client.post(
        f"{team.pages}assets/{asset.pk}/health",
        {"health": "maintenance_required", "cause": "Seal worn"},
    )
    html = client.get(f"{team.pages}assets/{asset.pk}/").content.decode()
    assert "Seal worn" in html
    assert "Maintenance required" in html


def test_invalid_form_is_422_with_the_error(team: Team, as_user: AsUser) -> None:
    asset = _plant(team)
    client = as_user(team.users[Role.ENGINEER])
    response = client.post(f"{team.pages}assets/{asset.pk}/points/add", {"key": "x", "unit": "?"})
    assert response.status_code == 422
    assert "errorlist" in response.content.decode()


def test_delete_site_with_assets_shows_why(team: Team, as_user: AsUser) -> None:
    asset = _plant(team)
    response = as_user(team.users[Role.ENGINEER]).post(f"{team.pages}sites/{asset.site_id}/delete")
    assert response.status_code == 409
    assert "still has 1 asset" in response.content.decode()


def test_enrollment_code_shown_once_with_copy_button(team: Team, as_user: AsUser) -> None:
    asset = _plant(team)
    client = as_user(team.users[Role.ENGINEER])
    response = client.post(
        f"{team.pages}devices/add", {"name": "Edge 1", "assets": [str(asset.pk)]}
    )
    assert response.status_code == 200
    html = response.content.decode()
    _csp_safe(html)
    code = register_canary(re.search(r"fle_[A-Za-z0-9_-]+", html).group(0))  # type: ignore[union-attr]
    assert 'data-copy="enroll-code"' in html
    assert f"fieldlink edge enroll --url https://testserver --code {code}" in html
    assert "fieldlink/plant.js" in html
    device = EdgeDevice.objects.get(name="Edge 1")
    assert list(device.assets.all()) == [asset]
    assert code not in client.get(f"{team.pages}devices/").content.decode()
    assert code not in client.get(f"{team.pages}devices/{device.pk}/").content.decode()


def test_device_page_actions(team: Team, as_user: AsUser) -> None:
    issued = services.create_device(team.scope(Role.ENGINEER), name="Edge 1")
    register_canary(issued.secret)
    client = as_user(team.users[Role.ENGINEER])
    page = f"{team.pages}devices/{issued.device.pk}/"
    html = client.post(page + "enrollment-code").content.decode()
    register_canary(re.search(r"fle_[A-Za-z0-9_-]+", html).group(0))  # type: ignore[union-attr]
    assert client.post(page + "revoke").status_code == 302
    assert EdgeDevice.objects.get(pk=issued.device.pk).revoked_at is not None
    assert "Revoked" in client.get(page).content.decode()


def test_action_urls_only_take_post(team: Team, as_user: AsUser) -> None:
    asset = _plant(team)
    response = as_user(team.users[Role.ENGINEER]).get(f"{team.pages}assets/{asset.pk}/delete")
    assert response.status_code == 405
    assert Asset.objects.filter(pk=asset.pk).exists()
