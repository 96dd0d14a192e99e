"""Organisations in a real browser at phone width, against the real HTTPS server.

An owner creates an organisation and invites a colleague; the invitation link comes out of the
server's outbox; the colleague accepts it in a second browser and switches between their two
organisations in the top bar's switcher. Every page fits 375 px (tables become cards), has
thumb-sized controls and no CSP or console errors. Screenshots: ``test-artifacts/orgs-phone-*``.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Request, expect

from tests.e2e.test_accounts import (
    PHONE,
    PHONE_USER_AGENT,
    Phone,
    open_device,
    sign_in_with_password,
    strong_password,
    wait_for_link,
)
from tests.plugins.log_canary import register_canary
from tests.support.server import RunningServer

pytestmark = pytest.mark.e2e

# Users are made in the server's own database, like an operator would: sign-up has its own
# browser test, and its per-IP limit is shared by the whole session's sign-ups.
_MAKE_USERS = """
import sys
from fieldlink.cli.main import _boot
_boot()
from allauth.account.models import EmailAddress
from fieldlink.accounts.models import User
password = sys.stdin.readline().rstrip("\\n")
for email in sys.argv[1:]:
    user = User.objects.create_user(email, password)
    EmailAddress.objects.create(user=user, email=email, verified=True, primary=True)
