"""The operator's asset pages on a phone, against the real HTTPS server.

A plant (organisation, site, area, asset with two measuring points and an hour of values) is
made in the server's own database; the owner signs in on a 375 px phone, finds the asset in the
list with its NE 107 badge, opens it, sees a uPlot chart (a canvas) per point, switches the range,
and watches a live value change after a new sample is written behind the browser's back. No CSP
or console errors, no horizontal scroll. Screenshots: ``test-artifacts/assets-phone-*``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from tests.e2e.test_accounts import open_device, sign_in_with_password, strong_password
from tests.e2e.test_organisations import PHONE_OPTIONS, OrgPhone, make_users
from tests.support.server import RunningServer

pytestmark = [pytest.mark.e2e]

_MAKE_PLANT = """
import json, sys, time
from fieldlink.cli.main import _boot
_boot()
from django.db import transaction
from fieldlink.accounts import services
from fieldlink.accounts.access import Principal
from fieldlink.accounts.models import User
from fieldlink.devices.models import Area, Asset, Health, MeasuringPoint, Site
from fieldlink.telemetry import storage
from fieldlink.telemetry.models import Series
owner = User.objects.get(email=sys.argv[1])
with transaction.atomic():
    org = services.create_organisation(
        Principal(owner, "session"), name="Riverside Water", region="eu-central"
    ).organisation
site = Site.objects.create(organisation=org, name="Riverside")
hall = Area.objects.create(organisation=org, site=site, name="Pump hall")
asset = Asset.objects.create(
    organisation=org, site=site, area=hall, tag="FIT-101", manufacturer="Endress+Hauser",
    health=Health.OUT_OF_SPECIFICATION, health_code="S801",
    health_cause="Supply voltage too low", health_remedy="Check the supply voltage",
)
flow = MeasuringPoint.objects.create(organisation=org, asset=asset, key="volume_flow", unit="m3/h")
temp = MeasuringPoint.objects.create(organisation=org, asset=asset, key="temperature", unit="C")
now = int(time.time() * 1000)
rows = []
for point, base in ((flow, 40.0), (temp, 18.0)):
    series, _ = Series.objects.get_or_create(point=point)
    rows += [
        (series.pk, now - 3_600_000 + i * 10_000, base + (i % 17) * 0.5, 192)
        for i in range(360)
    ]
with transaction.atomic():
    storage.write_samples(rows)
print(json.dumps({"org": str(org.pk), "asset": str(asset.pk), "flow": str(flow.pk)}))
"""

_WRITE_VALUE = """
import sys, time
from fieldlink.cli.main import _boot
_boot()
from django.db import transaction
from fieldlink.telemetry import storage
from fieldlink.telemetry.models import Series
series = Series.objects.get(point_id=sys.argv[1])
with transaction.atomic():
    storage.write_samples([(series.pk, int(time.time() * 1000), float(sys.argv[2]), 192)])
"""


def _run(server: RunningServer, script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=server.env,
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    )
    return done.stdout


class AssetPhone(OrgPhone):
    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(self.artifacts / f"assets-phone-{name}.png"), full_page=True)


@pytest.fixture
def phone(browser: Browser, server: RunningServer, artifacts: Path) -> Iterator[AssetPhone]:
    with open_device(AssetPhone, browser, server, artifacts, **PHONE_OPTIONS) as device:
        yield device


def test_asset_page_on_a_phone_charts_and_updates_live(
    phone: AssetPhone, server: RunningServer
) -> None:
    email = f"operator-{time.monotonic_ns()}@riverside.example"
    password = strong_password()
    make_users(server, password, email)
    ids = json.loads(_run(server, _MAKE_PLANT, email).strip().splitlines()[-1])
    sign_in_with_password(phone, email, password)
    page = phone.page

    phone.open(f"/orgs/{ids['org']}/assets/")
    card = page.locator(".asset-card", has_text="FIT-101")
    expect(card.locator(".health-out_of_specification")).to_be_visible()
    expect(card).to_contain_text("volume_flow")
    phone.shot("01-list")

    card.get_by_role("link", name="FIT-101").click()
    page.wait_for_url(f"**/orgs/{ids['org']}/assets/{ids['asset']}/")
    phone.settle()
    expect(page.locator("#asset-health")).to_contain_text("Out of specification")
    expect(page.locator("#health-remedy")).to_contain_text("Check the supply voltage")
    flow = page.locator(f'.point[data-point-id="{ids["flow"]}"]')
    expect(flow.locator(".chart canvas")).to_have_count(1, timeout=10_000)
    expect(flow.locator(".chart")).to_have_attribute("data-mode", "raw")
    page.get_by_role("button", name="1 h").click()
    expect(page.get_by_role("button", name="1 h")).to_have_attribute("aria-pressed", "true")
    expect(flow.locator(".chart canvas")).to_have_count(1)
    phone.settle()
    phone.shot("02-asset")

    _run(server, _WRITE_VALUE, ids["flow"], "987.25")
    # The page polls every 5 s: the new value shows without a reload.
    expect(flow.locator('[data-field="value"]')).to_have_text("987.25", timeout=15_000)
    phone.settle()
    phone.shot("03-live")

    # Limits below the present value: the alarm opens at once; the operator acknowledges it.
    flow.get_by_role("link", name="Limits").click()
    page.wait_for_url(f"**/orgs/{ids['org']}/alarms/limits/{ids['flow']}/")
    page.get_by_label("High", exact=True).fill("500")
    page.get_by_label("Hysteresis").fill("5")
    phone.shot("04-limits")
    page.get_by_role("button", name="Save limits").click()
    page.wait_for_url(f"**/orgs/{ids['org']}/assets/{ids['asset']}/")
    page.get_by_role("link", name="Alarms", exact=True).click()
    page.wait_for_url(f"**/orgs/{ids['org']}/alarms/")
    alarm = page.locator(".alarm-card", has_text="FIT-101/volume_flow high: 987.25")
    expect(alarm).to_contain_text("Open")
    expect(page.locator("#alarm-counts")).to_contain_text("1 open")
    phone.settle()
    phone.shot("05-alarms")
    alarm.get_by_role("button", name="Acknowledge").click()
    page.wait_for_url(f"**/orgs/{ids['org']}/alarms/")
    expect(alarm).to_contain_text("Acknowledged by")
    expect(page.locator("#alarm-counts")).to_contain_text("0 open · 1 acknowledged")
    phone.settle()
    phone.shot("06-acknowledged")
