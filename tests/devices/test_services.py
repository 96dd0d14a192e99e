"""Plant use cases: hierarchy rules, uniqueness, units, NE 107 health history, audit entries."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from fieldlink.accounts.access import PermissionDeniedError
from fieldlink.accounts.models import Role
from fieldlink.audit.models import AuditEntry
from fieldlink.devices import services
from fieldlink.devices.errors import PlantInvalidError, PlantNameTakenError, PlantNotEmptyError
from fieldlink.devices.models import Area, Asset, Health, HealthChange, MeasuringPoint, Site
from fieldlink.kit.errors import NotFoundError
from tests.devices.conftest import Team

pytestmark = [pytest.mark.django_db, pytest.mark.backend]


def _site(team: Team, name: str = "North works") -> Site:
    return services.create_site(team.scope(Role.ENGINEER), name=name)


def _asset(team: Team, site: Site, tag: str = "FIT-101", area: Area | None = None) -> Asset:
    return services.create_asset(
        team.scope(Role.ENGINEER), tag=tag, site_id=site.pk, area_id=area.pk if area else None
    )


def test_nested_areas_and_tree(team: Team) -> None:
    scope = team.scope(Role.ENGINEER)
    site = _site(team)
    hall = services.create_area(scope, site_id=site.pk, name="Hall 1")
    line = services.create_area(scope, site_id=site.pk, parent_id=hall.pk, name="Line 2")
    pump = _asset(team, site, "P-1", line)
    _asset(team, site, "LOOSE-1")
    [node] = services.plant_tree(team.scope(Role.VIEWER))
    assert [(n.path, n.depth) for n in node.areas] == [("Hall 1", 0), ("Hall 1 / Line 2", 1)]
    assert node.areas[1].assets == [pump]
    assert [a.tag for a in node.assets] == ["LOOSE-1"]


def test_area_parent_in_another_site_refused(team: Team) -> None:
    scope = team.scope(Role.ENGINEER)
    north, south = _site(team), _site(team, "South works")
    hall = services.create_area(scope, site_id=north.pk, name="Hall 1")
    with pytest.raises(PlantInvalidError, match="another site"):
        services.create_area(scope, site_id=south.pk, parent_id=hall.pk, name="Hall 2")


def test_area_cycle_refused(team: Team) -> None:
    scope = team.scope(Role.ENGINEER)
    site = _site(team)
    a = services.create_area(scope, site_id=site.pk, name="A")
    b = services.create_area(scope, site_id=site.pk, parent_id=a.pk, name="B")
    c = services.create_area(scope, site_id=site.pk, parent_id=b.pk, name="C")
    for parent in (a, c):
        with pytest.raises(PlantInvalidError, match="inside itself"):
            services.update_area(scope, a.pk, {"parent_id": parent.pk})
    services.update_area(scope, c.pk, {"parent_id": None})  # a move to the top is fine
    assert Area.objects.get(pk=c.pk).parent_id is None


def test_asset_area_must_be_in_its_site(team: Team) -> None:
    scope = team.scope(Role.ENGINEER)
    north, south = _site(team), _site(team, "South works")
    hall = services.create_area(scope, site_id=north.pk, name="Hall 1")
    with pytest.raises(PlantInvalidError, match="another site"):
        services.create_asset(scope, tag="FIT-1", site_id=south.pk, area_id=hall.pk)
    asset = _asset(team, north, "FIT-2", hall)
    with pytest.raises(PlantInvalidError):
        services.update_asset(scope, asset.pk, {"site_id": south.pk})  # the area stays north
    services.update_asset(scope, asset.pk, {"site_id": south.pk, "area_id": None})
    assert Asset.objects.get(pk=asset.pk).site_id == south.pk


def test_delete_site_or_area_with_assets_refused(team: Team) -> None:
    scope = team.scope(Role.ENGINEER)
    site = _site(team)
    hall = services.create_area(scope, site_id=site.pk, name="Hall")
    line = services.create_area(scope, site_id=site.pk, parent_id=hall.pk, name="Line")
    asset = _asset(team, site, "P-1", line)
    with pytest.raises(PlantNotEmptyError):
        services.delete_site(scope, site.pk)
    with pytest.raises(PlantNotEmptyError):
        services.delete_area(scope, hall.pk)  # the asset is one level below
    services.delete_asset(scope, asset.pk)
    services.delete_area(scope, hall.pk)
    assert not Area.objects.filter(pk__in=[hall.pk, line.pk]).exists()
    services.delete_site(scope, site.pk)
    assert not Site.objects.filter(pk=site.pk).exists()


def test_asset_tag_unique_per_organisation(team: Team, rival: Team) -> None:
    site = _site(team)
    _asset(team, site, "FIT-101")
    with pytest.raises(PlantNameTakenError):
        _asset(team, site, "FIT-101")
    # Another organisation may use the same tag.
    _asset(rival, _site(rival), "FIT-101")


def test_point_key_unique_per_asset_and_unit_validated(team: Team) -> None:
    scope = team.scope(Role.ENGINEER)
    site = _site(team)
    one, two = _asset(team, site, "A-1"), _asset(team, site, "A-2")
    services.create_point(scope, one.pk, key="volume_flow", unit="m3/h")
    services.create_point(scope, two.pk, key="volume_flow", unit="m3/h")
    with pytest.raises(PlantNameTakenError):
        services.create_point(scope, one.pk, key="volume_flow", unit="l/s")
    with pytest.raises(PlantInvalidError) as refused:
        services.create_point(scope, one.pk, key="pressure", unit="furlongs")
    assert "bar" in refused.value.details["allowed"]
    with pytest.raises(PlantInvalidError):
        services.create_point(scope, one.pk, key="Bad Key!", unit="bar")
    assert MeasuringPoint.objects.filter(asset=one).count() == 1


def test_viewer_cannot_configure(team: Team) -> None:
    viewer = team.scope(Role.VIEWER)
    with pytest.raises(PermissionDeniedError):
        services.create_site(viewer, name="Nope")
    site = _site(team)
    with pytest.raises(PermissionDeniedError):
        services.delete_site(viewer, site.pk)
    assert services.sites_of(viewer) == [site]


def test_other_tenants_objects_are_not_found(team: Team, rival: Team) -> None:
    theirs = _asset(rival, _site(rival), "THEIRS-1")
    scope = team.scope(Role.OWNER)
    with pytest.raises(NotFoundError):
        services.get_asset(scope, theirs.pk)
    with pytest.raises(NotFoundError):
        services.create_point(scope, theirs.pk, key="x", unit="bar")
    with pytest.raises(NotFoundError):
        services.create_asset(scope, tag="MINE", site_id=theirs.site_id)


def test_changes_are_audited_with_before_and_after(team: Team) -> None:
    scope = team.scope(Role.ENGINEER)
    site = _site(team)
    asset = _asset(team, site)
    services.update_asset(scope, asset.pk, {"serial_number": "SN-42"})
    entry = AuditEntry.objects.filter(action="asset.updated").get()
    assert entry.before["serial_number"] == ""
    assert entry.after["serial_number"] == "SN-42"
    assert entry.target_id == str(asset.pk)
    # A no-op update writes nothing.
    services.update_asset(scope, asset.pk, {"serial_number": "SN-42"})
    assert AuditEntry.objects.filter(action="asset.updated").count() == 1
    actions = set(AuditEntry.objects.values_list("action", flat=True))
    assert {"site.created", "asset.created"} <= actions


# -- health ---------------------------------------------------------------------------------------


def test_health_repeats_are_idempotent(team: Team) -> None:
    asset = _asset(team, _site(team))
    first = services.report_health(
        asset, Health.FAILURE, code="F042", cause="Coil", source="device"
    )
    assert first is not None
    again = services.report_health(
        asset, Health.FAILURE, code="F042", cause="Coil", source="device"
    )
    assert again is None
    services.report_health(asset, Health.OK, source="device")
    assert list(HealthChange.objects.filter(asset=asset).values_list("health", flat=True)) == [
        Health.OK,
        Health.FAILURE,
    ]
    assert Asset.objects.get(pk=asset.pk).health == Health.OK


def test_late_health_report_kept_in_history_but_not_current(team: Team) -> None:
    asset = _asset(team, _site(team))
    now = timezone.now()
    services.report_health(asset, Health.OK, at=now, source="device")
    late = now - timedelta(minutes=5)
    assert services.report_health(asset, Health.FAILURE, at=late, source="device") is not None
    assert services.report_health(asset, Health.FAILURE, at=late, source="device") is None
    current = Asset.objects.get(pk=asset.pk)
    assert current.health == Health.OK
    assert HealthChange.objects.filter(asset=asset).count() == 2


def test_health_hooks_run_inside_the_transaction(
    team: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    asset = _asset(team, _site(team))
    seen: list[tuple[str, bool]] = []

    def hook(change: HealthChange) -> None:
        seen.append((change.health, transaction.get_connection().in_atomic_block))

    monkeypatch.setattr(services, "HEALTH_CHANGE_HOOKS", [hook])
    with transaction.atomic():
        services.report_health(asset, Health.MAINTENANCE_REQUIRED, source="device")
        services.report_health(asset, Health.MAINTENANCE_REQUIRED, source="device")
    assert seen == [(Health.MAINTENANCE_REQUIRED, True)]


def test_health_hook_failure_rolls_back_the_change(
    team: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    asset = _asset(team, _site(team))

    def broken(change: HealthChange) -> None:
        raise RuntimeError("alarm store down")

    monkeypatch.setattr(services, "HEALTH_CHANGE_HOOKS", [broken])
    with pytest.raises(RuntimeError), transaction.atomic():
        services.report_health(asset, Health.FAILURE, source="device")
    assert not HealthChange.objects.filter(asset=asset).exists()
    assert Asset.objects.get(pk=asset.pk).health == Health.UNKNOWN


def test_user_sets_health_audited_and_viewer_refused(team: Team) -> None:
    asset = _asset(team, _site(team))
    with pytest.raises(PermissionDeniedError):
        services.set_health(team.scope(Role.VIEWER), asset.pk, health=Health.FAILURE)
    _, change = services.set_health(
        team.scope(Role.ENGINEER), asset.pk, health=Health.MAINTENANCE_REQUIRED, cause="Seal worn"
    )
    assert change is not None
    assert change.source == "user"
    entry = AuditEntry.objects.get(action="asset.health_reported")
    assert entry.before["health"] == Health.UNKNOWN
    assert entry.after["health"] == Health.MAINTENANCE_REQUIRED
    _, history, total = services.health_history(team.scope(Role.VIEWER), asset.pk)
    assert total == 1
    assert history[0].cause == "Seal worn"


def test_unknown_health_refused(team: Team) -> None:
    asset = _asset(team, _site(team))
    with pytest.raises(PlantInvalidError):
        services.report_health(asset, "on_fire", source="device")
