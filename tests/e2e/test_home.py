"""The web UI shell in a real browser: renders, obeys the CSP, works at phone width."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page

from tests.support.server import RunningServer

pytestmark = pytest.mark.e2e


def _collect_console(page: Page) -> list[ConsoleMessage]:
    messages: list[ConsoleMessage] = []
    page.on("console", lambda message: messages.append(message))  # noqa: PLW0108 -- Playwright cannot wrap a builtin method
    return messages


def test_home_page_renders_without_csp_violations(
    page: Page, server: RunningServer, artifacts: Path
) -> None:
    console = _collect_console(page)
    violations: list[str] = []
    page.on("pageerror", lambda error: violations.append(str(error)))
    response = page.goto(server.base_url + "/", wait_until="networkidle")
    assert response is not None
    assert response.status == 200
    assert page.title() == "Overview · Fieldlink"
    assert page.locator("h1").inner_text() == "Your plant, live and secure"
    # The stylesheet really applied (a CSP block would leave the default white/black page).
    topbar_bg = page.eval_on_selector(".topbar", "el => getComputedStyle(el).backgroundColor")
    assert topbar_bg == "rgb(11, 83, 148)"
    page.screenshot(path=str(artifacts / "home-desktop.png"), full_page=True)
    csp_errors = [m.text for m in console if "Content Security Policy" in m.text]
    assert csp_errors == []
    assert [m.text for m in console if m.type == "error"] == []
    assert violations == []


def test_home_page_works_at_phone_width(
    browser: Browser, server: RunningServer, artifacts: Path
) -> None:
    context = browser.new_context(
        viewport={"width": 375, "height": 740},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    page = context.new_page()
    try:
        page.goto(server.base_url + "/", wait_until="networkidle")
        # No horizontal scrolling at 375 px.
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0
        nav = page.locator("#site-nav")
        assert not nav.is_visible()
        page.get_by_role("button", name="Menu").click()
        assert nav.is_visible()
        assert page.get_by_role("link", name="Sign in").first.is_visible()
        page.screenshot(path=str(artifacts / "home-phone.png"), full_page=True)
    finally:
        context.close()


FETCH = """async (url) => {
  const response = await fetch(url);
  return {status: response.status, type: response.headers.get("content-type"),
          body: await response.text()};
}"""


def test_pwa_manifest_and_icons_are_served(page: Page, server: RunningServer) -> None:
    # Fetched by the page itself, through the browser's own network stack and CSP.
    page.goto(server.base_url + "/")
    href = page.eval_on_selector("link[rel=manifest]", "el => el.href")
    fetched = page.evaluate(FETCH, href)
    assert fetched["status"] == 200
    manifest = json.loads(fetched["body"])
    assert manifest["display"] == "standalone"
    sizes = {icon["sizes"] for icon in manifest["icons"]}
    assert {"192x192", "512x512"} <= sizes
    for icon in manifest["icons"]:
        response = page.evaluate(FETCH, server.base_url + icon["src"])
        assert response["status"] == 200
        assert response["type"] == icon["type"]
