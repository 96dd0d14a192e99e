"""The updates pages (phone-first, no inline script or style) as each role sees them."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from django.urls import reverse

from fieldlink.accounts.models import Role, User
from fieldlink.devices.models import EdgeDevice
from fieldlink.updates.models import DeviceConfiguration, Rollout, RolloutState
from tests.accounts.conftest import SecureClient
from tests.devices.conftest import Team
from tests.updates.conftest import Publisher, enrolled
from tests.updates.test_api import BAD_PORT_TOML, SIM_TOML, report

pytestmark = [pytest.mark.django_db, pytest.mark.backend]

INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.IGNORECASE)


def client_of(user: User, *, csrf: bool = False) -> SecureClient:
    client = SecureClient(
        HTTP_USER_AGENT="updates-pages",
        REMOTE_ADDR="127.0.0.1",
        HTTP_REFERER="https://testserver/",  # over HTTPS Django checks the referer too
        enforce_csrf_checks=csrf,
    )
    client.force_login(user)
    return client


def url(name: str, team: Team, **kwargs: object) -> str:
    return reverse(f"updates:{name}", kwargs={"org_id": team.org.pk, **kwargs})


def assert_csp_clean(html: str) -> None:
    assert not INLINE_SCRIPT.search(html), "inline script"
    assert " style=" not in html, "inline style attribute"
    assert "<style" not in html, "inline style element"


def start_rollout(client: SecureClient, team: Team, devices: list[EdgeDevice]) -> Rollout:
    response = client.post(
        url("rollout-new", team),
        {
            "version": "1.2.0",
            "devices": [str(d.pk) for d in devices],
            "waves": "50, 100",
            "failure_threshold_pct": "10",
            "silent_timeout_minutes": "30",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    rollout = Rollout.objects.get()
    assert response["Location"] == url("rollout", team, rollout_id=rollout.pk)
    return rollout


def test_viewer_reads_overview_rollout_and_alerts(publisher: Publisher, team: Team) -> None:
    publisher.publish("1.2.0")
    devices = [enrolled(team, f"edge {i}")[0] for i in range(2)]
    rollout = start_rollout(client_of(team.users[Role.ADMIN]), team, devices)
    report(
        devices[1],
        software_version="1.0.0",
        check_ok=False,
        check_error_code="bad_signature",
        check_error="release.json: signature threshold not met",
    )
    viewer = client_of(team.users[Role.VIEWER])
    response = viewer.get(url("overview", team))
    html = response.content.decode()
    assert response.status_code == 200
    assert_csp_clean(html)
    assert f'data-rollout-id="{rollout.pk}"' in html
    assert html.count("<progress") == 3  # the rollout and its two waves
    assert 'data-alert-kind="check_failed"' in html
    assert "Bad signature" in html
    assert "release.json: signature threshold not met" in html
    assert "New rollout" not in html  # for admins only
    assert ">Updates</a>" in html  # the organisation navigation links here

    response = viewer.get(url("rollout", team, rollout_id=rollout.pk))
    html = response.content.decode()
    assert response.status_code == 200
    assert_csp_clean(html)
    assert html.count('class="card updates-wave"') == 2
    assert all(f'data-device-id="{d.pk}"' in html for d in devices)
    assert "Pause" not in html
    assert "Cancel rollout" not in html
    assert viewer.get(url("rollout-new", team)).status_code == 403


def test_admin_pauses_resumes_and_cancels_with_csrf(publisher: Publisher, team: Team) -> None:
    publisher.publish("1.2.0")
    devices = [enrolled(team, f"edge {i}")[0] for i in range(2)]
    admin = client_of(team.users[Role.ADMIN], csrf=True)
    form = admin.get(url("rollout-new", team))
    assert form.status_code == 200
    assert_csp_clean(form.content.decode())
    assert 'id="force-warning"' in form.content.decode()
    found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.content.decode())
    assert found is not None
    token = found.group(1)
    # Without the CSRF token the page refuses: a hostile site cannot pause a fleet's rollout.
    assert admin.post(url("rollout-new", team), {"version": "1.2.0"}).status_code == 403
    response = admin.post(
        url("rollout-new", team),
        {
            "csrfmiddlewaretoken": token,
            "version": "1.2.0",
            "devices": [str(d.pk) for d in devices],
            "waves": "50, 100",
            "failure_threshold_pct": "10",
            "silent_timeout_minutes": "30",
        },
    )
    assert response.status_code == 302
    rollout = Rollout.objects.get()
    page = admin.get(url("rollout", team, rollout_id=rollout.pk)).content.decode()
    assert "Pause" in page
    assert "Cancel rollout" in page

    pause = url("rollout-pause", team, rollout_id=rollout.pk)
    assert admin.get(pause).status_code == 405
    assert admin.post(pause).status_code == 403  # no token
    assert admin.post(pause, {"csrfmiddlewaretoken": token}).status_code == 302
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.PAUSED
    page = admin.get(url("rollout", team, rollout_id=rollout.pk)).content.decode()
    assert "Resume" in page
    for action, state in (("rollout-resume", "running"), ("rollout-cancel", "cancelled")):
        response = admin.post(
            url(action, team, rollout_id=rollout.pk), {"csrfmiddlewaretoken": token}
        )
        assert response.status_code == 302
        rollout.refresh_from_db()
        assert rollout.state == state
    response = admin.post(
        url("rollout-resume", team, rollout_id=rollout.pk), {"csrfmiddlewaretoken": token}
    )
    assert response.status_code == 409
    assert 'data-code="rollout_state"' in response.content.decode()


def test_engineer_rollout_page_refused(publisher: Publisher, team: Team) -> None:
    publisher.publish("1.2.0")
    device, _ = enrolled(team, "edge 1")
    engineer = client_of(team.users[Role.ENGINEER])
    assert engineer.get(url("rollout-new", team)).status_code == 403
    response = engineer.post(
        url("rollout-new", team),
        {"version": "1.2.0", "devices": [str(device.pk)], "waves": "100"},
    )
    assert response.status_code == 403
    assert not Rollout.objects.exists()


def test_rollout_form_shows_errors_next_to_the_field(publisher: Publisher, team: Team) -> None:
    publisher.publish("1.0.0")
    device, _ = enrolled(team, "edge 1", version="1.1.0")
    admin = client_of(team.users[Role.ADMIN])
    base = {
        "version": "1.0.0",
        "devices": [str(device.pk)],
        "failure_threshold_pct": "10",
        "silent_timeout_minutes": "30",
    }
    response = admin.post(url("rollout-new", team), {**base, "waves": "5, x"})
    assert response.status_code == 422
    assert "Whole numbers separated by commas" in response.content.decode()
    response = admin.post(url("rollout-new", team), {**base, "waves": "50, 40"})
    assert response.status_code == 422  # the service's rule, shown at the waves field
    assert re.search(r'has-error">\s*<label for="rollout_waves"', response.content.decode())
    # A downgrade without force: the refusal is shown at the force checkbox with its warning.
    response = admin.post(url("rollout-new", team), {**base, "waves": "100"})
    html = response.content.decode()
    assert response.status_code == 422
    assert re.search(
        r'field-check has-error">\s*<div class="alert warning" id="force-warning"', html
    )
    assert "older than what 1 device(s) run" in html
    assert not Rollout.objects.exists()


def test_configuration_page_shows_errors_and_status(publisher: Publisher, team: Team) -> None:
    device, _ = enrolled(team, "edge 1")
    page = url("configuration", team, device_id=device.pk)
    engineer = client_of(team.users[Role.ENGINEER])
    response = engineer.get(page)
    assert response.status_code == 200
    assert_csp_clean(response.content.decode())
    assert 'data-status="unset"' in response.content.decode()

    response = engineer.post(page, {"toml": BAD_PORT_TOML})
    html = response.content.decode()
    assert response.status_code == 422
    assert re.search(r'has-error">\s*<label for="configuration_toml"', html)
    assert "sources[0].port" in html.split('id="toml-errors"', 1)[1]
    assert not DeviceConfiguration.objects.exists()

    assert engineer.post(page, {"toml": SIM_TOML}).status_code == 302
    configuration = DeviceConfiguration.objects.get()
    html = engineer.get(page).content.decode()
    assert 'data-status="pending"' in html
    assert configuration.sha256[:16] in html

    report(device, software_version="1.0.0", config_version=1, config_hash="e" * 64)
    html = client_of(team.users[Role.VIEWER]).get(page).content.decode()
    assert 'data-status="drift"' in html
    assert "<textarea" not in html  # viewers read, engineers edit
    assert client_of(team.users[Role.VIEWER]).post(page, {"toml": SIM_TOML}).status_code == 403
    assert DeviceConfiguration.objects.count() == 1


def test_device_page_shows_software_and_failed_check(team: Team) -> None:
    device, _ = enrolled(team, "edge 1")
    at_ms = int(datetime(2026, 3, 2, 10, 0, tzinfo=UTC).timestamp() * 1000)
    report(
        device,
        software_version="1.1.0",
        update_version="1.2.0",
        update_state="rolled_back",
        update_error="health check timed out",
        check_ok=False,
        check_error_code="expired_metadata",
        check_error="timestamp.json expired",
        checked_at_ms=at_ms,
    )
    response = client_of(team.users[Role.VIEWER]).get(
        reverse("plant:device", kwargs={"org_id": team.org.pk, "device_id": device.pk})
    )
    html = response.content.decode()
    assert response.status_code == 200
    assert_csp_clean(html)
    alert = html.split('id="update-check-alert"', 1)[1].split("</div>", 1)[0]
    assert "expired_metadata" in alert
    assert "timestamp.json expired" in alert
    assert "2026-03-02 10:00:00 UTC" in alert
    assert "rolled_back (1.2.0): health check timed out" in html
    assert url("configuration", team, device_id=device.pk) in html
