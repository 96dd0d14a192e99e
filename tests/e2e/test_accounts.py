"""Account pages in a real browser at phone width: the sign-up → TOTP → sign-in walk, and fit.

Every page is checked for Content-Security-Policy violations, console errors and uncaught
script errors; screenshots land in ``test-artifacts/`` (``accounts-phone-*.png``).
"""

from __future__ import annotations

import base64
import contextlib
import email
import email.policy
import hashlib
import hmac
import re
import secrets
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Response,
    ViewportSize,
    expect,
)

from tests.plugins.log_canary import register_canary
from tests.support.server import RunningServer

pytestmark = pytest.mark.e2e

PHONE: ViewportSize = {"width": 375, "height": 740}
# A phone browser as the server sees it, so the "device" of a sign-in is a phone's.
PHONE_USER_AGENT = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/130.0.0.0 Mobile Safari/537.36"
)
TOTP_PERIOD = 30
MAIL_TIMEOUT = 15.0


# --- RFC 6238 (TOTP over RFC 4226 HOTP, HMAC-SHA1, 6 digits, 30 s) -----------------------------


def hotp(secret_base32: str, counter: int, digits: int = 6) -> str:
    key = base64.b32decode(secret_base32.upper() + "=" * (-len(secret_base32) % 8))
    digest = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    value = struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**digits).zfill(digits)