"""


def make_users(server: RunningServer, password: str, *emails: str) -> None:
    # The password goes through stdin: a command line is visible to every local user.
    subprocess.run(
        [sys.executable, "-c", _MAKE_USERS, *emails],
        input=password + "\n",
        text=True,
        env=server.env,
        check=True,
        timeout=60,
        capture_output=True,
    )


class OrgPhone(Phone):
    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(self.artifacts / f"orgs-phone-{name}.png"), full_page=True)

    def open_switcher(self) -> Any:
        # On a phone the navigation sits behind the menu button; the switcher is a <details>.
        toggle = self.page.locator(".menu-toggle")
        if toggle.is_visible() and toggle.get_attribute("aria-expanded") != "true":
            toggle.click()
        switcher = self.page.locator("details.org-switcher")
        if switcher.get_attribute("open") is None:
            switcher.locator("summary").click()
        expect(switcher.locator(".org-switcher-list")).to_be_visible()
        return switcher

    def assert_fits(self) -> None:
        self.settle()
        assert self.small_touch_targets() == [], self.page.url
        for link in self.page.locator("nav.subnav a").all():
            box = link.bounding_box()
            assert box is not None
            assert box["height"] >= 44
            assert box["x"] + box["width"] <= PHONE["width"]


PHONE_OPTIONS: dict[str, Any] = {
    "viewport": PHONE,
    "device_scale_factor": 2,
    "is_mobile": True,
    "has_touch": True,
    "user_agent": PHONE_USER_AGENT,
}


@pytest.fixture
def owner_phone(browser: Browser, server: RunningServer, artifacts: Path) -> Iterator[OrgPhone]:
    with open_device(OrgPhone, browser, server, artifacts, **PHONE_OPTIONS) as phone:
        yield phone


@pytest.fixture
def colleague_phone(browser: Browser, server: RunningServer, artifacts: Path) -> Iterator[OrgPhone]:
    with open_device(OrgPhone, browser, server, artifacts, **PHONE_OPTIONS) as phone:
        yield phone


def create_organisation(phone: OrgPhone, name: str, region: str, *, shot: str = "") -> str:
    page = phone.page
    phone.open("/orgs/")
    page.get_by_label("Name").fill(name)
    page.get_by_label("Data region").select_option(label=region)
    if shot:
        phone.assert_fits()
        phone.shot(shot)
    page.get_by_role("button", name="Create organisation").click()
    page.wait_for_url(re.compile(r".*/orgs/[0-9a-f-]{36}/$"))
    phone.settle()
    expect(page.locator(".messages")).to_contain_text(f"{name} was created")
    return phone.path().split("/")[2]


def sign_in(phone: OrgPhone, email: str, password: str) -> None:
    phone.open("/accounts/login/")
    sign_in_with_password(phone, email, password)
    phone.settle()


def owner_creates_and_invites(phone: OrgPhone, org_name: str, colleague: str) -> str:
    org_id = create_organisation(phone, org_name, "EU West (Ireland)", shot="01-new")
    page = phone.page
    facts = page.locator("dl.facts")
    expect(facts).to_contain_text("EU West (Ireland)")
    expect(facts).to_contain_text("fixed when the organisation was created")
    phone.assert_fits()
    phone.shot("02-overview")

    page.locator("nav.subnav").get_by_role("link", name="Members").click()
    page.wait_for_url(f"**/orgs/{org_id}/members/")
    phone.settle()
    page.get_by_label("E-mail address").fill(colleague)
    page.get_by_label("Role", exact=True).select_option("engineer")
    page.get_by_role("button", name="Send invitation").click()
    page.wait_for_url(f"**/orgs/{org_id}/members/")
    phone.settle()
    expect(page.locator(".messages")).to_contain_text(f"Invitation sent to {colleague}")
    expect(page.locator("table").nth(1)).to_contain_text("Pending")
    phone.assert_fits()
    phone.shot("03-invited")
    return org_id


def colleague_accepts(phone: OrgPhone, link: str, org_id: str, org_name: str, owner: str) -> None:
    page = phone.page
    sent: list[Request] = []
    page.on("request", lambda request: sent.append(request))  # noqa: PLW0108 -- Playwright cannot wrap a bound builtin
    phone.open(link.removeprefix(phone.server.base_url))
    expect(page.locator("h1")).to_have_text(f"Join {org_name}")
    expect(page.locator("dl.facts")).to_contain_text("Engineer")
    expect(page.locator("dl.facts")).to_contain_text(owner)
    phone.assert_fits()
    phone.shot("04-invitation")
    page.get_by_role("button", name="Accept and join").click()
    page.wait_for_url(f"**/orgs/{org_id}/")
    phone.settle()
    expect(page.locator(".messages")).to_contain_text(f"Welcome to {org_name}")
    # Stylesheet, script, icons and the Accept form itself: none carried the token onwards.
    referers = [r.all_headers().get("referer", "") for r in sent[1:]]
    assert referers
    assert all("fli_" not in referer for referer in referers), referers
    expect(page.locator(".org-head .badge")).to_have_text("Engineer")
    # An engineer gets no audit or export links, and no management buttons.
    subnav = page.locator("nav.subnav")
    expect(subnav.get_by_role("link")).to_have_text(
        ["Overview", "Assets", "Alarms", "Updates", "Plant", "Members", "Settings"]
    )
    phone.shot("05-joined")


def colleague_switches(phone: OrgPhone, org_name: str, own_name: str, own_id: str) -> None:
    page = phone.page
    switcher = phone.open_switcher()
    expect(switcher.locator("summary")).to_have_text(org_name)
    phone.assert_fits()
    phone.shot("06-switcher")
    switcher.get_by_role("link", name=re.compile(re.escape(own_name))).click()
    page.wait_for_url(f"**/orgs/{own_id}/")
    phone.settle()
    expect(page.locator(".org-head")).to_contain_text(own_name)
    expect(phone.open_switcher().locator("summary")).to_have_text(own_name)
    # The last organisation is remembered across pages, "/" included.
    phone.open("/")
    expect(page.locator("details.org-switcher summary")).to_have_text(own_name)


def owner_sees_cards_and_confirmations(phone: OrgPhone, org_id: str, colleague: str) -> None:
    page = phone.page
    phone.open(f"/orgs/{org_id}/members/")
    rows = page.locator("table.table-cards").first.locator("tbody tr")
    expect(rows).to_have_count(2)
    head = page.locator("table.table-cards thead").first.bounding_box()
    assert head is not None
    assert head["width"] <= 1  # the column names move into each card's cells
    assert rows.nth(1).evaluate("row => getComputedStyle(row).display") == "block"
    expect(rows.nth(1)).to_contain_text(colleague)
    expect(rows.nth(1)).to_contain_text("Engineer")
    phone.assert_fits()
    phone.shot("07-members")

    # Removing needs a confirmation step that works without JavaScript.
    rows.nth(1).get_by_role("link", name="Remove").click()
    page.wait_for_url("**/remove/")
    phone.assert_fits()
    expect(page.locator("h1")).to_have_text(f"Remove {colleague}?")
    phone.shot("08-confirm-remove")
    page.get_by_role("link", name="Cancel").click()
    page.wait_for_url(f"**/orgs/{org_id}/members/")
    phone.settle()

    phone.open(f"/orgs/{org_id}/settings/")
    expect(page.get_by_label("Type the organisation's name to confirm")).to_be_visible()
    phone.assert_fits()
    phone.shot("09-settings")


def test_create_invite_accept_and_switch_organisations_on_a_phone(
    owner_phone: OrgPhone, colleague_phone: OrgPhone, server: RunningServer
) -> None:
    tag = secrets.token_hex(3)
    owner, colleague = f"owner-{tag}@plant.example", f"colleague-{tag}@plant.example"
    password = strong_password()
    make_users(server, password, owner, colleague)
    org_name, own_name = f"Rhine Pumping {tag}", f"Alpine Hydro {tag}"

    sign_in(owner_phone, owner, password)
    org_id = owner_creates_and_invites(owner_phone, org_name, colleague)
    link = wait_for_link(server, colleague, r"https://\S+/invitations/fli_[\w-]+/")
    register_canary(link.rstrip("/").rsplit("/", 1)[1])
    assert link.startswith(server.base_url + "/invitations/")

    # The colleague already has an organisation of their own when the invitation arrives.
    sign_in(colleague_phone, colleague, password)
    own_id = create_organisation(colleague_phone, own_name, "EU Central (Frankfurt)")
    colleague_accepts(colleague_phone, link, org_id, org_name, owner)
    colleague_switches(colleague_phone, org_name, own_name, own_id)

    page = colleague_phone.page
    colleague_phone.open(f"/orgs/{org_id}/members/")
    expect(page.locator("main")).not_to_contain_text("Change role")
    expect(page.get_by_role("link", name="Leave")).to_be_visible()
    # The link is spent: a second visit says so (with 410, which the console reports; nothing
    # else may appear there).
    problems = colleague_phone.problems
    problems.assert_clean()
    response = page.goto(link)
    assert response is not None
    assert response.status == 410
    expect(page.locator("[role=alert]")).to_contain_text("already been used")
    assert [m.text for _, m in problems.console if m.type == "error"] == [
        "Failed to load resource: the server responded with a status of 410 (Gone)"
    ]
    problems.console.clear()
    problems.assert_clean()

    owner_sees_cards_and_confirmations(owner_phone, org_id, colleague)
    owner_phone.problems.assert_clean()
    colleague_phone.problems.assert_clean()
