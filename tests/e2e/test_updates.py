"""A rollout's progress on a 375 px phone, against the real HTTPS server.

A release is published into the server's own repository (offline-signed metadata, verified
against the trusted root), an admin's rollout offers it to the canary wave of four enrolled
devices, and the canary reports it running. The owner signs in on a phone, opens Updates from
the organisation navigation, sees the rollout with a progress bar per wave and the alert of a
device whose update check failed, opens the rollout, pauses it, and opens the canary's
configuration page. No CSP or console errors, no horizontal scroll, comfortable touch targets.
Screenshots: ``test-artifacts/updates-phone-*``.
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

_MAKE_FLEET = """
import json, sys, tempfile
from pathlib import Path
from fieldlink.cli.main import _boot
_boot()
from django.db import transaction
from fieldlink.accounts import access, services as accounts
from fieldlink.accounts.access import Principal
from fieldlink.accounts.models import User
from fieldlink.devices.credentials import digest
from fieldlink.devices.models import EdgeDevice
from fieldlink.protocol.updates import DeviceReport
from fieldlink.updates import repository, services, tuf_repo

owner = User.objects.get(email=sys.argv[1])
with transaction.atomic():
    org = accounts.create_organisation(
        Principal(owner, "session"), name="Hillside Gas", region="eu-central"
    ).organisation
version = sys.argv[2]
if not repository.has_repository():
    release_key = tuf_repo.new_signer()
    repo = tuf_repo.Repository.offline(
        root=[tuf_repo.new_signer()], targets=[tuf_repo.new_signer()],
        release=[release_key.public_key], online=repository.online_signers(create=True),
        root_threshold=1, targets_threshold=1, release_threshold=1,
    )
    repo.signers["release"] = [release_key]
    data = b"an agent bundle " * 64
    repo.add_software(version, data)
    bundle = Path(tempfile.mkdtemp()) / f"fieldlink-agent-{version}.tar"
    bundle.write_bytes(data)
    with transaction.atomic():
        services.publish_release(
            repo.files, {tuf_repo.software_path(version): bundle},
            actor=services.AuditActor.command("e2e"),
        )
devices = [
    EdgeDevice.objects.create(
        organisation=org, name=f"Compressor {i}", credential_digest=digest(f"e2e-{org.pk}-{i}"),
        software_version="0.9.0",
    )
    for i in range(4)
]
scope = access.resolve(Principal(owner, "session"), org.pk)
with transaction.atomic():
    rollout = services.create_rollout(
        scope, version=version, device_ids=[d.pk for d in devices], waves=[25, 100]
    )
canary = next(m.device for m in rollout.members.select_related("device") if m.wave == 0)
with transaction.atomic():
    services.record_report(canary, DeviceReport(
        software_version=version, update_version=version, update_state="running"))
other = next(d for d in devices if d.pk != canary.pk)
with transaction.atomic():
    services.record_report(other, DeviceReport(
        software_version="0.9.0", check_ok=False, check_error_code="expired_metadata",
        check_error="timestamp.json expired"))
print(json.dumps({"org": str(org.pk), "rollout": str(rollout.pk), "canary": str(canary.pk)}))
"""


class UpdatesPhone(OrgPhone):
    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(self.artifacts / f"updates-phone-{name}.png"), full_page=True)


@pytest.fixture
def phone(browser: Browser, server: RunningServer, artifacts: Path) -> Iterator[UpdatesPhone]:
    with open_device(UpdatesPhone, browser, server, artifacts, **PHONE_OPTIONS) as device:
        yield device


def test_phone_sees_rollout_progress_and_pauses_it(
    phone: UpdatesPhone, server: RunningServer
) -> None:
    email = f"owner-{time.monotonic_ns()}@hillside.example"
    password = strong_password()
    make_users(server, password, email)
    done = subprocess.run(
        [sys.executable, "-c", _MAKE_FLEET, email, "2.0.0"],
        env=server.env,
        check=False,
        timeout=60,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ids = json.loads(done.stdout.strip().splitlines()[-1])
    sign_in_with_password(phone, email, password)
    page = phone.page

    phone.open(f"/orgs/{ids['org']}/")
    page.locator("nav.subnav").get_by_role("link", name="Updates").click()
    page.wait_for_url(f"**/orgs/{ids['org']}/updates/")
    phone.assert_fits()
    card = page.locator(f'[data-rollout-id="{ids["rollout"]}"]')
    expect(card).to_contain_text("Version 2.0.0")
    expect(card.locator("progress")).to_have_count(3)  # all devices, then each wave
    expect(card.locator(f'[data-progress="rollout-{ids["rollout"]}-wave-0"]')).to_contain_text(
        "1 succeeded"
    )
    alert = page.locator('[data-alert-kind="check_failed"]')
    expect(alert).to_contain_text("timestamp.json expired")
    phone.shot("01-overview")

    card.get_by_role("link", name="Version 2.0.0").click()
    page.wait_for_url(f"**/updates/rollouts/{ids['rollout']}/")
    phone.assert_fits()
    expect(page.locator(".updates-wave")).to_have_count(2)
    expect(page.locator(f'[data-device-id="{ids["canary"]}"]')).to_contain_text("Succeeded")
    phone.shot("02-rollout")
    page.get_by_role("button", name="Pause").click()
    page.wait_for_url(f"**/updates/rollouts/{ids['rollout']}/")
    phone.assert_fits()
    expect(page.locator("h1")).to_contain_text("Paused")
    expect(page.get_by_role("button", name="Resume")).to_be_visible()
    phone.shot("03-paused")

    page.locator(f'[data-device-id="{ids["canary"]}"]').get_by_role("link").click()
    page.wait_for_url(f"**/plant/devices/{ids['canary']}/")
    phone.assert_fits()
    expect(page.locator("#software-running")).to_have_text("2.0.0")
    page.get_by_role("link", name="Configuration of Compressor").click()
    page.wait_for_url(f"**/updates/devices/{ids['canary']}/configuration")
    phone.assert_fits()
    expect(page.locator("#config-status")).to_have_attribute("data-status", "unset")
    phone.shot("04-configuration")
