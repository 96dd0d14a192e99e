"""The plant configuration pages on a 375 px phone, against the real HTTPS server.

The configurer's path (the owner here; engineers get the same forms): add a site, an area and
an asset with the forms, add a measuring point, set "maintenance required", then add an edge
device and get its one-time enrollment code with a working copy button. Every page fits the
screen (no horizontal scroll, 44 px touch targets), with no CSP or console errors.
Screenshots: ``test-artifacts/plant-phone-*``.
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
from tests.plugins.log_canary import register_canary
from tests.support.server import RunningServer

pytestmark = [pytest.mark.e2e]

_MAKE_ORG = """
import json, sys
from fieldlink.cli.main import _boot
_boot()
from django.db import transaction
from fieldlink.accounts import services
from fieldlink.accounts.access import Principal
from fieldlink.accounts.models import User
owner = User.objects.get(email=sys.argv[1])
with transaction.atomic():
    org = services.create_organisation(
        Principal(owner, "session"), name="Lakeside Water", region="eu-central"
    ).organisation
print(json.dumps({"org": str(org.pk)}))
"""


class PlantPhone(OrgPhone):
    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(self.artifacts / f"plant-phone-{name}.png"), full_page=True)


def _make_org(server: RunningServer, owner_email: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _MAKE_ORG, owner_email],
        env=server.env,
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    )
    return str(json.loads(done.stdout.strip().splitlines()[-1])["org"])


def _add_point_and_set_health(phone: PlantPhone) -> None:
    page = phone.page
    page.get_by_text("Add a measuring point").click()
    page.get_by_label("Key").fill("volume_flow")
    page.get_by_label("Unit").select_option("m3/h")
    page.get_by_role("button", name="Add point").click()
    expect(page.locator(".plant-points")).to_contain_text("cubic metres per hour")
    page.get_by_text("Set the status").click()
    page.get_by_label("Status (NE 107)").select_option("maintenance_required")
    page.get_by_label("Cause").fill("Seal worn")
    page.get_by_role("button", name="Set status").click()
    expect(page.locator(".plant-history")).to_contain_text("Seal worn")
    phone.assert_fits()


@pytest.fixture
def phone(browser: Browser, server: RunningServer, artifacts: Path) -> Iterator[PlantPhone]:
    options = {**PHONE_OPTIONS, "permissions": ["clipboard-read", "clipboard-write"]}
    with open_device(PlantPhone, browser, server, artifacts, **options) as device:
        yield device


def test_engineer_configures_the_plant_on_a_phone(phone: PlantPhone, server: RunningServer) -> None:
    email = f"engineer-{time.monotonic_ns()}@lakeside.example"
    password = strong_password()
    make_users(server, password, email)
    org = _make_org(server, email)
    phone.open("/accounts/login/")
    sign_in_with_password(phone, email, password)
    page = phone.page

    phone.open(f"/orgs/{org}/plant/")
    phone.assert_fits()
    page.locator("#add-site + form").get_by_label("Name").fill("Lakeside")
    page.get_by_role("button", name="Add site").click()
    expect(page.locator(".messages")).to_contain_text("Site Lakeside was added")
    form = page.locator("#add-area + form")
    form.get_by_label("Name").fill("Pump hall")
    page.get_by_role("button", name="Add area").click()
    form = page.locator("#add-asset + form")
    form.get_by_label("Tag").fill("FIT-201")
    form.get_by_label("Area").select_option(label="Lakeside / Pump hall")
    form.get_by_label("Manufacturer").fill("Endress+Hauser")
    page.get_by_role("button", name="Add asset").click()
    expect(page.locator("h1")).to_contain_text("FIT-201")
    phone.assert_fits()

    _add_point_and_set_health(phone)
    phone.shot("01-asset")

    phone.open(f"/orgs/{org}/plant/")
    expect(page.locator(".plant-site")).to_contain_text("FIT-201")
    phone.shot("02-hierarchy")

    phone.open(f"/orgs/{org}/plant/devices/")
    page.get_by_label("Name").fill("Edge box 1")
    page.get_by_label("FIT-201").check()
    page.get_by_role("button", name="Add edge device").click()
    code = register_canary(page.locator("#enroll-code").inner_text().strip())
    assert code.startswith("fle_")
    expect(page.locator("#enroll-command")).to_contain_text(f"--code {code}")
    phone.settle()
    phone.assert_fits()
    page.get_by_role("button", name="Copy code").click()
    expect(page.locator("button[data-copy=enroll-code]")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == code
    phone.shot("03-enrollment-code")
    # Shown once: the list no longer carries it.
    phone.open(f"/orgs/{org}/plant/devices/")
    assert code not in page.content()
