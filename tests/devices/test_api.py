"""The plant REST API through the real HTTP stack: happy paths, roles, tenants, audit, secrets."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from fieldlink.accounts.models import Role, User
from fieldlink.audit.models import AuditEntry
from fieldlink.devices import credentials
from fieldlink.devices.models import Asset, EdgeDevice, Health, Site
from tests.accounts.conftest import SecureClient
from tests.devices.conftest import Team
from tests.plugins.log_canary import register_canary

pytestmark = [pytest.mark.django_db, pytest.mark.backend]

AsUser = Callable[[User], SecureClient]


def _send(client: SecureClient, method: str, path: str, body: Any = None) -> Any:
    kwargs: dict[str, Any] = {}
    if body is not None:
        kwargs = {"data": json.dumps(body), "content_type": "application/json"}
    return getattr(client, method.lower())(path, **kwargs)


def _ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.content
    return response.json() if response.content else None


def _plant(team: Team, client: SecureClient) -> dict[str, Any]:
    site = _ok(_send(client, "post", f"{team.api}/sites", {"name": "North works"}), 201)
    area = _ok(
        _send(client, "post", f"{team.api}/areas", {"site_id": site["id"], "name": "Hall 1"}), 201
    )
    asset = _ok(
        _send(
            client,
            "post",
            f"{team.api}/assets",
            {
                "tag": "FIT-101",
                "site_id": site["id"],
                "area_id": area["id"],
                "manufacturer": "Endress+Hauser",
                "product_code": "5W4C",
                "serial_number": "SN123",
                "firmware_version": "01.02.03",
            },
        ),
        201,
    )
    point = _ok(
        _send(
            client,
            "post",
            f"{team.api}/assets/{asset['id']}/points",
            {"key": "volume_flow", "unit": "m3/h", "description": "Main line"},
        ),
        201,
    )
    return {"site": site, "area": area, "asset": asset, "point": point}


def test_engineer_builds_the_plant(team: Team, as_user: AsUser) -> None:
    client = as_user(team.users[Role.ENGINEER])
    plant = _plant(team, client)
    detail = _ok(client.get(f"{team.api}/assets/{plant['asset']['id']}"))
    assert detail["points"][0]["key"] == "volume_flow"
    assert detail["points"][0]["unit_label"] == "cubic metres per hour"
    assert detail["health"]["status"] == "unknown"
    assert detail["area_id"] == plant["area"]["id"]
    listed = _ok(client.get(f"{team.api}/assets?site_id={plant['site']['id']}&q=fit"))
    assert [a["tag"] for a in listed] == ["FIT-101"]
    assert _ok(client.get(f"{team.api}/assets?health=failure")) == []
    assert len(_ok(client.get(f"{team.api}/areas"))) == 1
    patched = _ok(
        _send(client, "patch", f"{team.api}/points/{plant['point']['id']}", {"unit": "l/s"})
    )
    assert patched["unit"] == "l/s"
    actions = list(AuditEntry.objects.order_by("sequence").values_list("action", flat=True))
    assert actions[-5:] == [
        "site.created",
        "area.created",
        "asset.created",
        "point.created",
        "point.updated",
    ]


def test_delete_site_with_assets_is_409(team: Team, as_user: AsUser) -> None:
    client = as_user(team.users[Role.ENGINEER])
    plant = _plant(team, client)
    response = _send(client, "delete", f"{team.api}/sites/{plant['site']['id']}")
    assert response.status_code == 409
    assert response.json()["code"] == "plant_not_empty"
    assert "asset" in response.json()["message"]
    _ok(_send(client, "delete", f"{team.api}/assets/{plant['asset']['id']}"), 204)
    _ok(_send(client, "delete", f"{team.api}/sites/{plant['site']['id']}"), 204)
    assert not Site.objects.exists()


def test_unknown_unit_lists_the_allowed_codes(team: Team, as_user: AsUser) -> None:
    client = as_user(team.users[Role.ENGINEER])
    plant = _plant(team, client)
    response = _send(
        client,
        "post",
        f"{team.api}/assets/{plant['asset']['id']}/points",
        {"key": "pressure", "unit": "furlongs"},
    )
    assert response.status_code == 422
    assert "bar" in response.json()["details"]["allowed"]
    units = _ok(client.get("/api/v1/units"))
    assert {"code": "bar", "label": "bar"} in units


def test_viewer_reads_but_cannot_write(team: Team, as_user: AsUser) -> None:
    plant = _plant(team, as_user(team.users[Role.ENGINEER]))
    viewer = as_user(team.users[Role.VIEWER])
    assert _ok(viewer.get(f"{team.api}/assets/{plant['asset']['id']}"))["tag"] == "FIT-101"
    before = AuditEntry.objects.count()
    for method, path, body in [
        ("post", f"{team.api}/sites", {"name": "Mine"}),
        ("patch", f"{team.api}/assets/{plant['asset']['id']}", {"tag": "X"}),
        ("delete", f"{team.api}/points/{plant['point']['id']}", None),
        ("post", f"{team.api}/assets/{plant['asset']['id']}/health", {"health": "failure"}),
        ("post", f"{team.api}/devices", {"name": "Edge"}),
    ]:
        response = _send(viewer, method, path, body)
        assert response.status_code == 403, (method, path, response.content)
        assert response.json()["code"] == "permission_denied"
    assert AuditEntry.objects.count() == before


def test_cross_tenant_asset_read_is_404(team: Team, rival: Team, as_user: AsUser) -> None:
    theirs = _plant(rival, as_user(rival.users[Role.ENGINEER]))
    mine = as_user(team.users[Role.OWNER])
    for path in (
        f"{team.api}/assets/{theirs['asset']['id']}",
        f"{team.api}/sites/{theirs['site']['id']}",
        f"{team.api}/points/{theirs['point']['id']}",
        f"{rival.api}/assets",
    ):
        response = mine.get(path)
        assert response.status_code == 404, path
        assert "FIT-101" not in response.content.decode()
    # Their site named in my body is as unknown as a made-up one.
    response = _send(
        mine, "post", f"{team.api}/assets", {"tag": "SNEAK", "site_id": theirs["site"]["id"]}
    )
    assert response.status_code == 404
    assert not Asset.objects.filter(tag="SNEAK").exists()


def test_cross_tenant_device_asset_assignment_refused(
    team: Team, rival: Team, as_user: AsUser
) -> None:
    theirs = _plant(rival, as_user(rival.users[Role.ENGINEER]))
    client = as_user(team.users[Role.ENGINEER])
    response = _send(
        client, "post", f"{team.api}/devices", {"name": "E1", "asset_ids": [theirs["asset"]["id"]]}
    )
    assert response.status_code == 404
    assert not EdgeDevice.objects.exists()


def test_health_only_through_the_health_endpoint(team: Team, as_user: AsUser) -> None:
    client = as_user(team.users[Role.ENGINEER])
    asset_id = _plant(team, client)["asset"]["id"]
    response = _send(client, "patch", f"{team.api}/assets/{asset_id}", {"health": "ok"})
    assert response.status_code == 422
    assert "health" in str(response.json()["details"])
    body = {"health": "maintenance_required", "code": "M1", "cause": "Seal", "remedy": "Replace"}
    after = _ok(_send(client, "post", f"{team.api}/assets/{asset_id}/health", body))
    assert after["health"]["status"] == "maintenance_required"
    _ok(_send(client, "post", f"{team.api}/assets/{asset_id}/health", body))  # a repeat
    page = _ok(client.get(f"{team.api}/assets/{asset_id}/health?limit=10"))
    assert page["total"] == 1
    assert page["items"][0]["source"] == "user"
    assert Asset.objects.get(pk=asset_id).health == Health.MAINTENANCE_REQUIRED
    assert AuditEntry.objects.filter(action="asset.health_reported").count() == 1


def test_device_lifecycle_and_code_shown_once(team: Team, as_user: AsUser) -> None:
    client = as_user(team.users[Role.ENGINEER])
    asset_id = _plant(team, client)["asset"]["id"]
    created = _ok(
        _send(client, "post", f"{team.api}/devices", {"name": "Edge 1", "asset_ids": [asset_id]}),
        201,
    )
    code = register_canary(created["enrollment_code"])
    assert code.startswith("fle_")
    assert f"--code {code}" in created["enroll_command"]
    assert created["enroll_command"].startswith("fieldlink edge enroll --url https://")
    device_url = f"{team.api}/devices/{created['id']}"
    shown = (
        client.get(device_url).content.decode() + client.get(f"{team.api}/devices").content.decode()
    )
    assert code not in shown
    assert "digest" not in shown
    credential = register_canary(credentials.enroll(code).secret)
    assert credential[:12] == _ok(client.get(device_url))["credential_prefix"]
    rotated = _ok(_send(client, "post", f"{device_url}/rotate-credential"))
    assert rotated["rotate_credential"] is True
    renamed = _ok(_send(client, "patch", device_url, {"name": "Edge 1b", "asset_ids": []}))
    assert renamed["name"] == "Edge 1b"
    assert renamed["asset_ids"] == []
    new_code = _ok(_send(client, "post", f"{device_url}/enrollment-code"), 201)
    register_canary(new_code["enrollment_code"])
    revoked = _ok(_send(client, "delete", device_url))
    assert revoked["revoked_at"] is not None
    response = _send(client, "post", f"{device_url}/enrollment-code")
    assert response.status_code == 409
    assert response.json()["code"] == "device_revoked"
    actions = set(AuditEntry.objects.values_list("action", flat=True))
    assert {
        "device.created",
        "device.rotation_requested",
        "device.updated",
        "device.enrollment_code_issued",
        "device.revoked",
    } <= actions
    for entry in AuditEntry.objects.filter(action__startswith="device."):
        assert code not in json.dumps([entry.before, entry.after])


def test_area_cycle_via_api_is_422(team: Team, as_user: AsUser) -> None:
    client = as_user(team.users[Role.ENGINEER])
    site = _ok(_send(client, "post", f"{team.api}/sites", {"name": "S"}), 201)
    a = _ok(_send(client, "post", f"{team.api}/areas", {"site_id": site["id"], "name": "A"}), 201)
    b = _ok(
        _send(
            client,
            "post",
            f"{team.api}/areas",
            {"site_id": site["id"], "parent_id": a["id"], "name": "B"},
        ),
        201,
    )
    response = _send(client, "patch", f"{team.api}/areas/{a['id']}", {"parent_id": b["id"]})
    assert response.status_code == 422
    assert response.json()["code"] == "plant_invalid"


def test_hidden_asset_leaves_the_operators_list_but_keeps_its_data(
    team: Team, as_user: AsUser
) -> None:
    client = as_user(team.users[Role.ENGINEER])
    plant = _plant(team, client)
    asset_url = f"{team.api}/assets/{plant['asset']['id']}"
    hidden = _ok(_send(client, "patch", asset_url, {"hidden": True}))
    assert (hidden["hidden"], hidden["edge_ref"]) == (True, "")
    assert _ok(client.get(f"{team.api}/overview")) == []
    assert _ok(client.get(asset_url))["points"][0]["key"] == "volume_flow"
    entry = AuditEntry.objects.filter(action="asset.updated").latest("sequence")
    assert (entry.before["hidden"], entry.after["hidden"]) == (False, True)
    shown = _ok(_send(client, "patch", asset_url, {"hidden": False}))
    assert shown["hidden"] is False
    assert [row["asset"]["tag"] for row in _ok(client.get(f"{team.api}/overview"))] == ["FIT-101"]
    viewer = as_user(team.users[Role.VIEWER])
    assert _send(viewer, "patch", asset_url, {"hidden": True}).status_code == 403