def totp_step(now: float | None = None) -> int:
    return int((time.time() if now is None else now) // TOTP_PERIOD)


def test_totp_matches_rfc_6238_vector() -> None:
    # RFC 6238 appendix B, SHA-1: the ASCII secret "12345678901234567890" at T = 59 s.
    secret = base64.b32encode(b"12345678901234567890").decode()
    assert hotp(secret, totp_step(59), digits=8) == "94287082"


def fresh_totp_step(*, not_before: int | None = None, margin: float = 3.0) -> int:
    """A step whose code stays valid for ``margin`` seconds more, after ``not_before``."""
    while True:
        now = time.time()
        step = totp_step(now)
        left = (step + 1) * TOTP_PERIOD - now
        if (not_before is None or step > not_before) and left >= margin:
            return step
        time.sleep(left + 0.05)


# --- the browser side ----------------------------------------------------------------------------


@dataclass
class PageProblems:
    """Everything a page must not produce: CSP violations, console errors, uncaught errors."""

    console: list[tuple[str, ConsoleMessage]] = field(default_factory=list)
    page_errors: list[tuple[str, str]] = field(default_factory=list)
    failed_loads: list[str] = field(default_factory=list)

    def watch(self, page: Page) -> None:
        page.on("console", lambda message: self.console.append((page.url, message)))
        page.on("pageerror", lambda error: self.page_errors.append((page.url, str(error))))
        page.on("response", self._note_failed_load)

    def _note_failed_load(self, response: Response) -> None:
        # Names what a bare "Failed to load resource" console error was about.
        if response.status >= 400 and response.request.resource_type != "document":
            self.failed_loads.append(f"{response.status} {response.url}")

    def assert_clean(self) -> None:
        csp = [(url, m.text) for url, m in self.console if "Content Security Policy" in m.text]
        assert csp == []
        errors = [(url, m.text) for url, m in self.console if m.type == "error"]
        assert errors == [], self.failed_loads
        assert self.page_errors == []


@dataclass
class Phone:
    context: BrowserContext
    page: Page
    problems: PageProblems
    server: RunningServer
    artifacts: Path

    def open(self, path: str) -> None:
        response = self.page.goto(self.server.base_url + path, wait_until="load")
        assert response is not None
        assert response.status == 200, (path, response.status)
        self.settle()

    def settle(self) -> None:
        self.page.wait_for_load_state("load")
        # allauth's pages must render inside Fieldlink's layout (its stylesheet, its CSP-clean
        # shell): that takes fieldlink.accounts' templates winning over allauth's own.
        assert self.page.locator("header.topbar").count() == 1, (
            f"{self.page.url} is not in Fieldlink's layout: are fieldlink.accounts' template "
            "overrides found before allauth's (INSTALLED_APPS order)?"
        )
        self.problems.assert_clean()
        assert self.horizontal_overflow() <= 0, self.page.url

    def horizontal_overflow(self) -> int:
        # A mobile browser widens its layout viewport to fit content that overflows, so
        # window.innerWidth grows along with it: compare with the screen's width instead.
        widest = self.page.evaluate(
            "Math.max(document.documentElement.scrollWidth, window.innerWidth)"
        )
        return int(widest) - PHONE["width"]

    def shot(self, name: str) -> None:
        path = self.artifacts / f"accounts-phone-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)

    def path(self) -> str:
        parts = self.page.url.split("/", 3)  # a new tab is at "about:blank": no path yet
        return "/" + parts[3] if len(parts) > 3 else ""

    def small_touch_targets(self) -> list[str]:
        # Text fields, selects and buttons: 44 CSS px high at least (WCAG 2.5.5).
        return list(
            self.page.eval_on_selector_all(
                "main input:not([type=hidden], [type=checkbox], [type=radio]),"
                " main select, main textarea, main button, main .button",
                """elements => elements
                    .filter(el => el.getBoundingClientRect().height < 44)
                    .map(el => el.outerHTML.slice(0, 80))""",
            )
        )


P = TypeVar("P", bound="Phone")


@contextlib.contextmanager
def open_device(
    kind: type[P], browser: Browser, server: RunningServer, artifacts: Path, **options: Any
) -> Iterator[P]:
    """A fresh browser context of the given kind, watched for CSP and console problems."""
    context = browser.new_context(**options)
    # Every step here is a page load on loopback; fail fast instead of after 30 s.
    context.set_default_timeout(10_000)
    page = context.new_page()
    problems = PageProblems()
    problems.watch(page)
    try:
        yield kind(context, page, problems, server, artifacts)
    finally:
        context.close()


@pytest.fixture
def phone(browser: Browser, server: RunningServer, artifacts: Path) -> Iterator[Phone]:
    with open_device(
        Phone,
        browser,
        server,
        artifacts,
        viewport=PHONE,
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
        user_agent=PHONE_USER_AGENT,
    ) as phone:
        yield phone


def fresh_email() -> str:
    return f"walker-{secrets.token_hex(6)}@example.com"


def strong_password() -> str:
    # Random words would do as well; a random tail keeps every run's canary unique.
    return register_canary(f"violet-harbor-quantum-lantern-{secrets.token_hex(4)}")


# --- mail ----------------------------------------------------------------------------------------


MAIL_SEPARATOR = b"\n" + b"-" * 79 + b"\n"


def outbox_messages(server: RunningServer) -> list[tuple[float, email.message.EmailMessage]]:
    outbox = server.var_dir / "outbox"
    found = []
    for path in outbox.glob("*.log") if outbox.is_dir() else []:
        for raw in path.read_bytes().split(MAIL_SEPARATOR):
            if raw.strip():
                message = email.message_from_bytes(raw.lstrip(), policy=email.policy.default)
                assert isinstance(message, email.message.EmailMessage)
                found.append((path.stat().st_mtime, message))
    return sorted(found, key=lambda item: item[0])


def mail_body(message: email.message.EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    content = part.get_content()
    assert isinstance(content, str)
    return content


def wait_for_link(server: RunningServer, to: str, pattern: str) -> str:
    deadline = time.monotonic() + MAIL_TIMEOUT
    while time.monotonic() < deadline:
        for _, message in reversed(outbox_messages(server)):
            if to in str(message["To"]) and (match := re.search(pattern, mail_body(message))):
                return match.group(0)
        time.sleep(0.2)
    raise AssertionError(f"no mail to {to} with a link matching {pattern!r} in the outbox")


# --- flows ---------------------------------------------------------------------------------------


def sign_up_and_verify(phone: Phone, address: str, password: str, *, shots: bool = False) -> None:
    page = phone.page
    phone.open("/accounts/signup/")
    expect(page.get_by_label("Email")).to_be_visible()
    page.get_by_label("Email").fill(address)
    if shots:
        phone.shot("01-sign-up")
        # A weak password is refused with the reasons right under the field. (Once only:
        # sign-up attempts are rate limited per IP, and every test here signs up.)
        page.get_by_label("Password", exact=True).fill("password")
        page.get_by_label("Password (again)").fill("password")
        page.get_by_role("button", name="Sign Up").click()
        expect(page.locator(".field.has-error .errorlist").first).to_be_visible()
        phone.settle()
        password_input = page.get_by_label("Password", exact=True)
        assert password_input.get_attribute("aria-invalid") == "true"
        assert "_error" in (password_input.get_attribute("aria-describedby") or "")
        phone.shot("02-sign-up-refused")

    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_label("Password (again)").fill(password)
    page.get_by_role("button", name="Sign Up").click()
    page.wait_for_url("**/accounts/confirm-email/")
    phone.settle()
    expect(page.locator("h1")).to_have_text("Verify Your Email Address")
    if shots:
        phone.shot("03-verification-sent")

    link = wait_for_link(phone.server, address, r"https://\S+/accounts/confirm-email/(\S+?)/")
    register_canary(link.rstrip("/").rsplit("/", 1)[1])
    assert link.startswith(phone.server.base_url + "/")
    phone.open(link.removeprefix(phone.server.base_url))
    expect(page.locator("h1")).to_have_text("Confirm Email Address")
    if shots:
        phone.shot("04-confirm-email")
    page.get_by_role("button", name="Confirm").click()
    page.wait_for_url("**/accounts/login/")
    phone.settle()


def reset_password(phone: Phone, address: str, new_password: str) -> None:
    page = phone.page
    phone.open("/accounts/login/")
    page.get_by_role("link", name="Forgot your password?").click()
    page.wait_for_url("**/accounts/password/reset/")
    phone.settle()
    phone.shot("fit-reset-request")
    page.get_by_label("Email").fill(address)
    page.get_by_role("button", name="Reset My Password").click()
    page.wait_for_url("**/accounts/password/reset/done/")
    phone.settle()
    phone.shot("fit-reset-sent")

    link = wait_for_link(phone.server, address, r"https://\S+/accounts/password/reset/key/\S+/")
    register_canary(link.rstrip("/").rsplit("/", 1)[1].split("-", 1)[1])
    # allauth moves the key out of the address bar into the session before showing the form.
    phone.open(link.removeprefix(phone.server.base_url))
    assert phone.path().endswith("-set-password/")
    page.get_by_label("New Password", exact=True).fill(new_password)
    page.get_by_label("New Password (again)").fill(new_password)
    phone.shot("fit-reset-new-password")
    page.get_by_role("button", name="Change Password").click()
    page.wait_for_url("**/accounts/password/reset/key/done/")
    phone.settle()


def sign_in_with_password(phone: Phone, address: str, password: str, *, shot: str = "") -> None:
    page = phone.page
    if not phone.path().startswith("/accounts/login/"):
        phone.open("/accounts/login/")
    if shot:
        phone.shot(shot)
    page.get_by_label("Email").fill(address)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign In", exact=True).click()
    page.wait_for_url(lambda url: "/accounts/login/" not in url)
    page.wait_for_load_state("load")


def activate_totp(phone: Phone, password: str) -> tuple[str, int]:
    """Set up the authenticator app; returns its secret and the time step of the code used."""
    page = phone.page
    # Two-factor overview, then the authenticator app set-up with its QR code.
    phone.open("/accounts/2fa/")
    phone.shot("06-two-factor")
    page.locator("main").get_by_role("link", name="Activate").click()
    # Adding a second factor asks for the password again, however fresh the sign-in.
    page.wait_for_url("**/accounts/reauthenticate/?next=*")
    phone.settle()
    phone.shot("07-confirm-access")
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Confirm").click()
    page.wait_for_url("**/accounts/2fa/totp/activate/")
    phone.settle()
    qr = page.locator("img.qr")
    expect(qr).to_be_visible()
    assert (qr.get_attribute("src") or "").startswith("data:image/svg+xml;base64,")
    assert page.evaluate("document.querySelector('img.qr').naturalWidth") > 0
    secret = page.get_by_label("Authenticator secret").input_value()
    assert re.fullmatch(r"[A-Z2-7]{16,}", secret)
    register_canary(secret)
    phone.shot("08-totp-activate")

    wrong = str((int(hotp(secret, totp_step())) + 1) % 10**6).zfill(6)
    page.get_by_label("Authenticator code").fill(wrong)
    page.get_by_role("button", name="Activate").click()
    expect(page.locator(".field.has-error .errorlist")).to_be_visible()
    phone.settle()
    phone.shot("09-totp-wrong-code")

    activation_step = fresh_totp_step()
    page.get_by_label("Authenticator code").fill(hotp(secret, activation_step))
    page.get_by_role("button", name="Activate").click()
    page.wait_for_url("**/accounts/2fa/recovery-codes/")
    phone.settle()
    codes = page.locator("#recovery_codes").input_value().split()
    assert len(codes) >= 8
    phone.shot("10-recovery-codes")
    return secret, activation_step


def sign_out(phone: Phone, *, shot: str = "") -> None:
    phone.open("/accounts/logout/")
    if shot:
        phone.shot(shot)
    phone.page.locator("main").get_by_role("button", name="Sign Out").click()
    phone.page.wait_for_url(phone.server.base_url + "/")
    phone.settle()


# --- tests ---------------------------------------------------------------------------------------


def test_sign_up_verify_sign_in_enable_totp_sign_out_sign_in_with_totp(phone: Phone) -> None:
    page = phone.page
    address, password = fresh_email(), strong_password()

    sign_up_and_verify(phone, address, password, shots=True)
    sign_in_with_password(phone, address, password, shot="05-sign-in")
    assert phone.path() == "/me/"
    phone.settle()

    secret, activation_step = activate_totp(phone, password)

    phone.open("/accounts/sessions/")
    phone.shot("11-sessions")
    sign_out(phone, shot="12-sign-out")

    # Password first, then the authenticator stage with a code from a later step than the one
    # used to activate (a code is good for one use only).
    sign_in_with_password(phone, address, password)
    assert phone.path() == "/accounts/2fa/authenticate/"
    phone.settle()
    phone.shot("13-totp-stage")
    page.get_by_label("Code").fill(hotp(secret, fresh_totp_step(not_before=activation_step)))
    page.get_by_role("button", name="Sign In", exact=True).click()
    page.wait_for_url("**/me/")
    phone.settle()

    facts = page.locator("dl.facts")
    last = facts.locator("div", has=page.locator("dt", has_text="Last sign-in")).locator("dd")
    previous = facts.locator("div", has=page.locator("dt", has_text="Previous sign-in"))
    expect(last).to_contain_text("Chrome Mobile on Android")
    expect(last).to_contain_text("127.0.0.1")
    expect(previous.locator("dd")).to_contain_text("Chrome Mobile on Android")
    history = page.locator("table.table tbody")
    expect(history).to_contain_text("Signed in")
    expect(history).to_contain_text("Second factor added")
    expect(history).to_contain_text("Signed out")
    phone.shot("14-security")
    phone.problems.assert_clean()


def test_security_pages_fit_a_phone(phone: Phone) -> None:
    address, password = fresh_email(), strong_password()
    sign_up_and_verify(phone, address, password)
    # Forgotten at once: the reset pages get their turn at phone width too.
    new_password = strong_password()
    reset_password(phone, address, new_password)
    sign_in_with_password(phone, address, new_password)
    assert phone.path() == "/me/"

    # Something in the key table, so it has a row to be wide with.
    phone.open("/me/api-keys/")
    phone.page.get_by_label("Name").fill("Plant historian export")
    phone.page.locator("main").get_by_role("button", name="Create key").click()
    expect(phone.page.locator("#new-api-key")).to_be_visible()
    phone.settle()
    register_canary(phone.page.locator("#new-api-key").inner_text())

    for path, name in [
        ("/me/", "security"),
        ("/me/api-keys/", "api-keys"),
        ("/accounts/2fa/", "two-factor"),
        ("/accounts/sessions/", "sessions"),
        ("/accounts/email/", "email"),
        ("/accounts/password/change/", "password"),
    ]:
        phone.open(path)
        subnav = phone.page.locator("nav.subnav")
        expect(subnav).to_be_visible()
        expect(subnav.locator("[aria-current=page]")).to_have_count(1)
        # Every sub-navigation link is a comfortable touch target, and none runs off the screen.
        for box in [link.bounding_box() for link in subnav.locator("a").all()]:
            assert box is not None
            assert box["height"] >= 44
            assert box["x"] >= 0
            assert box["x"] + box["width"] <= PHONE["width"]
        assert phone.small_touch_targets() == []
        # Wide tables scroll inside their own box, never the page.
        for table in phone.page.locator(".table-scroll").all():
            box = table.bounding_box()
            assert box is not None
            assert box["x"] + box["width"] <= PHONE["width"]
        phone.shot(f"fit-{name}")
    # The security-key page runs allauth's WebAuthn scripts (from 'self', as the CSP wants).
    phone.open("/accounts/2fa/webauthn/add/")
    page = phone.page
    if phone.path().startswith("/accounts/reauthenticate/"):
        page.get_by_label("Password", exact=True).fill(new_password)
        page.get_by_role("button", name="Confirm").click()
        page.wait_for_url("**/accounts/2fa/webauthn/add/")
        phone.settle()
    expect(page.get_by_role("button", name="Add")).to_be_visible()
    assert page.evaluate("typeof window.allauth?.webauthn?.forms?.addForm") == "function"
    assert phone.small_touch_targets() == []
    phone.shot("fit-security-key")

    # The key table is wider than a phone: it really scrolls sideways, inside its box.
    phone.open("/me/api-keys/")
    scroll = phone.page.locator(".table-scroll")
    assert scroll.evaluate("el => el.scrollWidth > el.clientWidth")
    scroll.evaluate("el => { el.scrollLeft = el.scrollWidth; }")
    box = scroll.get_by_role("button", name="Revoke").bounding_box()
    assert box is not None
    assert 0 <= box["x"] <= box["x"] + box["width"] <= PHONE["width"]
    assert phone.horizontal_overflow() <= 0
    phone.problems.assert_clean()
