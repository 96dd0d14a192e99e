"""Playwright (Python API) on Debian's Chromium against the real HTTPS server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from fieldlink.kit.tls import spki_sha256_base64
from tests.support.server import RunningServer

CHROMIUM = os.environ.get("FIELDLINK_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


# Package scope: Playwright's sync API keeps an event loop running in the main thread while the
# browser is open; once the browser tests are done it must be gone, or every later test that
# calls asyncio.run() (the edge agent's) finds a loop already running.
@pytest.fixture(scope="package")
def browser(server: RunningServer) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Debian's chromium is required at {CHROMIUM} (apt-get install chromium)")
    # Trust exactly our server's key (SPKI pin) rather than switching certificate checks off.
    # Playwright's launch() always starts from a fresh temporary user-data dir of its own.
    pin = spki_sha256_base64(server.server_cert)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--ignore-certificate-errors-spki-list={pin}",
            ],
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    try:
        yield page
    finally:
        context.close()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
