"""Security keys / passkeys (WebAuthn) in the real browser, with Chromium's virtual authenticator.

The authenticator is Chromium's own (DevTools WebAuthn domain): real key generation, real
signatures, verified by allauth (fido2) on the server against the page's real HTTPS origin.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, CDPSession

from tests.e2e.test_accounts import (
    Phone,
    fresh_email,
    open_device,
    sign_in_with_password,
    sign_out,
    sign_up_and_verify,
    strong_password,
)
from tests.support.server import RunningServer

pytestmark = pytest.mark.e2e
DESK_WIDTH = 1280


class Desk(Phone):
    def horizontal_overflow(self) -> int:
        return int(self.page.evaluate("document.documentElement.scrollWidth")) - DESK_WIDTH


@pytest.fixture
def desk(browser: Browser, server: RunningServer, artifacts: Path) -> Iterator[Desk]:
    viewport = {"width": DESK_WIDTH, "height": 900}
    with open_device(Desk, browser, server, artifacts, viewport=viewport) as desk:
        yield desk


def _virtual_authenticator(desk: Phone) -> tuple[CDPSession, str]:
    cdp = desk.context.new_cdp_session(desk.page)
    cdp.send("WebAuthn.enable", {"enableUI": False})
    added = cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "usb",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
                "automaticPresenceSimulation": True,
            }
        },
    )
    return cdp, str(added["authenticatorId"])


def test_security_key_is_added_and_then_required_at_sign_in(desk: Phone) -> None:
    address, password = fresh_email(), strong_password()
    sign_up_and_verify(desk, address, password)
    sign_in_with_password(desk, address, password)
    cdp, authenticator_id = _virtual_authenticator(desk)
    page = desk.page

    page.goto(desk.server.base_url + "/accounts/2fa/webauthn/add/")
    if "/accounts/reauthenticate/" in page.url:
        page.get_by_label("Password", exact=True).fill(password)
        page.get_by_role("button", name="Confirm").click()
        page.wait_for_url("**/accounts/2fa/webauthn/add/")
    desk.settle()
    page.locator("#mfa_webauthn_add").click()
    page.wait_for_url(lambda url: "/webauthn/add/" not in url)
    desk.settle()
    desk.shot("webauthn-added")
    credentials = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator_id})
    assert len(credentials["credentials"]) == 1

    sign_out(desk)
    sign_in_with_password(desk, address, password)
    page.wait_for_url("**/accounts/2fa/authenticate/")
    desk.settle()
    assert page.locator("#mfa_webauthn_authenticate").is_visible()
    page.locator("#mfa_webauthn_authenticate").click()
    page.wait_for_url(lambda url: "/accounts/2fa/authenticate/" not in url)
    desk.open("/me/")
    assert address in page.locator("main").inner_text()
    history = page.locator("main table").inner_text()
    assert "Second factor added" in history
    desk.problems.assert_clean()
