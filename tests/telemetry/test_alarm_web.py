"""Thresholds and alarms over the REST API and on the pages, as each role sees them."""

from __future__ import annotations

import pytest
from django.urls import reverse

from fieldlink.accounts.models import Role, User
from fieldlink.telemetry.models import Alarm, Threshold
from tests.accounts.conftest import SecureClient
from tests.devices.conftest import Team, rival, team
from tests.telemetry.ingest_support import Plant, make_plant
from tests.telemetry.test_alarms import Sender

__all__ = ["rival", "team"]

pytestmark = [pytest.mark.django_db, pytest.mark.backend]


def client_of(user: User) -> SecureClient:
    client = SecureClient(HTTP_USER_AGENT="alarm-web", REMOTE_ADDR="127.0.0.1")
    client.force_login(user)
    return client


@pytest.fixture
def plant(team: Team) -> Plant:
    return make_plant("web", org=team.org, points=1)


def thresholds_url(team: Team, plant: Plant) -> str:
    return f"{team.api}/points/{plant.points[0].pk}/thresholds"


def put_limits(client: SecureClient, url: str, body: str) -> tuple[int, dict[str, object]]:
    response = client.put(url, body, content_type="application/json")
    return response.status_code, (response.json() if response.content else {})


def test_api_thresholds_round_trip_and_refusals(team: Team, plant: Plant) -> None:
    url = thresholds_url(team, plant)
    engineer = client_of(team.users[Role.ENGINEER])
    assert engineer.get(url).status_code == 204
    status, body = put_limits(engineer, url, '{"high": 80, "high_high": 90, "hysteresis": 1.5}')
    assert status == 200
    assert (body["high"], body["high_high"], body["state"]) == (80.0, 90.0, "normal")
    assert engineer.get(url).json()["hysteresis"] == 1.5

    # NaN and Infinity are JSON extensions Python's parser accepts: refused by the schema.
    for bad in ('{"high": NaN}', '{"high": Infinity}', '{"high": 1e300}', '{"high": "80"}'):
        status, body = put_limits(engineer, url, bad)
        assert (status, body.get("code")) == (422, "validation_error"), (bad, body)
    status, body = put_limits(engineer, url, '{"low": 50, "high": 40}')
    assert (status, body["code"], body["details"]) == (422, "thresholds_invalid", {"field": "high"})
    status, body = put_limits(engineer, url, '{"high": 1, "state": "normal"}')
    assert status == 422  # a field the client may not set
    assert Threshold.objects.get().high == 80.0  # nothing of the refused bodies landed

    viewer = client_of(team.users[Role.VIEWER])
    status, body = put_limits(viewer, url, '{"high": 1}')
    assert (status, body["code"]) == (403, "permission_denied")
    assert viewer.delete(url).status_code == 403
    assert engineer.delete(url).status_code == 204
    assert not Threshold.objects.exists()


def test_api_alarm_list_and_acknowledge_by_a_viewer(team: Team, plant: Plant) -> None:
    engineer = client_of(team.users[Role.ENGINEER])
    put_limits(engineer, thresholds_url(team, plant), '{"high": 80}')
    Sender(plant).send(85)
    viewer = client_of(team.users[Role.VIEWER])
    listing = viewer.get(f"{team.api}/alarms").json()
    [item] = listing["items"]
    assert (item["state"], item["level"], item["point"]["key"]) == ("open", "high", "p0")
    assert viewer.get(f"{team.api}/alarms/counts").json() == {"open": 1, "acknowledged": 0}
    acked = viewer.post(f"{team.api}/alarms/{item['id']}/acknowledge")
    assert acked.status_code == 200
    assert acked.json()["state"] == "acknowledged"
    assert acked.json()["acknowledged_by"] == team.users[Role.VIEWER].email
    assert viewer.get(f"{team.api}/alarms?state=bogus").status_code == 422
    assert viewer.get(f"{team.api}/alarms?per_page=100000").status_code == 422


def test_another_tenant_cannot_see_or_acknowledge(team: Team, rival: Team, plant: Plant) -> None:
    put_limits(client_of(team.users[Role.ENGINEER]), thresholds_url(team, plant), '{"high": 1}')
    Sender(plant).send(5)
    alarm = Alarm.objects.get()
    intruder = client_of(rival.users[Role.OWNER])
    assert intruder.get(f"{rival.api}/alarms").json()["items"] == []
    assert intruder.get(f"{team.api}/alarms").status_code == 404
    assert intruder.post(f"{rival.api}/alarms/{alarm.pk}/acknowledge").status_code == 404
    assert intruder.get(thresholds_url(rival, plant)).status_code == 404
    alarm.refresh_from_db()
    assert alarm.acknowledged_at is None


def test_pages_list_acknowledge_and_edit_limits(team: Team, plant: Plant) -> None:
    org = team.org.pk
    engineer = client_of(team.users[Role.ENGINEER])
    limits_url = reverse("alarms:limits", kwargs={"org_id": org, "point_id": plant.points[0].pk})
    assert engineer.get(limits_url).status_code == 200
    refused = engineer.post(limits_url, {"low": "50", "high": "40", "hysteresis": ""})
    assert refused.status_code == 422
    assert "must be greater than" in refused.content.decode()
    saved = engineer.post(limits_url, {"high": "80", "hysteresis": "1"})
    assert saved.status_code == 302
    Sender(plant).send(85)

    viewer = client_of(team.users[Role.VIEWER])
    page = viewer.get(reverse("alarms:list", kwargs={"org_id": org}))
    text = page.content.decode()
    assert page.status_code == 200
    assert "FIT-web/p0 high: 85" in text
    assert "Acknowledge</button>" in text
    assert "<script>" not in text
    assert "style=" not in text
    alarm = Alarm.objects.get()
    done = viewer.post(
        reverse("alarms:acknowledge", kwargs={"org_id": org, "alarm_id": alarm.pk}),
        {"back": "list"},
    )
    assert (done.status_code, done["Location"]) == (
        302,
        reverse("alarms:list", kwargs={"org_id": org}),
    )
    detail = viewer.get(reverse("alarms:detail", kwargs={"org_id": org, "alarm_id": alarm.pk}))
    assert "Acknowledged" in detail.content.decode()
    assert viewer.post(limits_url, {"high": "1"}).status_code == 403
    assert Threshold.objects.get().high == 80.0
